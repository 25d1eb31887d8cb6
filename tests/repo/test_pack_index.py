"""lbk/repo/pack.py and lbk/repo/index.py: the pack header and the index file format."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbk.errors import FormatError, IntegrityError
from lbk.repo import crypto, index as index_mod, pack
from lbk.repo.index import BlobLocation, Index
from lbk.repo.pack import DATA, MAX_BLOB, TREE, PackEntry, PackWriter

KEY = bytes(range(32))
HEADER_AD = b"lbk:packheader"


def blob_id(n: int) -> bytes:
    return n.to_bytes(32, "big")


def write_pack(blobs: list[tuple[int, bytes, bytes]]) -> tuple[str, bytes, list[PackEntry]]:
    """blobs: (type, id, plaintext); returns PackWriter.finish's result."""
    w = PackWriter()
    for t, bid, plain in blobs:
        w.add(t, bid, crypto.seal(KEY, plain, pack.blob_ad(t, bid)), len(plain))
    assert len(w) == len(blobs)
    return w.finish(KEY)


def read_header(data: bytes) -> list[PackEntry]:
    n = pack.header_length(data[-4:], len(data), "p")
    return pack.parse_header(KEY, data[-4 - n : -4], len(data) - 4 - n, "p")


# -- pack: writer and header round trip ------------------------------------------

@pytest.mark.parametrize(
    "blobs",
    [
        [],
        [(DATA, blob_id(1), b"")],
        [(DATA, blob_id(1), b"one"), (TREE, blob_id(2), b"{}"), (DATA, blob_id(3), os.urandom(5000))],
        [(DATA, blob_id(i), bytes([i]) * i) for i in range(50)],
    ],
    ids=["no-blobs", "empty-blob", "mixed", "fifty"],
)
def test_pack_header_round_trip(blobs):
    name, data, entries = write_pack(blobs)
    assert name == crypto.content_hash(data)
    assert read_header(data) == entries
    assert [(e.type, e.id, e.raw_length) for e in entries] == [(t, i, len(p)) for t, i, p in blobs]
    offset = 0
    for e, (t, bid, plain) in zip(entries, blobs):
        assert e.offset == offset
        assert e.length == len(plain) + crypto.OVERHEAD
        sealed = data[e.offset : e.offset + e.length]
        assert crypto.open_sealed(KEY, sealed, pack.blob_ad(t, bid), "b") == plain
        offset += e.length


def test_pack_reveals_no_ids_or_plaintext():
    secret = b"secret plaintext " * 10
    bid = blob_id(0xC0FFEE)
    _, data, _ = write_pack([(DATA, bid, secret)])
    assert secret not in data and bid not in data


def test_pack_header_sealed_under_another_key_fails():
    _, data, _ = write_pack([(DATA, blob_id(1), b"x")])
    n = pack.header_length(data[-4:], len(data), "p")
    with pytest.raises(IntegrityError):
        pack.parse_header(bytes(32), data[-4 - n : -4], len(data) - 4 - n, "p")


# -- pack: header_length -----------------------------------------------------------

MIN_HEADER = crypto.OVERHEAD + 5  # sealed(version:1 || count:4)


@pytest.mark.parametrize(
    "tail,size,ok",
    [
        (struct.pack("<I", MIN_HEADER), MIN_HEADER + 4, True),
        (struct.pack("<I", 1000), 5000, True),
        (struct.pack("<I", MIN_HEADER - 1), 5000, False),  # shorter than an empty header
        (struct.pack("<I", 0), 5000, False),
        (struct.pack("<I", MIN_HEADER), MIN_HEADER + 3, False),  # runs past the pack start
        (struct.pack("<I", 0xFFFFFFFF), 5000, False),
        (b"\x00\x01\x00", 5000, False),  # truncated trailer
        (b"", 5000, False),
        (b"\x00" * 5, 5000, False),
    ],
)
def test_header_length(tail, size, ok):
    if ok:
        assert pack.header_length(tail, size, "p") == struct.unpack("<I", tail)[0]
    else:
        with pytest.raises(FormatError, match="^pack x: "):
            pack.header_length(tail, size, "pack x")


# -- pack: parse_header refuses malformed headers ------------------------------------

def entry(t=DATA, bid=blob_id(1), length=100, raw=50) -> bytes:
    return struct.pack("<B32sII", t, bid, length, raw)


def head(version=1, count=1) -> bytes:
    return struct.pack("<BI", version, count)


@pytest.mark.parametrize(
    "plain,header_offset",
    [
        pytest.param(head(2, 1) + entry(), 100, id="unknown-version"),
        pytest.param(head(0, 0), 0, id="version-zero"),
        pytest.param(b"\x01\x00\x00", 0, id="header-too-short"),
        pytest.param(b"", 0, id="header-empty"),
        pytest.param(head(count=2) + entry(), 100, id="count-larger-than-entries"),
        pytest.param(head(count=0) + entry(), 100, id="count-smaller-than-entries"),
        pytest.param(head(count=1) + entry() + b"\0", 100, id="trailing-byte"),
        pytest.param(head(count=0xFFFFFFFF) + entry(), 100, id="huge-count"),
        pytest.param(head() + entry(t=2), 100, id="unknown-blob-type"),
        pytest.param(head() + entry(length=crypto.OVERHEAD - 1), crypto.OVERHEAD - 1, id="blob-shorter-than-overhead"),
        pytest.param(head() + entry(raw=MAX_BLOB + 1), 100, id="raw-length-over-max"),
        # found by fuzzing (tests/fuzz, target pack): restore would load that many bytes for one blob
        pytest.param(head() + entry(length=pack.MAX_SEALED + 1), pack.MAX_SEALED + 1, id="blob-length-over-max"),
        pytest.param(head() + entry(length=0xFFFFFFFF), 0xFFFFFFFF, id="blob-length-4gib"),
        pytest.param(head() + entry(length=100), 99, id="lengths-short-of-offset"),
        pytest.param(head() + entry(length=100), 101, id="lengths-past-offset"),
        pytest.param(head(count=2) + entry(length=60) + entry(bid=blob_id(2), length=60), 100, id="two-lengths-past-offset"),
        pytest.param(head(count=0), 10, id="no-entries-but-blob-bytes"),
    ],
)
def test_parse_header_refuses(plain, header_offset):
    sealed = crypto.seal(KEY, plain, HEADER_AD)
    with pytest.raises(FormatError, match="^pack x: "):
        pack.parse_header(KEY, sealed, header_offset, "pack x")


@pytest.mark.parametrize(
    "plain,header_offset,expected",
    [
        (head(count=0), 0, []),
        (head() + entry(length=100, raw=MAX_BLOB), 100, [PackEntry(DATA, blob_id(1), 0, 100, MAX_BLOB)]),
        (
            head(count=2) + entry(TREE, blob_id(1), 40, 0) + entry(DATA, blob_id(2), 60, 9),
            100,
            [PackEntry(TREE, blob_id(1), 0, 40, 0), PackEntry(DATA, blob_id(2), 40, 60, 9)],
        ),
    ],
)
def test_parse_header_accepts_edge_values(plain, header_offset, expected):
    sealed = crypto.seal(KEY, plain, HEADER_AD)
    assert pack.parse_header(KEY, sealed, header_offset, "p") == expected


def test_parse_header_requires_the_header_ad():
    sealed = crypto.seal(KEY, head(count=0), b"lbk:index")
    with pytest.raises(IntegrityError):
        pack.parse_header(KEY, sealed, 0, "p")


# -- index: encode / decode ----------------------------------------------------------

P1, P2 = "11" * 32, "22" * 32
E1 = PackEntry(DATA, blob_id(1), 0, 100, 60)
E2 = PackEntry(TREE, blob_id(2), 100, 41, 1)
E3 = PackEntry(DATA, blob_id(3), 0xFFFFFFFF, pack.MAX_SEALED, MAX_BLOB)  # the largest valid values


@pytest.mark.parametrize(
    "packs,supersedes",
    [
        ({}, []),
        ({P1: []}, []),
        ({P1: [E1, E2]}, []),
        ({P1: [E1, E2], P2: [E3]}, []),
        ({}, [b"\xaa" * 32]),
        ({P2: [E3], P1: [E1]}, [b"\xaa" * 32, b"\xbb" * 32]),
    ],
)
def test_index_round_trip(packs, supersedes):
    data = index_mod.encode(packs, supersedes)
    sup, decoded = index_mod.decode(data, "index/x")
    assert sup == [s.hex() for s in supersedes]
    assert decoded == packs
    assert list(decoded) == list(packs)


VALID = index_mod.encode({P1: [E1, E2], P2: [E3]}, [b"\xaa" * 32])


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x01", id="version-only"),
        pytest.param(b"\x02" + VALID[1:], id="unknown-version"),
        pytest.param(b"\x00" + VALID[1:], id="version-zero"),
        pytest.param(VALID + b"\0", id="one-trailing-byte"),
        pytest.param(VALID + VALID, id="twice"),
        pytest.param(b"\x01" + u32(0xFFFFFFFF) + u32(0), id="huge-supersedes-count"),
        pytest.param(b"\x01" + u32(1) + b"\xaa" * 31, id="supersedes-cut"),
        pytest.param(b"\x01" + u32(0) + u32(0xFFFFFFFF), id="huge-pack-count"),
        pytest.param(b"\x01" + u32(0) + u32(1) + b"\x11" * 32, id="pack-without-blob-count"),
        pytest.param(b"\x01" + u32(0) + u32(1) + b"\x11" * 20, id="pack-id-cut"),
        pytest.param(b"\x01" + u32(0) + u32(1) + b"\x11" * 32 + u32(0xFFFFFFFF), id="huge-blob-count"),
        pytest.param(
            b"\x01" + u32(0) + u32(1) + b"\x11" * 32 + u32(1) + struct.pack("<B32sIII", 5, bytes(32), 0, 41, 0),
            id="unknown-blob-type",
        ),
        pytest.param(
            b"\x01" + u32(0) + u32(1) + b"\x11" * 32 + u32(1) + struct.pack("<B32sIII", 0, bytes(32), 0, 41, MAX_BLOB + 1),
            id="raw-length-over-max",
        ),
        # found by fuzzing (tests/fuzz, target index): restore would load that many bytes for one blob
        pytest.param(
            b"\x01" + u32(0) + u32(1) + b"\x11" * 32 + u32(1) + struct.pack("<B32sIII", 0, bytes(32), 0, 0xE2777A3C, 9),
            id="blob-length-3.5gib",
        ),
        pytest.param(
            b"\x01" + u32(0) + u32(1) + b"\x11" * 32 + u32(1) + struct.pack("<B32sIII", 0, bytes(32), 0, 39, 0),
            id="blob-shorter-than-overhead",
        ),
    ],
)
def test_index_decode_refuses_malformed(data):
    with pytest.raises(FormatError, match="^index/x: "):
        index_mod.decode(data, "index/x")


def test_index_decode_refuses_every_truncation():
    for cut in range(len(VALID)):
        with pytest.raises(FormatError):
            index_mod.decode(VALID[:cut], "index/x")
            pytest.fail(f"a cut after {cut} of {len(VALID)} bytes decoded")


# -- index: property tests -----------------------------------------------------------

entries_st = st.builds(
    PackEntry,
    type=st.sampled_from([DATA, TREE]),
    id=st.binary(min_size=32, max_size=32),
    offset=st.integers(0, 2**32 - 1),
    length=st.integers(crypto.OVERHEAD, pack.MAX_SEALED),
    raw_length=st.integers(0, MAX_BLOB),
)
packs_st = st.dictionaries(st.binary(min_size=32, max_size=32).map(bytes.hex), st.lists(entries_st, max_size=5), max_size=5)
sup_st = st.lists(st.binary(min_size=32, max_size=32), max_size=3)


@settings(max_examples=200, deadline=None)
@given(packs=packs_st, supersedes=sup_st)
def test_index_decode_encode_property(packs, supersedes):
    sup, decoded = index_mod.decode(index_mod.encode(packs, supersedes), "i")
    assert (sup, decoded) == ([s.hex() for s in supersedes], packs)


def _decode_or_format_error(data: bytes) -> None:
    try:
        sup, packs = index_mod.decode(data, "i")
    except FormatError:
        return
    # whatever decodes must be well-formed
    assert all(len(s) == 64 for s in sup)
    assert all(len(p) == 64 and all(e.type in (DATA, TREE) and e.raw_length <= MAX_BLOB for e in es) for p, es in packs.items())


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_index_decode_random_bytes_raises_only_format_error(data):
    _decode_or_format_error(data)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300))
def test_index_decode_random_bytes_after_valid_version(body):
    _decode_or_format_error(b"\x01" + body)


@settings(max_examples=150, deadline=None)
@given(packs=packs_st, supersedes=sup_st, data=st.data())
def test_index_decode_mutated_valid_data_raises_only_format_error(packs, supersedes, data):
    raw = bytearray(index_mod.encode(packs, supersedes))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    _decode_or_format_error(bytes(raw[:cut]))


# -- the in-memory Index ---------------------------------------------------------------

def test_index_add_get_and_first_location_wins():
    idx = Index()
    assert blob_id(1) not in idx and idx.get(blob_id(1)) is None and len(idx) == 0
    idx.add_pack(P1, [E1, E2])
    idx.add_pack(P2, [PackEntry(DATA, blob_id(1), 7, 99, 60)])  # the same blob again, elsewhere
    assert len(idx) == 2
    assert idx.get(blob_id(1)) == BlobLocation(P1, DATA, 0, 100, 60)
    assert idx.get(blob_id(2)) == BlobLocation(P1, TREE, 100, 41, 1)
    assert dict(idx.blobs()) == {blob_id(1): idx.get(blob_id(1)), blob_id(2): idx.get(blob_id(2))}
    assert set(idx.packs) == {P1, P2}
    assert idx.packs[P2] == [PackEntry(DATA, blob_id(1), 7, 99, 60)]  # the duplicate stays listed
    assert dict(idx.packs) == {P1: [E1, E2], P2: [PackEntry(DATA, blob_id(1), 7, 99, 60)]}


def test_index_keeps_every_field_at_its_limits_across_many_packs():
    """Locations are packed into one int per blob: no field may bleed into another."""
    idx = Index()
    top = 2**32 - 1
    expect = {}
    for n in range(3000):  # pack numbers past 2**11
        pid = f"{n:064x}"
        e = PackEntry(TREE if n % 2 else DATA, blob_id(n), top - n, top - 2 * n, top if n % 3 else 0)
        idx.add_pack(pid, [e])
        expect[e.id] = BlobLocation(pid, e.type, e.offset, e.length, e.raw_length)
    assert all(idx.get(b) == loc for b, loc in expect.items())
    assert dict(idx.blobs()) == expect


def test_index_records_from_a_file_are_the_entries(tmp_path):
    packs = {P1: [E1, E2], P2: [PackEntry(DATA, blob_id(3), 5, 77, 9)]}
    sup, records = index_mod.decode_records(index_mod.encode(packs, [bytes(32)]), "index/x")
    assert sup == ["00" * 32] and set(records) == {P1, P2}
    idx = Index()
    for pid, rec in records.items():
        idx.add_records(pid, rec)
    assert dict(idx.packs) == packs == index_mod.decode(index_mod.encode(packs), "index/x")[1]
    assert idx.get(blob_id(3)) == BlobLocation(P2, DATA, 5, 77, 9)
