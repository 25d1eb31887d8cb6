"""Durable local writes, shared by the local backend, the cache and the spool."""

from __future__ import annotations

import os
import secrets


def fsync_dir(d: str) -> None:
    """Make a rename or unlink in directory ``d`` durable."""
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, *, durable: bool = True, sync_dir: bool = False) -> None:
    """Write a 0600 file under a temporary name and rename it into place, so readers see
    the old file or the whole new one. ``durable`` fsyncs the data, ``sync_dir`` also the
    rename (for files whose presence itself must survive a crash)."""
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(os.path.dirname(path) or ".")
