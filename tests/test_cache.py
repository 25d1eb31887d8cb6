"""lbk/cache.py: the files cache round-trips, and a damaged file is discarded, never trusted."""

from __future__ import annotations

import marshal
import os
import struct

import pytest

from lbk.cache import Cache, decode_files, encode_files
from lbk.errors import FormatError

ID1, ID2, SIG, TREE = (bytes([i]) * 32 for i in (1, 2, 3, 4))
FILES = {
    b"/home/ann/a.txt": (5, 1_700_000_000_123_456_789, 1_700_000_000_223_456_789, 42, ID1),
    b"/home/ann/empty": (0, -5, 0, 2**64 - 1, b""),  # a time before 1970, the largest inode
    b"/home/ann/big-\xff": (9 << 20, 1, 2, 3, ID1 + ID2),
}
DIRS = {b"/home/ann": (SIG, TREE), b"/": (TREE, SIG)}


@pytest.mark.parametrize("files,dirs", [({}, {}), (FILES, {}), ({}, DIRS), (FILES, DIRS)])
def test_round_trip(files, dirs):
    assert decode_files(encode_files(files, dirs)) == (files, dirs)


@pytest.mark.parametrize(
    "path,entry",
    [
        (b"/nul\0in-path", (1, 2, 3, 4, ID1)),
        (b"/year-2300", (1, 2**63, 3, 4, ID1)),  # st_mtime_ns past int64
        (b"/odd-ids", (1, 2, 3, 4, b"x" * 31)),
    ],
)
def test_entries_the_format_cannot_hold_are_not_cached(path, entry):
    files, dirs = decode_files(encode_files({**FILES, path: entry}, DIRS))
    assert files == FILES and dirs == DIRS


VALID = encode_files(FILES, DIRS)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(VALID[:20], id="header-cut"),
        pytest.param(b"LBKCACHX" + VALID[8:], id="magic"),
        pytest.param(VALID[:8] + struct.pack("<I", 2) + VALID[12:], id="version"),
        pytest.param(VALID[:-1], id="truncated"),
        pytest.param(VALID + b"\0", id="trailing-byte"),
        # found by fuzzing (tests/fuzz, target files_cache): marshal allocated what a count
        # in the file claimed; a 5-byte file ("(" + 2**31-1) made backup allocate 16 GiB
        pytest.param(VALID[:12] + struct.pack("<Q", 2**40) + VALID[20:], id="huge-file-count"),
        pytest.param(VALID[:36] + struct.pack("<Q", 2**62) + VALID[44:], id="huge-ids-length"),
        pytest.param(VALID.replace(b"/home/ann/a.txt\0", b"/home/ann/a.txtX"), id="paths-miscounted"),
    ],
)
def test_damaged_files_cache_is_refused(data):
    with pytest.raises(FormatError, match="^files cache: "):
        decode_files(data)


@pytest.mark.parametrize(
    "content",
    [VALID[:-3], marshal.dumps((2, {b"/a": (1, 2, 3, 4, ID1)}, {})), b"(\xff\xff\xff\x7f", b""],
    ids=["damaged", "old-marshal-version", "old-marshal-bomb", "empty"],
)
def test_cache_load_discards_what_it_cannot_read(tmp_path, content):
    cache = Cache(str(tmp_path), "ab" * 32)
    with open(cache.path("files"), "wb") as f:
        f.write(content)
    assert cache.load() == ({}, {})
    cache.save(FILES, DIRS)
    assert cache.load() == (FILES, DIRS)
    assert os.stat(cache.path("files")).st_mode & 0o777 == 0o600
