"""Durable local writes (and wiping removals), shared by the local backend, the cache and the spool."""

from __future__ import annotations

import os
import secrets

from lbk import faults


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


def wipe_file(path: str) -> None:
    """Overwrite a file's bytes in place (same inode) with random bytes, fsync, unlink it
    and fsync its directory, so what it held (a sealed master key) does not linger in the
    blocks the file system frees. No help where the file system or the device keeps old
    blocks elsewhere (copy-on-write, data journaling, snapshots, SSD wear levelling)."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        done = 0
        while done < size:
            done += os.pwrite(fd, os.urandom(min(size - done, 1 << 20)), done)
        os.fsync(fd)
    finally:
        os.close(fd)
    faults.point("wipe")  # tests kill between the overwrite and the unlink (lbk/faults.py)
    os.unlink(path)
    fsync_dir(os.path.dirname(path) or ".")
