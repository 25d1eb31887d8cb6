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

from lbk.errors import FormatError

VERSION = 1
MAX_PACK_SIZE = 1 << 30
_ID = re.compile(r"[0-9a-f]{64}")


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
            if ch.alg != "fastcdc2020" or not (64 <= ch.min <= ch.avg <= ch.max <= 64 << 20):
                raise FormatError("config: unsupported chunker parameters")
            comp = doc["compression"]
            if comp.get("alg") != "zstd":
                raise FormatError(f"config: unknown compression {comp.get('alg')!r}")
            cfg = cls(
                id=str(doc["id"]),
                chunker=ch,
                compression_level=int(comp["level"]),
                pack_size=int(doc["pack_size"]),
            )
            # the id names the cache directory; the others are handed to zstd, FastCDC and
            # the pack writer (a huge pack size would hold a whole backup in memory)
            if not _ID.fullmatch(cfg.id) or not 0 <= ch.seed < 2**64:
                raise FormatError("config: invalid repository id or chunker seed")
            if not -(1 << 17) <= cfg.compression_level <= 22 or not 1 <= cfg.pack_size <= MAX_PACK_SIZE:
                raise FormatError("config: compression level or pack size out of range")
            return cfg
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
            raise FormatError("config: malformed") from None


__all__ = ["Config", "ChunkerParams"]
