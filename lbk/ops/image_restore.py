"""Writing an image back to a device or file (``image restore``) and comparing a device or
file with an image (``image verify``).

Restore refuses what would destroy the wrong thing: a mounted or otherwise busy device,
a device smaller than the image, a device or a non-empty file without ``yes``. On a
device, zero extents are zeroed first (BLKZEROOUT, or written) and the data chunks are
then loaded, decrypted and written by a thread pool at their offsets; on a file the zero
extents (and all-zero blocks inside chunks) are simply not written, so they stay holes.
Verification re-reads what is there, with the page cache dropped first, and compares
every data extent's keyed hash with its chunk id and every zero extent with zeros.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lbk.errors import ImageError, IntegrityError
from lbk.events import ByteProgress, Emit, Warning_
from lbk.model import Snapshot
from lbk.ops import blockdev
from lbk.ops.image_format import DATA_EXTENT, StoredImage, load_image
from lbk.ops.image_stream import ZERO_BLOCK, is_zero
from lbk.repo.pack import DATA
from lbk.repo.repository import Repository

WORKERS = max(2, min(8, (os.cpu_count() or 2) * 2))
INFLIGHT_BYTES = 128 << 20
ZERO_PIECE = 16 << 20
MAX_REPORTED = 10
PROGRESS_EVERY = 0.5


@dataclass
class Difference:
    offset: int  # the first byte that differs
    region_offset: int
    region_length: int
    kind: str  # data, zero, missing (target too short), extra (file longer than the image)

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class VerifyResult:
    snapshot_id: str
    target: str
    size: int
    regions: int = 0
    differences: int = 0
    first: list[Difference] = field(default_factory=list)
    bytes_read: int = 0
    duration: float = 0.0

    @property
    def identical(self) -> bool:
        return self.differences == 0

    def summary(self) -> dict:
        return {
            "snapshot_id": self.snapshot_id,
            "target": self.target,
            "size": self.size,
            "identical": self.identical,
            "regions": self.regions,
            "differences": self.differences,
            "first_differences": [d.to_json() for d in self.first],
            "bytes_read": self.bytes_read,
            "duration": round(self.duration, 3),
        }


@dataclass
class RestoreImageResult:
    snapshot_id: str
    target: str
    size: int
    device: bool = False
    bytes_written: int = 0
    zero_bytes: int = 0
    duration: float = 0.0
    verify: VerifyResult | None = None

    def summary(self) -> dict:
        return {
            "snapshot_id": self.snapshot_id,
            "target": self.target,
            "size": self.size,
            "device": self.device,
            "bytes_written": self.bytes_written,
            "zero_bytes": self.zero_bytes,
            "duration": round(self.duration, 3),
            "bytes_per_second": round(self.size / self.duration, 1) if self.duration else 0.0,
            "verified": self.verify is not None and self.verify.identical,
        }


class _Progress:
    def __init__(self, action: str, total: int, emit: Emit):
        self.action, self.total, self.emit = action, total, emit
        self.start = self.last = time.monotonic()

    def __call__(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_EVERY:
            self.last = now
            rate = done / max(now - self.start, 1e-6)
            self.emit(ByteProgress(self.action, 0, done, None, self.total, bytes_per_second=round(rate, 1)))


def _name(path: bytes) -> str:
    return os.fsdecode(path)


def _io_error(path: bytes, what: str, e: OSError) -> ImageError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ImageError(f"{_name(path)}: no space left on the target ({what})")
    return ImageError(f"cannot {what} {_name(path)}: {e.strerror}")


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while len(view):
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]
        offset += n


# -- target --------------------------------------------------------------------------------------


def open_target(path: bytes, img: StoredImage, yes: bool) -> blockdev.Target:
    """Open a restore target, refusing what must not be overwritten (see the module doc)."""
    p = _name(path)
    size = img.layout.size
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise ImageError(f"cannot access {p}: {e.strerror}") from None
    if st is None:
        if os.path.isdir(os.path.dirname(os.path.abspath(path))):
            _check_space(path, img)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise ImageError(f"cannot create {p}: {e.strerror}") from None
        return blockdev.describe(path, fd)
    probe = blockdev.Target(path, -1, st, stat.S_ISBLK(st.st_mode), 0, 512)
    if not (probe.is_block or stat.S_ISREG(st.st_mode)):
        raise ImageError(f"target {p} is not a block device or a regular file")
    mounts = blockdev.mounts_using(probe)
    if mounts:
        m = mounts[0]
        raise ImageError(f"target {p} is in use: {m.source} is mounted on {m.mountpoint}; unmount it first")
    if probe.is_block:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise ImageError(f"target {p} is in use (mounted, swap, or held by LVM, RAID or dm-crypt)") from None
            raise ImageError(f"cannot open {p}: {e.strerror}") from None
        t = blockdev.describe(path, fd)
        if t.size < size:
            os.close(fd)
            raise ImageError(f"target {p} is smaller than the image ({t.size} < {size} bytes)")
        if not yes:
            os.close(fd)
            raise ImageError(f"target {p} is a block device and will be overwritten completely; add --yes to proceed")
        return t
    if st.st_size > 0 and not yes:
        raise ImageError(f"target file {p} exists and is not empty; add --yes to overwrite it")
    _check_space(path, img, st.st_blocks * 512)  # before truncating: a refusal leaves the file as it was
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        os.ftruncate(fd, 0)  # so that zero extents become holes
    except OSError as e:
        raise ImageError(f"cannot open {p} for writing: {e.strerror}") from None
    return blockdev.describe(path, fd)


def _check_space(path: bytes, img: StoredImage, freed: int = 0) -> None:
    """Refuse a target file whose file system cannot hold the image's data."""
    need = img.layout.size - img.layout.zero_bytes()
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path)) or b".").free + freed
    except OSError:
        return
    if free < need:
        raise ImageError(f"not enough space for {_name(path)}: the image holds {need} bytes of data, {free} bytes are free")


# -- restore ---------------------------------------------------------------------------------


class ImageRestore:
    def __init__(self, repo: Repository, emit: Emit):
        self.repo = repo
        self.emit = emit

    def _chunk(self, t: blockdev.Target, offset: int, length: int, bid: bytes) -> int:
        data = self.repo.load_blob(DATA, bid)
        if len(data) != length:
            raise IntegrityError(f"chunk {bid.hex()[:16]} has {len(data)} bytes, the layout says {length}")
        try:
            if t.is_block:
                _pwrite_all(t.fd, data, offset)
                return length
            # keep holes: all-zero ZERO_BLOCKs (aligned in the image) are not written; runs
            # of the others are written with one call each
            written = 0
            run = -1
            i = 0
            while i < length:
                j = min(length, (offset + i) // ZERO_BLOCK * ZERO_BLOCK + ZERO_BLOCK - offset)
                if is_zero(data, i, j):
                    if run >= 0:
                        _pwrite_all(t.fd, memoryview(data)[run:i], offset + run)
                        written += i - run
                        run = -1
                elif run < 0:
                    run = i
                i = j
            if run >= 0:
                _pwrite_all(t.fd, memoryview(data)[run:length], offset + run)
                written += length - run
            return written
        except OSError as e:
            raise _io_error(t.path, f"write at offset {offset}", e) from None

    def _zero(self, t: blockdev.Target, offset: int, length: int) -> None:
        if blockdev.zero_out(t.fd, offset, length):
            return
        end = offset + length
        zeros = bytes(min(length, ZERO_PIECE))
        try:
            while offset < end:
                n = min(len(zeros), end - offset)
                _pwrite_all(t.fd, memoryview(zeros)[:n], offset)
                offset += n
        except OSError as e:
            raise _io_error(t.path, f"write at offset {offset}", e) from None

    def run(self, snap: Snapshot, target: bytes, yes: bool, verify: bool) -> RestoreImageResult:
        self.repo.ensure_index()
        img = load_image(self.repo, snap)
        lay = img.layout
        t = open_target(target, img, yes)
        res = RestoreImageResult(snap.id, _name(target), lay.size, t.is_block)
        start = time.monotonic()
        try:
            if t.is_block and lay.meta.get("partition_table") and t.sector_size != lay.sector_size:
                self.emit(Warning_(message=(
                    f"the image was taken with {lay.sector_size}-byte sectors but {_name(target)} has "
                    f"{t.sector_size}-byte sectors: its partition table will not match the disk"), path=target))
            progress = _Progress("image restore", lay.size, self.emit)
            if t.is_block:  # zero first: no zeroing may race a data write to the same page
                for off, n, kind, _ in lay.extents():
                    if kind != DATA_EXTENT:
                        self._zero(t, off, n)
            res.zero_bytes = lay.zero_bytes()
            inflight: deque = deque()
            queued = 0
            with ThreadPoolExecutor(WORKERS, thread_name_prefix="lbk-image-restore") as pool:
                try:
                    for off, n, kind, di in lay.extents():
                        if kind != DATA_EXTENT:
                            continue
                        inflight.append((pool.submit(self._chunk, t, off, n, img.ids[di]), off + n, n))
                        queued += n
                        while inflight and (queued > INFLIGHT_BYTES or len(inflight) > 4 * WORKERS):
                            fut, done, k = inflight.popleft()
                            res.bytes_written += fut.result()
                            queued -= k
                            progress(done)
                    while inflight:
                        fut, done, k = inflight.popleft()
                        res.bytes_written += fut.result()
                        progress(done)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
            try:
                if not t.is_block:
                    os.ftruncate(t.fd, lay.size)
                os.fsync(t.fd)
            except OSError as e:
                raise _io_error(t.path, "finish writing", e) from None
            if t.is_block:
                blockdev.reread_partitions(t.fd)
            progress(lay.size, force=True)
        finally:
            os.close(t.fd)
        res.duration = time.monotonic() - start
        if verify:
            res.verify = Verifier(self.repo, self.emit).run(img, target, drop_cache=True)
            if not res.verify.identical:
                d = res.verify.first[0]
                raise ImageError(
                    f"verification failed: {_name(target)} differs from image {snap.short_id} in "
                    f"{res.verify.differences} regions, first at byte offset {d.offset}"
                )
        return res


def restore_image(repo: Repository, snap: Snapshot, target: bytes, emit: Emit, yes: bool = False,
                  verify: bool = True) -> RestoreImageResult:
    return ImageRestore(repo, emit).run(snap, target, yes, verify)


# -- verify ------------------------------------------------------------------------------------


def _first_difference(a: bytes, b: bytes) -> int:
    """Index of the first byte where a and b differ (a shorter one differs at its end); -1 if equal."""
    m = min(len(a), len(b))
    for i in range(0, m, 4096):
        j = min(i + 4096, m)
        if a[i:j] != b[i:j]:
            for k in range(i, j):
                if a[k] != b[k]:
                    return k
    return -1 if len(a) == len(b) else m


class Verifier:
    def __init__(self, repo: Repository, emit: Emit):
        self.repo = repo
        self.emit = emit

    def _data(self, fd: int, offset: int, length: int, bid: bytes) -> tuple[int, Difference | None]:
        got = os.pread(fd, length, offset)
        if len(got) == length and self.repo.master.blob_id(got) == bid:
            return len(got), None
        want = self.repo.load_blob(DATA, bid)
        k = _first_difference(got, want)
        if k < 0:  # pragma: no cover - a hash mismatch on equal bytes
            k = 0
        return len(got), Difference(offset + k, offset, length, "missing" if k >= len(got) else "data")

    @staticmethod
    def _zeros(fd: int, offset: int, length: int, region: tuple[int, int]) -> tuple[int, Difference | None]:
        got = os.pread(fd, length, offset)
        if len(got) == length and is_zero(got):
            return len(got), None
        if not is_zero(got):
            k = len(got) - len(got.lstrip(b"\0"))
            return len(got), Difference(offset + k, region[0], region[1], "zero")
        return len(got), Difference(offset + len(got), region[0], region[1], "missing")

    def run(self, img: StoredImage, target: bytes, drop_cache: bool = False) -> VerifyResult:
        lay = img.layout
        start = time.monotonic()
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ImageError(f"cannot open {_name(target)}: {e.strerror}") from None
        res = VerifyResult(img.snapshot.id, _name(target), lay.size)
        try:
            t = blockdev.describe(target, fd)
            if not t.is_block and not stat.S_ISREG(t.st.st_mode):
                raise ImageError(f"{_name(target)} is not a block device or a regular file")
            if drop_cache:
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                except OSError:
                    pass
            holes_known = not t.is_block
            ranges = blockdev.data_ranges(fd, t.size) if holes_known else [(0, t.size)]
            self._compare(img, t, ranges, res)
        finally:
            os.close(fd)
        res.duration = time.monotonic() - start
        return res

    def _zero_tasks(self, off: int, n: int, ranges: list[tuple[int, int]], t: blockdev.Target):
        """Pieces of a zero extent that must be read: where the target has data, plus where it ends."""
        end = off + n
        for a, b in ranges:
            lo, hi = max(a, off), min(b, end)
            while lo < hi:
                k = min(ZERO_PIECE, hi - lo)
                yield lo, k
                lo += k
        if t.size < end:  # the target ends inside this extent
            lo = max(off, t.size)
            yield lo, end - lo

    def _compare(self, img: StoredImage, t: blockdev.Target, ranges: list[tuple[int, int]], res: VerifyResult) -> None:
        lay = img.layout
        progress = _Progress("image verify", lay.size, self.emit)
        diffs: dict[int, Difference] = {}
        inflight: deque = deque()
        queued = 0

        def take() -> None:
            nonlocal queued
            fut, idx, done, k = inflight.popleft()
            got, diff = fut.result()
            queued -= k
            res.bytes_read += got
            if diff is not None and idx not in diffs:
                diffs[idx] = diff
            progress(done)

        with ThreadPoolExecutor(WORKERS, thread_name_prefix="lbk-image-verify") as pool:
            for idx, (off, n, kind, di) in enumerate(lay.extents()):
                res.regions += 1
                if kind == DATA_EXTENT:
                    jobs = [(pool.submit(self._data, t.fd, off, n, img.ids[di]), n)]
                else:
                    jobs = [(pool.submit(self._zeros, t.fd, a, k, (off, n)), k) for a, k in self._zero_tasks(off, n, ranges, t)]
                for fut, k in jobs:
                    inflight.append((fut, idx, off + n, k))
                    queued += k
                    while inflight and (queued > INFLIGHT_BYTES or len(inflight) > 8 * WORKERS):
                        take()
            while inflight:
                take()
        ordered = [diffs[i] for i in sorted(diffs)]
        if not t.is_block and t.size > lay.size:
            ordered.append(Difference(lay.size, lay.size, t.size - lay.size, "extra"))
        res.differences = len(ordered)
        res.first = ordered[:MAX_REPORTED]
        progress(lay.size, force=True)


def verify_image(repo: Repository, snap: Snapshot, target: bytes, emit: Emit) -> VerifyResult:
    repo.ensure_index()
    img = load_image(repo, snap)
    return Verifier(repo, emit).run(img, target)
