"""A backend wrapper that fails on purpose, for the fault tests (see ``lbk/faults.py``).

It sits directly above the real backend, below the retrying wrapper, so an injected
I/O error meets the same retries a real one would. Installed by ``open_backend`` only
when ``LBK_TEST_FAULTS`` is set; tests may also wrap a backend with it directly.
"""

from __future__ import annotations

from typing import Iterator

from lbk.backend.base import Backend, BackendError, FileInfo, FileKind, Handle, TransientError
from lbk.faults import Faults, die


class FaultyBackend:
    def __init__(self, inner: Backend, faults: Faults):
        self.inner = inner
        self.faults = faults
        self.location = inner.location

    def _wrote(self, line: str) -> None:
        self.faults.trace(line)
        if "kill" in self.faults.count("write"):
            die()

    def create(self) -> None:
        self.inner.create()

    def exists(self) -> bool:
        return self.inner.exists()

    def save(self, h: Handle, data: bytes, *, overwrite: bool = False) -> None:
        actions = self.faults.count("save")
        if "enospc" in actions:
            raise BackendError(f"cannot write {h}: no space left on device")
        if "eio" in actions:
            raise TransientError(f"cannot write {h}: Input/output error")
        if "short" in actions:
            data = bytes(data[: len(data) // 2])
        self.inner.save(h, data, overwrite=overwrite)
        self._wrote(f"save {h} {len(data)}")

    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        if "eio-read" in self.faults.count("load"):
            raise TransientError(f"cannot read {h}: Input/output error")
        return self.inner.load(h, offset, length)

    def stat(self, h: Handle) -> int:
        return self.inner.stat(h)

    def list(self, kind: FileKind) -> Iterator[FileInfo]:
        return self.inner.list(kind)

    def remove(self, h: Handle) -> None:
        self.inner.remove(h)
        self._wrote(f"remove {h}")

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name):  # backend-specific extras (root, sweep_temporary, wipe)
        extra = getattr(self.inner, name)
        if name != "wipe":
            return extra

        def wipe(h: Handle) -> None:  # a write too: counted and traced like a remove
            extra(h)
            self._wrote(f"wipe {h}")

        return wipe
