"""Optional zstd compression of a payload before it is encrypted.

    payload = flag:1 || body        flag 0: body is the data; flag 1: body is a zstd frame

Compression is skipped when it does not save at least 1/32 of the size (already
compressed media, random data). Decompression is bounded by the size the caller
expects (a frame whose header claims more is refused before anything is allocated), so
a hostile frame cannot exhaust memory.
"""

from __future__ import annotations

import threading

import zstandard

from lbk.errors import FormatError

RAW = 0
ZSTD = 1
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    c = getattr(_local, "c", None)
    if c is None or _local.level != level:
        c = _local.c = zstandard.ZstdCompressor(level=level)
        _local.level = level
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def compress(data: bytes | memoryview, level: int) -> bytes:
    if level and len(data) >= 64:
        z = _compressor(level).compress(data)
        if len(z) + len(z) // 32 < len(data):
            return b"\x01" + z
    return b"\x00" + bytes(data)


def decompress(payload: bytes, max_size: int, what: str) -> bytes:
    """The data of a payload, never more than ``max_size`` bytes (nor memory beyond that).

    A zstd frame header may claim any content size, and zstandard allocates what the
    header claims whatever ``max_output_size`` says, so the claim is checked first; a
    frame without a claim is decompressed into at most ``max_size`` bytes. Anything after
    the one frame is refused: writers never put it there."""
    if not payload:
        raise FormatError(f"{what}: empty payload")
    flag = payload[0]
    if flag == RAW:
        if len(payload) - 1 > max_size:
            raise FormatError(f"{what}: {len(payload) - 1} bytes where at most {max_size} are expected")
        return payload[1:]
    if flag == ZSTD:
        body = payload[1:]
        try:
            claimed = zstandard.frame_content_size(body)
            if claimed > max_size:
                raise FormatError(f"{what}: compressed data claims {claimed} bytes where at most {max_size} are expected")
            return _decompressor().decompress(body, max_output_size=max_size, allow_extra_data=False)
        except zstandard.ZstdError as e:
            raise FormatError(f"{what}: corrupt compressed data ({e})") from None
    raise FormatError(f"{what}: unknown compression flag {flag}")
