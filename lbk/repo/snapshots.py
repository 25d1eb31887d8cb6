"""Snapshot files: save, load and list (sealed JSON, named by the hash of the ciphertext).

Every full listing, save and removal goes through this module, so it is also where a
repository's snapshot *observer* hears of them: the command line attaches one that
keeps the local cache's snapshot list (lbk/refcache.py) current for shell completion,
without the repository or the ops knowing that a cache exists.

A damaged snapshot file (it fails authentication or decoding) must not lock a user out
of every other snapshot: a listing skips it, remembers it, and tells the repository's
damage reporter (the command line prints a warning naming it). Callers that need every
snapshot check ``damaged_snapshots`` and refuse - prune above all: it cannot know what
data a snapshot it cannot read uses.
"""

from __future__ import annotations

import re
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Protocol

from lbk.backend.base import FileKind, Handle
from lbk.errors import FormatError, IntegrityError, NotFound
from lbk.model import Snapshot
from lbk.repo.repository import Repository


class SnapshotObserver(Protocol):
    """Told what a command learnt about the repository's snapshots. Must not raise."""

    def listed(self, snaps: Iterable[Snapshot]) -> None: ...  # every snapshot there is
    def saved(self, snap: Snapshot) -> None: ...
    def removed(self, snap_id: str) -> None: ...


_observers: "weakref.WeakKeyDictionary[Repository, SnapshotObserver]" = weakref.WeakKeyDictionary()
_reporters: "weakref.WeakKeyDictionary[Repository, Callable[[str, str], None]]" = weakref.WeakKeyDictionary()
_damaged: "weakref.WeakKeyDictionary[Repository, dict[str, str]]" = weakref.WeakKeyDictionary()
DAMAGE = (IntegrityError, FormatError)
_ID_PREFIX = re.compile(r"[0-9a-f]{4,64}")


def observe(repo: Repository, observer: SnapshotObserver | None) -> None:
    """Attach (or, with None, detach) the observer of ``repo``'s snapshots."""
    if observer is None:
        _observers.pop(repo, None)
    else:
        _observers[repo] = observer


def on_damaged(repo: Repository, report: Callable[[str, str], None] | None) -> None:
    """Attach (or detach) what hears, once per file, of a damaged snapshot a listing skipped:
    ``report(name, message)``."""
    if report is None:
        _reporters.pop(repo, None)
    else:
        _reporters[repo] = report


def damaged_snapshots(repo: Repository) -> dict[str, str]:
    """The damaged snapshot files listings of ``repo`` skipped so far: name -> reason."""
    return dict(_damaged.get(repo, {}))


def damaged_named(repo: Repository, ref: str, readable: list[Snapshot]) -> list[str]:
    """The damaged snapshot files an id prefix ``ref`` names when no readable snapshot
    matches it (to say why a REF fails, and for ``forget ID`` to remove them)."""
    if not _ID_PREFIX.fullmatch(ref) or any(s.id.startswith(ref) for s in readable):
        return []
    return sorted(n for n in _damaged.get(repo, {}) if n.startswith(ref))


def _skip_damaged(repo: Repository, name: str, message: str) -> None:
    seen = _damaged.setdefault(repo, {})
    if name in seen:
        return
    seen[name] = message
    report = _reporters.get(repo)
    if report is not None:
        report(name, message)


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


def load_if_readable(repo: Repository, name: str) -> Snapshot | None:
    """Snapshot ``name``, or None when it is gone (forgotten since it was listed) or
    damaged (then skipped and reported, as the module docstring says)."""
    try:
        return load_snapshot(repo, name)
    except NotFound:
        return None
    except DAMAGE as e:
        _skip_damaged(repo, name, e.message)
        return None


def load_all(repo: Repository) -> list[Snapshot]:
    """Every readable snapshot, oldest first. A damaged one is skipped and reported (see
    the module docstring); a snapshot removed by another process between the listing and
    the load is simply not there."""

    names = repo.list_snapshot_names()
    with ThreadPoolExecutor(8) as ex:
        snaps = [s for s in ex.map(lambda n: load_if_readable(repo, n), names) if s is not None]
    snaps.sort(key=lambda s: (s.time, s.id))
    listed(repo, snaps)
    return snaps


def remove_snapshot(repo: Repository, snap_id: str) -> None:
    repo.backend.remove(Handle(FileKind.SNAPSHOT, snap_id))
    _damaged.get(repo, {}).pop(snap_id, None)
    obs = _observers.get(repo)
    if obs is not None:
        obs.removed(snap_id)
