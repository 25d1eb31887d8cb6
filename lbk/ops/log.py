"""Log: the audit trail of a path (every distinct version, newest first), from the catalog.

The history of a path is read from the snapshots that observed it: those that cover it
(``refs.covers``), plus, for a directory, those that backed up something beneath it,
each of which observes only its own part. Snapshots are replayed oldest first into a
virtual tree of "last observed" state; each observation is compared with that state,
and only differences become rows (``added`` / ``modified`` / ``metadata`` /
``deleted``), so consecutive snapshots with the identical version collapse into one row.

Replay is cheap because a directory in the state remembers the tree id it was last
observed as: an observation with the same id is skipped whole. Only a changed directory
is listed, and only a changed subdirectory is entered. A later observation of something
beneath such a directory (a snapshot of a subpath) clears the remembered id of every
directory above it, since the state there no longer equals one tree.

Versions compare by type and content key first (``modified``), then by metadata (mode,
owner, mtime, xattrs: ``metadata``); see ``lbk.catalog``. Directories themselves are not
versions: a directory log lists the files, symlinks and other nodes beneath it.
A directory that could not be read completely at backup time never reports the entries
it lacks as deleted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import datetime

from lbk.catalog import Catalog, Entry
from lbk.errors import LbkError, UsageError
from lbk.events import Emit, discard
from lbk.model import DIR, Snapshot
from lbk.ops.backup import normalize_paths
from lbk.ops.refs import Filter, covers, resolve
from lbk.repo.repository import Repository

ADDED, MODIFIED, METADATA, DELETED = "added", "modified", "metadata", "deleted"


def absolute(path: bytes) -> bytes:
    """PATH as backup records it: absolute, parent directories resolved."""
    return normalize_paths([os.fsencode(path)])[0]


def under(p: bytes, d: bytes) -> bool:
    """Whether ``p`` is ``d`` or beneath it."""
    return d == b"/" or p == d or p.startswith(d + b"/")


def _parts(p: bytes) -> list[bytes]:
    return [c for c in p.split(b"/") if c]


def subroots(s: Snapshot, path: bytes) -> list[bytes]:
    """Where snapshot ``s`` observes ``path`` and what lies beneath it: ``[path]`` when it
    covers it, else its own backed-up paths beneath ``path`` (possibly none)."""
    if covers(s, path):
        return [path]
    roots = {os.path.normpath(r) for r in s.paths}
    return sorted(r for r in roots if under(r, path))


def _key(s: Snapshot) -> tuple[datetime, str]:
    return (s.time, s.id)


def _iso_ns(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).astimezone().isoformat()


@dataclass
class LogRow:
    path: bytes
    snapshot: Snapshot
    change: str
    entry: Entry  # the version in this snapshot; for "deleted", the version that went away

    def to_json(self) -> dict:
        gone = self.change == DELETED
        e = self.entry
        return {
            "time": self.snapshot.time.isoformat(),
            "snapshot": self.snapshot.id,
            "short_id": self.snapshot.short_id,
            "kind": self.snapshot.kind,
            "name": self.snapshot.name or None,
            "path": os.fsdecode(self.path),
            "change": self.change,
            "type": e.type,
            "size": None if gone else e.size,
            "content": None if gone else e.short_content,
            "mode": None if gone else e.mode,
            "mtime": None if gone else _iso_ns(e.mtime_ns),
        }


@dataclass
class DeletedFile:
    path: bytes
    deleted_in: Snapshot  # the first snapshot where it was absent (and stayed so)
    last_in: Snapshot | None  # the last snapshot that held it
    entry: Entry  # the last version

    def to_json(self) -> dict:
        e = self.entry
        last = self.last_in
        return {
            "path": os.fsdecode(self.path),
            "change": DELETED,
            "time": self.deleted_in.time.isoformat(),
            "snapshot": self.deleted_in.id,
            "short_id": self.deleted_in.short_id,
            "kind": self.deleted_in.kind,
            "type": e.type,
            "size": e.size,
            "content": e.short_content,
            "last_snapshot": last.id if last else None,
            "last_time": last.time.isoformat() if last else None,
        }


@dataclass
class LogResult:
    path: bytes
    rows: list[LogRow]  # newest first; within a snapshot, by path
    deleted: list[DeletedFile] | None  # with deleted=True: newest deletion first
    snapshots: int  # snapshots that observed the path (within --until)


class _VDir:
    """A directory of the replayed state; ``tree`` is set while it equals that tree."""

    __slots__ = ("tree", "children")

    def __init__(self) -> None:
        self.tree: int | None = None
        self.children: dict[bytes, "_VDir | Entry"] = {}


@dataclass(slots=True)
class _Event:
    index: int
    path: bytes
    change: str
    entry: Entry


class _Replay:
    def __init__(self, catalog: Catalog, top: bytes):
        self.cat = catalog
        self.top = top
        self.root = _VDir()
        self.events: list[_Event] = []
        self.index = 0

    def _emit(self, path: bytes, change: str, entry: Entry) -> None:
        if under(path, self.top):
            self.events.append(_Event(self.index, path, change, entry))

    def observe(self, index: int, at: bytes, entry: Entry | None, known: bool) -> None:
        """Snapshot number ``index`` shows ``entry`` (None: absent) at path ``at``."""
        if not known:
            return
        self.index = index
        parts = _parts(at)
        if not parts:
            assert entry is not None and entry.subtree is not None
            self._dir(self.root, entry.subtree, b"", not entry.error)
            return
        parent, base = self.root, b""
        for c in parts[:-1]:
            parent.tree = None
            base += b"/" + c
            child = parent.children.get(c)
            if not isinstance(child, _VDir):
                if child is not None:
                    self._gone(base, child)
                child = parent.children[c] = _VDir()
            parent = child
        parent.tree = None
        self._node(parent, parts[-1], at, entry)

    def _node(self, parent: _VDir, name: bytes, path: bytes, e: Entry | None) -> bool:
        """Bring ``parent.children[name]`` to ``e``; True when the state now equals it exactly."""
        old = parent.children.get(name)
        if e is None:
            if old is not None:
                self._gone(path, old)
                del parent.children[name]
            return True
        if e.type == DIR:
            if not isinstance(old, _VDir):
                if old is not None:
                    self._gone(path, old)
                old = parent.children[name] = _VDir()
            if e.subtree is None:
                return False
            return self._dir(old, e.subtree, path, not e.error)
        if isinstance(old, _VDir):
            self._gone(path, old)
            old = None
        if old is None:
            self._emit(path, ADDED, e)
        elif old.content != e.content or old.type != e.type:
            self._emit(path, MODIFIED, e)
        elif old.meta != e.meta or old.size != e.size:
            self._emit(path, METADATA, e)
        parent.children[name] = e
        return True

    def _dir(self, v: _VDir, tree: int, path: bytes, complete: bool) -> bool:
        if v.tree == tree:
            return True
        exact = complete
        seen = set()
        for e in self.cat.entries(tree):
            seen.add(e.name)
            if not self._node(v, e.name, path + b"/" + e.name, e):
                exact = False
        if complete:
            for name in [n for n in v.children if n not in seen]:
                self._gone(path + b"/" + name, v.children.pop(name))
        v.tree = tree if exact else None
        return exact

    def _gone(self, path: bytes, old: "_VDir | Entry") -> None:
        if isinstance(old, _VDir):
            for name, child in old.children.items():
                self._gone(path + b"/" + name, child)
        else:
            self._emit(path, DELETED, old)


def log(
    repo: Repository,
    catalog: Catalog,
    path: bytes,
    since: str | None = None,
    until: str | None = None,
    deleted: bool = False,
    flt: Filter = Filter(),
    emit: Emit = discard,
) -> LogResult:
    """Every distinct version of ``path`` (or of everything beneath it), newest first.

    ``since``/``until`` are REFs (resolved among the snapshots that cover ``path``);
    rows of snapshots between the two, both included, are kept, each still compared
    with the version before it. With ``deleted``, also the files beneath ``path`` that
    existed once and are absent at their last observation.
    """
    path = absolute(path)
    catalog.update(repo, emit)
    snaps = catalog.snapshots()
    flt = replace(flt, path=None)
    by_paths: dict[tuple[bytes, ...], list[bytes]] = {}  # backup sets repeat: decide once per set
    relevant = []
    for s in snaps:
        if flt.matches(s):
            key = tuple(s.paths)
            rs = by_paths.get(key)
            if rs is None:
                rs = by_paths[key] = subroots(s, path)
            if rs:
                relevant.append((s, rs))
    if not relevant:
        where = f" for host {flt.host}" if flt.host else ""
        raise LbkError(f"no snapshot{where} holds {os.fsdecode(path)}")
    # subroots == [path] means the snapshot covers path (a root at or above it)
    ref_flt = replace(flt, path=path) if any(r == [path] for _, r in relevant) else flt
    lo = resolve(since, snaps, ref_flt) if since else None
    hi = resolve(until, snaps, ref_flt) if until else None
    if lo is not None and hi is not None and _key(lo) > _key(hi):
        raise UsageError(f"--since {since} ({lo.short_id}) is after --until {until} ({hi.short_id})")
    if hi is not None:
        relevant = [(s, r) for s, r in relevant if _key(s) <= _key(hi)]

    # resolve every observation point in every snapshot, one batch per distinct point
    points: dict[bytes, list[int]] = {}
    for i, (_, rs) in enumerate(relevant):
        for r in rs:
            points.setdefault(r, []).append(i)
    found: dict[tuple[int, bytes], tuple[Entry | None, bool]] = {}
    for r, idxs in points.items():
        for i, res in zip(idxs, catalog.lookup([relevant[i][0] for i in idxs], r)):
            found[(i, r)] = res

    replay = _Replay(catalog, path)
    for i, (_, rs) in enumerate(relevant):
        for r in rs:
            entry, known = found[(i, r)]
            replay.observe(i, r, entry, known)

    low = _key(lo) if lo is not None else None
    rows = [
        LogRow(ev.path, relevant[ev.index][0], ev.change, ev.entry)
        for ev in replay.events
        if low is None or _key(relevant[ev.index][0]) >= low
    ]
    rows.sort(key=lambda r: r.path)
    rows.sort(key=lambda r: _key(r.snapshot), reverse=True)

    gone_list = None
    if deleted:
        gone: dict[bytes, _Event] = {}
        for ev in replay.events:
            if ev.change == DELETED:
                gone[ev.path] = ev
            else:
                gone.pop(ev.path, None)
        gone_list = []
        for p, ev in gone.items():
            s = relevant[ev.index][0]
            if low is not None and _key(s) < low:
                continue
            last = next((relevant[j][0] for j in range(ev.index - 1, -1, -1)
                         if any(under(p, r) for r in relevant[j][1])), None)
            gone_list.append(DeletedFile(p, s, last, ev.entry))
        gone_list.sort(key=lambda d: d.path)
        gone_list.sort(key=lambda d: _key(d.deleted_in), reverse=True)
    return LogResult(path, rows, gone_list, len(relevant))
