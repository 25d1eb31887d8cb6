"""The offline spool: a backend wrapper that never lets a capture wait for the network.

``SpoolingBackend`` passes every call to the real backend. When a save fails because
the repository is unreachable, the file (already encrypted: packs, indexes, snapshots)
goes to the spool directory instead, durably (temp name, fsync, rename, directory
fsync), under a sequence number. While anything is spooled, later saves are spooled too,
so files reach the repository in the order they were written: packs, then the indexes
naming them, then the snapshots referencing them. ``sync()`` uploads the spool in order
and stops at the first failure; a crash or reboot loses nothing, since the next start
resumes from the files on disk.

To open the repository while it is unreachable, the wrapper keeps a mirror of the small
metadata files it has seen (config, keys, index files; all encrypted or key files) in
the cache, and serves them from there when the backend cannot be reached.

Layout (directories 0700, files 0600):

    <cache>/<repo id>/spool/<seq:012d>.<kind>.<name>    files waiting for upload
    <cache>/<repo id>/mirror/<kind>.<name>              metadata copies
"""

from __future__ import annotations

import os
import re
import threading
from typing import Callable, Iterator

from lbk.backend.base import AlreadyExists, Backend, BackendError, FileInfo, FileKind, Handle, NotFound
from lbk.cache import private_dir, write_private
from lbk.fsutil import wipe_file, write_atomic
from lbk.errors import LbkError

_MIRRORED = (FileKind.CONFIG, FileKind.KEY, FileKind.INDEX)
_SPOOL_NAME = re.compile(r"([0-9]{12})\.([a-z]+)\.([0-9a-f]{64}|config)\Z")


def parse_spool_name(name: str) -> tuple[int, Handle] | None:
    """(sequence number, repository file) of a spooled file's name; None for any other
    name (temporary files, or anything that is not a name lbk writes: it is left alone)."""
    m = _SPOOL_NAME.match(name)
    if not m:
        return None
    try:
        return int(m.group(1)), Handle(FileKind(m.group(2)), m.group(3))
    except ValueError:  # not a kind, or a name that kind cannot have ("data.config")
        return None


class SpoolFull(LbkError):
    """The spool reached its size cap."""


class SpoolingBackend:
    def __init__(self, inner: Backend, state_dir: str, cap_bytes: int = 10 << 30,
                 on_spool: Callable[[Handle, int], None] | None = None):
        self.inner = inner
        self.location = inner.location
        self.spool_dir = private_dir(os.path.join(state_dir, "spool"))
        self.mirror_dir = private_dir(os.path.join(state_dir, "mirror"))
        self.cap = cap_bytes
        self.on_spool = on_spool
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()
        self.online = True
        for f in os.listdir(self.spool_dir):  # leftovers of a crash mid-write
            if ".tmp-" in f:
                os.unlink(os.path.join(self.spool_dir, f))
        self._seq = max((p[0] for p in map(parse_spool_name, os.listdir(self.spool_dir)) if p), default=0)

    # -- spool bookkeeping ---------------------------------------------------------
    def spooled(self) -> list[tuple[int, Handle, str]]:
        out = []
        for f in os.listdir(self.spool_dir):
            p = parse_spool_name(f)
            if p:
                out.append((p[0], p[1], os.path.join(self.spool_dir, f)))
        return sorted(out, key=lambda t: t[0])

    def spool_usage(self) -> tuple[int, int, float | None]:
        """(files, bytes, mtime of the oldest spooled file or None)."""
        items = self.spooled()
        size = oldest = 0
        for _, _, p in items:
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue
            size += st.st_size
            oldest = st.st_mtime if not oldest else min(oldest, st.st_mtime)
        return len(items), size, (oldest or None)

    def _spool(self, h: Handle, data: bytes) -> None:
        with self._lock:
            _, used, _ = self.spool_usage()
            if used + len(data) > self.cap:
                raise SpoolFull(f"spool is full ({used} bytes, cap {self.cap}); captures wait until the repository is back")
            self._seq += 1
            write_atomic(os.path.join(self.spool_dir, f"{self._seq:012d}.{h.kind.value}.{h.name}"), data, sync_dir=True)
        if h.kind in _MIRRORED:
            self._mirror(h, data)
        if self.on_spool:
            self.on_spool(h, len(data))

    def discard(self, h: Handle) -> bool:
        """Drop a spooled file that must never reach the repository (a snapshot that
        references data pruned while the daemon was offline); True if it was there."""
        with self._lock:
            p = self._find_spooled(h)
            if p is None:
                return False
            os.unlink(p)
            return True

    def _find_spooled(self, h: Handle) -> str | None:
        for _, sh, p in self.spooled():
            if sh == h:
                return p
        return None

    def _mirror(self, h: Handle, data: bytes) -> None:
        try:  # not fsynced: the mirror only helps to start offline, the repository has the file
            write_private(os.path.join(self.mirror_dir, f"{h.kind.value}.{h.name}"), data, durable=False)
        except OSError:
            pass

    def _mirrored(self, kind: FileKind) -> list[FileInfo]:
        out = []
        prefix = kind.value + "."
        for f in os.listdir(self.mirror_dir):
            if f.startswith(prefix) and ".tmp-" not in f:
                out.append(FileInfo(f[len(prefix):], os.stat(os.path.join(self.mirror_dir, f)).st_size))
        return out

    def _forget_mirrored(self, kind: FileKind, present: set[str]) -> None:
        """Drop the copies of files the repository no longer has: a key removed by ``lbk key
        remove`` or ``passwd`` must not go on opening the repository offline (wiped, as there)."""
        prefix = kind.value + "."
        for f in os.listdir(self.mirror_dir):
            if f.startswith(prefix) and ".tmp-" not in f and f[len(prefix):] not in present:
                try:
                    wipe_file(os.path.join(self.mirror_dir, f))
                except OSError:
                    pass

    # -- Backend protocol -----------------------------------------------------------
    def create(self) -> None:
        self.inner.create()

    def exists(self) -> bool:
        mirrored = os.path.exists(os.path.join(self.mirror_dir, "config.config"))
        try:
            return self.inner.exists() or mirrored
        except BackendError:
            if mirrored:
                return True  # unreachable, but we have seen it: start offline
            raise  # never seen and unreachable: say why (host key, network), not "missing"

    def save(self, h: Handle, data: bytes, *, overwrite: bool = False) -> None:
        if h.kind is FileKind.LOCK:
            self.inner.save(h, data, overwrite=overwrite)  # locks are never spooled
            return
        with self._lock:
            must_spool = bool(self.spooled())
        if not must_spool:
            try:
                self.inner.save(h, data, overwrite=overwrite)
                self.online = True
                if h.kind in _MIRRORED:
                    self._mirror(h, data)
                return
            except NotFound:
                raise
            except BackendError:
                self.online = False
        self._spool(h, data)

    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        p = self._find_spooled(h)
        if p is not None:
            with open(p, "rb") as f:
                data = f.read()
            end = len(data) if length is None else offset + length
            if offset < 0 or end > len(data):
                raise BackendError(f"{h}: short read")
            return data[offset:end]
        try:
            data = self.inner.load(h, offset, length)
            if h.kind in _MIRRORED and offset == 0 and length is None:
                self._mirror(h, data)
            return data
        except NotFound:
            raise
        except BackendError:
            if h.kind not in _MIRRORED:
                raise
            mp = os.path.join(self.mirror_dir, f"{h.kind.value}.{h.name}")
            try:
                with open(mp, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                raise NotFound(f"{h} not found (repository unreachable)") from None
            end = len(data) if length is None else offset + length
            return data[offset:end]

    def stat(self, h: Handle) -> int:
        p = self._find_spooled(h)
        if p is not None:
            return os.stat(p).st_size
        return self.inner.stat(h)

    def list(self, kind: FileKind) -> Iterator[FileInfo]:
        spooled = [FileInfo(sh.name, os.stat(p).st_size) for _, sh, p in self.spooled() if sh.kind is kind]
        try:
            items = list(self.inner.list(kind))
            if kind in _MIRRORED:
                self._forget_mirrored(kind, {i.name for i in items})
        except BackendError:
            if kind not in _MIRRORED:
                raise
            items = self._mirrored(kind)
        names = {i.name for i in items}
        return iter(items + [s for s in spooled if s.name not in names])

    def remove(self, h: Handle) -> None:
        self.inner.remove(h)
        mp = os.path.join(self.mirror_dir, f"{h.kind.value}.{h.name}")
        if os.path.exists(mp):
            os.unlink(mp)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    # -- upload -------------------------------------------------------------------------
    def sync(self, on_synced: Callable[[Handle, int], None] | None = None) -> bool:
        """Upload spooled files in order; True when the spool is empty afterwards."""
        with self._sync_lock:
            for _, h, p in self.spooled():
                with open(p, "rb") as f:
                    data = f.read()
                try:
                    self.inner.save(h, data)
                except AlreadyExists:
                    pass  # uploaded before a crash: files are named by their content
                except BackendError:
                    self.online = False
                    return False
                with self._lock:
                    os.unlink(p)
                self.online = True
                if on_synced:
                    on_synced(h, len(data))
            return True
