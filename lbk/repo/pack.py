"""Pack files: many encrypted blobs in one backend file, with an encrypted header.

    pack   = blob_0 || blob_1 || ... || header_sealed || header_len:4 (LE, uint32)
    blob_i = sealed(flag:1 || body)  with AD = b"lbk:blob" || type:1 || id:32
    header = version:1 (=1) || count:4 || count * entry
    entry  = type:1 || id:32 || length:4 || raw_length:4     (offsets are cumulative)

A pack is named by the BLAKE3 of its bytes. The header repeats what the index says, so
indexes can be rebuilt from packs alone (``lbk repair index``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from lbk.errors import FormatError
from lbk.repo import crypto

DATA = 0
TREE = 1
BLOB_TYPES = {DATA: "data", TREE: "tree"}

_ENTRY = struct.Struct("<B32sII")
_HEAD = struct.Struct("<BI")
_TRAILER = struct.Struct("<I")
HEADER_VERSION = 1
MAX_BLOB = 64 * 1024 * 1024  # no blob of ours comes close; bounds hostile lengths
MAX_SEALED = MAX_BLOB + crypto.OVERHEAD + 1  # a sealed payload (flag byte + data) of the largest blob


def valid_sealed_length(length: int) -> bool:
    """Whether a blob's stored length is possible: at least the nonce and tag, and at most
    the largest blob sealed uncompressed (this bounds what a reader loads for one blob)."""
    return crypto.OVERHEAD <= length <= MAX_SEALED


def blob_ad(blob_type: int, blob_id: bytes) -> bytes:
    return b"lbk:blob" + bytes([blob_type]) + blob_id


@dataclass(frozen=True, slots=True)
class PackEntry:
    type: int
    id: bytes
    offset: int
    length: int
    raw_length: int


class PackWriter:
    """Accumulates sealed blobs; ``finish`` returns (pack name, bytes, entries)."""

    def __init__(self) -> None:
        self.buf = bytearray()  # one growing buffer: finishing a pack copies nothing
        self.entries: list[PackEntry] = []
        self.size = 0

    def add(self, blob_type: int, blob_id: bytes, sealed: bytes, raw_length: int) -> None:
        self.entries.append(PackEntry(blob_type, blob_id, self.size, len(sealed), raw_length))
        self.buf += sealed
        self.size += len(sealed)

    def __len__(self) -> int:
        return len(self.entries)

    def finish(self, key: bytes) -> tuple[str, bytearray, list[PackEntry]]:
        header = bytearray(_HEAD.pack(HEADER_VERSION, len(self.entries)))
        for e in self.entries:
            header += _ENTRY.pack(e.type, e.id, e.length, e.raw_length)
        sealed = crypto.seal(key, bytes(header), b"lbk:packheader")
        data, self.buf = self.buf, bytearray()
        data += sealed
        data += _TRAILER.pack(len(sealed))
        return crypto.content_hash(data), data, self.entries


def header_length(tail: bytes, pack_size: int, what: str) -> int:
    """Length of the sealed header from the last 4 bytes of a pack."""
    if len(tail) != 4:
        raise FormatError(f"{what}: truncated pack")
    (n,) = _TRAILER.unpack(tail)
    if n < crypto.OVERHEAD + _HEAD.size or n + 4 > pack_size:
        raise FormatError(f"{what}: invalid header length {n}")
    return n


def parse_header(key: bytes, sealed: bytes, header_offset: int, what: str) -> list[PackEntry]:
    """Open a pack's sealed header and parse it (``parse_header_plain``)."""
    return parse_header_plain(crypto.open_sealed(key, sealed, b"lbk:packheader", what), header_offset, what)


def parse_header_plain(plain: bytes, header_offset: int, what: str) -> list[PackEntry]:
    """Parse an opened pack header; the blobs' lengths must add up to ``header_offset``."""
    if len(plain) < _HEAD.size:
        raise FormatError(f"{what}: header too short")
    version, count = _HEAD.unpack_from(plain)
    if version != HEADER_VERSION:
        raise FormatError(f"{what}: unknown pack header version {version}")
    if _HEAD.size + count * _ENTRY.size != len(plain):
        raise FormatError(f"{what}: header entry count does not match its size")
    entries, offset = [], 0
    for i in range(count):
        t, bid, length, raw = _ENTRY.unpack_from(plain, _HEAD.size + i * _ENTRY.size)
        if t not in BLOB_TYPES or not valid_sealed_length(length) or raw > MAX_BLOB:
            raise FormatError(f"{what}: invalid header entry {i}")
        entries.append(PackEntry(t, bid, offset, length, raw))
        offset += length
    if offset != header_offset:
        raise FormatError(f"{what}: blob lengths do not add up to the header offset")
    return entries
