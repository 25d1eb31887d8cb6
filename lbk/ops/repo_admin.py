"""Repository administration: init, keys, locks."""

from __future__ import annotations

from lbk.backend.base import Backend, FileKind, Handle, NotFound
from lbk.errors import LbkError, PasswordError
from lbk.repo import lock
from lbk.repo.keys import KeyInfo
from lbk.repo.repository import Repository


def init_repository(backend: Backend, password: bytes) -> Repository:
    if not password:
        raise PasswordError("empty password refused")
    return Repository.create(backend, password)


def list_keys(repo: Repository) -> list[KeyInfo]:
    return repo.list_keys()


def add_key(repo: Repository, password: bytes) -> str:
    if not password:
        raise PasswordError("empty password refused")
    return repo.add_key(password)


def _find_key(repo: Repository, prefix: str) -> str:
    names = [f.name for f in repo.backend.list(FileKind.KEY) if f.name.startswith(prefix)]
    if not names or len(prefix) < 4:
        raise LbkError(f"no key with id {prefix!r}" if not names else "give at least 4 characters of the key id")
    if len(names) > 1:
        raise LbkError(f"key id prefix {prefix!r} is ambiguous")
    return names[0]


def remove_key(repo: Repository, prefix: str) -> str:
    """Remove a key file, wiped (``Repository.remove_wiped``); never the last one or the one in use."""
    name = _find_key(repo, prefix)
    if len(list(repo.backend.list(FileKind.KEY))) <= 1:
        raise LbkError("refusing to remove the last key: nothing could open the repository any more")
    if name == repo.key_name:
        raise LbkError("refusing to remove the key in use; open the repository with another password to remove it")
    try:
        repo.remove_wiped(Handle(FileKind.KEY, name))
    except NotFound:
        raise LbkError(f"key {name[:10]} vanished meanwhile") from None
    return name


def change_password(repo: Repository, password: bytes) -> str:
    """Add a key for the new password, then remove (wiped) the one in use."""
    new = add_key(repo, password)
    old = repo.key_name
    if old:
        repo.remove_wiped(Handle(FileKind.KEY, old))
    repo.key_name = new
    return new


def unlock(repo: Repository, remove_all: bool = False) -> list[lock.LockInfo]:
    return lock.remove_stale(repo, all_locks=remove_all)
