"""lbk/repo/compress.py: payloads round-trip, and decompression is bounded by the caller."""

from __future__ import annotations

import functools
import os
import resource

import pytest
import zstandard

from lbk.errors import FormatError
from lbk.repo import compress

DATA = b"the quick brown fox jumps over the lazy dog " * 100
FRAME = zstandard.ZstdCompressor().compress(DATA)
FRAME_NO_SIZE = zstandard.ZstdCompressor(write_content_size=False).compress(DATA)


@functools.cache
def bomb() -> bytes:
    """256 MiB of zeros: a frame of 8 KiB whose header says 256 MiB (made once, on demand)."""
    return zstandard.ZstdCompressor().compress(bytes(256 << 20))


@pytest.mark.parametrize(
    "data,level",
    [(b"", 3), (b"short", 3), (DATA, 3), (DATA, 0), (os.urandom(5000), 3), (DATA, 19)],
)
def test_round_trip(data, level):
    payload = compress.compress(data, level)
    assert compress.decompress(payload, len(data), "blob x") == data
    assert payload[0] == (compress.ZSTD if level and data == DATA else compress.RAW)


@pytest.mark.parametrize(
    "payload,max_size,match",
    [
        pytest.param(b"", 10, "empty payload", id="empty"),
        pytest.param(b"\x02abc", 10, "unknown compression flag 2", id="unknown-flag"),
        pytest.param(b"\x01not zstd", 10, "corrupt compressed data", id="not-a-frame"),
        pytest.param(b"\x01" + FRAME[:-3], len(DATA), "corrupt compressed data", id="truncated-frame"),
        # found by fuzzing (tests/fuzz, target payload): the bound held only for zstd frames
        # without a content size; a raw body and a frame that claims its size passed it
        pytest.param(b"\x00" + DATA, len(DATA) - 1, f"{len(DATA)} bytes where at most", id="raw-over-bound"),
        pytest.param(b"\x01" + FRAME, len(DATA) - 1, f"claims {len(DATA)} bytes", id="frame-claims-over-bound"),
        pytest.param("bomb", 1 << 20, "claims 268435456 bytes", id="bomb-refused-before-allocating"),
        pytest.param(b"\x01" + FRAME_NO_SIZE, len(DATA) - 1, "corrupt compressed data", id="unsized-frame-over-bound"),
        pytest.param(b"\x01" + FRAME + b"x", len(DATA), "unused data", id="trailing-byte"),
        pytest.param(b"\x01" + FRAME + FRAME, 2 * len(DATA), "unused data", id="second-frame"),
    ],
)
def test_decompress_refuses(payload, max_size, match):
    if payload == "bomb":
        payload = b"\x01" + bomb()
    with pytest.raises(FormatError, match=f"^blob x: .*{match}"):
        compress.decompress(payload, max_size, "blob x")


@pytest.mark.parametrize("frame", [FRAME, FRAME_NO_SIZE], ids=["sized", "unsized"])
def test_decompress_accepts_exactly_the_bound(frame):
    assert compress.decompress(b"\x01" + frame, len(DATA), "blob x") == DATA


def test_bomb_allocates_nothing():
    """The refusal comes from the frame header: with 64 MiB of address space to spare,
    a 256 MiB claim fails as a FormatError, not a MemoryError."""
    payload = b"\x01" + bomb()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (64 << 20), hard))
    try:
        with pytest.raises(FormatError, match="claims"):
            compress.decompress(payload, 1 << 20, "blob x")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
