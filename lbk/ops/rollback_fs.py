"""In-place changes beneath one directory that never follow a symlink (for rollback).

``SafeTree(anchor)`` reaches every path beneath ``anchor`` through directory file
descriptors opened one component at a time with ``O_NOFOLLOW``, so a directory that is
swapped for a symlink while we work is refused (ELOOP/ENOTDIR), never followed; ``anchor``
itself is trusted (the caller resolved it). New content is written beside its
destination under a temporary name (``O_EXCL|O_NOFOLLOW``), gets its metadata on the open
file, is fsynced and renamed over the destination; symlinks and special files are made
under a temporary name and renamed too. Metadata of an existing entry is changed through
an ``O_PATH|O_NOFOLLOW`` descriptor (reached via ``/proc/self/fd``), never through a name
that could have become a symlink. Owners are set only when running as root.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from contextlib import contextmanager
from typing import Callable, Iterator

from lbk.model import BLOCKDEV, CHARDEV, FIFO, SYMLINK, Node
from lbk.ops.restore_content import write_sparse
from lbk.ops.walk import node_type

TMP_PREFIX = b".lbk-rollback-"
_PROC_FD = os.path.isdir("/proc/self/fd")


class ContentError(Exception):
    """The content put back does not have the size the node records."""


def _tmp_name() -> bytes:
    return TMP_PREFIX + secrets.token_hex(6).encode()


class SafeTree:
    def __init__(self, anchor: bytes):
        self.anchor = anchor
        self.is_root = os.geteuid() == 0

    @contextmanager
    def at(self, path: bytes) -> Iterator[tuple[int, bytes]]:
        """(directory fd, name) for ``path`` (strictly beneath the anchor)."""
        parts = path[len(self.anchor):].strip(b"/").split(b"/")
        fd = os.open(self.anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for c in parts[:-1]:
                nfd = os.open(c, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nfd
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def remove(self, path: bytes) -> None:
        with self.at(path) as (dfd, name):
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=dfd)  # fd-based: never follows symlinks inside
            else:
                os.unlink(name, dir_fd=dfd)

    def mkdir(self, path: bytes) -> None:
        with self.at(path) as (dfd, name):
            try:
                os.mkdir(name, 0o700, dir_fd=dfd)
            except FileExistsError:
                if not stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                    raise

    def write_file(self, path: bytes, node: Node, chunks: Callable[[], Iterator[bytes]]) -> int:
        """Write ``chunks()`` with ``node``'s metadata beside ``path``, then rename it over."""
        tmp = _tmp_name()
        with self.at(path) as (dfd, name):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            try:
                pos = 0
                for data in chunks():
                    write_sparse(fd, data, pos)
                    pos += len(data)
                if pos != node.size:
                    raise ContentError(f"content length {pos} does not match the recorded size {node.size}")
                os.ftruncate(fd, pos)
                if self.is_root:
                    os.fchown(fd, node.uid, node.gid)
                set_xattrs(fd, node.xattrs)
                os.fchmod(fd, node.mode)
                os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                os.unlink(tmp, dir_fd=dfd)
                raise
            os.close(fd)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        return pos

    def make_special(self, path: bytes, node: Node) -> None:
        """A symlink, FIFO or device node (as root), made beside ``path`` and renamed over."""
        tmp = _tmp_name()
        with self.at(path) as (dfd, name):
            if node.type == SYMLINK:
                os.symlink(node.target, tmp, dir_fd=dfd)
            elif node.type == FIFO:
                os.mkfifo(tmp, 0o600, dir_fd=dfd)
            elif node.type in (CHARDEV, BLOCKDEV):
                if not self.is_root:
                    raise OSError(errno.EPERM, "device nodes can only be made as root")
                kind = stat.S_IFCHR if node.type == CHARDEV else stat.S_IFBLK
                os.mknod(tmp, kind | 0o600, node.rdev, dir_fd=dfd)
            else:
                return
            try:
                self._meta_at(dfd, tmp, node)
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                _unlink_quietly(dfd, tmp)
                raise

    def link(self, path: bytes, target: bytes) -> None:
        """Make ``path`` a hardlink of ``target`` (replacing what is there)."""
        tmp = _tmp_name()
        with self.at(target) as (sfd, sname), self.at(path) as (dfd, name):
            os.link(sname, tmp, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            try:
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            finally:
                _unlink_quietly(dfd, tmp)  # rename is a no-op when both already name one inode

    def set_metadata(self, path: bytes, node: Node) -> None:
        with self.at(path) as (dfd, name):
            self._meta_at(dfd, name, node)

    def _meta_at(self, dfd: int, name: bytes, node: Node) -> None:
        """Owner, xattrs, mode and mtime of an existing entry (atime is kept)."""
        if node.type == SYMLINK:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                raise OSError(errno.ESTALE, "changed since the plan was made (not a symlink any more)")
            if self.is_root:
                os.chown(name, node.uid, node.gid, dir_fd=dfd, follow_symlinks=False)
            os.utime(name, ns=(st.st_atime_ns, node.mtime_ns), dir_fd=dfd, follow_symlinks=False)
            return
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            st = os.fstat(fd)
            if node_type(st.st_mode) != node.type:
                raise OSError(errno.ESTALE, f"changed since the plan was made (not a {node.type} any more)")
            target: bytes = f"/proc/self/fd/{fd}".encode() if _PROC_FD else name
            kw = {} if _PROC_FD else {"dir_fd": dfd}
            if self.is_root and (st.st_uid, st.st_gid) != (node.uid, node.gid):
                os.chown(target, node.uid, node.gid, **kw)  # before chmod: chown clears setuid
            if _PROC_FD:
                set_xattrs(target, node.xattrs)
            os.chmod(target, node.mode, **kw)
            os.utime(target, ns=(st.st_atime_ns, node.mtime_ns), **kw)
        finally:
            os.close(fd)


def set_xattrs(target, wanted: list[tuple[bytes, bytes]]) -> None:
    """Make the extended attributes exactly ``wanted`` (those the kernel lets us change)."""
    want = {bytes(k): bytes(v) for k, v in wanted}
    try:
        have = [os.fsencode(n) for n in os.listxattr(target)]
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for n in have:
        if n not in want:
            try:
                os.removexattr(target, n)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.ENODATA, errno.EACCES):
                    raise
    for n, v in want.items():
        try:
            os.setxattr(target, n, v)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EPERM):
                raise


def _unlink_quietly(dfd: int, name: bytes) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass
