"""The backend contract (lbk/backend/base.py), run against every backend."""

from __future__ import annotations

import os

import pytest

from lbk.backend.base import AlreadyExists, BackendError, FileKind, Handle, NotFound


def h(kind: FileKind, n: int = 0) -> Handle:
    return Handle(kind, f"{n:064x}")


@pytest.fixture
def repo(backend):
    backend.create()
    return backend


def test_create_then_exists_only_after_config(backend):
    assert not backend.exists()
    backend.create()
    assert not backend.exists()
    backend.save(Handle(FileKind.CONFIG), b"cfg")
    assert backend.exists()
    assert backend.load(Handle(FileKind.CONFIG)) == b"cfg"


def test_create_refuses_non_empty(repo):
    repo.save(Handle(FileKind.CONFIG), b"x")
    with pytest.raises(BackendError):
        repo.create()


@pytest.mark.parametrize("kind", [k for k in FileKind if k is not FileKind.CONFIG])
def test_save_load_list_remove(repo, kind):
    data = os.urandom(1000)
    repo.save(h(kind, 1), data)
    repo.save(h(kind, 2), b"")
    assert repo.load(h(kind, 1)) == data
    assert repo.load(h(kind, 2)) == b""
    assert repo.stat(h(kind, 1)) == 1000
    assert sorted((i.name, i.size) for i in repo.list(kind)) == [
        (f"{1:064x}", 1000),
        (f"{2:064x}", 0),
    ]
    repo.remove(h(kind, 1))
    assert [i.name for i in repo.list(kind)] == [f"{2:064x}"]
    with pytest.raises(NotFound):
        repo.load(h(kind, 1))


def test_kinds_are_separate(repo):
    repo.save(h(FileKind.INDEX, 7), b"index")
    assert list(repo.list(FileKind.SNAPSHOT)) == []
    with pytest.raises(NotFound):
        repo.load(h(FileKind.SNAPSHOT, 7))


@pytest.mark.parametrize(
    "offset,length,expect",
    [(0, None, b"0123456789"), (3, 4, b"3456"), (9, 1, b"9"), (10, 0, b""), (4, None, b"456789")],
)
def test_load_range(repo, offset, length, expect):
    repo.save(h(FileKind.DATA, 3), b"0123456789")
    assert repo.load(h(FileKind.DATA, 3), offset, length) == expect


@pytest.mark.parametrize("offset,length", [(5, 6), (11, None), (-1, 2), (0, 11)])
def test_load_past_end_raises_never_short(repo, offset, length):
    repo.save(h(FileKind.DATA, 3), b"0123456789")
    with pytest.raises(BackendError):
        repo.load(h(FileKind.DATA, 3), offset, length)


def test_missing_raises_not_found(repo):
    for op in (repo.load, repo.stat, repo.remove):
        with pytest.raises(NotFound):
            op(h(FileKind.SNAPSHOT, 9))


def test_save_refuses_overwrite_unless_asked(repo):
    repo.save(h(FileKind.LOCK, 1), b"a")
    with pytest.raises(AlreadyExists):
        repo.save(h(FileKind.LOCK, 1), b"b")
    assert repo.load(h(FileKind.LOCK, 1)) == b"a"
    repo.save(h(FileKind.LOCK, 1), b"b", overwrite=True)
    assert repo.load(h(FileKind.LOCK, 1)) == b"b"


def test_large_object_round_trips(repo):
    data = os.urandom(9 * 1024 * 1024 + 17)
    repo.save(h(FileKind.DATA, 5), data)
    assert repo.stat(h(FileKind.DATA, 5)) == len(data)
    assert repo.load(h(FileKind.DATA, 5)) == data
    assert repo.load(h(FileKind.DATA, 5), 8 * 1024 * 1024, 1024) == data[8 << 20 : (8 << 20) + 1024]


def test_many_objects_listed(repo):
    names = {f"{i:02x}" + "0" * 62 for i in range(0, 256, 5)}
    for n in names:
        repo.save(Handle(FileKind.DATA, n), n.encode())
    assert {i.name for i in repo.list(FileKind.DATA)} == names


@pytest.mark.parametrize("name", ["../x", "a/b", "", "ABC", "0" * 63, "0" * 64 + "/"])
def test_invalid_names_refused_at_boundary(name):
    with pytest.raises(ValueError):
        Handle(FileKind.DATA, name)
