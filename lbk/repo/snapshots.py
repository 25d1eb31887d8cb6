"""Snapshot files: save, load and list (sealed JSON, named by the hash of the ciphertext).

Every full listing, save and removal goes through this module, so it is also where a
repository's snapshot *observer* hears of them: the command line attaches one that
keeps the local cache's snapshot list (lbk/refcache.py) current for shell completion,
without the repository or the ops knowing that a cache exists.
"""

from __future__ import annotations

import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Protocol

from lbk.backend.base import FileKind, Handle
from lbk.model import Snapshot
from lbk.repo.repository import Repository


class SnapshotObserver(Protocol):
    """Told what a command learnt about the repository's snapshots. Must not raise."""

    def listed(self, snaps: Iterable[Snapshot]) -> None: ...  # every snapshot there is
    def saved(self, snap: Snapshot) -> None: ...
    def removed(self, snap_id: str) -> None: ...


_observers: "weakref.WeakKeyDictionary[Repository, SnapshotObserver]" = weakref.WeakKeyDictionary()


def observe(repo: Repository, observer: SnapshotObserver | None) -> None:
    """Attach (or, with None, detach) the observer of ``repo``'s snapshots."""
    if observer is None:
        _observers.pop(repo, None)
    else:
        _observers[repo] = observer


def listed(repo: Repository, snaps: Iterable[Snapshot]) -> None:
    """Report a complete listing (``load_all`` does; so does the catalog after an update)."""
    obs = _observers.get(repo)
    if obs is not None:
        obs.listed(snaps)


def save_snapshot(repo: Repository, snap: Snapshot) -> str:
    """Write a snapshot; callers flush the repository first (packs and indexes are durable)."""
    snap.id = repo.save_file(FileKind.SNAPSHOT, snap.encode())
    obs = _observers.get(repo)
    if obs is not None:
        obs.saved(snap)
    return snap.id


def load_snapshot(repo: Repository, snap_id: str) -> Snapshot:
    return Snapshot.decode(repo.load_sealed(Handle(FileKind.SNAPSHOT, snap_id)), snap_id)


def load_all(repo: Repository) -> list[Snapshot]:
    """Every snapshot, oldest first."""
    names = repo.list_snapshot_names()
    with ThreadPoolExecutor(8) as ex:
        snaps = list(ex.map(lambda n: load_snapshot(repo, n), names))
    snaps.sort(key=lambda s: (s.time, s.id))
    listed(repo, snaps)
    return snaps


def remove_snapshot(repo: Repository, snap_id: str) -> None:
    repo.backend.remove(Handle(FileKind.SNAPSHOT, snap_id))
    obs = _observers.get(repo)
    if obs is not None:
        obs.removed(snap_id)
