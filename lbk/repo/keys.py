"""Key files: the master key, sealed under a key derived from a password by Argon2id.

A key file is JSON (the only plaintext structure in a repository, and it holds no
names):

    {"version": 1,
     "kdf": {"alg": "argon2id", "ops": 3, "mem": 67108864, "salt": "<b64 16 bytes>"},
     "data": "<b64 sealed(master_key:64)>",     AD = b"lbk:key"
     "meta": "<b64 sealed(JSON {created, host, user})>"}   sealed with the master key

Several key files may open one repository (``lbk key add``). ``meta`` is sealed with the
master key, so host and user names are readable only once the repository is unlocked.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone

from lbk.errors import FormatError, IntegrityError
from lbk.repo import crypto
from lbk.repo.crypto import MasterKey

VERSION = 1


@dataclass
class KeyInfo:
    id: str
    created: str
    host: str
    user: str


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def make_key_file(master: MasterKey, password: bytes) -> tuple[str, bytes]:
    """Return (file name, bytes) of a new key file for ``password``."""
    ops, mem = crypto.default_kdf_params()
    salt = os.urandom(crypto.SALT)
    kek = crypto.derive_key(password, salt, ops, mem)
    meta = {
        "created": datetime.now(timezone.utc).astimezone().isoformat(),
        "host": socket.gethostname(),
        "user": current_user(),
    }
    doc = {
        "version": VERSION,
        "kdf": {"alg": crypto.ARGON2ID, "ops": ops, "mem": mem, "salt": _b64(salt)},
        "data": _b64(crypto.seal(kek, master.to_bytes(), b"lbk:key")),
        "meta": _b64(crypto.seal(master.encrypt, json.dumps(meta).encode(), b"lbk:keymeta")),
    }
    raw = json.dumps(doc, sort_keys=True).encode()
    return crypto.content_hash(raw), raw


def _parse(raw: bytes, what: str) -> dict:
    try:
        doc = json.loads(raw)
        if doc.get("version") != VERSION:
            raise FormatError(f"{what}: unknown key file version {doc.get('version')!r}")
        kdf = doc["kdf"]
        if kdf["alg"] != crypto.ARGON2ID:
            raise FormatError(f"{what}: unknown KDF {kdf['alg']!r}")
        return doc
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
        raise FormatError(f"{what}: malformed key file") from None


@dataclass(frozen=True)
class KeyFile:
    """A parsed key file: the KDF parameters and the sealed master key (still locked)."""

    salt: bytes
    ops: int
    mem: int
    sealed: bytes


def parse_key_file(raw: bytes, what: str) -> KeyFile:
    """Parse a key file without running the KDF."""
    doc = _parse(raw, what)
    kdf = doc["kdf"]
    try:
        salt = base64.b64decode(kdf["salt"], validate=True)
        sealed = base64.b64decode(doc["data"], validate=True)
        ops, mem = kdf["ops"], kdf["mem"]
    except (ValueError, TypeError, KeyError):
        raise FormatError(f"{what}: malformed key file") from None
    if len(salt) != crypto.SALT or len(sealed) != crypto.OVERHEAD + 2 * crypto.KEY:
        raise FormatError(f"{what}: malformed key file (salt or key of the wrong length)")
    if not (type(ops) is int and type(mem) is int and crypto.KDF_OPS_FAST <= ops <= crypto.KDF_OPS_MAX
            and crypto.KDF_MEM_FAST <= mem <= crypto.KDF_MEM_MAX):
        raise FormatError(f"{what}: implausible KDF parameters (ops={ops!r}, mem={mem!r})")
    return KeyFile(salt, ops, mem, sealed)


def try_open(raw: bytes, password: bytes, what: str) -> MasterKey | None:
    """The master key if ``password`` opens this key file, else None."""
    kf = parse_key_file(raw, what)
    try:
        kek = crypto.derive_key(password, kf.salt, kf.ops, kf.mem)
    except (IntegrityError, RuntimeError, MemoryError) as e:  # memory refused by the system
        raise FormatError(f"{what}: cannot derive its key ({e or type(e).__name__})") from None
    try:
        return MasterKey.from_bytes(crypto.open_sealed(kek, kf.sealed, b"lbk:key", what))
    except IntegrityError:
        return None


def describe(name: str, raw: bytes, master: MasterKey) -> KeyInfo:
    """What ``lbk key list`` shows; the metadata is informational, so damaged metadata
    shows as empty fields rather than failing the listing."""
    doc = _parse(raw, f"keys/{name}")
    try:
        meta = json.loads(
            crypto.open_sealed(master.encrypt, base64.b64decode(doc["meta"]), b"lbk:keymeta", f"keys/{name}")
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, IntegrityError):
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    field = lambda k: v if isinstance(v := meta.get(k), str) else ""  # noqa: E731
    return KeyInfo(name, field("created"), field("host"), field("user"))


def current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in a container: fall back to the uid
        return str(os.getuid())
