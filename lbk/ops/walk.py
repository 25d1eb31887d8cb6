"""Turning file-system entries into nodes: stat, xattrs, owner names, reading files.

Shared by backup and (later) watch: one place knows how a path becomes a ``Node`` and
how a file's bytes become chunks in the repository.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
import threading
from functools import lru_cache

import pyfastcdc

from lbk.model import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK, Node
from lbk.repo.pack import DATA

READ_RETRIES = 3
# Files up to this size are read whole and cut in memory (pyfastcdc's cut_buf, the same
# cut points as its stream): its stream reader zero-fills a 16 MiB buffer per file, under
# the GIL - about 1 s of a first backup with 500 files of 0.25-16 MiB.
WHOLE_FILE = 16 << 20


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=4096)
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def node_type(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISFIFO(mode):
        return FIFO
    if stat.S_ISCHR(mode):
        return CHARDEV
    if stat.S_ISBLK(mode):
        return BLOCKDEV
    if stat.S_ISSOCK(mode):
        return SOCKET
    return None


def read_xattrs(path: bytes) -> list[tuple[bytes, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for n in sorted(names):
        try:
            out.append((os.fsencode(n), os.getxattr(path, n, follow_symlinks=False)))
        except OSError:
            continue
    return out


def make_node(path: bytes, name: bytes, st: os.stat_result) -> Node:
    """A node with the metadata of ``st`` (content and subtree are filled in later)."""
    t = node_type(st.st_mode)
    node = Node(
        name=name,
        type=t or FILE,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        user=user_name(st.st_uid),
        group=group_name(st.st_gid),
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        dev=st.st_dev,
        nlink=st.st_nlink,
    )
    if t == FILE:
        node.size = st.st_size
    elif t == SYMLINK:
        node.target = os.readlink(path)
    elif t in (CHARDEV, BLOCKDEV):
        node.rdev = st.st_rdev
    node.xattrs = read_xattrs(path)
    return node


class FileChanged(Exception):
    """The file changed while it was read; the caller may retry."""


class Reader:
    """Reads files into content chunks, one FastCDC instance per thread."""

    def __init__(self, repo):
        self.repo = repo
        c = repo.config.chunker
        self._params = dict(avg_size=c.avg, min_size=c.min, max_size=c.max, seed=c.seed)
        self._local = threading.local()

    def _cdc(self) -> pyfastcdc.FastCDC:
        cdc = getattr(self._local, "cdc", None)
        if cdc is None:
            cdc = self._local.cdc = pyfastcdc.FastCDC(**self._params)
        return cdc

    def read(self, path: bytes, expect: os.stat_result) -> tuple[list[bytes], int, int, bool]:
        """Chunk and store a file. Returns (content ids, size, bytes added, changed while read).

        A read that races a write (size or mtime differs before/after) is retried; after
        ``READ_RETRIES`` the last version is kept and flagged.
        """
        for attempt in range(READ_RETRIES):
            try:
                ids, size, added = self._read_once(path, expect)
                return ids, size, added, False
            except FileChanged:
                expect = os.lstat(path)
                if attempt == READ_RETRIES - 1:
                    ids, size, added = self._read_once(path, expect, strict=False)
                    return ids, size, added, True
        raise AssertionError("unreachable")

    def _read_once(self, path: bytes, expect: os.stat_result, strict: bool = True):
        # O_NONBLOCK: a FIFO put where a file was must not block the open (fstat refuses it)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOATIME", 0)
        try:
            fd = os.open(path, flags)
        except PermissionError:
            fd = os.open(path, flags & ~getattr(os, "O_NOATIME", 0))
        except OSError as e:
            if e.errno == errno.EPERM and flags & getattr(os, "O_NOATIME", 0):
                fd = os.open(path, flags & ~os.O_NOATIME)
            else:
                raise
        if expect.st_size <= WHOLE_FILE:
            try:
                got = self._read_whole(fd, expect, strict)
            except BaseException:
                os.close(fd)
                raise
            if got is not None:
                os.close(fd)
                return got
            os.lseek(fd, 0, os.SEEK_SET)  # it grew past WHOLE_FILE; not strict: stream it
        with open(fd, "rb", buffering=0) as f:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise OSError(errno.EINVAL, "not a regular file any more")
            if strict and (before.st_size != expect.st_size or before.st_mtime_ns != expect.st_mtime_ns):
                raise FileChanged
            ids, size, added = self._store(self._cdc().cut_stream(f))
            after = os.fstat(fd)
        if strict and (after.st_size != before.st_size or after.st_mtime_ns != before.st_mtime_ns or size != before.st_size):
            raise FileChanged
        return ids, size, added

    def _read_whole(self, fd: int, expect: os.stat_result, strict: bool):
        """A file of at most WHOLE_FILE bytes: read to its end, then one fstat, compared
        with the walk's lstat (size, mtime, and the bytes read); cut in memory. Most files
        are small, and every system call hands the GIL to another thread, so this path
        makes as few as it can. None when the file grew past WHOLE_FILE and ``strict`` is off."""
        buf = os.read(fd, expect.st_size + 1)
        while len(buf) <= WHOLE_FILE:
            more = os.read(fd, min(WHOLE_FILE + 1 - len(buf), 1 << 20))
            if not more:
                break
            buf += more
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode):
            raise OSError(errno.EINVAL, "not a regular file any more")
        if len(buf) > WHOLE_FILE:
            if strict:
                raise FileChanged
            return None
        if strict and (len(buf) != expect.st_size or after.st_size != expect.st_size
                       or after.st_mtime_ns != expect.st_mtime_ns):
            raise FileChanged
        if not buf:
            return [], 0, 0
        if len(buf) <= self.repo.config.chunker.min:  # one chunk: no cutting
            bid, new = self.repo.save_blob(DATA, buf)
            return [bid], len(buf), len(buf) if new else 0
        return self._store(self._cdc().cut_buf(buf))

    def _store(self, chunks) -> tuple[list[bytes], int, int]:
        """Save each chunk: (content ids, bytes, bytes newly stored)."""
        save = self.repo.save_blob
        ids: list[bytes] = []
        size = added = 0
        for chunk in chunks:
            bid, new = save(DATA, chunk.data)
            ids.append(bid)
            size += chunk.length
            if new:
                added += chunk.length
        return ids, size, added
