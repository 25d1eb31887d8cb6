"""The local catalog: which version of which path each snapshot holds, for ``log`` and ``find``.

An accelerator in the cache dir (``<cache>/<repo id>/catalog.sqlite``, 0600), never a
source of truth: it is brought up to date from the repository at the start of every
command that uses it, and rebuilt from the repository when it is missing, unreadable or
of another schema version. Deleting it only costs time. ``docs/catalog.md`` draws the
schema.

Design: trees are immutable and named by their keyed hash, so the catalog stores each
tree's entries **once, keyed by tree id**, with names relative to that tree. A snapshot
row points at its root tree. Indexing a new snapshot loads only trees whose id is not
in the catalog yet, so an unchanged subtree is never loaded, decoded or walked twice;
a snapshot that changed three files costs the few trees on the paths down to them.
Forgetting a snapshot deletes its row, then a mark-and-sweep from the remaining roots
drops the trees nothing reaches any more.

Queries walk the catalog's trees, never the repository: ``lookup`` resolves one path in
many snapshots level by level (one ``IN`` query per path component, not per snapshot),
starting at each snapshot's deepest backed-up path above it (table ``roots``), and
``entries`` lists one tree. Both are memoized for the life of the ``Catalog``.

What an entry keeps of a node is what ``log`` compares: the type, the size, a content
key (16 bytes of BLAKE3 over the node's content id list for a file; over the target for
a symlink; over the device number for a device) and the metadata that a user can
change (mode, uid, gid, mtime, a hash of the xattrs). ctime, inode, device and link
count are not kept: they change without the user changing the file.

Concurrency: several lbk processes may update one catalog; writes run in ``BEGIN
IMMEDIATE`` transactions (WAL journal), and indexing a snapshot that another process
indexed meanwhile is a no-op.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

import blake3

from lbk.cache import Cache
from lbk.errors import LbkError
from lbk.events import Emit, Progress, discard
from lbk.model import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK, Node, Snapshot
from lbk.ops.restore import tree_nodes
from lbk.repo.repository import Repository
from lbk.repo.snapshots import listed, load_if_readable

CATALOG_VERSION = 1
FILE_NAME = "catalog.sqlite"
COMMIT_EVERY = 64  # snapshots per transaction while indexing (progress survives an interrupt)
_IN_CHUNK = 500  # host parameters per IN (...) list
MMAP_SIZE = 1 << 30

TYPE_CODES = {FILE: 0, DIR: 1, SYMLINK: 2, FIFO: 3, CHARDEV: 4, BLOCKDEV: 5, SOCKET: 6}
TYPE_NAMES = {v: k for k, v in TYPE_CODES.items()}
_DIR_CODE = TYPE_CODES[DIR]

SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE names (id INTEGER PRIMARY KEY, name BLOB NOT NULL UNIQUE);
CREATE TABLE trees (id INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE);
CREATE TABLE entries (
    tree     INTEGER NOT NULL,
    name     INTEGER NOT NULL,
    type     INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    content  BLOB NOT NULL,
    mode     INTEGER NOT NULL,
    uid      INTEGER NOT NULL,
    gid      INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    extra    INTEGER NOT NULL,
    subtree  INTEGER,
    error    INTEGER NOT NULL,
    PRIMARY KEY (tree, name)
) WITHOUT ROWID;
CREATE INDEX entries_name ON entries (name);
CREATE INDEX entries_subtree ON entries (subtree) WHERE subtree IS NOT NULL;
CREATE TABLE snapshots (
    id      TEXT PRIMARY KEY,
    time_us INTEGER NOT NULL,
    tree    INTEGER NOT NULL,
    head    TEXT NOT NULL,
    summary TEXT NOT NULL
);
CREATE TABLE roots (
    snapshot TEXT NOT NULL,
    path     BLOB NOT NULL,
    parent   INTEGER NOT NULL,
    subtree  INTEGER,
    error    INTEGER NOT NULL,
    PRIMARY KEY (snapshot, path)
) WITHOUT ROWID;
PRAGMA user_version = {CATALOG_VERSION};
"""

SCHEMA_ID = blake3.blake3(SCHEMA.encode()).hexdigest()[:16]
_ENTRY_COLS = "n.name, e.type, e.size, e.content, e.mode, e.uid, e.gid, e.mtime_ns, e.extra, e.subtree, e.error"


@dataclass(slots=True, frozen=True)
class Entry:
    """One node of one tree, as the catalog keeps it; also a version of a path in ``log``."""

    name: bytes
    type: str
    size: int
    content: bytes
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    extra: int
    subtree: int | None  # catalog tree id, for directories
    error: bool  # the directory could not be read completely at backup time

    @property
    def meta(self) -> tuple:
        return (self.mode, self.uid, self.gid, self.mtime_ns, self.extra)

    @property
    def short_content(self) -> str | None:
        """First 8 hex of the content key (files and symlinks), else None."""
        return self.content.hex()[:8] if self.type in (FILE, SYMLINK) else None


def content_key(n: Node) -> bytes:
    """The identity of a node's content: same key, same bytes (16 bytes, b"" if none)."""
    if n.type == FILE:
        return blake3.blake3(b"".join(n.content)).digest()[:16]
    if n.type == SYMLINK:
        return blake3.blake3(b"symlink\0" + n.target).digest()[:16]
    if n.type in (CHARDEV, BLOCKDEV):
        return blake3.blake3(b"device\0%d" % n.rdev).digest()[:16]
    return b""


def extra_key(n: Node) -> int:
    """A signed 64-bit hash of the xattrs (0 when there are none)."""
    if not n.xattrs:
        return 0
    h = blake3.blake3()
    for k, v in n.xattrs:
        h.update(len(k).to_bytes(4, "little") + k + len(v).to_bytes(8, "little") + v)
    return int.from_bytes(h.digest()[:8], "little", signed=True)


def _guarded(method):
    """SQLite failures in a query become one-line errors that name the catalog."""

    @functools.wraps(method)
    def wrapper(self, *args, **kw):
        try:
            return method(self, *args, **kw)
        except sqlite3.DatabaseError as e:
            raise _error(self.path, e) from None

    return wrapper


def _chunks(seq: list, n: int = _IN_CHUNK) -> Iterable[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


@dataclass
class UpdateResult:
    added: int = 0
    removed: int = 0
    trees: int = 0  # trees loaded from the repository
    rebuilt: bool = False


class Catalog:
    """A connection to one catalog database. Not thread-safe; one per command."""

    def __init__(self, db: sqlite3.Connection, path: str | None, rebuilt: bool = False):
        self.db = db
        self.path = path
        self.rebuilt = rebuilt
        self.warning = ""  # set by open_catalog when it fell back to memory
        self._tree_ids: dict[bytes, int] = {}
        self._name_ids: dict[bytes, int] = {}
        self._entries: dict[int, list[Entry]] = {}
        self._lookups: dict[tuple[int, bytes], Entry | None] = {}
        self._steps: dict[tuple[int, bytes], tuple[int, bool] | bool | None] = {}
        self._snapshots: list[Snapshot] | None = None
        self._roots: dict[str, int] = {}
        self._roots_by_snap: dict[str, list] | None = None

    # -- opening --------------------------------------------------------------------
    @classmethod
    def memory(cls) -> "Catalog":
        db = _connect(":memory:")
        db.executescript(SCHEMA)
        return cls(db, None, rebuilt=True)

    @classmethod
    def open(cls, path: str) -> "Catalog":
        """Open the catalog file, creating it (atomically, 0600) when missing or stale."""
        rebuilt = False
        db = None
        if os.path.exists(path):
            try:
                db = _connect(path)
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version != CATALOG_VERSION or not _has_schema(db):
                    db.close()
                    db = None
            except sqlite3.DatabaseError:
                if db is not None:
                    db.close()
                db = None
        if db is None:
            _create(path)
            db = _connect(path)
            rebuilt = True
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute(f"PRAGMA mmap_size = {MMAP_SIZE}")  # a fresh connection reads pages without a syscall each
        except sqlite3.DatabaseError as e:
            db.close()
            raise _error(path, e) from None
        return cls(db, path, rebuilt)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- keeping up with the repository ----------------------------------------------
    @_guarded
    def update(self, repo: Repository, emit: Emit = discard) -> UpdateResult:
        """Index snapshots that are new in the repository; drop those that are gone.
        Then the catalog holds every snapshot: it tells the repository's observer."""
        res = self._update(repo, emit)
        listed(repo, self.snapshots())
        return res

    def _update(self, repo: Repository, emit: Emit) -> UpdateResult:
        res = UpdateResult(rebuilt=self.rebuilt)
        names = set(repo.list_snapshot_names())
        known = {r[0] for r in self.db.execute("SELECT id FROM snapshots")}
        gone = sorted(known - names)
        new = sorted(names - known)
        if gone:
            self._begin()
            try:
                for part in _chunks(gone):
                    marks = ",".join("?" * len(part))
                    self.db.execute(f"DELETE FROM snapshots WHERE id IN ({marks})", part)
                    self.db.execute(f"DELETE FROM roots WHERE snapshot IN ({marks})", part)
                self._collect_garbage()
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            res.removed = len(gone)
            self._forget_memos()
        if new:
            repo.ensure_index()
            emit(Progress("catalog", 0, 0, files_total=len(new)))
            with ThreadPoolExecutor(8) as ex:
                for part in _chunks(new, COMMIT_EVERY):
                    snaps = [s for s in ex.map(lambda n: load_if_readable(repo, n), part) if s is not None]
                    self._begin()
                    try:
                        for snap in snaps:
                            res.trees += self._index_snapshot(repo, snap)
                            res.added += 1
                        self.db.execute("COMMIT")
                    except BaseException:
                        self._rollback()
                        raise
                    emit(Progress("catalog", res.added, 0, files_total=len(new)))
        if gone or new:
            self._snapshots = None
            self._roots_by_snap = None
        return res

    def _begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def _rollback(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.DatabaseError:
            pass
        self._forget_memos()

    def _forget_memos(self) -> None:
        self._tree_ids.clear()
        self._name_ids.clear()
        self._entries.clear()
        self._lookups.clear()
        self._steps.clear()
        self._snapshots = None
        self._roots_by_snap = None

    def _index_snapshot(self, repo: Repository, snap: Snapshot) -> int:
        if self.db.execute("SELECT 1 FROM snapshots WHERE id = ?", (snap.id,)).fetchone():
            return 0  # another process indexed it meanwhile
        root, loaded = self._index_tree(repo, snap.tree)
        head = [snap.time.isoformat(), snap.kind, snap.name, snap.host, snap.user, snap.uid, snap.gid,
                list(snap.tags), [os.fsdecode(p) for p in snap.paths], snap.parent]
        self.db.execute(
            "INSERT INTO snapshots (id, time_us, tree, head, summary) VALUES (?, ?, ?, ?, ?)",
            (snap.id, int(snap.time.timestamp() * 1_000_000), root, json.dumps(head), json.dumps(snap.summary)),
        )
        for p in sorted({os.path.normpath(p) for p in snap.paths}):
            found = self._locate(root, [c for c in p.split(b"/") if c])
            if found is not None:
                self.db.execute("INSERT INTO roots VALUES (?, ?, ?, ?, ?)", (snap.id, p, *found))
        return loaded

    def _locate(self, tree: int, parts: list[bytes]) -> tuple[int, int | None, int] | None:
        """(parent tree, subtree or None, error) of the entry at ``parts``; None if absent."""
        if not parts:
            return None
        for i, c in enumerate(parts):
            row = self.db.execute(
                "SELECT type, subtree, error FROM entries WHERE tree = ? AND name = ?", (tree, self._name_id(c))
            ).fetchone()
            if row is None:
                return None
            typ, sub, err = row
            if i == len(parts) - 1:
                return tree, sub if typ == _DIR_CODE else None, err
            if typ != _DIR_CODE or sub is None:
                return None
            tree = sub
        return None

    def _known_tree(self, h: bytes) -> int | None:
        tid = self._tree_ids.get(h)
        if tid is None:
            row = self.db.execute("SELECT id FROM trees WHERE hash = ?", (h,)).fetchone()
            if row:
                tid = self._tree_ids[h] = row[0]
        return tid

    def _index_tree(self, repo: Repository, top: bytes) -> tuple[int, int]:
        """Store ``top`` and every subtree the catalog lacks, children first (iteratively:
        directory depth is bounded by PATH_MAX, not by Python's recursion limit).
        Returns (catalog id of top, trees loaded)."""
        tid = self._known_tree(top)
        if tid is not None:
            return tid, 0
        loaded = 1
        stack: list[list] = [[top, tree_nodes(repo, top), 0]]
        while stack:
            frame = stack[-1]
            h, nodes, i = frame
            while i < len(nodes):
                sub = nodes[i].subtree
                if nodes[i].type == DIR and sub is not None and self._known_tree(sub) is None:
                    break
                i += 1
            frame[2] = i
            if i < len(nodes):
                sub = nodes[i].subtree
                stack.append([sub, tree_nodes(repo, sub), 0])
                loaded += 1
                continue
            stack.pop()
            self._store_tree(h, nodes)
        return self._tree_ids[top], loaded

    def _name_id(self, name: bytes) -> int:
        nid = self._name_ids.get(name)
        if nid is None:
            row = self.db.execute("SELECT id FROM names WHERE name = ?", (name,)).fetchone()
            nid = row[0] if row else self.db.execute("INSERT INTO names (name) VALUES (?)", (name,)).lastrowid
            self._name_ids[name] = nid
        return nid

    def _store_tree(self, h: bytes, nodes: list[Node]) -> None:
        tid = self.db.execute("INSERT INTO trees (hash) VALUES (?)", (h,)).lastrowid
        rows = []
        for n in nodes:
            sub = None
            if n.type == DIR and n.subtree is not None:
                sub = self._tree_ids.get(n.subtree) or self._known_tree(n.subtree)
            rows.append((
                tid, self._name_id(n.name), TYPE_CODES[n.type], n.size, content_key(n),
                n.mode, n.uid, n.gid, n.mtime_ns, extra_key(n), sub, 1 if n.error else 0,
            ))
        self.db.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        self._tree_ids[h] = tid

    def _collect_garbage(self) -> None:
        """Drop trees (and names) that no remaining snapshot reaches."""
        db = self.db
        db.execute("DROP TABLE IF EXISTS temp.live")
        db.execute(
            "CREATE TEMP TABLE live AS WITH RECURSIVE up(id) AS ("
            " SELECT tree FROM snapshots"
            " UNION SELECT e.subtree FROM entries e JOIN up ON e.tree = up.id WHERE e.subtree IS NOT NULL)"
            " SELECT id FROM up"
        )
        db.execute("CREATE INDEX temp.live_id ON live (id)")
        db.execute("DELETE FROM entries WHERE tree NOT IN (SELECT id FROM temp.live)")
        db.execute("DELETE FROM trees WHERE id NOT IN (SELECT id FROM temp.live)")
        db.execute("DELETE FROM names WHERE id NOT IN (SELECT name FROM entries)")
        db.execute("DROP TABLE temp.live")

    # -- reading ------------------------------------------------------------------------
    @_guarded
    def snapshots(self) -> list[Snapshot]:
        """Every indexed snapshot, oldest first (the order of ``load_all``), without its
        summary (``summary()`` has it): decoding 1,000 full snapshots would cost more
        than a whole ``log`` query."""
        if self._snapshots is None:
            rows = self.db.execute(
                "SELECT s.id, s.tree, t.hash, s.head FROM snapshots s JOIN trees t ON t.id = s.tree"
            ).fetchall()
            heads = json.loads("[" + ",".join(r[3] for r in rows) + "]")
            snaps = []
            roots = {}
            fromiso = datetime.fromisoformat
            for (sid, tree, h, _), (t, kind, name, host, user, uid, gid, tags, paths, parent) in zip(rows, heads):
                snaps.append(Snapshot(
                    time=fromiso(t), tree=h, paths=[p.encode("utf-8", "surrogateescape") for p in paths],
                    host=host, user=user, kind=kind, name=name, tags=tags, parent=parent, uid=uid, gid=gid, id=sid,
                ))
                roots[sid] = tree
            snaps.sort(key=lambda s: (s.time, s.id))
            self._snapshots, self._roots = snaps, roots
        return self._snapshots

    def summary(self, snap_id: str) -> dict:
        row = self.db.execute("SELECT summary FROM snapshots WHERE id = ?", (snap_id,)).fetchone()
        return json.loads(row[0]) if row else {}

    def root(self, snap: Snapshot) -> int:
        """The catalog id of a snapshot's root tree."""
        if self._snapshots is None:
            self.snapshots()
        return self._roots[snap.id]

    @_guarded
    def stats(self) -> dict:
        q = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "snapshots": q("SELECT count(*) FROM snapshots"),
            "trees": q("SELECT count(*) FROM trees"),
            "entries": q("SELECT count(*) FROM entries"),
            "names": q("SELECT count(*) FROM names"),
        }

    @_guarded
    def entries(self, tree: int) -> list[Entry]:
        """The entries of one tree, sorted by name bytes."""
        got = self._entries.get(tree)
        if got is None:
            rows = self.db.execute(
                f"SELECT {_ENTRY_COLS} FROM entries e JOIN names n ON n.id = e.name WHERE e.tree = ? ORDER BY n.name",
                (tree,),
            )
            got = self._entries[tree] = [_entry(r) for r in rows]
        return got

    @_guarded
    def lookup(self, snaps: list[Snapshot], path: bytes) -> list[tuple[Entry | None, bool]]:
        """The entry at absolute ``path`` in each snapshot, as ``(entry, known)``.

        ``entry`` is None when the path is absent; ``known`` is False when it is absent
        only because a directory on the way could not be read at backup time (so the
        snapshot says nothing about it). For ``/`` the answer is a synthetic directory
        entry for the root tree. The walk starts at the deepest backed-up path of each
        snapshot above ``path`` (recorded when indexing), not at ``/``: the directories
        above a backed-up path change in every snapshot, so each level costs one lookup
        per snapshot. It then goes down one path component at a time for all snapshots
        at once.
        """
        parts = [c for c in path.split(b"/") if c]
        if not parts:
            return [(Entry(b"", DIR, 0, b"", 0, 0, 0, 0, 0, self.root(s), False), True) for s in snaps]
        out: list[tuple[Entry | None, bool] | None] = [None] * len(snaps)
        groups: dict[int, tuple[list[int], list[int], list[bool]]] = {}  # depth -> (indexes, trees, errors)
        root_paths = self._root_paths()
        for i, s in enumerate(snaps):
            start, depth, error = self.root(s), 0, False
            for rpath, parent, sub, err in root_paths.get(s.id, ()):
                if rpath == path:
                    start, depth, error = parent, len(parts) - 1, False
                    break
                if path.startswith(rpath + b"/"):
                    if sub is None:
                        out[i] = (None, True)
                        break
                    start, depth, error = sub, rpath.count(b"/"), bool(err)
                    break
            if out[i] is None:
                g = groups.setdefault(depth, ([], [], []))
                g[0].append(i)
                g[1].append(start)
                g[2].append(error)
        for depth, (idxs, trees, errors) in groups.items():
            for i, res in zip(idxs, self._walk(trees, parts[depth:], errors)):
                out[i] = res
        return out  # type: ignore[return-value]

    def _root_paths(self) -> dict[str, list[tuple[bytes, int, int | None, int]]]:
        """Backed-up paths per snapshot, deepest first."""
        if self._roots_by_snap is None:
            by: dict[str, list] = {}
            for sid, p, parent, sub, err in self.db.execute("SELECT snapshot, path, parent, subtree, error FROM roots"):
                by.setdefault(sid, []).append((bytes(p), parent, sub, err))
            for v in by.values():
                v.sort(key=lambda r: -len(r[0]))
            self._roots_by_snap = by
        return self._roots_by_snap

    def _walk(self, roots: list[int], parts: list[bytes], errors: list[bool]) -> list[tuple[Entry | None, bool]]:
        """The entry at ``parts`` below each tree of ``roots`` (``errors``: whether that
        tree's own directory could not be read completely)."""
        cur = list(roots)
        out: list[tuple[Entry | None, bool] | None] = [None] * len(roots)
        parent_error = list(errors)
        active = list(range(len(roots)))
        for level, name in enumerate(parts):
            last = level == len(parts) - 1
            # on the way down only (subtree, error) is needed; the full entry at the end
            memo: dict = self._lookups if last else self._steps
            need = sorted({t for t in (cur[i] for i in active) if (t, name) not in memo})
            if need:
                found: dict[int, object] = {}
                row = self.db.execute("SELECT id FROM names WHERE name = ?", (name,)).fetchone()
                for part in _chunks(need) if row else ():
                    marks = ",".join("?" * len(part))
                    if last:
                        q = (f"SELECT e.tree, {_ENTRY_COLS} FROM entries e NOT INDEXED JOIN names n ON n.id = e.name "
                             f"WHERE e.name = ? AND e.tree IN ({marks})")
                        for r in self.db.execute(q, (row[0], *part)):
                            found[r[0]] = _entry(r[1:])
                    else:
                        q = (f"SELECT tree, type, subtree, error FROM entries NOT INDEXED "
                             f"WHERE name = ? AND tree IN ({marks})")
                        for t, typ, sub, err in self.db.execute(q, (row[0], *part)):
                            found[t] = (sub, bool(err)) if typ == _DIR_CODE and sub is not None else False
                for t in need:
                    memo[(t, name)] = found.get(t)
            still = []
            for i in active:
                got = memo[(cur[i], name)]
                if got is None:
                    out[i] = (None, not parent_error[i])
                elif last:
                    out[i] = (got, True)
                elif got is False:  # not a directory: nothing beneath it
                    out[i] = (None, True)
                else:
                    cur[i], parent_error[i] = got
                    still.append(i)
            active = still
        return out  # type: ignore[return-value]

    @_guarded
    def name_ids(self, match) -> dict[int, bytes]:
        """Names (by id) for which ``match(name bytes)`` is true; a scan of distinct names."""
        return {nid: name for nid, name in self.db.execute("SELECT id, name FROM names") if match(name)}

    @_guarded
    def trees_containing(self, name_ids: Iterable[int]) -> set[int]:
        """Ids of the trees that hold an entry with one of these names at any depth."""
        db = self.db
        db.execute("DROP TABLE IF EXISTS temp.want")
        db.execute("CREATE TEMP TABLE want (id INTEGER PRIMARY KEY)")
        db.executemany("INSERT OR IGNORE INTO temp.want VALUES (?)", ((i,) for i in name_ids))
        rows = db.execute(
            "WITH RECURSIVE up(id) AS ("
            " SELECT tree FROM entries WHERE name IN (SELECT id FROM temp.want)"
            " UNION SELECT e.tree FROM entries e JOIN up ON e.subtree = up.id)"
            " SELECT id FROM up"
        ).fetchall()
        db.execute("DROP TABLE temp.want")
        return {r[0] for r in rows}


def _entry(r) -> Entry:
    return Entry(bytes(r[0]), TYPE_NAMES[r[1]], r[2], bytes(r[3]), r[4], r[5], r[6], r[7], r[8], r[9], bool(r[10]))


def _connect(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)


def _has_schema(db: sqlite3.Connection) -> bool:
    """Whether the file was created with exactly this ``SCHEMA`` (a development change
    that forgot to raise ``CATALOG_VERSION`` still gets a fresh catalog)."""
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.DatabaseError:
        return False
    return row is not None and row[0] == SCHEMA_ID


def _create(path: str) -> None:
    """Write an empty catalog beside ``path`` and rename it into place (0600)."""
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        os.chmod(tmp, 0o600)
        db = _connect(tmp)
        try:
            db.execute("PRAGMA synchronous = OFF")  # an empty cache file: a torn one is rebuilt
            db.executescript(SCHEMA)
            db.execute("INSERT INTO meta VALUES ('format', ?), ('schema', ?)", (str(CATALOG_VERSION), SCHEMA_ID))
        finally:
            db.close()
        for suffix in ("-wal", "-shm"):
            try:
                os.unlink(path + suffix)
            except FileNotFoundError:
                pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _error(path: str | None, e: Exception) -> LbkError:
    where = path or "in memory"
    return LbkError(f"catalog {where}: {e}; delete it or use --no-cache")


def open_catalog(cache: Cache | None) -> Catalog:
    """The catalog of the repository whose cache this is; in memory without a cache.

    A catalog file that cannot be created or opened is not fatal: the command goes on
    with an in-memory catalog and ``warning`` says why.
    """
    if cache is None:
        return Catalog.memory()
    path = cache.path(FILE_NAME)
    try:
        return Catalog.open(path)
    except (OSError, sqlite3.Error, LbkError) as e:
        cat = Catalog.memory()
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        cat.warning = f"catalog disabled ({path}: {reason}); using a temporary one"
        return cat
