"""lbk/repo/repository.py with keys.py, config.py and lock.py, on the in-memory backend."""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

import pytest

from lbk.backend.base import FileKind, Handle
from lbk.backend.mem import MemoryBackend
from lbk.errors import (
    ExitCode,
    FormatError,
    IntegrityError,
    LbkError,
    LockFailed,
    RepositoryExists,
    RepositoryNotFound,
    WrongPassword,
)
from lbk.ops import repo_admin
from lbk.repo import crypto, index as index_mod, lock as lock_mod, repository as repository_mod
from lbk.repo.pack import DATA, TREE
from lbk.repo.repository import Repository
from tests.helpers import PASSWORD

PW = PASSWORD.encode()


def reopen(repo: Repository, password: bytes = PW) -> Repository:
    return Repository.open(repo.backend, lambda: password)


def names(repo: Repository, kind: FileKind) -> list[str]:
    return sorted(f.name for f in repo.backend.list(kind))


class RecordingBackend(MemoryBackend):
    """A memory backend that remembers the order of saves."""

    def __init__(self) -> None:
        super().__init__()
        self.saves: list[FileKind] = []

    def save(self, h, data, *, overwrite=False):
        super().save(h, data, overwrite=overwrite)
        self.saves.append(h.kind)


# -- create / open -------------------------------------------------------------------

def test_create_then_open():
    backend = MemoryBackend()
    repo = Repository.create(backend, PW)
    assert backend.exists()
    assert len(names(repo, FileKind.KEY)) == 1
    opened = Repository.open(backend, lambda: PW)
    assert opened.id == repo.id and len(repo.id) == 64
    assert opened.master == repo.master
    assert opened.config == repo.config
    assert opened.key_name == repo.key_name == names(repo, FileKind.KEY)[0]


def test_two_repositories_have_different_ids_and_keys():
    a, b = Repository.create(MemoryBackend(), PW), Repository.create(MemoryBackend(), PW)
    assert a.id != b.id
    assert a.master != b.master
    assert a.config.chunker.seed != b.config.chunker.seed


def test_wrong_password():
    repo = Repository.create(MemoryBackend(), PW)
    with pytest.raises(WrongPassword) as e:
        reopen(repo, b"not the password")
    assert e.value.exit_code == ExitCode.WRONG_PASSWORD == 12


@pytest.mark.parametrize("state", ["empty", "created-but-no-config"])
def test_missing_repository_and_password_not_asked(state):
    backend = MemoryBackend()
    if state == "created-but-no-config":
        Repository.create(backend, PW)
        del backend.files[Handle(FileKind.CONFIG)]
    asked = []
    with pytest.raises(RepositoryNotFound) as e:
        Repository.open(backend, lambda: asked.append(1) or PW)
    assert e.value.exit_code == ExitCode.NO_REPOSITORY == 10
    assert asked == []


@pytest.mark.parametrize("leftover", [FileKind.CONFIG, FileKind.KEY, FileKind.DATA])
def test_create_on_existing_or_non_empty_target(leftover):
    backend = MemoryBackend()
    backend.save(Handle(leftover, "config" if leftover is FileKind.CONFIG else "ab" * 32), b"x")
    before = dict(backend.files)
    with pytest.raises(RepositoryExists):
        Repository.create(backend, PW)
    assert backend.files == before


def test_create_on_existing_repository():
    repo = Repository.create(MemoryBackend(), PW)
    with pytest.raises(RepositoryExists):
        Repository.create(repo.backend, PW)
    assert reopen(repo).id == repo.id


def test_open_without_key_files_is_a_format_error(mem_repo):
    for k in names(mem_repo, FileKind.KEY):
        mem_repo.backend.remove(Handle(FileKind.KEY, k))
    with pytest.raises(FormatError, match="no key files"):
        reopen(mem_repo)


# -- config --------------------------------------------------------------------------

def _rewrite_config(repo: Repository, change) -> None:
    doc = json.loads(repo.config.encode())
    change(doc)
    repo.save_sealed(Handle(FileKind.CONFIG), json.dumps(doc).encode(), overwrite=True)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda d: d.update(version=2), "unknown repository version 2"),
        (lambda d: d.update(version=0), "unknown repository version 0"),
        (lambda d: d.pop("version"), "unknown repository version None"),
        (lambda d: d.update(version="1"), "unknown repository version"),
        (lambda d: d["compression"].update(alg="lz4"), "unknown compression"),
        (lambda d: d["chunker"].update(alg="rabin"), "unsupported chunker"),
        (lambda d: d["chunker"].update(min=10 << 20), "unsupported chunker"),  # min > avg
        (lambda d: d["chunker"].update(extra=1), "malformed"),
        (lambda d: d.pop("pack_size"), "malformed"),
        (lambda d: d.update(chunker=[]), "malformed"),
        pytest.param(
            lambda d: d.update(pack_size=float("inf")), "unsupported pack size",
            id="pack-size-infinity",
        ),
        # found by fuzzing (tests/fuzz): values that got past the decoder and failed later
        (lambda d: d.update(id="../../elsewhere"), "malformed repository id"),  # names the cache dir
        (lambda d: d.update(id=7), "malformed repository id"),
        (lambda d: d["chunker"].update(seed=-1), "unsupported chunker"),  # FastCDC: OverflowError
        (lambda d: d["chunker"].update(seed=2**64), "unsupported chunker"),
        (lambda d: d["chunker"].update(min=65.5), "unsupported chunker"),
        (lambda d: d["chunker"].update(avg="1"), "unsupported chunker"),
        (lambda d: d["chunker"].update(avg=5 << 20), "unsupported chunker"),  # pyfastcdc: avg <= 4 MiB
        (lambda d: d["chunker"].update(max=32 << 20), "unsupported chunker"),  # pyfastcdc: max <= 16 MiB
        (lambda d: d["chunker"].update(min=2 << 20, avg=2 << 20), "unsupported chunker"),  # min <= 1 MiB
        (lambda d: d["compression"].update(level=23), "unsupported compression level 23"),  # zstd refuses
        (lambda d: d["compression"].update(level=True), "unsupported compression level True"),
        (lambda d: d.update(pack_size=2**62), "unsupported pack size"),  # packs are built in memory
        (lambda d: d.update(pack_size=0), "unsupported pack size 0"),
    ],
)
def test_bad_config_refused(mem_repo, change, match):
    _rewrite_config(mem_repo, change)
    with pytest.raises(FormatError, match=match):
        reopen(mem_repo)


def test_config_is_sealed_and_authenticated(mem_repo):
    h = Handle(FileKind.CONFIG)
    raw = mem_repo.backend.files[h]
    assert mem_repo.id.encode() not in raw and b"fastcdc" not in raw
    mem_repo.backend.files[h] = raw[:-1] + bytes([raw[-1] ^ 1])
    with pytest.raises(IntegrityError, match="^config: "):
        reopen(mem_repo)


# -- blobs ---------------------------------------------------------------------------

def test_save_blob_dedups(mem_repo):
    data = b"some chunk" * 100
    bid, new = mem_repo.save_blob(DATA, data)
    assert new and bid == mem_repo.master.blob_id(data)
    stats = dict(mem_repo.stats_added)
    assert stats["blobs"] == 1 and stats["raw_bytes"] == len(data)
    bid2, new2 = mem_repo.save_blob(DATA, data)
    assert (bid2, new2) == (bid, False)
    assert mem_repo.stats_added == stats
    mem_repo.flush()
    assert mem_repo.save_blob(DATA, data) == (bid, False)  # known from the index now
    assert mem_repo.stats_added["blobs"] == 1


def test_flush_writes_packs_then_one_index():
    backend = RecordingBackend()
    repo = Repository.create(backend, PW)
    backend.saves.clear()
    repo.save_blob(DATA, b"data blob")
    repo.save_blob(TREE, b'{"tree": 1}')
    assert backend.saves == []  # nothing uploaded before a flush (packs are not full)
    repo.flush()
    assert backend.saves == [FileKind.DATA, FileKind.DATA, FileKind.INDEX]
    (index_name,) = names(repo, FileKind.INDEX)
    _, packs = index_mod.decode(repo.load_sealed(Handle(FileKind.INDEX, index_name)), "i")
    assert sorted(packs) == names(repo, FileKind.DATA)
    assert sorted(e.type for es in packs.values() for e in es) == [DATA, TREE]
    assert repo.stats_added["packs"] == 2


def test_flush_with_nothing_new_writes_nothing():
    backend = RecordingBackend()
    repo = Repository.create(backend, PW)
    backend.saves.clear()
    repo.flush()
    repo.save_blob(DATA, b"x")
    repo.flush()
    repo.flush()
    assert backend.saves == [FileKind.DATA, FileKind.INDEX]


def test_full_packs_are_uploaded_and_indexed_without_flush(mem_repo, monkeypatch):
    monkeypatch.setattr(repository_mod, "INDEX_EVERY", 3)
    mem_repo.config.pack_size = 1  # every blob fills a pack
    for i in range(7):
        mem_repo.save_blob(DATA, b"blob %d" % i)
    mem_repo.wait_uploads()  # full packs are written by uploader threads
    assert len(names(mem_repo, FileKind.DATA)) == 7
    assert len(names(mem_repo, FileKind.INDEX)) == 2  # after packs 3 and 6
    fresh = reopen(mem_repo)
    # two uploader threads: the 4th or 7th pack may land before the index due after the
    # 3rd or 6th takes the unindexed packs, and then joins it (indexing more is harmless)
    indexed = len(fresh.load_index())
    assert indexed in (6, 7)
    partial = names(mem_repo, FileKind.INDEX)
    mem_repo.flush()
    (final,) = names(mem_repo, FileKind.INDEX)  # the session's partial indexes, consolidated
    sup, packs = index_mod.decode(mem_repo.load_sealed(Handle(FileKind.INDEX, final)), "i")
    # flush indexes the 7th pack first unless a partial index already took it
    assert set(partial) <= set(sup) and len(sup) == len(partial) + (indexed == 6)
    assert sorted(packs) == names(mem_repo, FileKind.DATA)
    assert len(reopen(mem_repo).load_index()) == 7


@pytest.mark.parametrize(
    "blob_type,data",
    [
        (DATA, b""),
        (DATA, b"short"),
        (DATA, b"compressible " * 10000),
        (DATA, os.urandom(200_000)),
        (TREE, b'{"nodes":[],"version":1}'),
    ],
    ids=["empty", "short", "compressible", "random", "tree"],
)
def test_load_blob_after_reopening(mem_repo, blob_type, data):
    bid, _ = mem_repo.save_blob(blob_type, data)
    mem_repo.flush()
    fresh = reopen(mem_repo)
    assert not fresh.index_loaded
    fresh.load_index()
    assert bid in fresh.index
    assert fresh.load_blob(blob_type, bid) == data


def test_pack_entries_match_the_index(mem_repo):
    ids = [mem_repo.save_blob(DATA, b"%d" % i)[0] for i in range(5)]
    mem_repo.flush()
    (pack_name,) = names(mem_repo, FileKind.DATA)
    assert [e.id for e in mem_repo.pack_entries(pack_name)] == ids
    assert mem_repo.load_index().packs[pack_name] == mem_repo.pack_entries(pack_name)


def test_blob_not_in_index(mem_repo):
    with pytest.raises(IntegrityError, match="not in any index"):
        mem_repo.load_blob(DATA, bytes(32))


def test_damaged_blob_is_named(mem_repo):
    bid, _ = mem_repo.save_blob(DATA, b"precious")
    mem_repo.flush()
    (pack_name,) = names(mem_repo, FileKind.DATA)
    h = Handle(FileKind.DATA, pack_name)
    raw = bytearray(mem_repo.backend.files[h])
    raw[30] ^= 0x40  # inside the first (only) blob
    mem_repo.backend.files[h] = bytes(raw)
    fresh = reopen(mem_repo)
    with pytest.raises(IntegrityError, match=f"blob {bid.hex()[:16]} in pack {pack_name[:16]}"):
        fresh.load_blob(DATA, bid)


def test_blob_read_as_another_blob_fails(mem_repo):
    """The index is authenticated, but a blob must also authenticate under its own id."""
    a, _ = mem_repo.save_blob(DATA, b"blob a")
    b, _ = mem_repo.save_blob(DATA, b"blob b")
    mem_repo.flush()
    fresh = reopen(mem_repo)
    loc_a = fresh.blob_location(a)
    raw_a = fresh.backend.load(Handle(FileKind.DATA, loc_a.pack), loc_a.offset, loc_a.length)
    assert fresh.decode_blob(loc_a, a, raw_a) == b"blob a"
    with pytest.raises(IntegrityError, match=f"blob {b.hex()[:16]}"):
        fresh.decode_blob(loc_a, b, raw_a)  # a's bytes where the index said b is


# -- sealed files --------------------------------------------------------------------

def test_sealed_file_round_trip_and_no_plaintext(mem_repo):
    payload = b'{"paths": ["/home/ann/secret-project"], "host": "ann-laptop"}'
    name = mem_repo.save_file(FileKind.SNAPSHOT, payload)
    raw = mem_repo.backend.files[Handle(FileKind.SNAPSHOT, name)]
    assert name == crypto.content_hash(raw)
    assert b"secret-project" not in raw and b"ann-laptop" not in raw
    assert reopen(mem_repo).load_sealed(Handle(FileKind.SNAPSHOT, name)) == payload


def test_swapped_sealed_file_is_detected_and_named(mem_repo):
    a = mem_repo.save_file(FileKind.SNAPSHOT, b'{"snapshot": "A"}')
    b = mem_repo.save_file(FileKind.SNAPSHOT, b'{"snapshot": "B"}')
    files = mem_repo.backend.files
    files[Handle(FileKind.SNAPSHOT, b)] = files[Handle(FileKind.SNAPSHOT, a)]
    fresh = reopen(mem_repo)
    assert fresh.load_sealed(Handle(FileKind.SNAPSHOT, a)) == b'{"snapshot": "A"}'
    with pytest.raises(IntegrityError, match=f"^snapshots/{b}: .*(damaged or swapped)"):
        fresh.load_sealed(Handle(FileKind.SNAPSHOT, b))


def test_sealed_file_moved_to_another_kind_fails(mem_repo):
    """Same bytes, same (content) name, wrong folder: the associated data differs."""
    name = mem_repo.save_file(FileKind.INDEX, index_mod.encode({}))
    raw = mem_repo.backend.files[Handle(FileKind.INDEX, name)]
    mem_repo.backend.save(Handle(FileKind.SNAPSHOT, name), raw)
    with pytest.raises(IntegrityError, match=f"^snapshots/{name}: authentication failed"):
        mem_repo.load_sealed(Handle(FileKind.SNAPSHOT, name))


def test_flipped_bit_in_index_file_is_named(mem_repo):
    mem_repo.save_blob(DATA, b"x")
    mem_repo.flush()
    (name,) = names(mem_repo, FileKind.INDEX)
    h = Handle(FileKind.INDEX, name)
    raw = bytearray(mem_repo.backend.files[h])
    raw[-1] ^= 1
    mem_repo.backend.files[h] = bytes(raw)
    with pytest.raises(IntegrityError, match=f"index/{name}"):
        reopen(mem_repo).load_index()


def test_superseded_index_is_ignored(mem_repo):
    a, _ = mem_repo.save_blob(DATA, b"a")
    mem_repo.flush()
    (old,) = names(mem_repo, FileKind.INDEX)
    # a replacement index that names nothing and supersedes the old one
    mem_repo.save_file(FileKind.INDEX, index_mod.encode({}, [bytes.fromhex(old)]))
    fresh = reopen(mem_repo)
    assert a not in fresh.load_index()
    assert old not in fresh.index_files


# -- keys ----------------------------------------------------------------------------

def test_key_add_open_with_second_password_and_remove(mem_repo):
    first = mem_repo.key_name
    second = repo_admin.add_key(mem_repo, b"second password")
    assert {k.id for k in repo_admin.list_keys(mem_repo)} == {first, second}

    via_second = reopen(mem_repo, b"second password")
    assert via_second.key_name == second
    assert via_second.master == mem_repo.master
    assert reopen(mem_repo).key_name == first

    with pytest.raises(LbkError, match="key in use"):
        repo_admin.remove_key(via_second, second[:8])
    assert repo_admin.remove_key(via_second, first[:8]) == first
    assert names(mem_repo, FileKind.KEY) == [second]
    with pytest.raises(WrongPassword):
        reopen(mem_repo)
    assert reopen(mem_repo, b"second password").master == mem_repo.master


@pytest.mark.parametrize("damage", [lambda raw: b"\0" * len(raw), lambda raw: raw[: len(raw) // 2]])
def test_a_damaged_key_file_does_not_lock_out_the_others(mem_repo, damage):
    """An interrupted key removal may leave a wiped key file behind: the other keys still
    open the repository; when no key file is readable, the error names one."""
    second = repo_admin.add_key(mem_repo, b"second password")
    first = mem_repo.key_name
    h = Handle(FileKind.KEY, first)
    mem_repo.backend.save(h, damage(mem_repo.backend.load(h)), overwrite=True)
    assert reopen(mem_repo, b"second password").key_name == second
    with pytest.raises(WrongPassword):
        reopen(mem_repo)  # the first password's key is unreadable: no key matches it
    mem_repo.backend.remove(Handle(FileKind.KEY, second))
    with pytest.raises(FormatError, match=f"keys/{first}"):
        reopen(mem_repo, b"second password")


def test_remove_last_key_refused(mem_repo):
    # the only key is also the one in use; removing it must be refused either way
    with pytest.raises(LbkError):
        repo_admin.remove_key(mem_repo, mem_repo.key_name[:8])
    assert len(names(mem_repo, FileKind.KEY)) == 1


def test_key_file_holds_no_host_or_user_name(mem_repo):
    from lbk.repo.keys import current_user

    (raw,) = [d for h, d in mem_repo.backend.files.items() if h.kind is FileKind.KEY]
    doc = json.loads(raw)
    assert set(doc) == {"version", "kdf", "data", "meta"}
    assert doc["kdf"]["alg"] == "argon2id"
    for secret in (socket.gethostname(), current_user()):
        if len(secret) >= 4:
            assert secret.encode() not in raw
    (info,) = mem_repo.list_keys()
    assert (info.host, info.user) == (socket.gethostname(), current_user())


@pytest.mark.parametrize(
    "meta",
    [
        "AAAA",  # base64, but too short to be sealed
        "",
        "not base64 at all!",
        pytest.param(5),
        pytest.param(None),
    ],
)
def test_key_with_damaged_meta_is_still_listed(mem_repo, meta):
    """``meta`` is informational: a damaged one must not break ``lbk key list``."""
    _rewrite_key(mem_repo, lambda d: d.update(meta=meta))
    (info,) = mem_repo.list_keys()
    assert (info.id, info.host, info.user, info.created) == (mem_repo.key_name, "", "", "")
    assert reopen(mem_repo).master == mem_repo.master  # the key itself still opens


@pytest.mark.parametrize(
    "plain,host",
    [(b"7", ""), (b"[]", ""), (b'{"host": 5, "user": ["x"]}', ""), (b'{"host": "box"}', "box"), (b"[" * 100_000, "")],
)
def test_key_meta_that_authenticates_but_is_nonsense(mem_repo, plain, host):
    """Found by fuzzing (key_meta): a meta that opens but is not a JSON object broke ``lbk key list``."""
    sealed = crypto.seal(mem_repo.master.encrypt, plain, b"lbk:keymeta")
    _rewrite_key(mem_repo, lambda d: d.update(meta=base64.b64encode(sealed).decode()))
    (info,) = mem_repo.list_keys()
    assert (info.host, info.user, info.created) == (host, "", "")


def _rewrite_key(repo: Repository, change) -> None:
    (h,) = [h for h in repo.backend.files if h.kind is FileKind.KEY]
    doc = json.loads(repo.backend.files[h])
    change(doc)
    repo.backend.files[h] = json.dumps(doc).encode()


@pytest.mark.parametrize(
    "change,error",
    [
        (lambda d: d.update(version=2), FormatError),
        (lambda d: d.pop("kdf"), FormatError),
        (lambda d: d["kdf"].update(alg="scrypt"), FormatError),
        (lambda d: d["kdf"].update(salt="!!not base64!!"), FormatError),
        (lambda d: d["kdf"].update(salt="AAAA"), FormatError),  # wrong salt length
        (lambda d: d["kdf"].update(ops="three"), FormatError),
        (lambda d: d.update(data=5), FormatError),
        (lambda d: d["kdf"].update(ops=100), FormatError),  # implausible: refused, not run
        (lambda d: d["kdf"].update(mem=1 << 40), FormatError),
        pytest.param(
            lambda d: d["kdf"].update(ops=float("inf")),
            FormatError,
            id="ops-infinity",
        ),
        # found by fuzzing (tests/fuzz): a KeyError escaped; a truncated key read as "wrong password"
        (lambda d: d["kdf"].pop("salt"), FormatError),
        (lambda d: d.pop("data"), FormatError),
        (lambda d: d.update(data="AAAA"), FormatError),
        (lambda d: d["kdf"].update(ops=1.5), FormatError),
        (lambda d: d["kdf"].update(mem=True), FormatError),
    ],
)
def test_malformed_key_file_is_a_clear_error(mem_repo, change, error):
    """Key files are the one unauthenticated structure: anything wrong is an LbkError
    that names the key file."""
    _rewrite_key(mem_repo, change)
    with pytest.raises(error, match=f"^keys/{mem_repo.key_name}: "):
        reopen(mem_repo)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"version": 1}',
        b"\xff\xfe",
        pytest.param(b"[" * 100_000,
            id="nested-too-deep"),
    ],
)
def test_unparsable_key_file_is_a_format_error(mem_repo, raw):
    (h,) = [h for h in mem_repo.backend.files if h.kind is FileKind.KEY]
    mem_repo.backend.files[h] = raw
    with pytest.raises(FormatError, match=f"^keys/{h.name}: "):
        reopen(mem_repo)


# -- locks ---------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _fast_lock(monkeypatch):
    monkeypatch.setattr(lock_mod, "RECHECK_DELAY", 0)


def _plant_lock(repo: Repository, *, host=None, pid=None, age=0.0, exclusive=False) -> str:
    name = os.urandom(32).hex()
    doc = {
        "version": 1,
        "host": socket.gethostname() if host is None else host,
        "pid": os.getpid() if pid is None else pid,
        "user": "someone",
        "time": time.time() - age,
        "exclusive": exclusive,
    }
    repo.save_sealed(Handle(FileKind.LOCK, name), json.dumps(doc).encode())
    return name


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize(
    "first,second,ok",
    [
        (False, False, True),
        (False, True, False),
        (True, False, False),
        (True, True, False),
    ],
    ids=["shared+shared", "shared+exclusive", "exclusive+shared", "exclusive+exclusive"],
)
def test_lock_compatibility(mem_repo, first, second, ok):
    other = reopen(mem_repo)  # another process, in effect
    held = mem_repo.lock(exclusive=first)
    try:
        if ok:
            other.lock(exclusive=second).release()
        else:
            with pytest.raises(LockFailed, match="repository is locked") as e:
                other.lock(exclusive=second)
            assert e.value.exit_code == ExitCode.LOCKED == 11
            assert names(mem_repo, FileKind.LOCK) == [held.name]  # the loser left nothing
    finally:
        held.release()
    assert names(mem_repo, FileKind.LOCK) == []
    other.lock(exclusive=True).release()


def test_lock_is_a_context_manager_and_sealed(mem_repo):
    with mem_repo.lock(exclusive=True) as held:
        raw = mem_repo.backend.files[Handle(FileKind.LOCK, held.name)]
        assert b'"exclusive"' not in raw
        if len(socket.gethostname()) >= 4:
            assert socket.gethostname().encode() not in raw
        (info,) = lock_mod.list_locks(mem_repo)
        assert (info.host, info.pid, info.exclusive) == (socket.gethostname(), os.getpid(), True)
    assert names(mem_repo, FileKind.LOCK) == []


def test_racing_lock_seen_on_recheck_backs_off(mem_repo, monkeypatch):
    """Two exclusive lockers that write at once must not both proceed."""
    planted = []
    real_sleep = time.sleep
    monkeypatch.setattr(lock_mod.time, "sleep", lambda s: planted.append(_plant_lock(mem_repo, exclusive=True)) or real_sleep(0))
    with pytest.raises(LockFailed):
        mem_repo.lock(exclusive=True)
    assert names(mem_repo, FileKind.LOCK) == planted  # our own lock file was removed


@pytest.mark.parametrize(
    "kind",
    ["old", "dead-pid-this-host", "damaged"],
)
def test_stale_lock_is_ignored_and_removed(mem_repo, kind):
    if kind == "old":
        stale = _plant_lock(mem_repo, host="elsewhere", pid=1, age=lock_mod.STALE + 60, exclusive=True)
    elif kind == "dead-pid-this-host":
        stale = _plant_lock(mem_repo, pid=_dead_pid(), exclusive=True)
    else:
        stale = os.urandom(32).hex()
        mem_repo.backend.save(Handle(FileKind.LOCK, stale), b"garbage" * 10)
    live = _plant_lock(mem_repo, host="elsewhere", pid=1, age=60, exclusive=False)

    with mem_repo.lock(exclusive=False):  # the stale exclusive lock does not block
        pass
    removed = lock_mod.remove_stale(mem_repo)
    assert [r.name for r in removed] == [stale]
    assert names(mem_repo, FileKind.LOCK) == [live]


@pytest.mark.parametrize(
    "host,pid,age,stale",
    [
        ("elsewhere", 1, 0, False),
        ("elsewhere", 1, lock_mod.STALE - 5, False),
        ("elsewhere", 1, lock_mod.STALE + 5, True),
        ("elsewhere", "dead", 0, False),  # a pid on another host cannot be checked
        ("here", "self", 0, False),
        ("here", "self", lock_mod.STALE + 5, True),
        ("here", "dead", 0, True),
    ],
)
def test_lock_staleness(host, pid, age, stale):
    now = 1_800_000_000.0
    info = lock_mod.LockInfo(
        "ab" * 32,
        socket.gethostname() if host == "here" else host,
        _dead_pid() if pid == "dead" else os.getpid() if pid == "self" else pid,
        "u",
        now - age,
        True,
    )
    assert info.is_stale(now) is stale


GOOD_LOCK = {"version": 1, "host": "h", "pid": 7, "user": "u", "time": 1_800_000_000.5, "exclusive": False}


@pytest.mark.parametrize(
    "plain",
    [
        pytest.param(b"[" * 100_000, id="deep-nesting"),  # RecursionError escaped list_locks
        pytest.param(json.dumps({**GOOD_LOCK, "time": 6641796602034.5}).encode(), id="time-year-212000"),
        pytest.param(json.dumps({**GOOD_LOCK, "time": 1e400}).encode(), id="time-infinite"),
        pytest.param(json.dumps({**GOOD_LOCK, "time": 10**400}).encode(), id="time-too-big-for-a-float"),
        pytest.param(json.dumps({**GOOD_LOCK, "pid": 2**70}).encode(), id="pid-too-big-for-kill"),
        pytest.param(json.dumps({**GOOD_LOCK, "pid": -1}).encode(), id="pid-negative"),
        pytest.param(json.dumps({**GOOD_LOCK, "host": ["h"]}).encode(), id="host-not-a-string"),
        pytest.param(json.dumps({**GOOD_LOCK, "exclusive": "no"}).encode(), id="exclusive-not-a-bool"),
        pytest.param(b"7", id="not-an-object"),
    ],
)
def test_lock_that_authenticates_but_is_nonsense_counts_as_damaged(mem_repo, plain):
    """Found by fuzzing (tests/fuzz, target lock): such locks crashed every locker, or
    ``describe`` and the staleness check later. Like an unreadable lock, they are stale."""
    name = "cd" * 32
    mem_repo.save_sealed(Handle(FileKind.LOCK, name), plain)
    with pytest.raises(FormatError, match=f"^locks/{name}: malformed lock"):
        lock_mod.decode_lock(plain, name)
    (info,) = lock_mod.list_locks(mem_repo)
    assert (info.name, info.host, info.is_stale()) == (name, "?", True)
    with mem_repo.lock(exclusive=True):
        pass
    assert [i.name for i in lock_mod.remove_stale(mem_repo)] == [name]


def test_lock_decodes(mem_repo):
    info = lock_mod.decode_lock(json.dumps(GOOD_LOCK).encode(), "ab" * 32)
    assert (info.host, info.pid, info.user, info.time, info.exclusive) == ("h", 7, "u", 1_800_000_000.5, False)
    assert "shared lock by u@h pid 7" in info.describe()


def test_live_exclusive_lock_is_not_removed_by_unlock(mem_repo):
    live = _plant_lock(mem_repo, exclusive=True)
    assert lock_mod.remove_stale(mem_repo) == []
    with pytest.raises(LockFailed):
        mem_repo.lock()
    assert [i.name for i in lock_mod.remove_stale(mem_repo, all_locks=True)] == [live]
    mem_repo.lock().release()


# -- concurrency ---------------------------------------------------------------------

def test_concurrent_save_blob_stores_each_blob_once(mem_repo):
    mem_repo.config.pack_size = 4096  # many packs, uploaded while other threads save
    blobs = [os.urandom(200) + b"%d" % i for i in range(300)]
    results: list[list[tuple[bytes, bool]]] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        order = blobs[:]
        random.Random(n).shuffle(order)
        barrier.wait()
        for b in order:
            results[n].append(mem_repo.save_blob(DATA, b))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mem_repo.flush()

    new = [bid for r in results for bid, is_new in r if is_new]
    assert sorted(new) == sorted(mem_repo.master.blob_id(b) for b in blobs)
    assert mem_repo.stats_added["blobs"] == len(blobs)
    stored = [e.id for p in names(mem_repo, FileKind.DATA) for e in mem_repo.pack_entries(p)]
    assert len(names(mem_repo, FileKind.DATA)) > 1
    assert sorted(stored) == sorted(new)
    fresh = reopen(mem_repo)
    fresh.load_index()
    for b in blobs:
        assert fresh.load_blob(DATA, fresh.master.blob_id(b)) == b
