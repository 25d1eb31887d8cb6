"""Backup: walk paths, store what changed, write one snapshot.

The walk runs in the calling thread (scandir + lstat are cheap); reading, chunking,
hashing, compressing and encrypting files runs on a thread pool (the compiled parts
release the GIL). Files whose size, mtime, ctime and inode match the files cache are
not opened. Each directory becomes a tree blob once its files are done, so unchanged
directories produce the same tree id and are stored once. Order of durability: packs,
indexes (``repo.flush``), then the snapshot.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import blake3

from lbk.cache import Cache
from lbk.errors import Interrupted, UsageError
from lbk.events import Emit, FileError, Progress, Verbose, Warning_
from lbk.model import DIR, FILE, Node, Snapshot, encode_tree
from lbk.ops.excludes import DEFAULT_EXCLUDES, Excluder
from lbk.ops.walk import Reader, make_node
from lbk.repo.keys import current_user
from lbk.repo.pack import TREE
from lbk.repo.repository import Repository
from lbk.repo.snapshots import save_snapshot

CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
# a directory's signature: lstat of every kept entry (+ subtree ids); bump on tree changes
DIR_SIG_VERSION = b"lbk-dirsig-1"
_SIG = struct.Struct("<HIIIQqqQQQQ")
WORKERS = max(2, min(8, os.cpu_count() or 2))  # more threads than cores only add GIL contention (measured)
Tree = bytes | Future  # a tree id, or a future of one while files beneath it are read


SMALL_FILE = 256 * 1024  # files below it (one chunk at most) are read in batches
BATCH_FILES, BATCH_BYTES = 64, 4 << 20


class _Batch:
    """Small files of one directory read together by one task."""

    __slots__ = ("files", "bytes", "future")

    def __init__(self) -> None:
        self.files: list[tuple[bytes, os.stat_result, Node]] = []
        self.bytes = 0
        self.future: Future | None = None

    def add(self, path: bytes, st: os.stat_result, node: Node) -> "_Slot":
        self.files.append((path, st, node))
        self.bytes += st.st_size
        return _Slot(self, len(self.files) - 1)

    def full(self) -> bool:
        return len(self.files) >= BATCH_FILES or self.bytes >= BATCH_BYTES


class _Slot:
    """A file's place in a batch: its node is the batch's result at that index."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: _Batch, index: int):
        self.batch, self.index = batch, index


def _resolved(item):
    """A node (or None) from a node, a future of one or a batch slot; a subtree future
    becomes its id."""
    if isinstance(item, _Slot):
        item = item.batch.future.result()[item.index]
    node = item.result() if isinstance(item, Future) else item
    if node is not None and isinstance(node.subtree, Future):
        node.subtree = node.subtree.result()
    return node


def _signature(kept: list) -> bytes:
    """A directory's signature: the lstat of every entry kept, and the subtree ids."""
    sig = blake3.blake3(DIR_SIG_VERSION)
    for e, st, sub in kept:
        sig.update(_SIG.pack(len(e.name), st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                             st.st_ctime_ns, st.st_ino, st.st_dev, st.st_nlink, st.st_rdev))
        sig.update(e.name)
        if sub is not None:
            sig.update(sub.result() if isinstance(sub, Future) else sub)
    return sig.digest()


@dataclass
class BackupOptions:
    paths: list[bytes]
    tags: list[str] = field(default_factory=list)
    host: str = ""
    excludes: list[str] = field(default_factory=list)
    default_excludes: bool = True
    exclude_paths: list[bytes] = field(default_factory=list)  # repository, cache, spool
    one_file_system: bool = False
    exclude_caches: bool = False
    dry_run: bool = False
    kind: str = "backup"
    name: str = ""


@dataclass
class BackupResult:
    snapshot: Snapshot | None
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs: int = 0
    total_files: int = 0
    total_bytes: int = 0
    bytes_read: int = 0
    bytes_added: int = 0
    stored_added: int = 0
    errors: int = 0
    duration: float = 0.0

    def summary(self) -> dict:
        return {
            "files_new": self.files_new,
            "files_changed": self.files_changed,
            "files_unchanged": self.files_unchanged,
            "dirs": self.dirs,
            "total_files": self.total_files,
            "total_bytes": self.total_bytes,
            "bytes_read": self.bytes_read,
            "data_added": self.bytes_added,
            "data_added_stored": self.stored_added,
            "errors": self.errors,
            "duration": round(self.duration, 3),
        }


class _DryRunRepo:
    """Computes ids and tells what would be new, storing nothing."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self.config = repo.config
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()

    def save_blob(self, blob_type, data, blob_id=None):
        bid = blob_id or self.repo.master.blob_id(data)
        with self._lock:
            new = bid not in self.repo.index and bid not in self._seen
            self._seen.add(bid)
        return bid, new


def normalize_paths(paths: list[bytes]) -> list[bytes]:
    """Absolute paths with their parent directories resolved, minus those inside others."""
    out = []
    for p in paths:
        p = os.path.abspath(p)
        if p != b"/":
            head, tail = os.path.split(p)
            p = os.path.join(os.path.realpath(head), tail)
        out.append(p)
    out = sorted(set(out))
    keep = []
    for p in out:
        if not any(p.startswith(k.rstrip(b"/") + b"/") for k in keep):
            keep.append(p)
    return keep


class Backup:
    def __init__(self, repo: Repository, cache: Cache | None, opts: BackupOptions, emit: Emit):
        self.repo = repo
        self.cache = cache
        self.opts = opts
        self.emit = emit
        self.sink = _DryRunRepo(repo) if opts.dry_run else repo
        self.reader = Reader(self.sink)
        patterns = (DEFAULT_EXCLUDES if opts.default_excludes else []) + list(opts.excludes)
        self.excluder = Excluder(patterns, [os.path.abspath(p) for p in opts.exclude_paths])
        self.old_files, self.old_dirs = cache.load() if cache else ({}, {})
        self.new_files: dict[bytes, tuple] = {}
        self.new_dirs: dict[bytes, tuple[bytes, bytes]] = {}
        self.result = BackupResult(snapshot=None)
        self._lock = threading.Lock()
        self._last_progress = 0.0
        self._current = b""
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="lbk-read")
        # bounds the files queued ahead of the readers (memory), not the walk itself
        self._inflight = threading.BoundedSemaphore(WORKERS * 32)
        # called with (directory path, its nodes, its tree id) for every tree written;
        # the watch daemon keeps these as its in-memory mirror of the live tree
        self.on_tree = None
        self.torn: set[bytes] = set()  # files that kept changing while read (watch re-reads them)
        self.lock = None  # the repository lock held by the caller; checked before the snapshot

    # -- progress ---------------------------------------------------------------
    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_progress > 0.2:
            self._last_progress = now
            r = self.result
            self.emit(Progress("backup", r.total_files, r.total_bytes, current=os.fsdecode(self._current)))

    def _error(self, path: bytes, e: BaseException, during: str) -> None:
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        with self._lock:
            self.result.errors += 1
        self.emit(FileError(path=path, message=msg, during=during))

    # -- files ---------------------------------------------------------------------
    def _unchanged(self, path: bytes, st: os.stat_result, node: Node) -> bool:
        """Fill ``node`` from the files cache when the file did not change; runs in the walker."""
        old = self.old_files.get(path)
        if old is None or old[:4] != (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
            return False
        joined = old[4]
        ids = [joined[i : i + 32] for i in range(0, len(joined), 32)]
        index = self.repo.index
        for i in ids:
            if i not in index:
                return False
        node.content = ids
        with self._lock:
            self.result.files_unchanged += 1
            self.new_files[path] = old
        return True

    def _file(self, path: bytes, st: os.stat_result, node: Node) -> Node | None:
        old = self.old_files.get(path)
        try:
            ids, size, added, changed = self.reader.read(path, st)
        except OSError as e:
            self._error(path, e, "read")
            return None
        if changed:
            with self._lock:
                self.torn.add(path)
            self.emit(Warning_(message="file changed while it was read; stored the last version", path=path))
            st = os.lstat(path)
            node.mtime_ns, node.ctime_ns = st.st_mtime_ns, st.st_ctime_ns
        node.content = ids
        node.size = size
        with self._lock:
            r = self.result
            r.bytes_read += size
            r.bytes_added += added
            if old is None:
                r.files_new += 1
            else:
                r.files_changed += 1
            if not changed:
                self.new_files[path] = (size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, b"".join(ids))
        self.emit(Verbose(action="new" if old is None else "modified", path=path, size=size))
        return node

    # -- directories ---------------------------------------------------------------
    def _entry(self, path: bytes, name: bytes, st: os.stat_result, root_dev: int, subtree: Tree | None = None,
               batch: "_Batch | None" = None):
        """A node or a future of one for a path whose lstat is ``st``; None to skip.

        For a directory whose tree was already built, ``subtree`` is its id. A small file
        to read joins ``batch`` when one is given (read with the batch's other files by
        one task) and is returned as its slot in it."""
        try:
            node = make_node(path, name, st)
        except OSError as e:
            self._error(path, e, "stat")
            return None
        if node.type == FILE:
            with self._lock:
                self.result.total_files += 1
                self.result.total_bytes += st.st_size
            if self._unchanged(path, st, node):
                return node
            if batch is not None and st.st_size < SMALL_FILE:
                return batch.add(path, st, node)
            self._inflight.acquire()
            fut = self.pool.submit(self._file, path, st, node)
            fut.add_done_callback(lambda _f: self._inflight.release())
            return fut
        if node.type == DIR:
            node.subtree = subtree if subtree is not None else self._subdir(path, st, root_dev)
        return node

    def _submit_batch(self, batch: "_Batch") -> None:
        """Read a batch of small files on one reader: per file, a task costs more than
        the reading (queue, future, semaphore, and the GIL handed over each time)."""
        if batch.files:
            self._inflight.acquire()
            batch.future = self.pool.submit(lambda files: [self._file(*f) for f in files], batch.files)
            batch.future.add_done_callback(lambda _f: self._inflight.release())

    def _subdir(self, path: bytes, st: os.stat_result, root_dev: int) -> Tree:
        with self._lock:
            self.result.dirs += 1
        if self.opts.one_file_system and st.st_dev != root_dev:
            return self._save_tree(path, [])
        return self._dir(path, root_dev)

    def _is_cache_dir(self, path: bytes) -> bool:
        try:
            with open(os.path.join(path, b"CACHEDIR.TAG"), "rb") as f:
                return f.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
        except OSError:
            return False

    def _dir(self, path: bytes, root_dev: int) -> Tree:
        """The tree of a directory: its id, or a future of it while files beneath it are
        still being read (the walk goes on meanwhile, so the readers never run dry)."""
        self._current = path
        self._progress()
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as e:
            self._error(path, e, "list")
            return self._save_tree(path, [])
        if self.opts.exclude_caches and self._is_cache_dir(path):
            return self._save_tree(path, [])
        kept: list[tuple[os.DirEntry, os.stat_result, Tree | None]] = []
        complete = True
        for e in entries:
            if self.excluder.excluded(e.path, e.name):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as err:
                self._error(e.path, err, "stat")
                complete = False
                continue
            sub = self._subdir(e.path, st, root_dev) if stat.S_ISDIR(st.st_mode) else None
            kept.append((e, st, sub))
        if complete and self.on_tree is None and not any(isinstance(sub, Future) for _, _, sub in kept):
            reused = self._reuse_tree(path, _signature(kept), kept)
            if reused is not None:
                return reused
        items: list = []
        batch = _Batch()
        for e, st, sub in kept:
            item = self._entry(e.path, e.name, st, root_dev, sub, batch)
            if item is not None:
                items.append(item)
            if batch.full():
                self._submit_batch(batch)
                batch = _Batch()
        self._submit_batch(batch)
        return self._save_tree(path, items, kept if complete else None)

    def _reuse_tree(self, path: bytes, digest: bytes, kept: list) -> bytes | None:
        """The cached tree id when no entry of the directory changed (by lstat); then its
        files are not even looked at one by one (their cache entries are carried over).

        The tree being indexed is not enough: after a pack was lost and the index
        repaired, a directory's tree can be present while its files' chunks are gone.
        The same holds after a backup was killed once its tree pack was indexed but not a
        data pack, following a prune that removed both. So every carried file's content
        ids must be in the index too, as for a single unchanged file; otherwise the
        directory is rebuilt and the lost chunks re-read. (Subdirectories answer for
        themselves: their ids come from their own walk.)"""
        old = self.old_dirs.get(path)
        index = self.repo.index
        if old is None or old[0] != digest or old[1] not in index:
            return None
        files = [(e.path, st) for e, st, _ in kept if stat.S_ISREG(st.st_mode)]
        carried = [(p, self.old_files.get(p)) for p, _ in files]
        for _, v in carried:
            if v is None:
                return None
            joined = v[4]
            if any(joined[i : i + 32] not in index for i in range(0, len(joined), 32)):
                return None
        with self._lock:
            r = self.result
            r.files_unchanged += len(files)
            r.total_files += len(files)
            r.total_bytes += sum(st.st_size for _, st in files)
            self.new_files.update(carried)
        self.new_dirs[path] = old
        return old[1]

    def _save_tree(self, path: bytes, items: list, kept: list | None = None) -> Tree:
        """Store the tree of ``items`` (nodes, or futures of nodes for files being read;
        a directory node's subtree may be a future too) once they are all done: at once
        when they are, else from the thread that completes the last of them. ``kept``
        (a complete listing) records the directory's signature for the next backup."""
        waits = [it for it in items if isinstance(it, Future)]
        waits += [it.subtree for it in items if isinstance(it, Node) and isinstance(it.subtree, Future)]
        waits += list({id(it.batch): it.batch.future for it in items if isinstance(it, _Slot)}.values())

        def finish() -> bytes:
            nodes = [n for n in map(_resolved, items) if n is not None]
            bid, _ = self.sink.save_blob(TREE, encode_tree(nodes))
            if self.on_tree is not None:
                self.on_tree(path, nodes, bid)
            if kept is not None:
                self.new_dirs[path] = (_signature(kept), bid)
            return bid

        if all(w.done() for w in waits):
            return finish()
        out: Future = Future()
        left = [len(waits)]
        lock = threading.Lock()

        def one_done(_f) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                try:
                    out.set_result(finish())
                except BaseException as e:  # surfaces where the root tree is awaited
                    out.set_exception(e)

        for w in waits:
            w.add_done_callback(one_done)
        return out

    def node_for(self, path: bytes, root_dev: int | None = None) -> Node | None:
        """A complete node for one path (a directory is scanned, a file read); None if gone."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        item = self._entry(path, os.path.basename(path), st, st.st_dev if root_dev is None else root_dev)
        return _resolved(item)

    # -- top level -----------------------------------------------------------------
    def _prefix_tree(self, paths: list[bytes]) -> dict:
        """Nested dict of path components; a leaf (a path to back up) maps to None."""
        root: dict = {}
        for p in paths:
            parts = [c for c in p.split(b"/") if c]
            d = root
            for c in parts[:-1]:
                d = d.setdefault(c, {})
                if d is None:
                    break
            else:
                if parts:
                    d[parts[-1]] = None
        return root

    def _build(self, prefix: bytes, spec: dict) -> Tree:
        items = []
        for name, sub in sorted(spec.items()):
            path = prefix.rstrip(b"/") + b"/" + name
            try:
                st = os.lstat(path)
            except OSError as e:
                self._error(path, e, "stat")
                continue
            if sub is None:
                item = self._entry(path, name, st, st.st_dev)
            else:
                item = make_node(path, name, st)
                item.subtree = self._build(path, sub)
            if item is not None:
                items.append(item)
        return self._save_tree(prefix, items)

    def run(self) -> BackupResult:
        start = time.monotonic()
        stored_before = self.repo.stats_added["stored_bytes"]
        paths = normalize_paths(self.opts.paths)
        missing = [p for p in paths if not os.path.lexists(p)]
        for p in missing:
            self._error(p, OSError(errno.ENOENT, "does not exist"), "stat")
        if len(missing) == len(paths):
            raise UsageError("none of the paths to back up exist")
        try:
            if paths == [b"/"]:
                root = self._dir(b"/", os.lstat(b"/").st_dev)
            else:
                root = self._build(b"/", self._prefix_tree([p for p in paths if p not in missing]))
            tree = root.result() if isinstance(root, Future) else root
            self.pool.shutdown(wait=True)
        except KeyboardInterrupt:
            self.pool.shutdown(wait=True, cancel_futures=True)
            if not self.opts.dry_run:
                self.repo.flush()  # index what is stored so the next run reuses it
            raise Interrupted("interrupted; no snapshot was written") from None
        self.result.duration = time.monotonic() - start
        self._progress(force=True)
        if self.opts.dry_run:
            return self.result
        self.repo.flush()
        self.result.stored_added = self.repo.stats_added["stored_bytes"] - stored_before
        self.result.duration = time.monotonic() - start
        snap = Snapshot(
            time=datetime.now(timezone.utc).astimezone(),
            tree=tree,
            paths=paths,
            host=self.opts.host or socket.gethostname(),
            user=current_user(),
            uid=os.getuid(),
            gid=os.getgid(),
            kind=self.opts.kind,
            name=self.opts.name,
            tags=list(self.opts.tags),
            summary=self.result.summary(),
        )
        if self.lock is not None:
            self.lock.ensure()
        save_snapshot(self.repo, snap)
        self.result.snapshot = snap
        if self.cache is not None:
            self._save_cache(paths)
        return self.result

    def _save_cache(self, paths: list[bytes]) -> None:
        prefixes = tuple(p.rstrip(b"/") + b"/" for p in paths)
        def merge(old: dict, new: dict) -> dict:
            out = {k: v for k, v in old.items() if not (k in paths or k.startswith(prefixes))}
            out.update(new)
            return out

        try:
            self.cache.save(merge(self.old_files, self.new_files), merge(self.old_dirs, self.new_dirs))
        except OSError as e:
            self.emit(Warning_(message=f"could not update the files cache: {e.strerror}"))


def backup(repo: Repository, cache: Cache | None, opts: BackupOptions, emit: Emit) -> BackupResult:
    """Run one backup under a shared lock and return its result (snapshot None on dry run)."""
    with repo.lock(exclusive=False) as lock:
        repo.load_index()  # under the lock: a prune that ran before it cannot be seen stale
        b = Backup(repo, cache, opts, emit)
        b.lock = lock
        return b.run()
