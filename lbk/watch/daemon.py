"""The watch daemon: continuous capture of every saved file.

Start: a baseline scan (the backup engine with the files cache, so unchanged files are
not read) commits a ``live`` snapshot and leaves an in-memory mirror of the watched
trees (directory path -> {name: Node}). Then file-system events (watchdog: inotify on
Linux) mark paths pending; a path is captured once quiet for ``debounce`` seconds, or
``max_delay`` after its first unhandled event while it keeps changing. A capture reads
the file through the same engine (a read that races a write is retried, and a version
torn by a concurrent write is never committed: the path is queued again). Captures are
committed as small snapshots that rewrite only the trees on the changed paths: at once
after a quiet spell, and at most every ``commit_interval`` under a stream of saves.

The scheduler waits on a condition variable with the next deadline as timeout, so an
idle daemon uses no CPU. A lost-event condition (inotify queue overflow) and the
periodic ``rescan`` re-walk the trees with the files cache. When the repository is
unreachable, the ``SpoolingBackend`` underneath keeps every write, encrypted, in a local
spool; a syncer thread uploads it in order when the repository is back.
"""

from __future__ import annotations

import ctypes
import heapq
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from lbk.cache import Cache
from lbk.errors import BackendError, LbkError, LockFailed
from lbk.events import Captured, Committed, Emit, Spooled, Synced, Warning_
from lbk.backend.base import FileKind
from lbk.model import DIR, FILE, Node, Snapshot, decode_tree, encode_tree
from lbk.ops.backup import Backup, BackupOptions, normalize_paths
from lbk.ops.walk import make_node
from lbk.repo import crypto
from lbk.repo.pack import TREE
from lbk.repo.repository import Repository
from lbk.repo.snapshots import load_snapshot, save_snapshot
from lbk.watch.spool import SpoolFull, SpoolingBackend
from lbk.watch.state import WatchState

log = logging.getLogger("lbk.watch")
CONSOLIDATE_EVERY = 64  # commits between index consolidations
SYNC_BACKOFF = (0.5, 4.0)  # first and longest wait between upload attempts, seconds


@dataclass
class WatchOptions:
    paths: list[bytes]
    debounce: float = 0.5
    max_delay: float = 30.0
    commit_interval: float = 1.0
    rescan: float = 3600.0
    excludes: list[str] = field(default_factory=list)
    exclude_paths: list[bytes] = field(default_factory=list)
    host: str = ""
    low_priority: bool = True


class _Pending:
    """Paths waiting to be captured, with their quiet and hard deadlines."""

    def __init__(self, debounce: float, max_delay: float):
        self.debounce = debounce
        self.max_delay = max_delay
        self.first: dict[bytes, float] = {}  # path -> time of the first unhandled event
        self.last: dict[bytes, float] = {}  # path -> time of the latest event

    def touch(self, path: bytes, now: float) -> None:
        self.first.setdefault(path, now)
        self.last[path] = now

    def due(self, path: bytes) -> float:
        return min(self.last[path] + self.debounce, self.first[path] + self.max_delay)

    def next_due(self) -> float | None:
        return min((self.due(p) for p in self.first), default=None)

    def take_due(self, now: float, everything: bool = False) -> list[tuple[bytes, float]]:
        ready = [p for p in self.first if everything or self.due(p) <= now]
        out = [(p, self.first[p]) for p in ready]
        for p in ready:
            del self.first[p], self.last[p]
        return sorted(out)

    def __len__(self) -> int:
        return len(self.first)


class Watcher:
    def __init__(self, repo: Repository, spool: SpoolingBackend, cache: Cache | None, opts: WatchOptions,
                 emit: Emit, state_dir: str):
        self.repo = repo
        self.spool = spool
        self.cache = cache
        self.opts = opts
        self.emit = emit
        self.state_dir = state_dir
        self.paths = normalize_paths(opts.paths)
        self.cond = threading.Condition()
        self.pending = _Pending(opts.debounce, opts.max_delay)
        self.stopping = False
        self.rescan_requested = False
        self.mirror: dict[bytes, dict[bytes, Node]] = {}
        self.dirty: set[bytes] = set()
        self.uncommitted: list[tuple[bytes, float]] = []  # (path, first event time)
        self.parent = ""
        self.last_commit = 0.0
        self.commits_since_consolidation = 0
        self.lock = None
        self.state = WatchState(pid=os.getpid(), repository=repo.backend.location,
                                paths=[os.fsdecode(p) for p in self.paths], started=time.time())
        self._state_written = 0.0
        self._sync_wakeup = threading.Event()
        self._state_lock = threading.Lock()
        self._unsynced_since: float | None = None
        self.scanner: Backup | None = None  # made by scan(): loading the files cache costs memory
        self.spool_full = False  # a commit met the spool cap: no more commits until a sync
        self.revalidate_requested = False  # the syncer found our lock lapsed: main loop re-checks
        spool.on_spool = self._on_spool

    # -- engine ---------------------------------------------------------------------
    def _new_scanner(self) -> Backup:
        b = Backup(self.repo, self.cache, BackupOptions(
            paths=self.paths, excludes=self.opts.excludes, exclude_paths=self.opts.exclude_paths,
            host=self.opts.host, kind="live"), self._engine_event)
        b.on_tree = self._record_tree
        return b

    def _capture_scanner(self, files: dict) -> Backup:
        """A scanner for captures: one files-cache dict (the scan's result, not a fresh
        load), read and updated by every capture, so a spurious event on an unchanged file
        costs a stat, not a read."""
        b = Backup(self.repo, None, BackupOptions(
            paths=self.paths, excludes=self.opts.excludes, exclude_paths=self.opts.exclude_paths,
            host=self.opts.host, kind="live"), self._engine_event)
        b.on_tree = self._record_tree
        b.old_files = b.new_files = files
        return b

    def _engine_event(self, ev) -> None:
        if getattr(ev, "message_type", "") == "status":
            return  # the scan's own progress is not interesting while watching
        if getattr(ev, "message_type", "") == "error":
            self._set_error(f"{os.fsdecode(getattr(ev, 'path', b''))}: {getattr(ev, 'message', '')}")
        self.emit(ev)

    def _record_tree(self, path: bytes, nodes: list[Node], _tree_id: bytes) -> None:
        self.mirror[path] = {n.name: n for n in nodes}

    # -- status ---------------------------------------------------------------------
    def _set_error(self, msg: str) -> None:
        self.state.last_error = msg
        self.state.last_error_time = time.time()

    def _on_spool(self, h, size: int) -> None:
        if self._unsynced_since is None:
            self._unsynced_since = time.time()
        self.state.online = False
        self.emit(Spooled(object=str(h), size=size))
        self._sync_wakeup.set()

    def write_state(self, force: bool = False) -> None:
        """Refresh the state file (at most 4 times a second unless forced). The numbers are
        taken under the condition lock; the file is written outside it, so the event
        thread never waits for the disk."""
        now = time.time()
        with self.cond:  # the syncer thread writes it too
            if not force and now - self._state_written < 0.25:
                return
            self._state_written = now
            st = self.state
            st.pending = len(self.pending) + len(self.uncommitted)
            oldest = [t for t in (self._unsynced_since, self._oldest_uncommitted_wall()) if t is not None]
            st.oldest_unsynced = min(oldest) if oldest else None
        n, size, _oldest = self.spool.spool_usage()
        st.spool_files, st.spool_bytes = n, size
        try:
            with self._state_lock:
                st.save(self.state_dir)
        except OSError as e:
            log.warning("cannot write the state file: %s", e)

    def _oldest_uncommitted_wall(self) -> float | None:
        firsts = list(self.pending.first.values()) + [t for _, t in self.uncommitted]
        if not firsts:
            return None
        return time.time() - (time.monotonic() - min(firsts))

    # -- events -----------------------------------------------------------------------
    def on_fs_event(self, *paths: str | bytes) -> None:
        now = time.monotonic()
        with self.cond:
            for p in paths:
                if p:
                    self.pending.touch(os.fsencode(p), now)
            self.cond.notify()

    def request_rescan(self, reason: str) -> None:
        log.warning("rescan: %s", reason)
        self.emit(Warning_(message=f"rescanning: {reason}"))
        with self.cond:
            self.rescan_requested = True
            self.cond.notify()

    def stop(self, *_a) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self._sync_wakeup.set()

    # -- capture ----------------------------------------------------------------------
    def _watched(self, path: bytes) -> bool:
        return any(path == p or path.startswith(p.rstrip(b"/") + b"/") for p in self.paths)

    def _excluded(self, path: bytes) -> bool:
        ex = self.scanner.excluder
        parts = path.split(b"/")
        for i in range(2, len(parts) + 1):
            sub = b"/".join(parts[:i])
            if ex.excluded(sub, parts[i - 1]):
                return True
        return False

    def _drop_mirror(self, path: bytes) -> None:
        prefix = path.rstrip(b"/") + b"/"
        for d in [d for d in self.mirror if d == path or d.startswith(prefix)]:
            del self.mirror[d]

    def capture(self, path: bytes, first_event: float) -> bool:
        """Capture one path into the mirror. False when it must be retried later."""
        if not self._watched(path) or self._excluded(path):
            return True
        parent, name = os.path.split(path)
        if parent not in self.mirror:
            # a directory we have not seen yet: capture its topmost unknown ancestor
            anc = parent
            while os.path.dirname(anc) not in self.mirror and anc != b"/":
                anc = os.path.dirname(anc)
            if anc == b"/" or not self._watched(anc):
                return True
            return self.capture(anc, first_event)
        self.scanner.torn.clear()
        node = self.scanner.node_for(path)
        if self.scanner.torn:
            return False  # changed while read: never commit a torn version
        old = self.mirror[parent].get(name)
        if node is None:
            if old is None:
                return True
            del self.mirror[parent][name]
            self._drop_mirror(path)
            self.emit(Captured(path=path, type=old.type, deleted=True, saved_at=_now_iso()))
        else:
            if old is not None and _same(old, node):
                return True
            if node.type != DIR:
                self._drop_mirror(path)
            self.mirror[parent][name] = node
            cid = crypto.content_hash(b"".join(node.content))[:16] if node.type == FILE else ""
            self.emit(Captured(path=path, type=node.type, size=node.size, content_id=cid,
                               saved_at=datetime.fromtimestamp(node.mtime_ns / 1e9, timezone.utc).astimezone().isoformat()))
        self.dirty.add(parent)
        self.uncommitted.append((path, first_event))
        self.state.captures += 1
        return True

    # -- commit -------------------------------------------------------------------------
    def commit(self) -> Snapshot | None:
        """Write the trees of the changed directories and a live snapshot. On failure
        (spool full, disk error) nothing is forgotten: the directories stay dirty, and
        files whose chunks were lost with a failed pack are captured again."""
        if not self.dirty:
            return None
        if self._recapture_unstored():
            self.last_commit = time.monotonic()  # commit once they are read again, not in a spin
            return None
        try:
            return self._commit()
        except BaseException:
            self._recapture_unstored()
            self.last_commit = time.monotonic()  # retry after commit_interval, not at once
            raise

    def _unstored(self) -> list[bytes]:
        """Files in the changed directories with a chunk that is neither stored nor on its
        way (it was in a pack whose upload failed)."""
        has = self.repo.has_blob
        return [os.path.join(d, name) for d in self.dirty for name, n in self.mirror.get(d, {}).items()
                if n.type == FILE and not all(has(c) for c in n.content)]

    def _recapture_unstored(self) -> list[bytes]:
        """Queue those files for capture (without pushing back a capture already queued)."""
        lost = self._unstored()
        if lost:
            now = time.monotonic()
            with self.cond:
                for p in lost:
                    if p not in self.pending.first:
                        self.pending.touch(p, now)
                self.cond.notify()
        return lost

    def _commit(self) -> Snapshot | None:
        heap = [(-d.count(b"/"), d) for d in self.dirty]
        heapq.heapify(heap)
        queued = set(self.dirty)
        root = None
        while heap:
            _, d = heapq.heappop(heap)
            nodes = list(self.mirror.get(d, {}).values())
            tid, _ = self.repo.save_blob(TREE, encode_tree(nodes))
            if d == b"/":
                root = tid
                continue
            parent, name = os.path.split(d)
            siblings = self.mirror.get(parent)
            if siblings is None:
                continue
            try:
                fresh = make_node(d, name, os.lstat(d))  # the directory's own mtime changed too
                fresh.subtree = tid
                siblings[name] = fresh
            except OSError:
                if name in siblings:
                    siblings[name].subtree = tid
            if parent not in queued:
                queued.add(parent)
                heapq.heappush(heap, (-parent.count(b"/"), parent))
        self.commits_since_consolidation += 1
        consolidate = self.commits_since_consolidation >= CONSOLIDATE_EVERY
        self.repo.flush(consolidate=consolidate)
        if consolidate:
            self.commits_since_consolidation = 0
        if self._recapture_unstored():  # the last line of defence: never commit a hole
            raise LbkError("some captured data was not stored; those files are read again before the next commit")
        if not self._lock_holds() and self._revalidate() == "rescan":
            raise LbkError("the repository changed while this daemon held no lock; rescanning before the next commit")
        captured = self.uncommitted
        self.uncommitted = []
        now = time.monotonic()
        latency = max((now - t for _, t in captured), default=0.0)
        snap = Snapshot(
            time=datetime.now(timezone.utc).astimezone(), tree=root, paths=self.paths,
            host=self.scanner.opts.host or socket.gethostname(), user=_user(), uid=os.getuid(), gid=os.getgid(),
            kind="live", parent=self.parent,
            summary={"captures": len(captured), "paths": [os.fsdecode(p) for p, _ in captured[:100]]},
        )
        spooled_before = self.spool.spool_usage()[0]
        save_snapshot(self.repo, snap)
        self.dirty.clear()
        self.spool_full = False
        self.parent = snap.id
        self.last_commit = now
        self.state.last_commit = time.time()
        self.state.last_snapshot = snap.id
        self.state.commits += 1
        self.emit(Committed(snapshot_id=snap.id, paths=[p for p, _ in captured], count=len(captured),
                            latency=round(latency, 4), spooled=self.spool.spool_usage()[0] > spooled_before))
        self._save_files_cache()
        return snap

    def _save_files_cache(self) -> None:
        if self.cache is not None and self.state.commits % 50 == 0:
            self._guarded(lambda: self.cache.save_files(self.scanner.new_files))

    # -- baseline and rescans ---------------------------------------------------------------
    def scan(self) -> None:
        """(Re)build the mirror from a walk of every watched path and commit it."""
        if self.scanner is not None and not self._lock_holds():
            self._revalidate()  # the index this scan trusts must be the repository's now
            self.rescan_requested = False  # this is the rescan
        self.state.phase = "scanning"
        self.write_state(force=True)
        old_mirror = self.mirror
        self.mirror = {}
        if self.scanner is not None:
            self.scanner.pool.shutdown(wait=True)
        scan = self._new_scanner()
        self.scanner = scan
        spooled_before = self.spool.spool_usage()[0]
        try:
            res = scan.run()
        except BaseException:
            self.mirror = old_mirror
            raise
        scan.pool.shutdown(wait=True)
        self.scanner = self._capture_scanner(scan.new_files)
        snap = res.snapshot
        self.parent = snap.id
        self.dirty.clear()
        self.uncommitted.clear()
        self.last_commit = time.monotonic()
        self.state.last_commit = time.time()
        self.state.last_snapshot = snap.id
        self.state.commits += 1
        self.emit(Committed(snapshot_id=snap.id, paths=list(self.paths), count=res.total_files, latency=0.0,
                            spooled=self.spool.spool_usage()[0] > spooled_before))
        self.state.phase = "watching"
        self.write_state(force=True)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        if self.opts.low_priority:
            lower_priority()
        self._acquire_lock()
        self.repo.ensure_index()
        if self.lock is not None and self.spool.spooled():
            self._drop_broken_spooled()  # left by an earlier run: prunes may have run since
        observer = self._start_observer()
        syncer = threading.Thread(target=self._sync_loop, name="lbk-sync", daemon=True)
        syncer.start()
        try:
            self.scan()
            next_rescan = time.monotonic() + self.opts.rescan
            while True:
                with self.cond:
                    while True:
                        if self.stopping or self.rescan_requested or self.revalidate_requested:
                            break
                        now = time.monotonic()
                        deadlines = [next_rescan]
                        nd = self.pending.next_due()
                        if nd is not None:
                            deadlines.append(nd)
                        if self.dirty and not self.spool_full:
                            deadlines.append(self.last_commit + self.opts.commit_interval)
                        wait = min(deadlines) - now
                        if wait <= 0:
                            break
                        self.cond.wait(wait)
                    stopping, rescan = self.stopping, self.rescan_requested
                    self.rescan_requested = False
                    now = time.monotonic()
                    due = self.pending.take_due(now, everything=stopping)
                if self.revalidate_requested:
                    self.revalidate_requested = False
                    if self._guarded(self._revalidate) in ("ok", "rescan"):
                        self._sync_wakeup.set()  # the spool may go up now (offline: the syncer backs off)
                if rescan or now >= next_rescan:
                    next_rescan = now + self.opts.rescan
                    self._guarded(self.scan)
                    continue
                retry = []
                for path, first in due:
                    ok = self._guarded(lambda: self.capture(path, first))
                    if ok is False and not stopping:
                        retry.append(path)
                if retry:
                    self.on_fs_event(*retry)
                if self.dirty and (stopping or self._commit_due()) and not self.spool_full:
                    self._guarded(self.commit)
                self.write_state()
                if stopping and not len(self.pending):
                    break
        finally:
            self.state.phase = "stopping"
            self.write_state(force=True)
            observer.stop()
            observer.join(timeout=5)
            if self.scanner is not None:
                self.scanner.pool.shutdown(wait=True)
            if self.dirty:
                self._guarded(self.commit)
            self._guarded(lambda: self.repo.flush(consolidate=True))
            if self.cache is not None and self.scanner is not None:
                self._guarded(lambda: self.cache.save_files(self.scanner.new_files))
            self._sync_wakeup.set()
            self._guarded(self._sync_once)
            if self.lock is not None:
                self._guarded(self.lock.release)
            self.state.phase = "stopped"
            self.write_state(force=True)
        return 0

    def _commit_due(self) -> bool:
        # the first capture after a quiet spell is committed at once; under a stream of
        # saves, commits are at least commit_interval apart
        return time.monotonic() - self.last_commit >= self.opts.commit_interval

    def _guarded(self, fn):
        """Run a step; an error is reported and kept in the state, never fatal to the daemon."""
        try:
            return fn()
        except SpoolFull as e:
            self.spool_full = True  # captures wait (in memory) until the spool drains
            self._set_error(e.message)
            self.emit(Warning_(message=e.message))
            return False
        except (LbkError, OSError) as e:
            msg = e.message if isinstance(e, LbkError) else f"{e.strerror or e}"
            self._set_error(msg)
            self.emit(Warning_(message=msg))
            return None

    def _acquire_lock(self) -> None:
        try:
            self.lock = self.repo.lock(exclusive=False)
        except LockFailed:
            raise
        except BackendError as e:
            self.emit(Warning_(message=f"repository unreachable, working offline: {e.message}"))
            self.state.online = False

    # -- spool upload -------------------------------------------------------------------------
    def _sync_once(self) -> bool:
        if self.spool.spooled() and not self._lock_holds(unreachable=False):
            with self.cond:  # the main loop re-checks the repository before anything goes up
                self.revalidate_requested = True
                self.cond.notify()
            return False
        uploaded = {"files": 0, "bytes": 0}

        def count(_h, size):
            uploaded["files"] += 1
            uploaded["bytes"] += size

        done = self.spool.sync(count)
        if uploaded["files"]:
            self.emit(Synced(files=uploaded["files"], bytes=uploaded["bytes"]))
        if done:
            self.spool_full = False
            self._unsynced_since = None
            self.state.online = True
            self.write_state(force=True)
        return done

    # -- the lock, and the repository changing while it lapsed ------------------------------
    def _lock_holds(self, unreachable: bool = True) -> bool:
        """Whether the lock taken at start (or since) is still ours. While the repository
        cannot be reached, ``unreachable`` is the answer: writes go to the spool then, and
        the spool is only uploaded once the lock is confirmed."""
        if self.lock is None:
            return False
        try:
            return self.lock.held()
        except BackendError:
            return unreachable

    def _revalidate(self) -> str:
        """Our lock lapsed (taken while offline, or removed as stale while the machine
        slept): a prune elsewhere may have removed data this daemon deduplicates against.
        Take a new lock, reload the index, drop spooled snapshots that reference data no
        longer there and, if anything we knew is gone, rebuild the mirror with a rescan.
        Returns "offline" (no lock to be had now), "ok" or "rescan"."""
        try:
            lock = self.repo.lock(exclusive=False)
        except (LockFailed, BackendError):
            return "offline"
        old, self.lock = self.lock, lock
        if old is not None:
            old.release()
        self.repo.flush(consolidate=False)  # everything captured so far is indexed
        known = self.repo.index
        fresh = self.repo.load_index()
        gone = sum(1 for bid, _ in known.blobs() if bid not in fresh)
        dropped = self._drop_broken_spooled()
        if not gone:
            return "ok"
        msg = (f"the repository changed while this daemon held no lock: {gone} chunks it knew were "
               f"removed (a prune elsewhere); rescanning" + (f", {dropped} spooled snapshots that "
               "referenced them were dropped" if dropped else ""))
        self._set_error(msg)
        self.emit(Warning_(message=msg))
        with self.cond:
            self.rescan_requested = True
        return "rescan"

    def _drop_broken_spooled(self) -> int:
        """Drop spooled snapshots whose trees reference blobs the index lacks; they must
        never reach the repository. Returns how many were dropped."""
        index = self.repo.ensure_index()
        complete: set[bytes] = set()

        def whole(tree_id: bytes) -> bool:
            if tree_id in complete:
                return True
            if tree_id not in index:
                return False
            for n in decode_tree(self.repo.load_blob(TREE, tree_id)):
                if n.type == FILE and not all(c in index for c in n.content):
                    return False
                if n.type == DIR and n.subtree is not None and not whole(n.subtree):
                    return False
            complete.add(tree_id)
            return True

        dropped = 0
        for _, h, _ in self.spool.spooled():
            if h.kind is not FileKind.SNAPSHOT:
                continue
            try:
                ok = whole(load_snapshot(self.repo, h.name).tree)
            except (LbkError, OSError):
                ok = False
            if not ok and self.spool.discard(h):
                dropped += 1
        return dropped

    def _sync_loop(self) -> None:
        wait = SYNC_BACKOFF[0]
        while not self.stopping:
            self._sync_wakeup.wait(wait if self.spool.spooled() else None)
            self._sync_wakeup.clear()
            if self.stopping:
                return
            if not self.spool.spooled():
                wait = SYNC_BACKOFF[0]
                continue
            try:
                ok = self._sync_once()
            except OSError as e:
                self._set_error(f"spool upload failed: {e}")
                ok = False
            wait = SYNC_BACKOFF[0] if ok else min(wait * 2, SYNC_BACKOFF[1])
            with self.cond:
                self.cond.notify()

    # -- observer --------------------------------------------------------------------------
    def _start_observer(self):
        from watchdog.events import (
            DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
            FileDeletedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEventHandler,
        )
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                watcher.on_fs_event(event.src_path, getattr(event, "dest_path", "") or "")

        overflow = _OverflowHandler(self)
        logging.getLogger("watchdog").addHandler(overflow)
        obs = Observer()
        # An explicit filter: watchdog's default mask includes open/close-nowrite events,
        # which flood the inotify queue on large trees (see INFRA notes).
        flt = [FileClosedEvent, FileCreatedEvent, FileDeletedEvent, FileModifiedEvent, FileMovedEvent,
               DirCreatedEvent, DirDeletedEvent, DirMovedEvent]
        for p in self.paths:
            is_dir = os.path.isdir(p)
            target = p if is_dir else os.path.dirname(p)
            try:
                obs.schedule(Handler(), os.fsdecode(target), recursive=is_dir, event_filter=flt)
            except OSError as e:
                self.emit(Warning_(message=f"cannot watch {os.fsdecode(target)} ({e.strerror or e}); "
                                           "relying on periodic rescans", path=target))
                self._set_error(f"watch limit: {e}")
        obs.start()
        return obs


class _OverflowHandler(logging.Handler):
    """Turns watchdog's 'queue overflowed' log record into a rescan request."""

    def __init__(self, watcher: Watcher):
        super().__init__(logging.WARNING)
        self.watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.watcher.request_rescan("inotify queue overflowed; events were lost")


def _same(a: Node, b: Node) -> bool:
    return a.to_dict() == b.to_dict()


def _now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat()


def _user() -> str:
    from lbk.repo.keys import current_user

    return current_user()


def lower_priority() -> None:
    """nice 10 and the idle I/O class (Linux), so capture never competes with the user."""
    try:
        os.nice(10)
    except OSError:
        pass
    if hasattr(os, "sched_setscheduler"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            IOPRIO_WHO_PROCESS, IOPRIO_CLASS_IDLE = 1, 3
            syscall_nr = {"x86_64": 251, "aarch64": 30}.get(os.uname().machine)
            if syscall_nr:
                libc.syscall(syscall_nr, IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE << 13)
        except OSError:
            pass


def install_signal_handlers(w: Watcher) -> None:
    signal.signal(signal.SIGTERM, w.stop)
    signal.signal(signal.SIGINT, w.stop)
