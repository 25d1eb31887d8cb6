"""File contents for restore, pack by pack: each pack region is read once, each blob
decrypted once, and written into every file (and every place in a file) that holds it.

Restoring file by file costs one request per blob (three round trips over SFTP, a GET
on S3, an open/read/close on a disk) and reads a blob shared by many files once per
file. Instead the walk hands files over in batches; for a batch, every blob is located
through the index and grouped by pack; packs are read on a thread pool, each in as few
ranges as possible (neighbouring blobs merged when less than ``MERGE_GAP`` lies between
them, a range never longer than ``MAX_READ``), as restic does. A blob is written with
``pwrite`` at its offset; all-zero blocks are skipped, so holes stay holes.

A file is written under a temporary name in its directory (``O_CREAT|O_EXCL|
O_NOFOLLOW``: an existing name, symlink or not, is never opened) and handed to
``on_done`` once its last blob is in; the restorer renames it into place and sets its
metadata. A file whose blob cannot be read or authenticated fails alone (``on_error``);
its temporary file is removed. At most ``MAX_OPEN`` files keep a descriptor open between
writes, so a batch of files spread over many packs cannot exhaust descriptors.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from lbk.errors import BackendError, FormatError, IntegrityError, RestoreError
from lbk.model import Node
from lbk.repo.index import BlobLocation
from lbk.repo.repository import Repository

BATCH_FILES = 4096  # files handed over at once: bounds the plan's memory
BATCH_BYTES = 512 << 20
MERGE_GAP = 256 << 10  # read across a gap this small rather than make a second request
MAX_READ = 8 << 20  # one request reads at most this much
MAX_OPEN = 256
HOLE_BLOCK = 64 * 1024
_ZERO = bytes(HOLE_BLOCK)
_TMP_SEQ = itertools.count()  # temporary names; O_EXCL catches any clash
_DAMAGE = (IntegrityError, FormatError, BackendError)


@dataclass(eq=False)
class FileJob:
    """One file to write: its node, where it goes, and its progress."""

    spath: bytes  # the path in the snapshot (for messages)
    dpath: bytes  # where it is restored
    node: Node
    remaining: int = 0  # blob writes still to come
    length: int = 0  # the content's length by the index
    tmp: bytes | None = None
    fd: int | None = None
    failed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        """Drop the temporary file of a file that failed."""
        self.close()
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None


@dataclass(eq=False)
class _Need:
    """A blob a batch needs, and every (file, offset) it goes to."""

    id: bytes
    loc: BlobLocation
    targets: list[tuple[FileJob, int]] = field(default_factory=list)


def write_sparse(fd: int, data: bytes | memoryview, pos: int) -> None:
    """Write ``data`` at ``pos``, skipping all-zero blocks (the file is truncated to its
    size at the end, so skipped blocks read as zeros and stay holes)."""
    view = memoryview(data)
    n = len(view)
    i = 0
    while i < n:
        j = min(i + HOLE_BLOCK, n)
        block = view[i:j]
        if block != _ZERO[: j - i]:
            os.pwrite(fd, block, pos + i)
        i = j


def create_temporary(directory: bytes) -> tuple[bytes, int]:
    """A new file in ``directory`` that nothing else can have opened or linked."""
    while True:  # a leftover of a crashed restore may hold a name: take the next one
        tmp = os.path.join(directory, b".lbk-restore-%d-%d" % (os.getpid(), next(_TMP_SEQ)))
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue


def _ranges(needs: list[_Need]) -> list[list[_Need]]:
    """Blobs of one pack, sorted by offset, cut into groups each read with one request."""
    groups: list[list[_Need]] = []
    for n in sorted(needs, key=lambda n: n.loc.offset):
        if groups:
            first, last = groups[-1][0].loc, groups[-1][-1].loc
            end = last.offset + last.length
            if n.loc.offset - end <= MERGE_GAP and n.loc.offset + n.loc.length - first.offset <= MAX_READ:
                groups[-1].append(n)
                continue
        groups.append([n])
    return groups


class ContentWriter:
    def __init__(self, repo: Repository, pool: ThreadPoolExecutor,
                 on_done: Callable[[FileJob], None], on_error: Callable[[FileJob, BaseException], None]):
        self.repo = repo
        self.pool = pool
        self.on_done = on_done
        self.on_error = on_error
        self._open = 0
        self._open_lock = threading.Lock()

    def run(self, jobs: list[FileJob]) -> None:
        """Write the contents of ``jobs``; returns when every file is done or failed."""
        packs: dict[str, dict[bytes, _Need]] = {}
        ready = []
        for job in jobs:
            try:
                self._plan(job, packs)
            except _DAMAGE + (RestoreError, OSError) as e:
                self._fail(job, e)
                continue
            if job.remaining == 0:  # empty file
                ready.append(job)
        for job in ready:
            try:
                self._start(job)
            except OSError as e:
                self._fail(job, e)
                continue
            self.on_done(job)
        for f in [self.pool.submit(self._pack, pack, list(needs.values())) for pack, needs in packs.items()]:
            f.result()

    def _plan(self, job: FileJob, packs: dict[str, dict[bytes, _Need]]) -> None:
        placed, pos = [], 0
        for bid in job.node.content:
            loc = self.repo.blob_location(bid)  # a blob no index names fails the file
            placed.append((bid, loc, pos))
            pos += loc.raw_length
        job.length = pos  # checked when the file is done: a blob that fails first names itself
        for bid, loc, at in placed:
            in_pack = packs.setdefault(loc.pack, {})
            need = in_pack.get(bid)
            if need is None:
                need = in_pack[bid] = _Need(bid, loc)
            need.targets.append((job, at))
        job.remaining = len(placed)

    def _start(self, job: FileJob) -> None:
        """Create the temporary file of an empty file (it never gets a blob)."""
        job.tmp, job.fd = create_temporary(os.path.dirname(job.dpath))

    def _pack(self, pack: str, needs: list[_Need]) -> None:
        for group in _ranges(needs):
            first, last = group[0].loc, group[-1].loc
            start = first.offset
            try:
                raw = self.repo.load_pack_range(pack, start, last.offset + last.length - start,
                                                f"blob {group[0].id.hex()[:16]} in pack {pack[:16]}")
            except _DAMAGE as e:
                for need in group:
                    for job, _ in need.targets:
                        self._fail(job, e)
                continue
            view = memoryview(raw)
            for need in group:
                live = [(j, p) for j, p in need.targets if not j.failed]
                if not live:
                    continue
                a = need.loc.offset - start
                try:
                    data = self.repo.decode_blob(need.loc, need.id, view[a : a + need.loc.length])
                except _DAMAGE as e:
                    for job, _ in live:
                        self._fail(job, e)
                    continue
                for job, pos in live:
                    self._write(job, data, pos)

    def _write(self, job: FileJob, data: bytes, pos: int) -> None:
        try:
            with job.lock:
                if job.failed:
                    return
                if job.fd is None:
                    if job.tmp is None:
                        job.tmp, job.fd = create_temporary(os.path.dirname(job.dpath))
                    else:
                        job.fd = os.open(job.tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    with self._open_lock:
                        self._open += 1
                write_sparse(job.fd, data, pos)
                job.remaining -= 1
                done = job.remaining == 0
                if not done:
                    with self._open_lock:
                        crowded = self._open > MAX_OPEN
                        if crowded:
                            self._open -= 1
                    if crowded:
                        job.close()  # reopened by its next blob
        except OSError as e:
            self._fail(job, e)
            return
        if done:
            with self._open_lock:
                self._open -= 1
            self.on_done(job)

    def _fail(self, job: FileJob, e: BaseException) -> None:
        with job.lock:
            if job.failed:
                return
            job.failed = True
            if job.fd is not None:
                with self._open_lock:
                    self._open -= 1
            job.discard()
        self.on_error(job, e)
