"""lbk/repo/crypto.py: sealing, keyed ids, content hashes and the password KDF."""

from __future__ import annotations

import os

import blake3
import pytest

from lbk.errors import IntegrityError
from lbk.repo import crypto
from lbk.repo.crypto import KEY, NONCE, OVERHEAD, TAG, MasterKey

K = bytes(range(32))
AD = b"lbk:snapshots"


@pytest.mark.parametrize("plaintext", [b"", b"x", os.urandom(1000), bytes(1 << 20)], ids=["empty", "one", "1k", "1M"])
def test_seal_open_round_trip(plaintext):
    sealed = crypto.seal(K, plaintext, AD)
    assert len(sealed) == len(plaintext) + OVERHEAD
    assert crypto.open_sealed(K, sealed, AD, "x") == plaintext


def test_seal_accepts_memoryview_and_uses_a_fresh_nonce():
    a = crypto.seal(K, memoryview(b"same"), AD)
    b = crypto.seal(K, b"same", AD)
    assert a[:NONCE] != b[:NONCE]
    assert a != b
    assert crypto.open_sealed(K, memoryview(a), AD, "x") == b"same"


def test_ciphertext_does_not_contain_plaintext():
    secret = b"/home/ann/secret-file-name.txt" * 4
    assert secret not in crypto.seal(K, secret, AD)


def _flip_positions(n: int) -> list[tuple[str, int]]:
    """Every byte of nonce and tag, and several across the ciphertext body."""
    nonce = [("nonce", i) for i in range(NONCE)]
    body = [("ciphertext", NONCE + i) for i in (0, 1, n // 2, n - 1)]
    tag = [("tag", NONCE + n + i) for i in range(TAG)]
    return nonce + body + tag


PLAIN = b"a plaintext of some length" * 3


@pytest.mark.parametrize("part,pos", _flip_positions(len(PLAIN)))
@pytest.mark.parametrize("bit", [0, 7])
def test_any_flipped_bit_fails_authentication(part, pos, bit):
    sealed = bytearray(crypto.seal(K, PLAIN, AD))
    sealed[pos] ^= 1 << bit
    with pytest.raises(IntegrityError, match="^snapshots/abc: authentication failed"):
        crypto.open_sealed(K, bytes(sealed), AD, "snapshots/abc")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda s: s[:-1], id="truncated-by-one"),
        pytest.param(lambda s: s + b"\0", id="one-byte-appended"),
        pytest.param(lambda s: s[:NONCE] + s[NONCE + 1 :], id="byte-removed-from-body"),
        pytest.param(lambda s: s[:OVERHEAD - 1], id="shorter-than-overhead"),
        pytest.param(lambda s: b"", id="empty"),
    ],
)
def test_changed_length_fails(change):
    sealed = crypto.seal(K, PLAIN, AD)
    with pytest.raises(IntegrityError, match="^obj: "):
        crypto.open_sealed(K, change(sealed), AD, "obj")


@pytest.mark.parametrize(
    "sealed_with,opened_with",
    [
        (b"lbk:snapshots", b"lbk:index"),
        (b"lbk:config", b"lbk:snapshots"),
        (b"lbk:blob\x00" + bytes(32), b"lbk:blob\x01" + bytes(32)),  # data blob read as a tree
        (b"lbk:blob\x00" + bytes(32), b"lbk:blob\x00" + bytes(31) + b"\x01"),  # another blob's id
        (b"lbk:key", b""),
    ],
)
def test_wrong_associated_data_fails(sealed_with, opened_with):
    """A valid ciphertext moved to another place does not authenticate there."""
    sealed = crypto.seal(K, PLAIN, sealed_with)
    assert crypto.open_sealed(K, sealed, sealed_with, "x") == PLAIN
    with pytest.raises(IntegrityError):
        crypto.open_sealed(K, sealed, opened_with, "x")


def test_wrong_key_fails():
    sealed = crypto.seal(K, PLAIN, AD)
    with pytest.raises(IntegrityError):
        crypto.open_sealed(bytes(32), sealed, AD, "x")


# -- keyed blob ids -------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"chunk", os.urandom(3 << 20)], ids=["empty", "small", "3M"])
def test_blob_id_is_keyed(data):
    a, b = MasterKey.generate(), MasterKey.generate()
    assert len(a.blob_id(data)) == 32
    assert a.blob_id(data) == a.blob_id(data) == a.blob_id(memoryview(data))
    assert a.blob_id(data) != b.blob_id(data)
    assert a.blob_id(data) != blake3.blake3(data).digest()  # a MAC, not a bare hash


def test_blob_id_uses_the_mac_key_not_the_encryption_key():
    a = MasterKey(encrypt=bytes(32), mac=b"\x01" * 32)
    b = MasterKey(encrypt=b"\x02" * 32, mac=b"\x01" * 32)
    c = MasterKey(encrypt=bytes(32), mac=b"\x03" * 32)
    assert a.blob_id(b"x") == b.blob_id(b"x") != c.blob_id(b"x")


def test_blob_id_differs_for_different_content():
    k = MasterKey.generate()
    assert k.blob_id(b"a") != k.blob_id(b"b")


def test_master_key_bytes_round_trip():
    k = MasterKey.generate()
    assert len(k.to_bytes()) == 2 * KEY
    assert k.encrypt != k.mac
    assert MasterKey.from_bytes(k.to_bytes()) == k


@pytest.mark.parametrize("n", [0, 63, 65])
def test_master_key_wrong_length_refused(n):
    with pytest.raises(IntegrityError):
        MasterKey.from_bytes(bytes(n))


# -- content hash ---------------------------------------------------------------

@pytest.mark.parametrize(
    "data,expected",
    [
        (b"", "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"),
        (b"abc", "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"),
    ],
)
def test_content_hash_is_plain_blake3_hex(data, expected):
    assert crypto.content_hash(data) == expected
    assert crypto.content_hash(memoryview(data)) == expected


# -- KDF ------------------------------------------------------------------------

SALT = bytes(crypto.SALT)


@pytest.mark.parametrize(
    "ops,mem",
    [
        (0, crypto.KDF_MEM_FAST),
        (crypto.KDF_OPS_FAST - 1, crypto.KDF_MEM_FAST),
        (11, crypto.KDF_MEM_FAST),
        (10**9, crypto.KDF_MEM_FAST),
        (crypto.KDF_OPS_FAST, 0),
        (crypto.KDF_OPS_FAST, crypto.KDF_MEM_FAST - 1),
        (crypto.KDF_OPS_FAST, (1 << 30) + 1),
        (crypto.KDF_OPS_FAST, 4 << 30),
        (-1, -1),
    ],
)
def test_derive_key_refuses_implausible_params(ops, mem):
    with pytest.raises(IntegrityError, match="implausible KDF parameters"):
        crypto.derive_key(b"pw", SALT, ops, mem)


def test_derive_key_is_deterministic_and_depends_on_every_input():
    ops, mem = crypto.KDF_OPS_FAST, crypto.KDF_MEM_FAST
    k = crypto.derive_key(b"pw", SALT, ops, mem)
    assert len(k) == KEY
    assert crypto.derive_key(b"pw", SALT, ops, mem) == k
    others = {
        crypto.derive_key(b"pw2", SALT, ops, mem),
        crypto.derive_key(b"pw", b"\x01" * crypto.SALT, ops, mem),
        crypto.derive_key(b"pw", SALT, ops + 1, mem),
        crypto.derive_key(b"pw", SALT, ops, mem * 2),
    }
    assert k not in others and len(others) == 4


@pytest.mark.parametrize(
    "value,expected",
    [
        ("1", (crypto.KDF_OPS_FAST, crypto.KDF_MEM_FAST)),
        (None, (crypto.KDF_OPS, crypto.KDF_MEM)),
        ("0", (crypto.KDF_OPS, crypto.KDF_MEM)),
        ("", (crypto.KDF_OPS, crypto.KDF_MEM)),
        ("yes", (crypto.KDF_OPS, crypto.KDF_MEM)),
    ],
)
def test_default_kdf_params_honours_insecure_fast_kdf(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("LBK_INSECURE_FAST_KDF", raising=False)
    else:
        monkeypatch.setenv("LBK_INSECURE_FAST_KDF", value)
    assert crypto.default_kdf_params() == expected


def test_production_kdf_params_are_strong_and_accepted():
    """Production keys must pass the plausibility bounds every key file is checked against."""
    assert crypto.KDF_MEM >= 64 << 20 and crypto.KDF_OPS >= 3
    assert len(crypto.derive_key(b"pw", SALT, crypto.KDF_OPS, crypto.KDF_MEM)) == KEY
