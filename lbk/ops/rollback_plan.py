"""Rollback, part one: the plan. Compare PATH with its state in a snapshot; change nothing.

Metadata first (type, size, mtime, ctime, inode, mode, owner, symlink target, device
number): a file whose size, mtime, ctime and inode all equal its snapshot node has not
been touched since the snapshot (the test backup uses to skip reading) and is neither read
nor changed; only a file of the same size whose times or inode differ is re-chunked with
the repository's chunker (content ids only, nothing stored). The plan lists ``remove``,
``create``, ``rewrite`` and ``metadata`` actions, the snapshot directories in scope, and
which directories are exactly as in the snapshot (down to ctimes and inodes) so that the
pre-rollback snapshot can reuse their trees. ``lbk.ops.rollback`` applies plans.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field

from lbk.errors import LbkError
from lbk.events import Emit, FileError, Progress, discard
from lbk.model import BLOCKDEV, CHARDEV, DIR, FILE, SOCKET, SYMLINK, Node, Snapshot
from lbk.ops.backup import normalize_paths
from lbk.ops.excludes import DEFAULT_EXCLUDES, Excluder
from lbk.ops.refs import covers
from lbk.ops.restore import tree_nodes
from lbk.ops.walk import Reader, node_type, read_xattrs
from lbk.repo.repository import Repository

ACTIONS = ("remove", "create", "rewrite", "metadata")


class RollbackError(LbkError):
    """Rollback could not be done."""


class ConfirmationRequired(LbkError):
    """Refusing to roll back without confirmation: run it on a terminal, or pass --yes (see the plan with --dry-run)."""


@dataclass
class RollbackOptions:
    excludes: list[str] = field(default_factory=list)
    exclude_paths: list[bytes] = field(default_factory=list)  # repository, cache: never touched
    host: str = ""  # recorded in the pre-rollback snapshot


@dataclass
class Action:
    action: str  # remove | create | rewrite | metadata
    path: bytes
    type: str  # the node type the path will have (for remove: the type it has now)
    reason: str = ""
    node: Node | None = None  # the state to put back (None for remove)
    link_to: bytes | None = None  # rewrite/create as a hardlink to this path

    @property
    def size(self) -> int:
        return self.node.size if self.node is not None and self.node.type == FILE and self.link_to is None else 0

    def to_json(self) -> dict:
        d = {"action": self.action, "path": os.fsdecode(self.path), "type": self.type, "reason": self.reason,
             "size": self.size}
        if self.link_to is not None:
            d["link_to"] = os.fsdecode(self.link_to)
        return d


@dataclass
class Plan:
    snapshot: Snapshot
    path: bytes
    actions: list[Action] = field(default_factory=list)
    dir_nodes: dict[bytes, Node] = field(default_factory=dict)  # snapshot directories in scope
    seed_files: dict[bytes, tuple] = field(default_factory=dict)  # files-cache entries from the snapshot
    # directories exactly as in the snapshot, down to ctimes and inodes: path -> (subtree
    # id, files, bytes, directories beneath); the pre-rollback snapshot reuses them
    unchanged_dirs: dict[bytes, tuple[bytes, int, int, int]] = field(default_factory=dict)
    unchanged_files: dict[bytes, tuple] = field(default_factory=dict)
    entries: int = 0
    files_hashed: int = 0
    bytes_hashed: int = 0
    errors: int = 0
    duration: float = 0.0

    def counts(self) -> dict[str, int]:
        c = {a: 0 for a in ACTIONS}
        for a in self.actions:
            c[a.action] += 1
        return c

    @property
    def bytes_to_write(self) -> int:
        return sum(a.size for a in self.actions if a.action in ("create", "rewrite"))

    def to_json(self) -> dict:
        return {
            "snapshot_id": self.snapshot.id,
            "snapshot_time": self.snapshot.time.isoformat(),
            "path": os.fsdecode(self.path),
            "actions": [a.to_json() for a in self.actions],
            "counts": self.counts(),
            "bytes_to_write": self.bytes_to_write,
            "entries_compared": self.entries,
            "files_hashed": self.files_hashed,
            "bytes_hashed": self.bytes_hashed,
        }


# -- planning --------------------------------------------------------------------------------


class _IdsOnly:
    """A chunk sink for ``Reader`` that computes content ids and stores nothing."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self.config = repo.config

    def save_blob(self, blob_type: int, data, blob_id: bytes | None = None) -> tuple[bytes, bool]:
        return blob_id or self.repo.master.blob_id(data), False


@dataclass
class _Member:
    """One name of a snapshot hardlink group (same dev+inode in the snapshot)."""

    path: bytes
    node: Node
    st: os.stat_result | None
    content: Action | None = None
    meta: Action | None = None


def _join(parent: bytes, name: bytes) -> bytes:
    return parent.rstrip(b"/") + b"/" + name


class _Planner:
    def __init__(self, repo: Repository, snap: Snapshot, path: bytes, opts: RollbackOptions, emit: Emit):
        self.repo = repo
        self.snap = snap
        self.root = path
        self.emit = emit
        self.plan = Plan(snapshot=snap, path=path)
        self.reader = Reader(_IdsOnly(repo))
        self.excluder = Excluder(DEFAULT_EXCLUDES + list(opts.excludes), [os.path.abspath(p) for p in opts.exclude_paths])
        self.protected = [os.path.normpath(os.path.abspath(p)) for p in opts.exclude_paths]
        self.is_root = os.geteuid() == 0
        self.groups: dict[tuple[int, int], list[_Member]] = {}
        self.live_links: dict[tuple[int, int], object] = {}
        self.hashed: dict[tuple[int, int], list[bytes]] = {}  # live hardlinks are read once
        self._last = 0.0

    # -- helpers ------------------------------------------------------------------
    def _error(self, path: bytes, e: BaseException, during: str) -> None:
        self.plan.errors += 1
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        self.emit(FileError(path=path, message=msg, during=during))

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self._last > 0.2:
            self._last = now
            self.emit(Progress("rollback: comparing", self.plan.entries, self.plan.bytes_hashed))

    def _add(self, action: str, path: bytes, node: Node | None, reason: str, typ: str | None = None) -> Action:
        a = Action(action, path, typ or (node.type if node else FILE), reason, node)
        self.plan.actions.append(a)
        return a

    def _excluded(self, path: bytes) -> bool:
        return self.excluder.excluded(path, os.path.basename(path))

    def _protects(self, path: bytes) -> bool:
        prefix = path.rstrip(b"/") + b"/"
        return any(p.startswith(prefix) for p in self.protected)

    def _scan(self, path: bytes) -> dict[bytes, os.stat_result] | None:
        out: dict[bytes, os.stat_result] = {}
        try:
            with os.scandir(path) as it:
                for e in it:
                    try:
                        out[e.name] = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
        except OSError as e:
            self._error(path, e, "list")
            return None
        return out

    # -- the snapshot side -------------------------------------------------------------
    def locate(self) -> Node | None:
        """PATH's node in the snapshot; None when the snapshot covers PATH but it did not exist."""
        if not covers(self.snap, self.root):
            held = ", ".join(os.fsdecode(p) for p in self.snap.paths)
            raise RollbackError(f"snapshot {self.snap.short_id} does not contain {os.fsdecode(self.root)} (it holds {held})")
        if self.root == b"/":
            return Node(name=b"/", type=DIR, subtree=self.snap.tree)
        parts = [p for p in self.root.split(b"/") if p]
        tree = self.snap.tree
        for i, part in enumerate(parts):
            match = next((n for n in tree_nodes(self.repo, tree) if n.name == part), None)
            if match is None or i == len(parts) - 1:
                return match
            if match.type != DIR or match.subtree is None:
                return None
            tree = match.subtree
        return None  # pragma: no cover

    # -- comparison ------------------------------------------------------------------------
    def run(self) -> Plan:
        start = time.monotonic()
        node = self.locate()
        try:
            st = os.lstat(self.root)
        except FileNotFoundError:
            st = None
        if node is None and st is None:
            raise RollbackError(f"{os.fsdecode(self.root)} exists neither now nor in snapshot {self.snap.short_id}")
        parent = os.path.dirname(self.root)
        if not os.path.isdir(parent) or os.path.islink(parent):
            raise RollbackError(f"parent directory {os.fsdecode(parent)} does not exist; roll back the parent instead")
        if self.root == b"/":
            self._dir(self.root, node)  # the root's own metadata is not in a snapshot
        else:
            self._entry(self.root, node, st)
        self._hardlinks()
        self.plan.duration = time.monotonic() - start
        return self.plan

    def _entry(self, path: bytes, node: Node | None, st: os.stat_result | None) -> bool:
        """Compare one entry (and what is beneath it). Returns whether it is exactly as in
        the snapshot, as a backup would record it now (same ctime, inode and device too)."""
        self.plan.entries += 1
        self._progress()
        if self._excluded(path):
            return node is None  # skipped by backup too; a snapshot entry we skip is a difference
        if node is None:
            if st is not None:
                self._remove(path, st, "new")
            return st is None
        if node.type == SOCKET:
            return False  # a socket belongs to a running process: never made, never replaced
        if st is None:
            self._create(path, node, "missing")
            return False
        live_type = node_type(st.st_mode)
        if live_type == SOCKET:
            return False
        if live_type != node.type:
            self._remove(path, st, "type")
            self._create(path, node, "type")
            return False
        untouched = st.st_ctime_ns == node.ctime_ns and (node.type == DIR or (st.st_ino, st.st_dev) == (node.inode, node.dev))
        if node.type == DIR:
            self.plan.dir_nodes[path] = node
            diff = self._meta_diff(path, node, st)
            if diff:
                self._add("metadata", path, node, ",".join(diff))
            return self._dir(path, node) and not diff and untouched
        if node.type == FILE:
            return self._file(path, node, st) and untouched
        if node.type == SYMLINK:
            try:
                target = os.readlink(path)
            except OSError as e:
                self._error(path, e, "readlink")
                return False
            if target != node.target:
                self._add("rewrite", path, node, "target")
                return False
            return self._meta(path, node, st) is None and untouched
        if node.type in (CHARDEV, BLOCKDEV) and st.st_rdev != node.rdev:
            self._add("rewrite", path, node, "device")
            return False
        return self._meta(path, node, st) is None and untouched

    def _meta(self, path: bytes, node: Node, st: os.stat_result) -> Action | None:
        diff = self._meta_diff(path, node, st)
        return self._add("metadata", path, node, ",".join(diff)) if diff else None

    def _meta_diff(self, path: bytes, node: Node, st: os.stat_result) -> list[str]:
        diff = []
        if node.type != SYMLINK and stat.S_IMODE(st.st_mode) != node.mode:
            diff.append("mode")
        if self.is_root and (st.st_uid, st.st_gid) != (node.uid, node.gid):
            diff.append("owner")
        if st.st_mtime_ns != node.mtime_ns:
            diff.append("mtime")
        if read_xattrs(path) != [tuple(x) for x in node.xattrs]:
            diff.append("xattrs")
        return diff

    def _dir(self, path: bytes, node: Node) -> bool:
        """Compare a directory's entries; True when all of them are exactly as in the snapshot."""
        children = {n.name: n for n in tree_nodes(self.repo, node.subtree)} if node.subtree else {}
        live = self._scan(path)
        if live is None:
            return False
        same = True
        for name in sorted(children.keys() | live.keys()):
            same = self._entry(_join(path, name), children.get(name), live.get(name)) and same
        if same and node.subtree is not None:
            files = nbytes = dirs = 0
            for c in children.values():
                if c.type == FILE:
                    files, nbytes = files + 1, nbytes + c.size
                elif c.type == DIR:
                    f, b, d = self.plan.unchanged_dirs[_join(path, c.name)][1:]
                    files, nbytes, dirs = files + f, nbytes + b, dirs + d + 1
            self.plan.unchanged_dirs[path] = (node.subtree, files, nbytes, dirs)
        return same

    def _same_file(self, node: Node, st: os.stat_result) -> bool:
        """Untouched since the snapshot: the files-cache test plus mode and owner."""
        return (
            st.st_size == node.size and st.st_mtime_ns == node.mtime_ns and st.st_ctime_ns == node.ctime_ns
            and st.st_ino == node.inode and stat.S_IMODE(st.st_mode) == node.mode
            and (st.st_uid, st.st_gid) == (node.uid, node.gid)
        )

    def _file(self, path: bytes, node: Node, st: os.stat_result) -> bool:
        """Compare a file; True when it took the fast path (untouched since the snapshot)."""
        entry = (node.size, node.mtime_ns, node.ctime_ns, node.inode, b"".join(node.content))
        self.plan.seed_files[path] = entry
        member = self._member(path, node, st)
        content = meta = None
        relinked = False
        if st.st_nlink > 1:  # a live hardlink that the snapshot did not have
            group = (node.dev, node.inode) if node.nlink > 1 and node.inode else ("path", path)
            relinked = self.live_links.setdefault((st.st_dev, st.st_ino), group) != group
        untouched = False
        if relinked:
            content = self._add("rewrite", path, node, "hardlink")
        elif st.st_size != node.size:
            content = self._add("rewrite", path, node, "content")
        elif not self._same_file(node, st):
            ids = self._hash(path, st)
            if ids is None:
                return False
            if ids != node.content:
                content = self._add("rewrite", path, node, "content")
            else:
                meta = self._meta(path, node, st)
        else:
            untouched = True
            self.plan.unchanged_files[path] = entry
        if member is not None:
            member.content, member.meta = content, meta
        return untouched

    def _hash(self, path: bytes, st: os.stat_result) -> list[bytes] | None:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.hashed:
            return self.hashed[key]
        try:
            ids, size, _added, _changed = self.reader.read(path, st)
        except OSError as e:
            self._error(path, e, "read")
            return None
        self.plan.files_hashed += 1
        self.plan.bytes_hashed += size
        if st.st_nlink > 1:
            self.hashed[key] = ids
        return ids

    def _member(self, path: bytes, node: Node, st: os.stat_result | None) -> _Member | None:
        if node.type != FILE or node.nlink < 2 or not node.inode:
            return None
        m = _Member(path, node, st)
        self.groups.setdefault((node.dev, node.inode), []).append(m)
        return m

    def _create(self, path: bytes, node: Node, reason: str) -> None:
        if node.type == SOCKET:
            return
        a = self._add("create", path, node, reason)
        member = self._member(path, node, None)
        if member is not None:
            member.content = a
        if node.type == DIR:
            self.plan.dir_nodes[path] = node
            if node.subtree:
                for child in tree_nodes(self.repo, node.subtree):
                    cp = _join(path, child.name)
                    if not self._excluded(cp):
                        self._create(cp, child, "missing")

    def _remove(self, path: bytes, st: os.stat_result, reason: str) -> None:
        if stat.S_ISSOCK(st.st_mode) and reason == "new":
            return
        if stat.S_ISDIR(st.st_mode) and self._protects(path):
            for name, cst in sorted((self._scan(path) or {}).items()):
                self._entry(_join(path, name), None, cst)
            return
        self._add("remove", path, None, reason, node_type(st.st_mode) or FILE)

    def _hardlinks(self) -> None:
        """Names of one snapshot file must end up as links of one inode again."""
        drop: set[int] = set()
        for members in self.groups.values():
            if len(members) < 2:
                continue
            primary = members[0]
            primary_inode = None
            if primary.content is None and primary.st is not None:
                primary_inode = (primary.st.st_dev, primary.st.st_ino)
            for m in members[1:]:
                linked = m.st is not None and primary_inode == (m.st.st_dev, m.st.st_ino)
                if linked and m.content is None:
                    if m.meta is not None:
                        drop.add(id(m.meta))  # same inode: the primary's fix covers it
                    continue
                for a in (m.content, m.meta):
                    if a is not None:
                        drop.add(id(a))
                link = Action("rewrite" if m.st is not None else "create", m.path, FILE, "hardlink", m.node, primary.path)
                self.plan.actions.append(link)
                self._dirty_above(m.path)
        if drop:
            self.plan.actions = [a for a in self.plan.actions if id(a) not in drop]

    def _dirty_above(self, path: bytes) -> None:
        p = os.path.dirname(path)
        while len(p) >= len(self.root):
            self.plan.unchanged_dirs.pop(p, None)
            if p == self.root or p == b"/":
                break
            p = os.path.dirname(p)


def plan_rollback(repo: Repository, snap: Snapshot, path: bytes, opts: RollbackOptions | None = None,
                  emit: Emit = discard) -> Plan:
    """Compare PATH with its state in ``snap``; changes nothing."""
    repo.ensure_index()
    return _Planner(repo, snap, normalize_path(path), opts or RollbackOptions(), emit).run()


def normalize_path(path: bytes) -> bytes:
    """Absolute, with its parent directories resolved (as backup records paths)."""
    return normalize_paths([os.fsencode(path)])[0]
