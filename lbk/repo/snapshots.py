"""Snapshot files: save, load and list (sealed JSON, named by the hash of the ciphertext)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from lbk.backend.base import FileKind, Handle
from lbk.model import Snapshot
from lbk.repo.repository import Repository


def save_snapshot(repo: Repository, snap: Snapshot) -> str:
    """Write a snapshot; callers flush the repository first (packs and indexes are durable)."""
    snap.id = repo.save_file(FileKind.SNAPSHOT, snap.encode())
    return snap.id


def load_snapshot(repo: Repository, snap_id: str) -> Snapshot:
    return Snapshot.decode(repo.load_sealed(Handle(FileKind.SNAPSHOT, snap_id)), snap_id)


def load_all(repo: Repository) -> list[Snapshot]:
    """Every snapshot, oldest first."""
    names = repo.list_snapshot_names()
    with ThreadPoolExecutor(8) as ex:
        snaps = list(ex.map(lambda n: load_snapshot(repo, n), names))
    return sorted(snaps, key=lambda s: (s.time, s.id))


def remove_snapshot(repo: Repository, snap_id: str) -> None:
    repo.backend.remove(Handle(FileKind.SNAPSHOT, snap_id))
