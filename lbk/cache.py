"""The local cache: an accelerator only. Deleting it never changes a result.

Per repository id, under the cache dir (created 0700, files 0600):

    <cache>/<repo id>/files      metadata of files seen by the last backups, so unchanged
                                 files (same size, mtime, ctime, inode) are not re-read,
                                 and a signature per directory, so an unchanged directory
                                 reuses its tree id without rebuilding its nodes

It is ``marshal``-encoded ``(2, files, dirs)``: ``files`` maps path bytes to ``(size,
mtime_ns, ctime_ns, inode, content ids joined)``, ``dirs`` maps a directory path to
``(signature, tree id)`` where the signature is a BLAKE3 over the lstat of every entry
kept (and the subtree ids). Entries are trusted only while the ids they name are in the
repository index. Written atomically.

Beside it: ``catalog.sqlite`` (lbk/catalog.py) and ``snapshots``, with
``<cache>/locations/`` (lbk/refcache.py, for shell completion).
"""

from __future__ import annotations

import marshal
import os

import platformdirs

from lbk.fsutil import write_atomic

CACHEDIR_TAG = (
    b"Signature: 8a477f597d28d172789f06886806bc55\n"
    b"# This file is a cache directory tag created by lbk.\n"
)
FILES_VERSION = 2


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
                version, files, dirs = marshal.load(f)
            if version != FILES_VERSION or not isinstance(files, dict) or not isinstance(dirs, dict):
                return {}, {}
            return files, dirs
        except (OSError, ValueError, EOFError, TypeError):
            return {}, {}

    def load_files(self) -> dict[bytes, tuple]:
        return self.load()[0]

    def save(self, files: dict[bytes, tuple], dirs: dict[bytes, tuple[bytes, bytes]]) -> None:
        write_private(self.path("files"), marshal.dumps((FILES_VERSION, files, dirs)))

    def save_files(self, files: dict[bytes, tuple]) -> None:
        """Replace the files part, keeping the directory signatures."""
        self.save(files, self.load()[1])
