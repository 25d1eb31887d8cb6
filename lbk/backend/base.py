"""The Backend protocol: named bytes in a few folders, nothing more.

A backend knows nothing about encryption, packs or snapshots. It stores opaque files
under a kind (``FileKind``) and a name, and its docstrings below are the whole contract;
``tests/backend/test_contract.py`` runs the same suite against every implementation.
Names are validated here, at the boundary, so that no backend can be asked to write
outside its root.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Iterator, Protocol, runtime_checkable

from lbk.errors import AlreadyExists, BackendError, NotFound, TransientError

__all__ = ["FileKind", "Handle", "Backend", "NotFound", "AlreadyExists", "BackendError", "TransientError", "FileInfo"]


class FileKind(enum.Enum):
    CONFIG = "config"
    KEY = "keys"
    DATA = "data"
    INDEX = "index"
    SNAPSHOT = "snapshots"
    LOCK = "locks"


_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class Handle:
    """A file in a backend. ``config`` is the only kind with a fixed name."""

    kind: FileKind
    name: str = "config"

    def __post_init__(self) -> None:
        if self.kind is FileKind.CONFIG:
            if self.name != "config":
                raise ValueError(f"invalid config name {self.name!r}")
        elif not _HEX64.match(self.name):
            raise ValueError(f"invalid {self.kind.value} name {self.name!r}")

    def __str__(self) -> str:
        return self.kind.value if self.kind is FileKind.CONFIG else f"{self.kind.value}/{self.name}"


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int


@runtime_checkable
class Backend(Protocol):
    """Storage for repository files.

    Contract (every implementation, checked by the contract suite):

    - ``save(h, data)`` is atomic: after a crash the file is either absent or complete,
      never partial, and once ``save`` returns the data is durable. Saving a name that
      exists raises ``AlreadyExists`` unless ``overwrite=True`` (only locks use that).
    - ``load(h, offset, length)`` returns exactly ``length`` bytes (or the rest of the
      file when ``length`` is None); a missing file raises ``NotFound``; a range that
      runs past the end raises ``BackendError`` (a short read is never returned).
    - ``stat(h)`` returns the size; ``NotFound`` when missing.
    - ``list(kind)`` yields every complete file of that kind (never a temporary file).
    - ``remove(h)`` deletes; ``NotFound`` when missing.
    - ``create()`` makes an empty repository layout and refuses a non-empty target
      (``BackendError``); ``exists()`` tells whether a repository config is present.
    - Names never contain a path separator; the ``Handle`` constructor checks them.
    - Errors are ``BackendError``; a failure that may pass when the call is repeated is a
      ``TransientError`` (the retrying wrapper in ``retry.py`` repeats those).
    """

    location: str

    def create(self) -> None: ...

    def exists(self) -> bool: ...

    def save(self, h: Handle, data: bytes, *, overwrite: bool = False) -> None: ...

    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes: ...

    def stat(self, h: Handle) -> int: ...

    def list(self, kind: FileKind) -> Iterator[FileInfo]: ...

    def remove(self, h: Handle) -> None: ...

    def close(self) -> None: ...


def check_range(h: Handle, size: int, offset: int, length: int | None) -> int:
    """Validate a read range against a file size; return the length to read."""
    if offset < 0 or offset > size or (length is not None and length < 0):
        raise BackendError(f"{h}: invalid range offset={offset} length={length}")
    if length is None:
        length = size - offset
    if offset + length > size:
        raise BackendError(f"{h}: short read: want {offset}+{length} bytes, file has {size}")
    return length
