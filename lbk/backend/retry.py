"""A backend wrapper that repeats transient failures and verifies every save.

Every command's backend is wrapped in it (``open_backend``). It does two things:

- An operation that fails with ``TransientError`` (EIO on a network or USB file system,
  a busy or stale handle) is repeated after 0.25, 1 and 3 s; the fourth failure is
  final. Each retry is reported through ``on_retry`` (the CLI prints a warning).
  A save whose first attempt failed and whose retry finds the name taken checks the
  stored size: names are hashes of the content, so a complete file of that name is
  the one we wrote, whose acknowledgement was lost. A remove that finds nothing after
  a failed attempt likewise succeeded the first time.
- After each save of a new file (packs, indexes, snapshots, keys: named by their
  content, never rewritten) the stored size is compared with what was given (one
  ``stat``), so a backend that silently stores less (a lying disk, a broken FUSE mount)
  is caught before anything refers to the file: the short file is removed and the save
  repeated; if it stays short, the save fails and no index or snapshot will name it.
  Files saved with ``overwrite`` (locks, the config) are not checked: another writer
  may legitimately have replaced them.

Errors that are not transient (no space left, permission denied, unreachable) pass
through at once: the watch daemon must fall back to its spool without delay. Once an
operation has failed for good, ``abort()`` ends the retries in progress in other
threads, so the command's error is its last word; operations started later retry as
usual (the watch daemon goes on after a failed commit).
"""

from __future__ import annotations

import threading
from typing import Callable, Iterator, TypeVar

from lbk.backend.base import AlreadyExists, Backend, BackendError, FileInfo, FileKind, Handle, NotFound, TransientError

DELAYS = (0.25, 1.0, 3.0)
_T = TypeVar("_T")


class RetryingBackend:
    def __init__(self, inner: Backend, on_retry: Callable[[str], None] | None = None,
                 delays: tuple[float, ...] = DELAYS):
        self.inner = inner
        self.location = inner.location
        self.on_retry = on_retry
        self.delays = delays
        self.retries = 0
        self._generation = 0  # bumped by abort(); an operation retries while it is unchanged
        self._cond = threading.Condition()

    def abort(self) -> None:
        """Give up the retries in progress: they raise their error at once."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def _pause(self, attempt: int, err: BackendError, gen: int) -> None:
        """Wait before the next attempt, or raise ``err`` when aborted meanwhile."""
        delay = self.delays[attempt]
        with self._cond:
            if self._generation != gen:
                raise err
            self.retries += 1
        if self.on_retry is not None:
            self.on_retry(f"{err.message}; retrying in {delay:g} s (attempt {attempt + 2} of {len(self.delays) + 1})")
        with self._cond:
            if self._cond.wait_for(lambda: self._generation != gen, timeout=delay):
                raise err

    def _retry(self, fn: Callable[[], _T]) -> _T:
        gen = self._generation
        for attempt in range(len(self.delays) + 1):
            try:
                return fn()
            except TransientError as e:
                if attempt == len(self.delays):
                    raise
                self._pause(attempt, e, gen)
        raise AssertionError("unreachable")

    # -- Backend protocol -------------------------------------------------------------
    def create(self) -> None:
        self.inner.create()

    def exists(self) -> bool:
        return self._retry(self.inner.exists)

    def save(self, h: Handle, data: bytes, *, overwrite: bool = False) -> None:
        gen = self._generation
        failed = False
        for attempt in range(len(self.delays) + 1):
            last = attempt == len(self.delays)
            try:
                self.inner.save(h, data, overwrite=overwrite)
            except AlreadyExists:
                if failed and self._retry(lambda: self.inner.stat(h)) == len(data):
                    return  # our failed attempt had stored it
                raise
            except TransientError as e:
                failed = True
                if last:
                    raise
                self._pause(attempt, e, gen)
                continue
            if overwrite:
                return  # locks and config: another writer may have replaced it meanwhile
            size = self._retry(lambda: self.inner.stat(h))
            if size == len(data):
                return
            short = TransientError(f"cannot write {h}: the backend stored {size} of {len(data)} bytes")
            try:
                self.inner.remove(h)
            except BackendError:
                pass  # named by a hash of what it should hold: check reports it, prune removes it
            if last:
                raise BackendError(short.message)
            self._pause(attempt, short, gen)
        raise AssertionError("unreachable")

    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        return self._retry(lambda: self.inner.load(h, offset, length))

    def stat(self, h: Handle) -> int:
        return self._retry(lambda: self.inner.stat(h))

    def list(self, kind: FileKind) -> Iterator[FileInfo]:
        return iter(self._retry(lambda: list(self.inner.list(kind))))

    def remove(self, h: Handle) -> None:
        gen = self._generation
        failed = False
        for attempt in range(len(self.delays) + 1):
            try:
                self.inner.remove(h)
                return
            except NotFound:
                if failed:
                    return  # the failed attempt had removed it
                raise
            except TransientError as e:
                if attempt == len(self.delays):
                    raise
                failed = True
                self._pause(attempt, e, gen)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name):  # backend-specific extras (root, sweep_temporary)
        return getattr(self.inner, name)
