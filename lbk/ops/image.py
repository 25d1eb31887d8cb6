"""Disk images: ``image create``, ``image list`` and ``image info`` (restore and verify live
in ``image_restore``).

An image is a snapshot of kind ``image`` (docs/FORMAT-image.md). The source, a block
device, a partition or a regular file, is read sequentially in ``READ_BLOCK`` pieces by
a reader thread; holes (SEEK_DATA/SEEK_HOLE) are not read at all; all-zero runs become
zero extents; the rest is cut into content-defined chunks with the repository's chunker
parameters and seed, so chunks are shared with every earlier image and file backup.
Hashing, compressing and encrypting the chunks run on a thread pool (``save_blob`` is
thread-safe and the compiled parts release the GIL) while the main thread cuts the next
block. Order of durability as for backup: packs, indexes (``flush``), the snapshot.
"""

from __future__ import annotations

import os
import queue
import socket
import stat
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from lbk import __version__
from lbk.errors import ImageError, Interrupted, RefError, UsageError
from lbk.events import ByteProgress, Emit, Warning_
from lbk.model import Snapshot
from lbk.ops import blockdev
from lbk.ops.image_format import Layout, StoredImage, load_image, save_image_tree, valid_image_name
from lbk.ops.image_stream import CdcStream, ExtentBuilder, FixedStream
from lbk.ops.refs import Filter, resolve
from lbk.repo.keys import current_user
from lbk.repo.pack import DATA
from lbk.repo.repository import Repository
from lbk.repo.snapshots import load_all, save_snapshot

READ_BLOCK = 8 << 20
ZERO_MIN = 64 << 10  # shortest zero run kept as a zero extent; shorter ones stay inside chunks
WORKERS = max(2, min(8, (os.cpu_count() or 2) * 2))
INFLIGHT_BYTES = 32 << 20  # chunk bytes queued for the workers: bounds memory (peak RSS ~ a backup's)
PROGRESS_EVERY = 0.5


@dataclass
class ImageOptions:
    source: bytes
    name: str = ""
    tags: list[str] = field(default_factory=list)
    host: str = ""
    chunking: str = "cdc"  # or "fixed" (benchmark comparison only)
    fixed_size: int = 1 << 20
    zero_min: int = ZERO_MIN


@dataclass
class ImageResult:
    snapshot: Snapshot | None
    source: str = ""
    name: str = ""
    size: int = 0
    sector_size: int = 512
    data_bytes: int = 0
    zero_bytes: int = 0
    chunks: int = 0
    bytes_read: int = 0
    data_added: int = 0
    stored_added: int = 0
    stored_bytes: int = 0
    duration: float = 0.0
    partition_table: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.size / self.duration if self.duration else 0.0

    def summary(self) -> dict:
        """The snapshot's summary: the usual backup keys where they make sense, plus the image's."""
        return {
            "total_files": 1,
            "total_bytes": self.size,
            "bytes_read": self.bytes_read,
            "data_added": self.data_added,
            "data_added_stored": self.stored_added,
            "errors": 0,
            "duration": round(self.duration, 3),
            "image_size": self.size,
            "sector_size": self.sector_size,
            "data_bytes": self.data_bytes,
            "zero_bytes": self.zero_bytes,
            "chunks": self.chunks,
            "stored_bytes": self.stored_bytes,
        }


def _now() -> datetime:
    return datetime.now(timezone.utc).astimezone()


def open_source(path: bytes) -> blockdev.Target:
    flags = os.O_RDONLY | getattr(os, "O_NOATIME", 0)
    try:
        try:
            fd = os.open(path, flags)
        except PermissionError:
            fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ImageError(f"cannot open {os.fsdecode(path)}: {e.strerror}") from None
    t = blockdev.describe(path, fd)
    if not t.is_block and not stat.S_ISREG(t.st.st_mode):
        os.close(fd)
        raise ImageError(f"{os.fsdecode(path)} is not a block device or a regular file")
    return t


class _Reader(threading.Thread):
    """Reads the source ahead of the chunker: ("data", offset, bytes) and ("hole", offset, n)."""

    def __init__(self, t: blockdev.Target):
        super().__init__(name="lbk-image-read", daemon=True)
        self.t = t
        self.q: queue.Queue = queue.Queue(maxsize=2)
        self.stop = threading.Event()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        t = self.t
        try:
            ranges = blockdev.data_ranges(t.fd, t.size) if not t.is_block else [(0, t.size)]
            pos = 0
            for start, end in ranges:
                if start > pos and not self._put(("hole", pos, start - pos)):
                    return
                pos = start
                while pos < end:
                    n = min(READ_BLOCK - pos % READ_BLOCK, end - pos)
                    try:
                        buf = os.pread(t.fd, n, pos)
                    except OSError as e:
                        raise ImageError(
                            f"cannot read {os.fsdecode(t.path)} at offset {pos}: {e.strerror}"
                        ) from None
                    if not buf:
                        raise ImageError(f"{os.fsdecode(t.path)} shrank while it was read (at offset {pos})")
                    if not self._put(("data", pos, buf)):
                        return
                    pos += len(buf)
            if pos < t.size and not self._put(("hole", pos, t.size - pos)):
                return
            self._put(("end", t.size, 0))
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(("error", 0, e))


class ImageCreate:
    def __init__(self, repo: Repository, opts: ImageOptions, emit: Emit):
        self.repo = repo
        self.opts = opts
        self.emit = emit
        self.result = ImageResult(snapshot=None)
        self._last = 0.0
        self._start = 0.0

    def _warn(self, message: str, path: bytes = b"") -> None:
        self.result.warnings.append(message)
        self.emit(Warning_(message=message, path=path))

    def _progress(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= PROGRESS_EVERY:
            self._last = now
            elapsed = max(now - self._start, 1e-6)
            self.emit(ByteProgress("image create", 0, done, None, self.result.size,
                                   current=self.result.name, bytes_per_second=round(done / elapsed, 1)))

    def _stream(self):
        if self.opts.chunking == "fixed":
            return FixedStream(self.opts.fixed_size)
        if self.opts.chunking != "cdc":
            raise UsageError(f"unknown chunking {self.opts.chunking!r}")
        c = self.repo.config.chunker
        return CdcStream(c.avg, c.min, c.max, c.seed)

    def _check_mounted(self, t: blockdev.Target) -> None:
        rw = [m for m in blockdev.mounts_using(t) if m.read_write]
        if rw:
            where = ", ".join(f"{m.source} on {m.mountpoint}" for m in rw[:3])
            self._warn(
                f"{os.fsdecode(t.path)} is mounted read-write ({where}): the image may be inconsistent; "
                "image an LVM or btrfs snapshot instead, or boot a rescue system",
                t.path,
            )

    def run(self) -> ImageResult:
        o = self.opts
        src = os.path.abspath(o.source)
        name = o.name or os.fsdecode(os.path.basename(src.rstrip(b"/")))
        if not valid_image_name(name):
            raise UsageError(f"invalid image name {name!r}: use --name with a name without '/'")
        t = open_source(src)
        r = self.result
        r.source, r.name, r.size, r.sector_size = os.fsdecode(src), name, t.size, t.sector_size
        try:
            self._check_mounted(t)
            table = blockdev.partition_table(src)
            meta = {
                "source": os.fsdecode(src),
                "source_type": "blockdev" if t.is_block else "file",
                "created_by": f"lbk {__version__}",
                "chunking": {"alg": "fastcdc2020" if o.chunking == "cdc" else f"fixed-{o.fixed_size}",
                             "zero_min": o.zero_min},
                "partition_table": table,
                "filesystems": blockdev.filesystems(src, table, t.sector_size),
            }
            r.partition_table = ((table or {}).get("json") or {}).get("partitiontable", {}).get("label")
            layout = Layout(t.size, t.sector_size, meta)
            ids, lengths = self._read(t, layout)
        finally:
            os.close(t.fd)
        return self._commit(src, name, layout, ids, lengths)

    def _read(self, t: blockdev.Target, layout: Layout) -> tuple[list[bytes], list[int]]:
        r = self.result
        stored_before = self.repo.stats_added["stored_bytes"]
        ids: list[bytes] = []
        lengths: list[int] = []
        inflight: deque = deque()
        state = {"bytes": 0}
        save = self.repo.save_blob

        def drain(limit: int) -> None:
            while inflight and (state["bytes"] > limit or len(inflight) > 4096):
                fut, n = inflight.popleft()
                bid, new = fut.result()
                state["bytes"] -= n
                ids.append(bid)
                lengths.append(n)
                if new:
                    r.data_added += n

        pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="lbk-image")

        def on_chunk(view: memoryview) -> None:
            inflight.append((pool.submit(save, DATA, view), len(view)))
            state["bytes"] += len(view)
            drain(INFLIGHT_BYTES)

        builder = ExtentBuilder(layout, self._stream(), on_chunk, self.opts.zero_min)
        reader = _Reader(t)
        self._start = time.monotonic()
        reader.start()
        try:
            while True:
                kind, offset, payload = reader.q.get()
                if kind == "error":
                    raise payload
                if kind == "end":
                    break
                if kind == "hole":
                    builder.zeros(payload)
                else:
                    builder.block(payload, offset)
                    r.bytes_read += len(payload)
                self._progress(builder.pos)
            builder.finish()
            drain(-1)
            pool.shutdown(wait=True)
        except KeyboardInterrupt:
            reader.stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            self.repo.flush()  # index what is stored so the next run reuses it
            raise Interrupted("interrupted; no image was written") from None
        except BaseException:
            reader.stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        r.duration = time.monotonic() - self._start
        self._progress(t.size, force=True)
        r.stored_added = self.repo.stats_added["stored_bytes"] - stored_before
        return ids, lengths

    def _commit(self, src: bytes, name: str, layout: Layout, ids: list[bytes], lengths: list[int]) -> ImageResult:
        r = self.result
        when = _now()
        stored_before = self.repo.stats_added["stored_bytes"]
        tree, layout_added = save_image_tree(self.repo, os.fsencode(name), layout, ids, lengths, when)
        self.repo.flush()
        r.duration = time.monotonic() - self._start
        r.stored_added += self.repo.stats_added["stored_bytes"] - stored_before
        r.data_added += layout_added
        r.chunks = len(ids)
        r.zero_bytes = layout.zero_bytes()
        r.data_bytes = r.size - r.zero_bytes
        idx = self.repo.index
        r.stored_bytes = sum(loc.length for b in set(ids) if (loc := idx.get(b)) is not None)
        snap = Snapshot(
            time=when, tree=tree, paths=[src], host=self.opts.host or socket.gethostname(), user=current_user(),
            uid=os.getuid(), gid=os.getgid(), kind="image", name=name, tags=list(self.opts.tags),
            summary=r.summary(),
        )
        save_snapshot(self.repo, snap)
        r.snapshot = snap
        return r


def create_image(repo: Repository, opts: ImageOptions, emit: Emit) -> ImageResult:
    """Image a device or file into one snapshot of kind ``image`` (under a shared lock)."""
    repo.ensure_index()
    with repo.lock(exclusive=False):
        return ImageCreate(repo, opts, emit).run()


# -- finding and listing images ----------------------------------------------------------------


def find_image(repo: Repository, ref: str, name: str | None = None, host: str | None = None,
               tags: tuple[str, ...] = ()) -> Snapshot:
    """The image snapshot REF names (``latest`` and times count images only)."""
    snaps = load_all(repo)
    images = [s for s in snaps if s.kind == "image" and (not name or s.name == name)]
    try:
        return resolve(ref, images, Filter(host=host or None, tags=tuple(tags)))
    except RefError:
        others = [s for s in snaps if s.kind != "image" and s.id.startswith(ref)] if len(ref) >= 4 else []
        if len(others) == 1:
            raise ImageError(f"snapshot {others[0].short_id} is a {others[0].kind} snapshot, not an image") from None
        if ref == "latest" and not images:
            raise RefError("no image found" + (f" named {name!r}" if name else "")) from None
        raise


def list_images(repo: Repository, name: str | None = None) -> list[Snapshot]:
    return [s for s in load_all(repo) if s.kind == "image" and (not name or s.name == name)]


def image_json(s: Snapshot) -> dict:
    m = s.summary or {}
    return {
        "id": s.id,
        "short_id": s.short_id,
        "time": s.time.isoformat(),
        "name": s.name,
        "host": s.host,
        "tags": s.tags,
        "source": os.fsdecode(s.paths[0]) if s.paths else None,
        "size": m.get("image_size", m.get("total_bytes", 0)),
        "sector_size": m.get("sector_size"),
        "data_bytes": m.get("data_bytes"),
        "stored_bytes": m.get("stored_bytes"),
        "data_added_stored": m.get("data_added_stored"),
    }


def image_info(repo: Repository, snap: Snapshot) -> dict:
    """Everything recorded about an image: the listing, the layout summary and the metadata."""
    img: StoredImage = load_image(repo, snap)
    lay = img.layout
    zero_extents = len(lay.kinds) - lay.data_count
    meta = lay.meta
    return {
        **image_json(snap),
        "size": lay.size,
        "sector_size": lay.sector_size,
        "extents": len(lay.kinds),
        "data_extents": lay.data_count,
        "zero_extents": zero_extents,
        "zero_bytes": lay.zero_bytes(),
        "source_type": meta.get("source_type"),
        "chunking": meta.get("chunking"),
        "partition_table": meta.get("partition_table"),
        "filesystems": meta.get("filesystems", []),
    }
