"""The repository config: identity and the parameters every writer must share.

Stored sealed in the file ``config`` (AD ``b"lbk:config"``), plaintext JSON:

    {"version": 1, "id": "<64 hex>",
     "chunker": {"alg": "fastcdc2020", "min": 262144, "avg": 1048576, "max": 8388608,
                 "seed": <random 0..2^63>},
     "compression": {"alg": "zstd", "level": 3},
     "pack_size": 16777216}

The chunker seed perturbs FastCDC's gear table so chunk boundaries (and hence sizes) do
not fingerprint known files. An unknown version is refused.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass

import zstandard

from lbk.errors import FormatError

VERSION = 1
MIN_LEVEL = -(1 << 17)  # zstd's fastest negative level
# FastCDC 2020's ranges for min, avg and max (those pyfastcdc accepts), and the seed's
CHUNKER_RANGES = ((64, 1 << 20), (256, 4 << 20), (1024, 16 << 20), (0, 2**64 - 1))
MIN_PACK, MAX_PACK = 64 << 10, 1 << 30
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


@dataclass
class ChunkerParams:
    alg: str = "fastcdc2020"
    min: int = 256 * 1024
    avg: int = 1024 * 1024
    max: int = 8 * 1024 * 1024
    seed: int = 0


@dataclass
class Config:
    id: str
    chunker: ChunkerParams
    compression_level: int = 3
    pack_size: int = 16 * 1024 * 1024
    version: int = VERSION

    @classmethod
    def new(cls) -> "Config":
        return cls(id=secrets.token_hex(32), chunker=ChunkerParams(seed=secrets.randbits(63)))

    def encode(self) -> bytes:
        doc = {
            "version": self.version,
            "id": self.id,
            "chunker": asdict(self.chunker),
            "compression": {"alg": "zstd", "level": self.compression_level},
            "pack_size": self.pack_size,
        }
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "Config":
        try:
            doc = json.loads(raw)
            if doc.get("version") != VERSION:
                raise FormatError(f"config: unknown repository version {doc.get('version')!r}")
            ch = ChunkerParams(**doc["chunker"])
            comp = doc["compression"]
            if comp.get("alg") != "zstd":
                raise FormatError(f"config: unknown compression {comp.get('alg')!r}")
            cfg = cls(id=doc["id"], chunker=ch, compression_level=comp["level"], pack_size=doc["pack_size"])
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
            raise FormatError("config: malformed") from None
        cfg._check()
        return cfg

    def _check(self) -> None:
        """Refuse values the writers cannot use (docs/FORMAT.md, "Config"): the id names the
        cache directory, the chunker and compressor take the numbers as C integers, and a
        pack is held in memory until it reaches ``pack_size``."""
        ch = self.chunker
        if not isinstance(self.id, str) or not _HEX64.match(self.id):
            raise FormatError("config: malformed repository id")
        nums = (ch.min, ch.avg, ch.max, ch.seed)
        if not (ch.alg == "fastcdc2020" and all(type(v) is int for v in nums) and ch.min <= ch.avg <= ch.max
                and all(lo <= v <= hi for v, (lo, hi) in zip(nums, CHUNKER_RANGES))):
            raise FormatError("config: unsupported chunker parameters")
        if not _int(self.compression_level, MIN_LEVEL, zstandard.MAX_COMPRESSION_LEVEL):
            raise FormatError(f"config: unsupported compression level {self.compression_level!r}")
        if not _int(self.pack_size, MIN_PACK, MAX_PACK):
            raise FormatError(f"config: unsupported pack size {self.pack_size!r}")


def _int(v, lo: int, hi: int) -> bool:
    """A JSON integer (not a bool or a float) in lo..hi."""
    return type(v) is int and lo <= v <= hi


__all__ = ["Config", "ChunkerParams"]
