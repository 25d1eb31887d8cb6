"""The bandwidth-limiting wrapper keeps the contract and the rate."""

from __future__ import annotations

import time

from lbk.backend.base import FileKind, Handle
from lbk.backend.limit import LimitedBackend
from lbk.backend.mem import MemoryBackend


def test_limited_backend_passes_data_through_and_limits_rate():
    b = LimitedBackend(MemoryBackend(), upload_kib=512, download_kib=1024)
    b.create()
    h = Handle(FileKind.DATA, "ab" * 32)
    data = bytes(1536 * 1024)  # 1.5 MiB at 512 KiB/s with a 1 s burst: >= ~2 s
    t = time.monotonic()
    b.save(h, data)
    b.save(Handle(FileKind.DATA, "cd" * 32), data[:1024])
    elapsed = time.monotonic() - t
    assert 1.5 <= elapsed < 6
    assert b.load(h) == data
    assert [i.size for i in b.list(FileKind.DATA)] == [len(data), 1024]
