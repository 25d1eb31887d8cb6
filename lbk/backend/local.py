"""A repository in a directory on a local or mounted disk.

Layout: ``config``, ``keys/``, ``data/<2 hex>/``, ``index/``, ``snapshots/``, ``locks/``.
Writes go to ``<dir>/.tmp-<random>`` in the destination directory, are fsynced, renamed
into place and the directory is fsynced, so a crash leaves either nothing or the whole
file. Temporary files are never listed and are swept by ``lbk prune``.
"""

from __future__ import annotations

import errno
import os
import secrets
from typing import Iterator

from lbk.backend.base import AlreadyExists, BackendError, FileInfo, FileKind, Handle, NotFound, TransientError, check_range
from lbk.fsutil import fsync_dir, wipe_file

_DIRS = [k for k in FileKind if k is not FileKind.CONFIG]
# errors of network and removable file systems that a repeated call may not meet again
_TRANSIENT = {errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.EBUSY, errno.ESTALE, errno.ECONNRESET,
              errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTDOWN, errno.EHOSTUNREACH}


def _os_error(what: str, e: OSError) -> BackendError:
    """The backend error for an OSError: transient or not, and ENOSPC said plainly."""
    if e.errno == errno.ENOSPC:
        return BackendError(f"{what}: no space left on device")
    cls = TransientError if e.errno in _TRANSIENT else BackendError
    return cls(f"{what}: {e.strerror or e}")


class LocalBackend:
    def __init__(self, path: str):
        self.root = os.path.abspath(os.path.expanduser(path))
        self.location = self.root

    # -- layout -------------------------------------------------------------
    def _dir(self, h: Handle) -> str:
        if h.kind is FileKind.CONFIG:
            return self.root
        if h.kind is FileKind.DATA:
            return os.path.join(self.root, "data", h.name[:2])
        return os.path.join(self.root, h.kind.value)

    def _path(self, h: Handle) -> str:
        return os.path.join(self._dir(h), h.name)

    def exists(self) -> bool:
        return os.path.isfile(os.path.join(self.root, "config"))

    def create(self) -> None:
        if os.path.exists(self.root):
            if not os.path.isdir(self.root):
                raise BackendError(f"{self.root} exists and is not a directory")
            if os.listdir(self.root):
                raise BackendError(f"{self.root} is not empty")
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            for k in _DIRS:
                os.makedirs(os.path.join(self.root, k.value), mode=0o700, exist_ok=True)
            for i in range(256):
                os.makedirs(os.path.join(self.root, "data", f"{i:02x}"), mode=0o700, exist_ok=True)
        except OSError as e:
            raise BackendError(f"cannot create repository at {self.root}: {e.strerror}") from e

    # -- files --------------------------------------------------------------
    def save(self, h: Handle, data: bytes, *, overwrite: bool = False) -> None:
        d = self._dir(h)
        final = os.path.join(d, h.name)
        if not overwrite and os.path.exists(final):
            raise AlreadyExists(f"{h} already exists")
        tmp = os.path.join(d, f".tmp-{secrets.token_hex(8)}")
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileNotFoundError:
                # only a data/<xx> leaf may be recreated; a missing repository (an
                # unplugged disk) must fail, never be recreated on the root file system
                if not os.path.isdir(os.path.dirname(d)) or not self.exists():
                    raise BackendError(f"repository {self.root} is not reachable") from None
                os.makedirs(d, mode=0o700, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            fsync_dir(d)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise _os_error(f"cannot write {h}", e) from e

    def _not_found(self, h: Handle) -> BackendError:
        """NotFound when the repository is there and the file is not; when the repository
        itself is gone (an unplugged disk), it is unreachable, which is no answer about
        the file (the watch daemon then serves its offline copies)."""
        if os.path.isdir(os.path.join(self.root, FileKind.KEY.value)):
            return NotFound(f"{h} not found")
        return BackendError(f"repository {self.root} is not reachable")

    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        try:
            fd = os.open(self._path(h), os.O_RDONLY)
        except FileNotFoundError:
            raise self._not_found(h) from None
        except OSError as e:
            raise _os_error(f"cannot read {h}", e) from e
        try:
            size = os.fstat(fd).st_size
            n = check_range(h, size, offset, length)
            buf = os.pread(fd, n, offset)
            if len(buf) != n:
                raise BackendError(f"{h}: short read")
            return buf
        except OSError as e:
            raise _os_error(f"cannot read {h}", e) from e
        finally:
            os.close(fd)

    def stat(self, h: Handle) -> int:
        try:
            return os.stat(self._path(h)).st_size
        except FileNotFoundError:
            raise self._not_found(h) from None
        except OSError as e:
            raise _os_error(f"cannot stat {h}", e) from e

    def list(self, kind: FileKind) -> Iterator[FileInfo]:
        if not os.path.isdir(self.root):
            raise BackendError(f"repository {self.root} is not reachable")
        if kind is FileKind.CONFIG:
            if self.exists():
                yield FileInfo("config", os.stat(os.path.join(self.root, "config")).st_size)
            return
        top = os.path.join(self.root, kind.value)
        dirs = [top]
        if kind is FileKind.DATA:
            try:
                dirs = [e.path for e in os.scandir(top) if e.is_dir(follow_symlinks=False)]
            except FileNotFoundError:
                return
        for d in dirs:
            try:
                entries = list(os.scandir(d))
            except FileNotFoundError:
                continue
            except OSError as e:
                raise _os_error(f"cannot list {d}", e) from e
            for e in entries:
                if e.name.startswith(".") or not e.is_file(follow_symlinks=False):
                    continue
                try:
                    yield FileInfo(e.name, e.stat(follow_symlinks=False).st_size)
                except FileNotFoundError:
                    continue

    def remove(self, h: Handle) -> None:
        try:
            os.unlink(self._path(h))
        except FileNotFoundError:
            raise self._not_found(h) from None
        except OSError as e:
            raise _os_error(f"cannot remove {h}", e) from e

    def wipe(self, h: Handle) -> None:
        """Remove a file after overwriting its bytes in place (an extra beyond the Backend
        protocol, used by ``Repository.remove_wiped`` for key files)."""
        try:
            wipe_file(self._path(h))
        except FileNotFoundError:
            raise NotFound(f"{h} not found") from None
        except OSError as e:
            raise BackendError(f"cannot wipe {h}: {e.strerror}") from e

    def sweep_temporary(self) -> int:
        """Remove leftover ``.tmp-*`` files of interrupted writes; returns the count."""
        n = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                if f.startswith(".tmp-"):
                    try:
                        os.unlink(os.path.join(dirpath, f))
                        n += 1
                    except OSError:
                        pass
        return n

    def close(self) -> None:
        pass
