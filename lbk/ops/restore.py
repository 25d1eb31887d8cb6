"""Restore: recreate a snapshot's files beneath a target directory.

Each node lands at its original absolute path beneath the target (``DIR/home/ann/x``).
Safety: names were validated when the tree was decoded (no ``/``, NUL, ``.``, ``..``);
every directory we descend into is checked with ``lstat`` to be a real directory, never
a symlink; files are written to a temporary name opened with ``O_EXCL|O_NOFOLLOW`` and
renamed over the destination, so an existing symlink is replaced, never followed.
File contents are written pack by pack on a thread pool (``restore_content.py``: each
pack region read once, all-zero blocks skipped so holes stay holes); directory metadata
is applied last, deepest first.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache

from lbk.errors import FormatError, IntegrityError, RestoreError
from lbk.events import Emit, FileError, Progress, Verbose
from lbk.model import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK, Node, Snapshot, decode_tree
from lbk.ops.restore_content import BATCH_BYTES, BATCH_FILES, ContentWriter, FileJob
from lbk.repo.pack import TREE
from lbk.repo.repository import Repository

WORKERS = max(2, min(8, (os.cpu_count() or 2) * 2))
OVERWRITE_MODES = ("always", "if-changed", "never")


@dataclass
class RestoreOptions:
    target: bytes
    paths: list[bytes] = field(default_factory=list)  # absolute, as backed up
    includes: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    overwrite: str = "always"
    verify: bool = False
    dry_run: bool = False


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    other: int = 0
    bytes: int = 0
    skipped: int = 0
    errors: int = 0
    verified: int = 0
    duration: float = 0.0

    def summary(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def tree_nodes(repo: Repository, tree_id: bytes) -> list[Node]:
    return decode_tree(repo.load_blob(TREE, tree_id), f"tree {tree_id.hex()[:16]}")


def _pattern_match(patterns: list[str], path: bytes) -> bool:
    p = os.fsdecode(path)
    name = p.rsplit("/", 1)[-1]
    return any(fnmatchcase(p, pat) or ("/" not in pat and fnmatchcase(name, pat)) for pat in patterns)


class Restorer:
    def __init__(self, repo: Repository, opts: RestoreOptions, emit: Emit):
        self.repo = repo
        self.opts = opts
        self.emit = emit
        self.target = os.path.abspath(opts.target)
        self.selected = [os.path.normpath(p).rstrip(b"/") or b"/" for p in opts.paths]
        self.result = RestoreResult()
        self.is_root = os.geteuid() == 0
        self._lock = threading.Lock()
        self._dirs: list[tuple[bytes, Node]] = []
        self._links: dict[tuple[int, int], bytes] = {}
        self._pending_links: list[tuple[bytes, bytes, Node]] = []
        self._batch: list[FileJob] = []
        self._batch_bytes = 0
        self._last = 0.0

    # -- selection --------------------------------------------------------------
    def _wanted(self, path: bytes, is_dir: bool) -> tuple[bool, bool]:
        """(restore this node, descend into it)."""
        if self.selected:
            inside = any(path == s or path.startswith(s.rstrip(b"/") + b"/") or s == b"/" for s in self.selected)
            above = any(s.startswith(path.rstrip(b"/") + b"/") for s in self.selected)
            if not inside:
                return (above and is_dir), above
        if self.opts.excludes and _pattern_match(self.opts.excludes, path):
            return False, False
        if self.opts.includes and not is_dir and not _pattern_match(self.opts.includes, path):
            return False, False
        return True, True

    def _error(self, path: bytes, e: BaseException, during: str) -> None:
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        with self._lock:
            self.result.errors += 1
        self.emit(FileError(path=path, message=msg, during=during))

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self._last > 0.2:
            self._last = now
            self.emit(Progress("restore", self.result.files, self.result.bytes))

    # -- walk ------------------------------------------------------------------------
    def run(self, snap: Snapshot) -> RestoreResult:
        start = time.monotonic()
        self.repo.ensure_index()
        if not self.opts.dry_run:
            try:
                os.makedirs(self.target, exist_ok=True)
            except OSError as e:
                raise RestoreError(f"cannot create target {os.fsdecode(self.target)}: {e.strerror}") from None
            if not os.path.isdir(self.target):
                raise RestoreError(f"target {os.fsdecode(self.target)} is not a directory")
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="lbk-restore") as pool:
            self._writer = ContentWriter(self.repo, pool, self._finish, lambda job, e: self._error(job.spath, e, "restore"))
            self._walk(snap.tree, b"/", self.target)
            self._flush_batch()
        for path, first, node in self._pending_links:
            self._hardlink(path, first, node)
        for path, node in reversed(self._dirs):
            self._apply_metadata(path, node)
        self.result.duration = time.monotonic() - start
        return self.result

    def _walk(self, tree_id: bytes, src: bytes, dst: bytes) -> None:
        for node in tree_nodes(self.repo, tree_id):
            spath = src.rstrip(b"/") + b"/" + node.name
            dpath = os.path.join(dst, node.name)
            take, descend = self._wanted(spath, node.type == DIR)
            if not take and not descend:
                continue
            if node.type == DIR:
                if not self._make_dir(spath, dpath):
                    continue
                with self._lock:
                    self.result.dirs += 1
                if node.error and take:
                    self._error(spath, RestoreError(f"restored incomplete: {node.error}"), "restore")
                if node.subtree and descend:
                    self._walk(node.subtree, spath, dpath)
                self._dirs.append((dpath, node))
                continue
            if not take:
                continue
            if node.type == FILE and node.nlink > 1 and node.inode:
                key = (node.dev, node.inode)
                first = self._links.get(key)
                if first is not None:
                    self._pending_links.append((dpath, first, node))
                    continue
                self._links[key] = dpath
            if node.type == FILE:
                self._add_file(spath, dpath, node)
            else:
                self._special(spath, dpath, node)
            self._progress()

    def _make_dir(self, spath: bytes, dpath: bytes) -> bool:
        if self.opts.dry_run:
            return True
        try:
            os.mkdir(dpath, 0o700)
        except FileExistsError:
            st = os.lstat(dpath)
            if not stat.S_ISDIR(st.st_mode):
                self._error(spath, OSError(errno.EEXIST, "exists in the target and is not a directory (not followed)"), "restore")
                return False
        except OSError as e:
            self._error(spath, e, "restore")
            return False
        return True

    # -- files ---------------------------------------------------------------------
    def _add_file(self, spath: bytes, dpath: bytes, node: Node) -> None:
        if self._skip_existing(dpath, node):
            with self._lock:
                self.result.skipped += 1
            return
        if self.opts.dry_run:
            with self._lock:
                self.result.files += 1
                self.result.bytes += node.size
            return
        self._batch.append(FileJob(spath, dpath, node))
        self._batch_bytes += node.size
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self._flush_batch()

    def _flush_batch(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if batch:
            self._writer.run(batch)

    def _finish(self, job: FileJob) -> None:
        """The file's last blob is in: give it its size, its name and its metadata."""
        node = job.node
        try:
            if job.length != node.size:
                raise RestoreError(f"content length {job.length} does not match the recorded size {node.size}")
            try:
                os.ftruncate(job.fd, node.size)
            finally:
                job.close()
            os.replace(job.tmp, job.dpath)
            job.tmp = None
            self._apply_metadata(job.dpath, node)
            if self.opts.verify:
                self._verify(job.dpath, node)
        except (OSError, RestoreError, IntegrityError, FormatError) as e:
            job.discard()
            self._error(job.spath, e, "restore")
            return
        with self._lock:
            self.result.files += 1
            self.result.bytes += node.size
        self.emit(Verbose(action="restored", path=job.spath, size=node.size))
        self._progress()
        if node.error:  # marked by 'lbk repair snapshots': what remains is restored, and named
            self._error(job.spath, RestoreError(f"restored incomplete: {node.error}"), "restore")

    def _skip_existing(self, dpath: bytes, node: Node) -> bool:
        mode = self.opts.overwrite
        if mode == "always":
            return False
        try:
            st = os.lstat(dpath)
        except FileNotFoundError:
            return False
        if mode == "never":
            return True
        return stat.S_ISREG(st.st_mode) and st.st_size == node.size and st.st_mtime_ns == node.mtime_ns

    def _verify(self, dpath: bytes, node: Node) -> None:
        with open(dpath, "rb") as f:
            for bid in node.content:
                loc = self.repo.blob_location(bid)
                if self.repo.master.blob_id(f.read(loc.raw_length)) != bid:
                    raise RestoreError("verification failed: restored content differs")
            if f.read(1):
                raise RestoreError("verification failed: restored file is longer than recorded")
        with self._lock:
            self.result.verified += 1

    # -- other node types ----------------------------------------------------------
    def _special(self, spath: bytes, dpath: bytes, node: Node) -> None:
        if node.type == SOCKET:
            return  # sockets belong to a running process; nothing to restore
        if self.opts.dry_run:
            self.result.other += 1
            return
        if self.opts.overwrite == "never" and os.path.lexists(dpath):
            self.result.skipped += 1
            return
        try:
            _remove_existing(dpath)
            if node.type == SYMLINK:
                os.symlink(node.target, dpath)
            elif node.type == FIFO:
                os.mkfifo(dpath, 0o600)
            elif node.type in (CHARDEV, BLOCKDEV):
                if not self.is_root:
                    raise OSError(errno.EPERM, "device nodes can only be restored as root")
                kind = stat.S_IFCHR if node.type == CHARDEV else stat.S_IFBLK
                os.mknod(dpath, kind | 0o600, node.rdev)
            self._apply_metadata(dpath, node)
            self.result.other += 1
        except OSError as e:
            self._error(spath, e, "restore")

    def _hardlink(self, dpath: bytes, first: bytes, node: Node) -> None:
        if self.opts.dry_run:
            self.result.files += 1
            return
        try:
            _remove_existing(dpath)
            os.link(first, dpath, follow_symlinks=False)
            self.result.files += 1
        except OSError as e:
            self._error(dpath, e, "restore")

    # -- metadata ------------------------------------------------------------------
    def _apply_metadata(self, dpath: bytes, node: Node) -> None:
        if self.opts.dry_run:
            return
        link = node.type == SYMLINK
        try:
            if self.is_root:
                uid = _uid_by_name(node.user, node.uid)
                gid = _gid_by_name(node.group, node.gid)
                os.chown(dpath, uid, gid, follow_symlinks=False)
            for name, value in node.xattrs:
                try:
                    os.setxattr(dpath, name, value, follow_symlinks=False)
                except OSError as e:
                    if e.errno not in (errno.ENOTSUP, errno.EPERM):
                        raise
            if not link:
                os.chmod(dpath, node.mode)
            os.utime(dpath, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)
        except OSError as e:
            self._error(dpath, e, "metadata")


def _remove_existing(path: bytes) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise OSError(errno.EISDIR, "a directory exists where a file is to be restored")
    os.unlink(path)


@lru_cache(maxsize=4096)
def _uid_by_name(name: str, uid: int) -> int:
    if name:
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            pass
    return uid


@lru_cache(maxsize=4096)
def _gid_by_name(name: str, gid: int) -> int:
    if name:
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            pass
    return gid


def restore(repo: Repository, snap: Snapshot, opts: RestoreOptions, emit: Emit) -> RestoreResult:
    if opts.overwrite not in OVERWRITE_MODES:
        raise RestoreError(f"--overwrite must be one of {', '.join(OVERWRITE_MODES)}")
    return Restorer(repo, opts, emit).run(snap)
