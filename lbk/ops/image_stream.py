"""Turning a disk's byte stream into extents: zero runs are recorded, the rest is chunked.

The source arrives as blocks of bytes at known offsets and as holes (known zeros).
``ExtentBuilder`` finds runs of zero bytes (byte-exact, wherever they start), keeps runs
of at least ``zero_min`` bytes as zero extents and hands everything else, in order, to a
chunk stream. A zero run shorter than that stays inside the data (it compresses to
nothing), so a lightly used region does not shatter into tiny chunks.

Two chunk streams exist: content-defined (FastCDC with the repository's parameters and
seed, the default, so a file's chunks inside an image are the same as in a file backup)
and fixed-size blocks aligned to absolute offsets (kept for the benchmark comparison;
see docs/FORMAT-image.md "Chunking").
"""

from __future__ import annotations

from typing import Callable

import pyfastcdc

from lbk.ops.image_format import DATA_EXTENT, ZERO_EXTENT, Layout

ZERO_BLOCK = 64 * 1024  # restore leaves all-zero blocks of this size unwritten (holes)


def is_zero(buf, start: int = 0, end: int | None = None) -> bool:
    """Whether buf[start:end] is all zeros (a memcmp against a zero buffer, no copy)."""
    view = memoryview(buf)[start:end]
    step = len(_ZEROS)
    for i in range(0, len(view), step):
        if not _ZEROS.startswith(view[i : i + step]):
            return False
    return True


def zeros_from(buf: bytes, start: int, end: int) -> int:
    """How many zero bytes buf[start:end] begins with."""
    n = start
    for step in (_Z64K, _Z4K):
        while n + len(step) <= end and buf.startswith(step, n):
            n += len(step)
    tail = buf[n : min(n + 4096, end)]
    return n - start + len(tail) - len(tail.lstrip(b"\0"))


def zeros_before(buf: bytes, end: int, start: int) -> int:
    """How many zero bytes buf[start:end] ends with."""
    n = end
    for step in (_Z64K, _Z4K):
        while n - len(step) >= start and buf.startswith(step, n - len(step)):
            n -= len(step)
    head = buf[max(start, n - 4096) : n]
    return end - n + len(head) - len(head.rstrip(b"\0"))


_ZEROS = bytes(16 << 20)
_Z64K = bytes(64 << 10)
_Z4K = bytes(4096)


class CdcStream:
    """Content-defined chunks of a stream that arrives in pieces (same cut points as one buffer).

    FastCDC decides a cut from the bytes after the previous cut only, so cutting the
    concatenation of what is pending and keeping the last (possibly truncated) chunk as
    the start of the next round yields the cut points of the whole stream."""

    def __init__(self, avg: int, min_: int, max_: int, seed: int):
        self.cdc = pyfastcdc.FastCDC(avg, min_size=min_, max_size=max_, seed=seed)
        self.threshold = max(2 * max_, 16 << 20)
        self.parts: list = []
        self.pending = 0

    def feed(self, view, offset: int) -> list[memoryview]:
        self.parts.append(view)
        self.pending += len(view)
        if self.pending < self.threshold:
            return []
        return self._cut(final=False)

    def end(self) -> list[memoryview]:
        return self._cut(final=True) if self.pending else []

    def _cut(self, final: bool) -> list[memoryview]:
        buf = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        chunks = [c.data for c in self.cdc.cut_buf(buf)]
        if final or not chunks:
            self.parts, self.pending = [], 0
            return chunks
        last = chunks.pop()
        self.parts, self.pending = [last], len(last)
        return chunks


class FixedStream:
    """Fixed-size chunks whose boundaries sit at multiples of ``size`` in the image."""

    def __init__(self, size: int):
        self.size = size
        self.parts: list = []
        self.start = 0
        self.pending = 0

    def feed(self, view, offset: int) -> list[memoryview]:
        if not self.parts:
            self.start = offset
        self.parts.append(view)
        self.pending += len(view)
        first = (self.start // self.size + 1) * self.size - self.start
        if self.pending < first:
            return []
        buf = memoryview(self.parts[0] if len(self.parts) == 1 else b"".join(self.parts))
        out = [buf[:first]]
        pos = first
        while pos + self.size <= len(buf):
            out.append(buf[pos : pos + self.size])
            pos += self.size
        rest = buf[pos:]
        self.start += pos
        self.parts, self.pending = ([rest] if len(rest) else []), len(rest)
        return out

    def end(self) -> list[memoryview]:
        if not self.pending:
            return []
        buf = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        self.parts, self.pending = [], 0
        return [memoryview(buf)]


class ExtentBuilder:
    """Consumes the source in order and calls ``on_chunk(view)`` for every data chunk, in
    order; ``layout`` gets one data extent per chunk and the zero extents between them.

    Zero runs are found byte-exactly (not on aligned blocks), so where they begin and end
    depends on the content only: when files move on disk, the data between the runs is
    cut into the same chunks as before."""

    def __init__(self, layout: Layout, stream, on_chunk: Callable[[memoryview], None], zero_min: int):
        self.layout = layout
        self.stream = stream
        self.on_chunk = on_chunk
        self.zero_min = max(1, zero_min)
        self.needle = bytes(min(self.zero_min, 64 << 10))
        self.pos = 0
        self.zero_run = 0

    def _emit(self, chunks: list[memoryview]) -> None:
        for c in chunks:
            self.layout.add(DATA_EXTENT, len(c))
            self.on_chunk(c)

    def zeros(self, n: int) -> None:
        """``n`` bytes known to be zero (a hole)."""
        self.zero_run += n
        self.pos += n

    def block(self, buf: bytes, offset: int) -> None:
        """Bytes read at ``offset`` (which must be where the previous block or hole ended)."""
        assert offset == self.pos, (offset, self.pos)
        n = len(buf)
        lead = zeros_from(buf, 0, n)
        if lead == n:
            self.zeros(n)
            return
        self.zero_run += lead
        view = memoryview(buf)
        pos = lead  # buf[pos] is not zero
        needle = self.needle
        while pos < n:
            k = buf.find(needle, pos)
            if k < 0:
                trail = zeros_before(buf, n, pos)
                self._data(view[pos : n - trail], offset + pos)
                self.zero_run += trail  # may go on in the next block
                break
            end = k + len(needle)
            end += zeros_from(buf, end, n)
            self._data(view[pos:k], offset + pos)
            self.zero_run += end - k
            pos = end
        self.pos = offset + n

    def _data(self, view: memoryview, offset: int) -> None:
        if self.zero_run:
            self._settle_zeros(offset)
        self._emit(self.stream.feed(view, offset))

    def _settle_zeros(self, data_at: int) -> None:
        n, self.zero_run = self.zero_run, 0
        if n >= self.zero_min:
            self._emit(self.stream.end())
            self.layout.add(ZERO_EXTENT, n)
            return
        at = data_at - n
        while n:
            k = min(n, len(_ZEROS))
            self._emit(self.stream.feed(memoryview(_ZEROS)[:k], at))
            at += k
            n -= k

    def finish(self) -> None:
        self._emit(self.stream.end())
        if self.zero_run:
            self.layout.add(ZERO_EXTENT, self.zero_run)
            self.zero_run = 0
