"""The index: blob id -> (pack, offset, length), kept in memory, stored as index files.

Index file plaintext (then compressed and sealed like every repository file):

    version:1 (=1)
    n_supersedes:4 || n_supersedes * index_id:32     index files this one replaces
    n_packs:4
    per pack:  pack_id:32 || n_blobs:4 || n_blobs * (type:1 id:32 offset:4 length:4 raw_length:4)

An index file is written only after every pack it names is durably stored, so anything
an index names exists (unless damaged). Packs that no index names are leftovers of an
interrupted run: harmless, and removed by prune.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator

from lbk.errors import FormatError
from lbk.repo.pack import BLOB_TYPES, MAX_BLOB, PackEntry, valid_sealed_length

VERSION = 1
_BLOB = struct.Struct("<B32sIII")
_U32 = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class BlobLocation:
    pack: str
    type: int
    offset: int
    length: int
    raw_length: int


def encode(packs: dict[str, list[PackEntry]], supersedes: Iterable[bytes] = ()) -> bytes:
    sup = list(supersedes)
    out = bytearray([VERSION])
    out += _U32.pack(len(sup))
    for s in sup:
        out += s
    out += _U32.pack(len(packs))
    for pack_id, entries in packs.items():
        out += bytes.fromhex(pack_id)
        out += _U32.pack(len(entries))
        for e in entries:
            out += _BLOB.pack(e.type, e.id, e.offset, e.length, e.raw_length)
    return bytes(out)


def decode(data: bytes, what: str) -> tuple[list[str], dict[str, list[PackEntry]]]:
    """Parse an index file; every length field is checked against the data size."""
    try:
        if data[0] != VERSION:
            raise FormatError(f"{what}: unknown index version {data[0]}")
        pos = 1
        (n_sup,) = _U32.unpack_from(data, pos)
        pos += 4
        if pos + 32 * n_sup > len(data):
            raise FormatError(f"{what}: truncated")
        sup = [data[pos + 32 * i : pos + 32 * (i + 1)].hex() for i in range(n_sup)]
        pos += 32 * n_sup
        (n_packs,) = _U32.unpack_from(data, pos)
        pos += 4
        packs: dict[str, list[PackEntry]] = {}
        for _ in range(n_packs):
            pack_id = data[pos : pos + 32].hex()
            (n,) = _U32.unpack_from(data, pos + 32)
            pos += 36
            if pos + n * _BLOB.size > len(data):
                raise FormatError(f"{what}: truncated")
            entries = []
            for _ in range(n):
                t, bid, off, length, raw = _BLOB.unpack_from(data, pos)
                pos += _BLOB.size
                if t not in BLOB_TYPES or not valid_sealed_length(length) or raw > MAX_BLOB:
                    raise FormatError(f"{what}: invalid entry")
                entries.append(PackEntry(t, bid, off, length, raw))
            packs[pack_id] = entries
        if pos != len(data):
            raise FormatError(f"{what}: trailing bytes")
        return sup, packs
    except (struct.error, IndexError):
        raise FormatError(f"{what}: truncated") from None


class Index:
    """In-memory index, safe to query and extend from several threads."""

    def __init__(self) -> None:
        self._blobs: dict[bytes, BlobLocation] = {}
        self.packs: dict[str, list[PackEntry]] = {}
        self._lock = threading.Lock()

    def add_pack(self, pack_id: str, entries: list[PackEntry]) -> None:
        with self._lock:
            self.packs[pack_id] = entries
            for e in entries:
                self._blobs.setdefault(e.id, BlobLocation(pack_id, e.type, e.offset, e.length, e.raw_length))

    def get(self, blob_id: bytes) -> BlobLocation | None:
        return self._blobs.get(blob_id)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def __len__(self) -> int:
        return len(self._blobs)

    def blobs(self) -> Iterator[tuple[bytes, BlobLocation]]:
        return iter(list(self._blobs.items()))
