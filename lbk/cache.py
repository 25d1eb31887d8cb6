"""The local cache: an accelerator only. Deleting it never changes a result.

Per repository id, under the cache dir (created 0700, files 0600):

    <cache>/<repo id>/files      metadata of files seen by the last backups, so unchanged
                                 files (same size, mtime, ctime, inode) are not re-read,
                                 and a signature per directory, so an unchanged directory
                                 reuses its tree id without rebuilding its nodes

In memory it is ``files``: path bytes -> ``(size, mtime_ns, ctime_ns, inode, content ids
joined)`` and ``dirs``: directory path -> ``(signature, tree id)``, where the signature
is a BLAKE3 over the lstat of every entry kept (and the subtree ids). Entries are
trusted only while the ids they name are in the repository index. On disk it is a
columnar binary file (docs/FORMAT.md, "Local cache") whose every count and length is
checked against the file's size before anything is allocated: a damaged cache file is
discarded (the next backup reads everything once), never a reason to fail or to
allocate more than the file holds. Written atomically.

    files   = header || paths || numbers || ids || dirs
    header  = magic:8 "LBKCACHE" || version:4 (=3) || n_files:8 || n_dirs:8 || paths_len:8 || ids_len:8
    paths   = paths_len bytes: n_files file paths, then n_dirs directory paths, each + NUL
    numbers = five columns of n_files integers (8 bytes each): size, mtime_ns, ctime_ns
              (int64), inode, number of content ids (uint64)
    ids     = ids_len bytes: every file's content ids (32 bytes each), in file order
    dirs    = n_dirs x (signature:32 || tree id:32)

Beside it: ``catalog.sqlite`` (lbk/catalog.py) and ``snapshots``, with
``<cache>/locations/`` (lbk/refcache.py, for shell completion).
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from itertools import accumulate

import platformdirs

from lbk.errors import FormatError
from lbk.fsutil import write_atomic

CACHEDIR_TAG = (
    b"Signature: 8a477f597d28d172789f06886806bc55\n"
    b"# This file is a cache directory tag created by lbk.\n"
)
FILES_VERSION = 3
MAGIC = b"LBKCACHE"
_HEADER = struct.Struct("<8sIQQQQ")
_I64 = 2**63


def default_cache_dir() -> str:
    return os.environ.get("LBK_CACHE_DIR") or platformdirs.user_cache_dir("lbk")


def private_dir(path: str) -> str:
    """Create ``path`` (and parents) with mode 0700 and return it."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: str, data: bytes, durable: bool = True) -> None:
    """Atomically write a 0600 file; ``durable=False`` skips the fsync (status files that
    are rewritten constantly and lose nothing if a crash leaves an older copy)."""
    write_atomic(path, data, durable=durable)


class Cache:
    def __init__(self, root: str, repo_id: str):
        self.root = private_dir(os.path.abspath(root))
        tag = os.path.join(self.root, "CACHEDIR.TAG")
        if not os.path.exists(tag):
            write_private(tag, CACHEDIR_TAG)
        self.dir = private_dir(os.path.join(self.root, repo_id))

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def load(self) -> tuple[dict[bytes, tuple], dict[bytes, tuple[bytes, bytes]]]:
        """(files, dirs); both empty when the cache is missing, damaged or of another version."""
        try:
            with open(self.path("files"), "rb") as f:
                return decode_files(f.read())
        except (OSError, FormatError):
            return {}, {}

    def load_files(self) -> dict[bytes, tuple]:
        return self.load()[0]

    def save(self, files: dict[bytes, tuple], dirs: dict[bytes, tuple[bytes, bytes]]) -> None:
        write_private(self.path("files"), encode_files(files, dirs))

    def save_files(self, files: dict[bytes, tuple]) -> None:
        """Replace the files part, keeping the directory signatures."""
        self.save(files, self.load()[1])


def _cacheable(path: bytes, e: tuple) -> bool:
    """Entries the format holds; anything else (a time past 2262) is simply not cached."""
    return (b"\0" not in path and len(e) == 5 and all(type(v) is int and -_I64 <= v < _I64 for v in e[:3])
            and type(e[3]) is int and 0 <= e[3] < 2 * _I64 and len(e[4]) % 32 == 0)


def _columns(files: dict[bytes, tuple]) -> tuple[bytes, list[array], bytes] | None:
    """(paths, number columns, ids) of ``files`` in one pass of C loops, or None when
    an entry does not fit the format (then the caller filters entry by entry)."""
    if not files:
        return b"", [array(t) for t in "qqqQQ"], b""
    sizes, mtimes, ctimes, inodes, ids = zip(*files.values())
    counts = [len(x) >> 5 for x in ids]
    joined = b"".join(ids)
    paths = b"\0".join(files) + b"\0"
    if paths.count(b"\0") != len(files) or 32 * sum(counts) != len(joined):
        return None
    try:
        cols = [array(t, c) for t, c in zip("qqqQQ", (sizes, mtimes, ctimes, inodes, counts))]
    except (OverflowError, TypeError):
        return None
    return paths, cols, joined


def encode_files(files: dict[bytes, tuple], dirs: dict[bytes, tuple[bytes, bytes]]) -> bytes:
    cols = _columns(files)
    if cols is None:
        files = {p: e for p, e in files.items() if _cacheable(p, e)}
        cols = _columns(files)
        assert cols is not None
    fpaths, numbers, ids = cols
    dirs = {p: e for p, e in dirs.items() if b"\0" not in p and len(e) == 2 and len(e[0]) == len(e[1]) == 32}
    paths = fpaths + b"".join(p + b"\0" for p in dirs)
    if sys.byteorder != "little":  # pragma: no cover
        for c in numbers:
            c.byteswap()
    head = _HEADER.pack(MAGIC, FILES_VERSION, len(files), len(dirs), len(paths), len(ids))
    return b"".join([head, paths, *(c.tobytes() for c in numbers), ids, *(s + t for s, t in dirs.values())])


def decode_files(data: bytes) -> tuple[dict[bytes, tuple], dict[bytes, tuple[bytes, bytes]]]:
    """The cache file's (files, dirs); FormatError when it is not exactly what
    ``encode_files`` writes. Sizes are checked before anything is allocated."""
    if len(data) < _HEADER.size:
        raise FormatError("files cache: truncated")
    magic, version, nf, nd, plen, ilen = _HEADER.unpack_from(data)
    if magic != MAGIC or version != FILES_VERSION:
        raise FormatError("files cache: not a version-3 files cache")
    if _HEADER.size + plen + 40 * nf + ilen + 64 * nd != len(data) or ilen % 32:
        raise FormatError("files cache: length does not match its header")
    pos = _HEADER.size
    paths = data[pos : pos + plen].split(b"\0")
    if len(paths) != nf + nd + 1 or paths[-1]:
        raise FormatError("files cache: wrong number of paths")
    pos += plen
    cols = []
    for t in "qqqQQ":
        c = array(t)
        c.frombytes(data[pos : pos + 8 * nf])
        if sys.byteorder != "little":  # pragma: no cover
            c.byteswap()
        cols.append(c)
        pos += 8 * nf
    sizes, mtimes, ctimes, inodes, counts = cols
    if 32 * sum(counts) != ilen:
        raise FormatError("files cache: content id counts do not match")
    ends = [e << 5 for e in accumulate(counts)]
    ids = data[pos : pos + ilen]
    joined = [ids[a:b] for a, b in zip([0, *ends], ends)]
    files = dict(zip(paths[:nf], zip(sizes, mtimes, ctimes, inodes, joined)))
    pos += ilen
    sigs = [data[i : i + 32] for i in range(pos, len(data), 64)]
    trees = [data[i + 32 : i + 64] for i in range(pos, len(data), 64)]
    return files, dict(zip(paths[nf : nf + nd], zip(sigs, trees)))
