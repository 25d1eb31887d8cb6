"""Rollback: put a file or a whole tree back, in place, to its state in a snapshot.

**Plan** (lbk.ops.rollback_plan). The snapshot's subtree for PATH is compared with the live tree:
metadata first (type, size, mtime, ctime, inode, mode, owner, symlink target, device
number). A file whose size, mtime, ctime and inode all equal the snapshot node's is the
same file, untouched since the snapshot (the same test backup uses to skip reading), so
it is neither read nor changed. Only a file of the same size whose times or inode differ
is read and re-chunked with the repository's chunker (content ids, nothing stored) to
tell a content change from a metadata-only one. The result is a list of actions:
``rewrite`` (content, symlink target or device differs, or a hardlink must be re-made),
``create`` (gone since the snapshot), ``remove`` (created since), ``metadata``.

**Protect.** Before anything changes, the current state of PATH is committed as a
``pre-rollback`` snapshot, so ``lbk rollback PATH --to <that id>`` undoes the rollback.
Its backup is seeded with the target snapshot's file nodes, so files that did not change
are not read even without a files cache, and it reuses the snapshot's tree ids for the
directories the plan found exactly as they were (ctimes and inodes included), so it only
walks directories where something changed. If PATH does not exist, the pre-rollback
snapshot records its absence (it covers PATH, which is not in its tree).

**Apply.** Removals first, then directories, files (written beside the destination,
metadata set on the open file, fsynced, renamed over it), symlinks and special files,
hardlinks, then metadata fixes, and directory metadata last, deepest first. Every change
goes through ``lbk.ops.rollback_fs.SafeTree``, anchored at PATH's parent, which never
follows a symlink: a directory swapped for one meanwhile is refused, not followed.

Never touched: entries matching the default excludes or ``excludes`` (they are not in
snapshots either), the repository and cache (``exclude_paths``; a directory created since
the snapshot that contains one is emptied around it, not removed), and sockets. Owners
are compared and restored only when running as root (as restore does).
"""
from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from lbk.cache import Cache
from lbk.errors import LbkError
from lbk.events import Emit, FileError, Progress, discard
from lbk.model import DIR, FILE, Snapshot, encode_tree
from lbk.ops.backup import Backup, BackupOptions, BackupResult
from lbk import faults
from lbk.ops.rollback_fs import ContentError, SafeTree
from lbk.ops.rollback_plan import (  # noqa: F401  (re-exported: the public API of rollback)
    ACTIONS, Action, ConfirmationRequired, Plan, RollbackError, RollbackOptions, normalize_path, plan_rollback,
)
from lbk.ops.walk import make_node
from lbk.repo.keys import current_user
from lbk.repo.pack import DATA, TREE
from lbk.repo.repository import Repository
from lbk.repo.snapshots import save_snapshot

WORKERS = max(2, min(8, (os.cpu_count() or 2) * 2))


@dataclass
class RollbackResult:
    plan: Plan
    pre_rollback: Snapshot | None = None
    done: dict[str, int] = field(default_factory=lambda: {a: 0 for a in ACTIONS})
    bytes_written: int = 0
    errors: int = 0
    duration: float = 0.0
    save_duration: float = 0.0  # the pre-rollback snapshot
    apply_duration: float = 0.0

    def to_json(self) -> dict:
        d = self.plan.to_json()
        d.update({
            "dry_run": False,
            "pre_rollback_id": self.pre_rollback.id if self.pre_rollback else None,
            "done": self.done,
            "bytes_written": self.bytes_written,
            "errors": self.errors,
            "duration": round(self.duration, 3),
            "durations": {"plan": round(self.plan.duration, 3), "pre_rollback_snapshot": round(self.save_duration, 3),
                          "apply": round(self.apply_duration, 3)},
        })
        return d


# -- applying --------------------------------------------------------------------------------


class _Applier:
    """Carries out a plan in phases; failures are reported per entry and the rest goes on."""

    def __init__(self, repo: Repository, plan: Plan, emit: Emit):
        self.repo = repo
        self.plan = plan
        self.emit = emit
        self.result = RollbackResult(plan)
        self.fs = SafeTree(plan.path if plan.path == b"/" else os.path.dirname(plan.path))
        self.touched: set[bytes] = set()
        self._lock = threading.Lock()
        self._last = 0.0

    def _error(self, path: bytes, e: BaseException) -> None:
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        with self._lock:
            self.result.errors += 1
        self.emit(FileError(path=path, message=msg, during="rollback"))

    def _done(self, a: Action, nbytes: int = 0) -> None:
        faults.point("rollback-fs")  # tests kill rollback after each change (lbk/faults.py)
        with self._lock:
            self.result.done[a.action] += 1
            self.result.bytes_written += nbytes
            if a.path != self.plan.path:
                self.touched.add(os.path.dirname(a.path))
            n = sum(self.result.done.values())
        now = time.monotonic()
        if now - self._last > 0.2:
            self._last = now
            self.emit(Progress("rollback", n, self.result.bytes_written, files_total=len(self.plan.actions)))

    def _run(self, a: Action, fn) -> None:
        try:
            self._done(a, fn(a) or 0)
        except (OSError, LbkError, ContentError) as e:
            self._error(a.path, e)

    def _write(self, a: Action) -> int:
        def chunks():
            for bid in a.node.content:
                yield self.repo.load_blob(DATA, bid)

        return self.fs.write_file(a.path, a.node, chunks)

    def run(self) -> RollbackResult:
        acts = self.plan.actions
        fs = self.fs
        for a in acts:
            if a.action == "remove":
                self._run(a, lambda a: fs.remove(a.path))
        for a in acts:
            if a.action in ("create", "rewrite") and a.type == DIR:
                self._run(a, lambda a: fs.mkdir(a.path))
        files = [a for a in acts if a.action in ("create", "rewrite") and a.type == FILE and a.link_to is None]
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="lbk-rollback") as pool:
            for f in [pool.submit(self._run, a, self._write) for a in files]:
                f.result()
        for a in acts:
            if a.action in ("create", "rewrite") and a.type not in (DIR, FILE):
                self._run(a, lambda a: fs.make_special(a.path, a.node))
        for a in acts:
            if a.link_to is not None:
                self._run(a, lambda a: fs.link(a.path, a.link_to))
        for a in acts:
            if a.action == "metadata" and a.type != DIR:
                self._run(a, lambda a: fs.set_metadata(a.path, a.node))
        self._directories()
        return self.result

    def _directories(self) -> None:
        """Directory metadata last, deepest first: our own changes moved their mtimes."""
        todo: dict[bytes, Action | None] = {p: None for p in self.touched if p in self.plan.dir_nodes}
        for a in self.plan.actions:
            if a.type == DIR and a.action in ("create", "rewrite", "metadata"):
                todo[a.path] = a
        for path in sorted(todo, key=lambda p: p.count(b"/"), reverse=True):
            node = self.plan.dir_nodes.get(path)
            if node is None:
                continue
            try:
                self.fs.set_metadata(path, node)
                a = todo[path]
                if a is not None and a.action == "metadata":
                    self._done(a)
            except OSError as e:
                self._error(path, e)


# -- the pre-rollback snapshot ---------------------------------------------------------------


class _SeededCache:
    """The files cache as backup sees it, plus the target snapshot's file nodes: a file
    that is as it was in the snapshot is not read again to save the current state."""

    def __init__(self, cache: Cache | None, seed: dict[bytes, tuple]):
        self.cache = cache
        self.seed = seed

    def load_files(self) -> dict[bytes, tuple]:
        files = dict(self.seed)
        if self.cache is not None:
            files.update(self.cache.load_files())
        return files

    def save_files(self, entries: dict[bytes, tuple]) -> None:
        if self.cache is not None:
            self.cache.save_files(entries)

    # the interface Backup uses: (files, directory signatures)
    def load(self) -> tuple[dict, dict]:
        dirs = self.cache.load()[1] if self.cache is not None else {}
        return self.load_files(), dirs

    def save(self, files: dict, dirs: dict) -> None:
        if self.cache is not None:
            self.cache.save(files, dirs)


class _PreRollbackBackup(Backup):
    """A backup of PATH that does not walk the directories the plan found exactly as in
    the target snapshot (same ctimes, inodes, devices all the way down): their subtree ids
    are reused, so saving the current state costs what changed, not the tree size. No
    change is ever made inside such a directory (``_check_reuse`` makes sure)."""

    def __init__(self, repo: Repository, cache, opts: BackupOptions, emit: Emit, plan: Plan):
        super().__init__(repo, cache, opts, emit)
        self.reuse = plan.unchanged_dirs
        self.new_files.update(plan.unchanged_files)  # keeps the files cache complete

    def _dir(self, path: bytes, root_dev: int) -> bytes:
        hit = self.reuse.get(path)
        if hit is None:
            return super()._dir(path, root_dev)
        subtree, files, nbytes, dirs = hit
        with self._lock:
            r = self.result
            r.total_files += files
            r.total_bytes += nbytes
            r.files_unchanged += files
            r.dirs += dirs
        return subtree


def _check_reuse(plan: Plan) -> None:
    """Refuse to apply a plan that would change something inside a directory whose state
    the pre-rollback snapshot took from the target snapshot instead of the disk."""
    for a in plan.actions:
        if a.path == plan.path:
            continue
        p = os.path.dirname(a.path)  # the directory whose listing the change alters, and those above
        while True:
            if p in plan.unchanged_dirs:
                raise RollbackError(f"internal error: {os.fsdecode(a.path)} would change inside a directory "
                                    "assumed unchanged; nothing was changed")
            if p == plan.path or p == b"/":
                break
            p = os.path.dirname(p)


def _absent_snapshot(repo: Repository, path: bytes, opts: RollbackOptions) -> Snapshot:
    """A pre-rollback snapshot that covers PATH and records that it did not exist."""
    parts = [p for p in path.split(b"/") if p]
    tree, _ = repo.save_blob(TREE, encode_tree([]))
    for i in range(len(parts) - 1, 0, -1):
        dpath = b"/" + b"/".join(parts[:i])
        node = make_node(dpath, parts[i - 1], os.lstat(dpath))
        node.subtree = tree
        tree, _ = repo.save_blob(TREE, encode_tree([node]))
    repo.flush()
    snap = Snapshot(
        time=datetime.now(timezone.utc).astimezone(), tree=tree, paths=[path],
        host=opts.host or socket.gethostname(), user=current_user(), uid=os.getuid(), gid=os.getgid(),
        kind="pre-rollback", summary=BackupResult(snapshot=None).summary(),
    )
    save_snapshot(repo, snap)
    return snap


def save_current_state(repo: Repository, cache: Cache | None, plan: Plan, opts: RollbackOptions, emit: Emit) -> Snapshot:
    """Commit PATH as it is now as a ``pre-rollback`` snapshot; the caller holds a shared lock."""
    if not os.path.lexists(plan.path):
        return _absent_snapshot(repo, plan.path, opts)
    bopts = BackupOptions(
        paths=[plan.path], host=opts.host, excludes=list(opts.excludes), exclude_paths=list(opts.exclude_paths),
        kind="pre-rollback",
    )
    _check_reuse(plan)
    # the caller holds the shared lock: run the backup inside it rather than take another
    res = _PreRollbackBackup(repo, _SeededCache(cache, plan.seed_files), bopts, emit, plan).run()
    if res.errors:
        raise RollbackError(
            f"could not save the current state of {res.errors} entries (listed above) in pre-rollback snapshot "
            f"{res.snapshot.short_id if res.snapshot else '?'}; nothing was changed"
        )
    return res.snapshot


# -- entry point ------------------------------------------------------------------------------


def rollback(repo: Repository, cache: Cache | None, snap: Snapshot, path: bytes,
             opts: RollbackOptions | None = None, emit: Emit = discard) -> RollbackResult:
    """Plan, save the current state as a pre-rollback snapshot, then apply the plan.

    Holds a shared lock throughout, so prune cannot remove data being restored. Nothing is
    changed when the plan is empty, when the comparison met errors, or when the current
    state could not be saved completely.
    """
    start = time.monotonic()
    opts = opts or RollbackOptions()
    repo.ensure_index()
    with repo.lock(exclusive=False):
        plan = plan_rollback(repo, snap, path, opts, emit)
        if plan.errors:
            raise RollbackError(f"could not compare {plan.errors} entries (listed above); nothing was changed")
        if not plan.actions:
            return RollbackResult(plan, duration=time.monotonic() - start)
        t = time.monotonic()
        pre = save_current_state(repo, cache, plan, opts, emit)
        t2 = time.monotonic()
        res = _Applier(repo, plan, emit).run()
        res.save_duration, res.apply_duration = t2 - t, time.monotonic() - t2
    res.pre_rollback = pre
    res.duration = time.monotonic() - start
    return res
