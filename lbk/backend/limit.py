"""A backend wrapper that limits upload and download bandwidth (--limit-upload/-download).

A token bucket per direction, shared by all threads: each save/load waits until its
bytes fit the budget. Burst is one second of budget, so small objects are not delayed
while the average rate stays at the limit.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

from lbk.backend.base import Backend, FileInfo, FileKind, Handle


class TokenBucket:
    def __init__(self, rate_bytes: float):
        self.rate = float(rate_bytes)
        self.tokens = self.rate
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
            self.last = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class LimitedBackend:
    def __init__(self, inner: Backend, upload_kib: int | None = None, download_kib: int | None = None):
        self.inner = inner
        self.location = inner.location
        self.up = TokenBucket(upload_kib * 1024) if upload_kib else None
        self.down = TokenBucket(download_kib * 1024) if download_kib else None

    def create(self) -> None:
        self.inner.create()

    def exists(self) -> bool:
        return self.inner.exists()

    def save(self, h: Handle, data: bytes, *, overwrite: bool = False) -> None:
        if self.up:
            self.up.take(len(data))
        self.inner.save(h, data, overwrite=overwrite)

    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.load(h, offset, length)
        if self.down:
            self.down.take(len(data))
        return data

    def stat(self, h: Handle) -> int:
        return self.inner.stat(h)

    def list(self, kind: FileKind) -> Iterator[FileInfo]:
        return self.inner.list(kind)

    def remove(self, h: Handle) -> None:
        self.inner.remove(h)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name):  # backend-specific extras (root, sweep_temporary)
        return getattr(self.inner, name)
