"""An in-memory backend for fast unit tests of the engine. It keeps the same contract."""

from __future__ import annotations

import threading
from typing import Iterator

from lbk.backend.base import AlreadyExists, BackendError, FileInfo, FileKind, Handle, NotFound, check_range


class MemoryBackend:
    def __init__(self, location: str = "mem:"):
        self.location = location
        self.files: dict[Handle, bytes] = {}
        self._created = False
        self._lock = threading.Lock()

    def exists(self) -> bool:
        return Handle(FileKind.CONFIG) in self.files

    def create(self) -> None:
        if self.files:
            raise BackendError(f"{self.location} is not empty")
        self._created = True

    def save(self, h: Handle, data: bytes, *, overwrite: bool = False) -> None:
        with self._lock:
            if not overwrite and h in self.files:
                raise AlreadyExists(f"{h} already exists")
            self.files[h] = bytes(data)

    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        try:
            data = self.files[h]
        except KeyError:
            raise NotFound(f"{h} not found") from None
        n = check_range(h, len(data), offset, length)
        return data[offset : offset + n]

    def stat(self, h: Handle) -> int:
        try:
            return len(self.files[h])
        except KeyError:
            raise NotFound(f"{h} not found") from None

    def list(self, kind: FileKind) -> Iterator[FileInfo]:
        with self._lock:
            items = [(h, len(d)) for h, d in self.files.items() if h.kind is kind]
        for h, size in items:
            yield FileInfo(h.name, size)

    def remove(self, h: Handle) -> None:
        with self._lock:
            try:
                del self.files[h]
            except KeyError:
                raise NotFound(f"{h} not found") from None

    def close(self) -> None:
        pass
