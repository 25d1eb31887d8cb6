"""A thin wrapper over pynacl and blake3: the only module that touches key material.

Encryption is XChaCha20-Poly1305 (libsodium via pynacl) with a random 24-byte nonce
per message, so nonces never need coordination between processes. Every message binds
associated data naming what it is (``b"lbk:snapshot"``, blob type + id ...), so a valid
ciphertext moved to another place fails authentication.

    sealed = nonce:24 || ciphertext || tag:16

Chunk ids are keyed BLAKE3 of the plaintext (a MAC, not a bare hash), so the repository
does not reveal whether it holds a known file. Plain BLAKE3 names files by their
ciphertext, which makes any swap of stored files detectable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import blake3
import nacl.bindings as sodium
import nacl.exceptions
import nacl.pwhash

from lbk.errors import IntegrityError

NONCE = 24
TAG = 16
OVERHEAD = NONCE + TAG
KEY = 32


@dataclass(frozen=True)
class MasterKey:
    """The repository's secret keys: one for encryption, one for chunk ids."""

    encrypt: bytes
    mac: bytes

    @classmethod
    def generate(cls) -> "MasterKey":
        return cls(os.urandom(KEY), os.urandom(KEY))

    def to_bytes(self) -> bytes:
        return self.encrypt + self.mac

    @classmethod
    def from_bytes(cls, b: bytes) -> "MasterKey":
        if len(b) != 2 * KEY:
            raise IntegrityError("master key has the wrong length")
        return cls(b[:KEY], b[KEY:])

    def blob_id(self, data: bytes | memoryview) -> bytes:
        """Keyed BLAKE3 of plaintext; large inputs hash on several threads."""
        return blake3.blake3(data, key=self.mac).digest()


def seal(key: bytes, plaintext: bytes | memoryview, ad: bytes) -> bytes:
    nonce = os.urandom(NONCE)
    return nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(bytes(plaintext), ad, nonce, key)


def open_sealed(key: bytes, sealed: bytes | memoryview, ad: bytes, what: str) -> bytes:
    """Decrypt and authenticate; ``what`` names the object in the error."""
    if len(sealed) < OVERHEAD:
        raise IntegrityError(f"{what}: too short to be an encrypted object")
    sealed = bytes(sealed)
    try:
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed[NONCE:], ad, sealed[:NONCE], key)
    except nacl.exceptions.CryptoError:
        raise IntegrityError(f"{what}: authentication failed (data is damaged or was tampered with)") from None


def content_hash(data: bytes | memoryview) -> str:
    """Plain BLAKE3 hex of stored bytes; used to name files by their ciphertext."""
    return blake3.blake3(data).hexdigest()


# -- password-based key derivation ---------------------------------------------

ARGON2ID = "argon2id"
# Production defaults: 3 passes over 64 MiB (about 0.15 s here); recorded per key file.
KDF_OPS = 3
KDF_MEM = 64 * 1024 * 1024
# Documented cheap setting for tests only (LBK_INSECURE_FAST_KDF=1): libsodium minimums.
KDF_OPS_FAST = nacl.pwhash.argon2id.OPSLIMIT_MIN
KDF_MEM_FAST = nacl.pwhash.argon2id.MEMLIMIT_MIN
SALT = nacl.pwhash.argon2id.SALTBYTES


# Accepted when reading a key file (docs/FORMAT.md). Anyone who can write to the
# repository can add a key file, and every command may run its KDF while it looks for
# the key that opens: these bounds (above libsodium's strongest preset, 4 passes over
# 1 GiB) keep a forged one from asking for minutes of work or more memory than a laptop has.
KDF_OPS_MAX = 10
KDF_MEM_MAX = 1 << 30


def derive_key(password: bytes, salt: bytes, ops: int, mem: int) -> bytes:
    if not (KDF_OPS_FAST <= ops <= KDF_OPS_MAX and KDF_MEM_FAST <= mem <= KDF_MEM_MAX):
        raise IntegrityError(f"key file has implausible KDF parameters (ops={ops}, mem={mem})")
    return nacl.pwhash.argon2id.kdf(KEY, password, salt, opslimit=ops, memlimit=mem)


def default_kdf_params() -> tuple[int, int]:
    if os.environ.get("LBK_INSECURE_FAST_KDF") == "1":
        return KDF_OPS_FAST, KDF_MEM_FAST
    return KDF_OPS, KDF_MEM
