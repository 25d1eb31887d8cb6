"""Diff: what changed between two snapshots, or between a snapshot and the live file
system; and the content diff of one file between two points in time.

Markers (restic's): ``+`` added, ``-`` removed, ``M`` content changed, ``U`` metadata only
(mode, owner, mtime, xattrs), ``T`` type changed. A directory is compared by its
metadata without its mtime (which moves whenever an entry is added or removed, and is
not a change anyone made to the directory). An added or removed directory is listed
with everything beneath it.

Between two snapshots, directories whose tree ids are equal are skipped unread; file
contents compare by content ids. Against the live file system, a file with the same
size and mtime is taken as unchanged (as backup does); when only the mtime differs it
is re-chunked with the repository's chunker and keys, storing nothing, and its content
ids decide between ``M`` and ``U``. The same excludes apply on both sides: the default
ones of backup, the repository and the cache, and those given.

The content diff reads one file's version from the repository and the other from the
repository or the disk: text (no NUL byte, valid UTF-8, both sides at most
``TEXT_LIMIT``) gets a unified diff (difflib); anything else gets a summary of sizes and
of the bytes that differ position by position.
"""

from __future__ import annotations

import codecs
import difflib
import errno
import os
import stat
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Callable, Iterable, Iterator

from lbk.catalog import content_key
from lbk.errors import LbkError, RefError, UsageError
from lbk.events import Emit, FileError, discard
from lbk.model import BLOCKDEV, CHARDEV, DIR, FILE, SYMLINK, Node, Snapshot
from lbk.ops.excludes import DEFAULT_EXCLUDES, Excluder
from lbk.ops.log import absolute
from lbk.ops.refs import Filter, resolve
from lbk.ops.restore import tree_nodes
from lbk.ops.walk import Reader, make_node
from lbk.repo.pack import DATA
from lbk.repo.repository import Repository
from lbk.repo.snapshots import load_all

ADDED, REMOVED, CONTENT, METADATA, TYPE = "+", "-", "M", "U", "T"
MARKERS = (ADDED, REMOVED, CONTENT, METADATA, TYPE)
TEXT_LIMIT = 8 << 20
BLOCK = 1 << 20


# -- the positional arguments of `lbk diff` ---------------------------------------------

def looks_like_path(arg: str, exists: Callable[[str], bool] = os.path.lexists) -> bool:
    """A positional argument is a PATH when it starts with / or . or ~, or names
    something on disk; anything else is a REF."""
    return arg.startswith(("/", ".", "~")) or exists(arg)


def split_args(
    args: Iterable[str], at: str | None = None, against: str | None = None,
    exists: Callable[[str], bool] = os.path.lexists,
) -> tuple[str, str | None, str | None]:
    """``REF [REF2] [PATH]`` -> (ref, ref2, path). ``--at`` stands for REF and ``--against``
    for REF2, so ``diff --at REF --against REF2 PATH`` is the unambiguous spelling."""
    rest = list(args)
    ref = at
    if ref is None:
        if not rest:
            raise UsageError("missing REF: which snapshot to compare (an id, latest, @name, a time)")
        if rest[0].startswith(("/", ".", "~")):
            raise UsageError(f"{rest[0]!r} is a path; give a REF first: lbk diff REF [REF2] [PATH]")
        ref = rest.pop(0)
    ref2, path = against, None
    for a in rest:
        if path is not None:
            raise UsageError(f"unexpected argument {a!r} after PATH")
        if looks_like_path(a, exists):
            path = a
        elif ref2 is None:
            ref2 = a
        else:
            raise UsageError(f"unexpected argument {a!r}: two REFs are given already (a PATH starts with / or .)")
    return ref, ref2, path


# -- results -------------------------------------------------------------------------------

def _node_json(n: Node | None, content_known: bool = True) -> dict | None:
    if n is None:
        return None
    d = {
        "type": n.type,
        "mode": n.mode,
        "uid": n.uid,
        "gid": n.gid,
        "mtime": datetime.fromtimestamp(n.mtime_ns / 1e9).astimezone().isoformat(),
    }
    if n.type == FILE:
        d["size"] = n.size
        d["content"] = content_key(n).hex()[:8] if content_known else None
    if n.type == SYMLINK:
        d["target"] = os.fsdecode(n.target)
    return d


@dataclass
class Change:
    change: str
    path: bytes
    old: Node | None
    new: Node | None
    new_content_known: bool = True

    @property
    def type(self) -> str:
        return (self.new or self.old).type  # type: ignore[union-attr]

    def to_json(self) -> dict:
        return {
            "change": self.change,
            "path": os.fsdecode(self.path),
            "type": self.type,
            "old": _node_json(self.old),
            "new": _node_json(self.new, self.new_content_known),
        }


@dataclass
class DiffResult:
    old: Snapshot
    new: Snapshot | None  # None: the live file system
    paths: list[bytes]
    changes: list[Change] = field(default_factory=list)
    errors: int = 0

    def counts(self) -> dict[str, int]:
        c = {m: 0 for m in MARKERS}
        for ch in self.changes:
            c[ch.change] += 1
        return c


# -- the two sides ---------------------------------------------------------------------------

class _SnapSide:
    live = False

    def __init__(self, repo: Repository, snap: Snapshot):
        self.repo = repo
        self.snap = snap

    def node_at(self, path: bytes) -> Node | None:
        node = Node(name=b"", type=DIR, subtree=self.snap.tree)
        for part in [p for p in path.split(b"/") if p]:
            if node.type != DIR or node.subtree is None:
                return None
            node = next((n for n in tree_nodes(self.repo, node.subtree) if n.name == part), None)
            if node is None:
                return None
        return node

    def children(self, path: bytes, node: Node) -> tuple[list[Node], set[bytes]] | None:
        return (tree_nodes(self.repo, node.subtree) if node.subtree else []), set()


class _LiveSide:
    live = True

    def __init__(self, emit: Emit, errors: list):
        self.emit = emit
        self.errors = errors

    def _error(self, path: bytes, e: OSError, during: str) -> None:
        self.errors.append(path)
        self.emit(FileError(path=path, message=e.strerror or str(e), during=during))

    def node_at(self, path: bytes) -> Node | None:
        try:
            st = os.lstat(path)
            return make_node(path, os.path.basename(path), st)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ENOTDIR:
                return None
            self._error(path, e, "stat")
            return None

    def children(self, path: bytes, node: Node) -> tuple[list[Node], set[bytes]] | None:
        """Entries of a live directory, sorted by name, plus names that could not be
        read (left out of the comparison); None when the directory cannot be listed."""
        try:
            entries = sorted(os.scandir(path or b"/"), key=lambda e: e.name)
        except OSError as e:
            self._error(path, e, "list")
            return None
        nodes, bad = [], set()
        for e in entries:
            try:
                nodes.append(make_node(e.path, e.name, e.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue
            except OSError as err:
                self._error(e.path, err, "stat")
                bad.add(e.name)
        return nodes, bad


class _HashOnly:
    """A ``Reader`` sink that computes content ids and stores nothing."""

    def __init__(self, repo: Repository):
        self.config = repo.config
        self._id = repo.master.blob_id

    def save_blob(self, blob_type, data, blob_id=None):
        return blob_id or self._id(data), False


def _meta_differs(a: Node, b: Node) -> bool:
    if (a.mode, a.uid, a.gid) != (b.mode, b.uid, b.gid) or a.xattrs != b.xattrs:
        return True
    return a.type != DIR and a.mtime_ns != b.mtime_ns


class _Differ:
    def __init__(self, repo: Repository, a: _SnapSide, b, excluder: Excluder, emit: Emit):
        self.a, self.b = a, b
        self.excluder = excluder
        self.emit = emit
        self.reader = Reader(_HashOnly(repo)) if b.live else None
        self.changes: list[Change] = []
        self.errors: list[bytes] = b.errors if b.live else []

    def _add(self, marker: str, path: bytes, old: Node | None, new: Node | None, known: bool = True) -> None:
        self.changes.append(Change(marker, path, old, new, known))

    def _all(self, side, marker: str, path: bytes, node: Node) -> None:
        """``node`` and everything beneath it, as added or removed."""
        old, new = (node, None) if marker == REMOVED else (None, node)
        self._add(marker, path, old, new, not (side.live and node.type == FILE))
        if node.type == DIR:
            got = side.children(path, node)
            for child in got[0] if got else []:
                p = path + b"/" + child.name
                if not self.excluder.excluded(p, child.name):
                    self._all(side, marker, p, child)

    def _content_differs(self, path: bytes, a: Node, b: Node) -> tuple[bool | None, bool]:
        """(content differs — None when the live file could not be read, content of b known)."""
        if a.type == FILE:
            if a.size != b.size:
                return True, not self.b.live
            if not self.b.live:
                return a.content != b.content, True
            if a.mtime_ns == b.mtime_ns:
                return False, False
            try:
                ids, size, _, _ = self.reader.read(path, os.lstat(path))  # type: ignore[union-attr]
            except OSError as e:
                self.errors.append(path)
                self.emit(FileError(path=path, message=e.strerror or str(e), during="read"))
                return None, False
            b.content, b.size = ids, size
            return ids != a.content or size != a.size, True
        if a.type == SYMLINK:
            return a.target != b.target, True
        if a.type in (CHARDEV, BLOCKDEV):
            return a.rdev != b.rdev, True
        return False, True

    def compare(self, path: bytes, a: Node | None, b: Node | None) -> None:
        if a is None and b is None:
            return
        if a is None:
            self._all(self.b, ADDED, path, b)  # type: ignore[arg-type]
            return
        if b is None:
            self._all(self.a, REMOVED, path, a)
            return
        if a.type != b.type:
            self._add(TYPE, path, a, b, not self.b.live)
            return
        if a.type != DIR:
            differs, known = self._content_differs(path, a, b)
            if differs:
                self._add(CONTENT, path, a, b, known)
            elif differs is not None and _meta_differs(a, b):
                self._add(METADATA, path, a, b, known)
            return
        if path and _meta_differs(a, b):
            self._add(METADATA, path, a, b)
        if not self.b.live and a.subtree == b.subtree:
            return
        ga, gb = self.a.children(path, a), self.b.children(path, b)
        if ga is None or gb is None:
            return
        skip = ga[1] | gb[1]
        old = {n.name: n for n in ga[0]}
        new = {n.name: n for n in gb[0]}
        for name in sorted(old.keys() | new.keys()):
            p = path + b"/" + name
            if name in skip or self.excluder.excluded(p, name):
                continue
            self.compare(p, old.get(name), new.get(name))


def _snapshots_and_filter(repo: Repository, flt: Filter, path: bytes | None) -> tuple[list[Snapshot], Filter]:
    return load_all(repo), replace(flt, path=path)


def diff(
    repo: Repository,
    ref: str,
    ref2: str | None = None,
    path: bytes | None = None,
    flt: Filter = Filter(),
    excludes: Iterable[str] = (),
    exclude_paths: Iterable[bytes] = (),
    emit: Emit = discard,
) -> DiffResult:
    """Changes from snapshot ``ref`` to snapshot ``ref2`` (default: the live file system),
    below ``path`` (default: everything; against the live system, the snapshot's paths)."""
    if path is not None:
        path = absolute(path)
    snaps, pflt = _snapshots_and_filter(repo, flt, path)
    a = resolve(ref, snaps, pflt)
    b = None
    if ref2 is not None:
        try:
            b = resolve(ref2, snaps, pflt)
        except RefError as e:
            if e.message.startswith("invalid snapshot reference") and path is None:
                raise RefError(f"{e.message} (a PATH that does not exist must start with / or ./)") from None
            raise
    excluder = Excluder(DEFAULT_EXCLUDES + list(excludes), [os.path.abspath(p) for p in exclude_paths])
    left = _SnapSide(repo, a)
    errors: list[bytes] = []
    right = _SnapSide(repo, b) if b is not None else _LiveSide(emit, errors)
    differ = _Differ(repo, left, right, excluder, emit)
    if path is not None:
        roots = [path]
    elif b is not None:
        roots = [b""]
    else:
        roots = sorted({os.path.normpath(p) for p in a.paths})
    for r in roots:
        top = b"/" if r in (b"", b"/") else r
        differ.compare(b"" if top == b"/" else top, left.node_at(top), right.node_at(top))
    return DiffResult(a, b, [r or b"/" for r in roots], differ.changes, len(differ.errors))


# -- one file's content ------------------------------------------------------------------------

@dataclass
class ContentDiff:
    path: bytes
    at: Snapshot
    against: Snapshot | None  # None: the file on disk
    old_size: int
    new_size: int | None  # None: absent
    binary: bool
    identical: bool
    diff: str | None = None  # unified diff, for text
    changed_bytes: int | None = None  # for binary (or too large) files
    first_difference: int | None = None
    too_large: bool = False

    def to_json(self) -> dict:
        return {
            "path": os.fsdecode(self.path),
            "at": self.at.id,
            "against": self.against.id if self.against else None,
            "old_size": self.old_size,
            "new_size": self.new_size,
            "binary": self.binary,
            "identical": self.identical,
            "diff": self.diff,
            "changed_bytes": self.changed_bytes,
            "first_difference": self.first_difference,
            "too_large": self.too_large,
        }


def _is_text(data: bytes, final: bool = True) -> bool:
    """No NUL byte and valid UTF-8 (``final=False``: ``data`` may end inside a character)."""
    if b"\0" in data:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=final)
    except UnicodeDecodeError:
        return False
    return True


def _lines(text: str) -> list[str]:
    parts = text.split("\n")
    out = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def unified(a: bytes, b: bytes, from_label: str, to_label: str) -> str:
    """A unified diff of two UTF-8 texts, with git's marker for a missing final newline."""
    out = []
    for line in difflib.unified_diff(_lines(a.decode()), _lines(b.decode()), from_label, to_label):
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def _blocks(chunks: Iterable[bytes], size: int = BLOCK) -> Iterator[bytes]:
    buf = bytearray()
    for c in chunks:
        buf += c
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def byte_summary(a: Iterable[bytes], b: Iterable[bytes], block: int = BLOCK) -> tuple[int, int | None]:
    """(bytes that differ position by position, counting a length difference; offset of
    the first difference or None). Streams both sides in blocks of ``block`` bytes."""
    ia, ib = _blocks(a, block), _blocks(b, block)
    pos = changed = 0
    first = None
    while True:
        ba, bb = next(ia, b""), next(ib, b"")
        if not ba and not bb:
            return changed, first
        n = min(len(ba), len(bb))
        if ba[:n] != bb[:n]:
            x = (int.from_bytes(ba[:n], "little") ^ int.from_bytes(bb[:n], "little")).to_bytes(n, "little")
            changed += n - x.count(0)
            if first is None:
                first = pos + _first_nonzero(x)
        if len(ba) != len(bb):
            changed += abs(len(ba) - len(bb))
            if first is None:
                first = pos + n
        pos += max(len(ba), len(bb))


def _first_nonzero(x: bytes) -> int:
    return len(x) - len(x.lstrip(b"\0"))


def _file_at(repo: Repository, snap: Snapshot, path: bytes) -> Node | None:
    node = _SnapSide(repo, snap).node_at(path)
    if node is not None and node.type != FILE:
        raise LbkError(f"{os.fsdecode(path)} is a {node.type}, not a file, in snapshot {snap.short_id}")
    return node


def _read_live(path: bytes, limit: int | None) -> Iterator[bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with open(fd, "rb", buffering=0) as f:
        done = 0
        while limit is None or done < limit:
            chunk = f.read(BLOCK)
            if not chunk:
                return
            done += len(chunk)
            yield chunk


def content_diff(
    repo: Repository, path: bytes, at: str, against: str | None = None, flt: Filter = Filter(),
) -> ContentDiff:
    """The version of file ``path`` at REF ``at`` against REF ``against`` (default: the disk)."""
    path = absolute(path)
    snaps, pflt = _snapshots_and_filter(repo, flt, path)
    a = resolve(at, snaps, pflt)
    old = _file_at(repo, a, path)
    if old is None:
        raise LbkError(f"{os.fsdecode(path)} is not in snapshot {a.short_id}")
    b = resolve(against, snaps, pflt) if against else None
    new_node = None
    if b is not None:
        new_node = _file_at(repo, b, path)
        new_size = new_node.size if new_node else None
    else:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise LbkError(f"cannot read {os.fsdecode(path)}: {e.strerror}") from None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise LbkError(f"{os.fsdecode(path)} is not a regular file on disk")
        new_size = st.st_size if st else None

    def old_data() -> Iterator[bytes]:
        for c in old.content:
            yield repo.load_blob(DATA, c)

    def new_data() -> Iterator[bytes]:
        if b is not None:
            for c in new_node.content if new_node else []:
                yield repo.load_blob(DATA, c)
        elif new_size is not None:
            try:
                yield from _read_live(path, None)
            except OSError as e:
                raise LbkError(f"cannot read {os.fsdecode(path)}: {e.strerror}") from None

    name = os.fsdecode(path)
    res = ContentDiff(path, a, b, old.size, new_size, binary=False, identical=False)
    if old.size <= TEXT_LIMIT and (new_size or 0) <= TEXT_LIMIT:
        da = b"".join(old_data())
        db = b"".join(new_data())
        res.new_size = len(db) if new_size is not None else None
        res.identical = da == db and new_size is not None
        if _is_text(da) and _is_text(db):
            if b is not None:
                to = f"{name}@{b.short_id}"
            else:
                to = f"{name} (on disk)" if new_size is not None else "/dev/null"
            res.diff = unified(da, db, f"{name}@{a.short_id}", to)
            return res
        res.binary = True
        res.changed_bytes, res.first_difference = byte_summary([da], [db])
        return res
    res.too_large = True
    head_a = next(_blocks(old_data(), 64 * 1024), b"")
    head_b = next(_blocks(new_data(), 64 * 1024), b"")
    res.binary = not (_is_text(head_a, final=False) and _is_text(head_b, final=False))
    res.changed_bytes, res.first_difference = byte_summary(old_data(), new_data())
    res.identical = res.changed_bytes == 0 and new_size is not None
    return res
