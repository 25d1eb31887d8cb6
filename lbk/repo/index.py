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
from collections.abc import Mapping
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
    """Parse an index file into (superseded index names, pack id -> its entries)."""
    sup, packs = decode_records(data, what)
    return sup, {pack_id: [PackEntry(*t) for t in _BLOB.iter_unpack(rec)] for pack_id, rec in packs.items()}


def decode_records(data: bytes, what: str) -> tuple[list[str], dict[str, bytes]]:
    """Parse an index file; every length field is checked against the data size. Each
    pack's entries stay as the file has them (45-byte records), which is also how the
    in-memory ``Index`` keeps them: loading a large index makes no object per blob."""
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
        packs: dict[str, bytes] = {}
        for _ in range(n_packs):
            pack_id = data[pos : pos + 32].hex()
            (n,) = _U32.unpack_from(data, pos + 32)
            pos += 36
            if len(pack_id) != 64 or pos + n * _BLOB.size > len(data):
                raise FormatError(f"{what}: truncated")
            rec = data[pos : pos + n * _BLOB.size]
            for t, _bid, _off, length, raw in _BLOB.iter_unpack(rec):
                if t not in BLOB_TYPES or not valid_sealed_length(length) or raw > MAX_BLOB:
                    raise FormatError(f"{what}: invalid entry")
            pos += n * _BLOB.size
            packs[pack_id] = rec
        if pos != len(data):
            raise FormatError(f"{what}: trailing bytes")
        return sup, packs
    except (struct.error, IndexError):
        raise FormatError(f"{what}: truncated") from None


_M32 = (1 << 32) - 1


class Index:
    """In-memory index, safe to query and extend from several threads.

    Compact, since the watch daemon and every backup hold it whole: per pack its entries
    as 45-byte records (``packs`` decodes them on demand), per blob one dict entry from
    its id to an int packing (pack number, type, offset, length, raw length) - about
    200 bytes a blob where objects per entry took about 350."""

    def __init__(self) -> None:
        self._blobs: dict[bytes, int] = {}
        self._records: dict[str, bytes] = {}
        self._pack_ids: list[str] = []
        self._pack_no: dict[str, int] = {}
        self._lock = threading.Lock()
        self.packs: Mapping[str, list[PackEntry]] = _Packs(self._records)

    def add_pack(self, pack_id: str, entries: list[PackEntry]) -> None:
        self.add_records(pack_id, b"".join(_BLOB.pack(e.type, e.id, e.offset, e.length, e.raw_length) for e in entries))

    def add_records(self, pack_id: str, records: bytes) -> None:
        """A pack's entries as an index file holds them (``decode_records``)."""
        with self._lock:
            no = self._pack_no.get(pack_id)
            if no is None:
                no = self._pack_no[pack_id] = len(self._pack_ids)
                self._pack_ids.append(pack_id)
            self._records[pack_id] = records
            head = no << 100
            setdefault = self._blobs.setdefault
            for t, bid, off, length, raw in _BLOB.iter_unpack(records):
                setdefault(bid, head | t << 96 | off << 64 | length << 32 | raw)

    def _location(self, v: int) -> BlobLocation:
        return BlobLocation(self._pack_ids[v >> 100], (v >> 96) & 0xF, (v >> 64) & _M32, (v >> 32) & _M32, v & _M32)

    def get(self, blob_id: bytes) -> BlobLocation | None:
        v = self._blobs.get(blob_id)
        return None if v is None else self._location(v)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def __len__(self) -> int:
        return len(self._blobs)

    def blobs(self) -> Iterator[tuple[bytes, BlobLocation]]:
        loc = self._location
        return iter([(bid, loc(v)) for bid, v in list(self._blobs.items())])


class _Packs(Mapping[str, list[PackEntry]]):
    """``Index.packs``: pack id -> its entries, decoded from the records when asked."""

    def __init__(self, records: dict[str, bytes]) -> None:
        self._records = records

    def __getitem__(self, pack_id: str) -> list[PackEntry]:
        return [PackEntry(*t) for t in _BLOB.iter_unpack(self._records[pack_id])]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, pack_id: object) -> bool:
        return pack_id in self._records
