"""Repair snapshots: rewrite snapshots whose trees reference missing data
(``lbk repair snapshots``).

Every snapshot's trees are walked against the loaded index (a blob counts as present
when the index names it and its pack exists). Damage is kept visible, never hidden:

- a file whose content blobs are missing keeps its node; the missing chunk ids are
  dropped, ``size`` becomes the bytes that remain, and the node's ``error`` says what was
  lost ("damaged: 2 of 5 chunks missing, 3.0 MiB lost");
- a directory whose tree is missing or cannot be opened becomes an empty directory whose
  node carries an ``error``.

Rewritten trees are stored as new tree blobs (flushed: packs, then index), then each
affected snapshot is written again as a new snapshot with the same time, paths, host,
kind and name, the tag ``repaired``, and ``summary.repaired_from`` naming the original
(docs/FORMAT.md, "Repaired snapshots"). Intact snapshots are not touched. With
``forget`` the originals are removed once the new snapshots are durable; without it they
stay (restic's semantics). A dry run writes nothing (but its shared lock file, removed
when it ends).

Snapshots it cannot rewrite are reported: a snapshot file that cannot be opened, a
snapshot whose root tree is lost (nothing is left to keep; ``forget`` removes both), and
disk images (kind ``image``), whose layout places chunks by position: dropping a chunk
would shift every later one, so a damaged image is reported and left alone.

Order and crash safety: trees, flush, snapshots, then (``forget``) removals. Killed at
any point, at worst unreferenced trees (prune removes them) or both an original and its
repaired copy exist; running the repair again finishes the job and does not write a
second copy of a snapshot already repaired the same way.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lbk.backend.base import FileKind, NotFound
from lbk.errors import FormatError, IntegrityError
from lbk.events import Emit, Progress, discard
from lbk.model import DIR, FILE, Node, Snapshot, decode_tree, encode_tree
from lbk.repo.index import BlobLocation
from lbk.repo.pack import TREE
from lbk.repo.repository import Repository
from lbk.repo.snapshots import load_snapshot, remove_snapshot, save_snapshot
from lbk.units import human_size

REPAIRED_TAG = "repaired"
_DAMAGE = (IntegrityError, FormatError)  # any other backend failure stops the repair


@dataclass
class Damage:
    snapshot: str
    path: bytes
    type: str  # "file" or "dir"
    message: str

    def to_json(self) -> dict:
        return {"snapshot": self.snapshot, "path": os.fsdecode(self.path), "type": self.type, "message": self.message}


@dataclass
class SnapshotRepair:
    original: str
    repaired: str  # the new snapshot's id; "" in a dry run
    status: str  # repaired | would repair | already repaired | root lost | image (left alone) | unreadable
    files_damaged: int = 0
    dirs_replaced: int = 0
    forgotten: bool = False
    message: str = ""

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RepairSnapshotsResult:
    dry_run: bool = False
    forget: bool = False
    snapshots: int = 0  # examined
    intact: int = 0
    repairs: list[SnapshotRepair] = field(default_factory=list)  # every snapshot that is not intact
    damage: list[Damage] = field(default_factory=list)
    trees_written: int = 0  # new tree blobs (or that would be written)
    snapshots_written: int = 0
    snapshots_removed: int = 0
    duration: float = 0.0

    @property
    def files_damaged(self) -> int:
        return sum(1 for d in self.damage if d.type == FILE)

    @property
    def dirs_replaced(self) -> int:
        return sum(1 for d in self.damage if d.type == DIR)

    def to_json(self) -> dict:
        return {
            "dry_run": self.dry_run, "forget": self.forget, "snapshots": self.snapshots, "intact": self.intact,
            "snapshots_damaged": len(self.repairs), "files_damaged": self.files_damaged,
            "dirs_replaced": self.dirs_replaced, "trees_written": self.trees_written,
            "snapshots_written": self.snapshots_written, "snapshots_removed": self.snapshots_removed,
            "repairs": [r.to_json() for r in self.repairs], "damage": [d.to_json() for d in self.damage],
            "duration": round(self.duration, 3),
        }


def _join(base: bytes, name: bytes) -> bytes:
    return base.rstrip(b"/") + b"/" + name


class _Rewriter:
    """Rewrites trees, each tree id once: tree id -> (new id, or None when the tree
    cannot be had; the damage below it as (path relative to the tree, type, message);
    why it cannot be had)."""

    def __init__(self, repo: Repository, dry_run: bool):
        self.repo = repo
        self.dry_run = dry_run
        self.packs = {f.name for f in repo.backend.list(FileKind.DATA)}
        self.memo: dict[bytes, tuple[bytes | None, list[tuple[bytes, str, str]], str]] = {}
        self.written: set[bytes] = set()  # new tree blobs
        self._empty: bytes | None = None

    def present(self, blob_id: bytes) -> BlobLocation | None:
        loc = self.repo.index.get(blob_id)
        return loc if loc is not None and loc.pack in self.packs else None

    def store(self, nodes: list[Node]) -> bytes:
        data = encode_tree(nodes)
        if self.dry_run:
            bid = self.repo.master.blob_id(data)
            new = bid not in self.repo.index
        else:
            bid, new = self.repo.save_blob(TREE, data)
        if new:
            self.written.add(bid)
        return bid

    def empty_tree(self) -> bytes:
        if self._empty is None:
            self._empty = self.store([])
        return self._empty

    def _load(self, tree_id: bytes) -> tuple[list[Node] | None, str]:
        what = f"tree {tree_id.hex()[:16]}"
        if self.present(tree_id) is None:
            return None, f"{what} is missing"
        try:
            return decode_tree(self.repo.load_blob(TREE, tree_id), what), ""
        except NotFound:
            return None, f"{what} is missing"
        except _DAMAGE as e:
            return None, e.message

    def tree(self, tree_id: bytes) -> tuple[bytes | None, list[tuple[bytes, str, str]], str]:
        if tree_id in self.memo:
            return self.memo[tree_id]
        nodes, why = self._load(tree_id)
        if nodes is None:
            out: tuple = (None, [], why)
            self.memo[tree_id] = out
            return out
        changed = False
        damage: list[tuple[bytes, str, str]] = []
        for n in nodes:
            if n.type == FILE and n.content:
                msg = self._file(n)
                if msg:
                    changed = True
                    damage.append((n.name, FILE, msg))
            elif n.type == DIR:
                new_sub, below, why = self.tree(n.subtree) if n.subtree is not None else (None, [], "it has no tree")
                if new_sub is None:
                    msg = f"damaged: directory contents lost ({why})"
                    n.subtree, n.error = self.empty_tree(), _add_error(n.error, msg)
                    changed = True
                    damage.append((n.name, DIR, msg))
                    continue
                if new_sub != n.subtree:
                    n.subtree = new_sub
                    changed = True
                damage.extend((_join(n.name, p), t, m) for p, t, m in below)
        out = (self.store(nodes) if changed else tree_id, damage, "")
        self.memo[tree_id] = out
        return out

    def _file(self, n: Node) -> str:
        """Drop a file's missing chunks; returns the error it now carries ("" if intact)."""
        locs = [self.present(c) for c in n.content]
        missing = sum(1 for loc in locs if loc is None)
        if not missing:
            return ""
        kept = sum(loc.raw_length for loc in locs if loc is not None)
        lost = max(0, n.size - kept)
        msg = f"damaged: {missing} of {len(n.content)} chunks missing, {human_size(lost)} lost"
        n.content = [c for c, loc in zip(n.content, locs) if loc is not None]
        n.size = kept
        n.error = _add_error(n.error, msg)
        return msg


def _add_error(old: str, new: str) -> str:
    return f"{old}; {new}" if old else new


def _repaired_copy(snap: Snapshot, tree: bytes, files: int, dirs: int) -> Snapshot:
    summary = dict(snap.summary)
    summary.update({"repaired_from": snap.id, "repaired_files": files, "repaired_dirs": dirs})
    tags = list(snap.tags) + ([] if REPAIRED_TAG in snap.tags else [REPAIRED_TAG])
    return Snapshot(time=snap.time, tree=tree, paths=list(snap.paths), host=snap.host, user=snap.user, kind=snap.kind,
                    name=snap.name, tags=tags, parent=snap.parent, uid=snap.uid, gid=snap.gid, summary=summary)


def _run(repo: Repository, dry_run: bool, forget: bool, emit: Emit) -> RepairSnapshotsResult:
    start = time.monotonic()
    res = RepairSnapshotsResult(dry_run=dry_run, forget=forget)
    repo.load_index()
    rw = _Rewriter(repo, dry_run)
    def load(name: str) -> Snapshot | SnapshotRepair | None:
        try:
            return load_snapshot(repo, name)
        except NotFound:
            return None
        except _DAMAGE as e:
            return SnapshotRepair(name, "", "unreadable", message=e.message)

    snaps: list[Snapshot] = []
    with ThreadPoolExecutor(8) as pool:  # a remote backend pays a round trip per file
        for got in pool.map(load, sorted(repo.list_snapshot_names())):
            if isinstance(got, Snapshot):
                snaps.append(got)
            elif got is not None:
                res.repairs.append(got)
    snaps.sort(key=lambda s: (s.time, s.id))
    res.snapshots = len(snaps) + len(res.repairs)
    done_before = {s.summary.get("repaired_from"): s for s in snaps if s.summary.get("repaired_from")}
    pending: list[tuple[SnapshotRepair, Snapshot]] = []
    forgettable: list[str] = []
    for i, snap in enumerate(snaps, 1):
        emit(Progress("repair snapshots", i, 0, files_total=len(snaps), current=snap.short_id))
        new_tree, damage, why = rw.tree(snap.tree)
        if new_tree is None:
            res.repairs.append(SnapshotRepair(snap.id, "", "root lost", message=f"root {why}: nothing left to keep"))
            forgettable.append(snap.id)
            continue
        if new_tree == snap.tree:
            res.intact += 1
            continue
        files = sum(1 for _, t, _ in damage if t == FILE)
        dirs = len(damage) - files
        if snap.kind == "image":
            res.repairs.append(SnapshotRepair(snap.id, "", "image (left alone)", files, dirs, message=(
                "a disk image places chunks by position: it is not rewritten; restore what is left with "
                "'lbk image restore' at your own risk, or forget it")))
        else:
            entry = SnapshotRepair(snap.id, "", "would repair" if dry_run else "repaired", files, dirs)
            earlier = done_before.get(snap.id)
            if earlier is not None and earlier.tree == new_tree:
                entry.status, entry.repaired = "already repaired", earlier.id
            else:
                pending.append((entry, _repaired_copy(snap, new_tree, files, dirs)))
            res.repairs.append(entry)
            forgettable.append(snap.id)
        res.damage.extend(Damage(snap.id, _join(b"/", p), t, m) for p, t, m in damage)
    res.trees_written = len(rw.written)
    forgettable += [r.original for r in res.repairs if r.status == "unreadable"]
    if dry_run:  # what would be written and removed
        res.snapshots_written = len(pending)
        res.snapshots_removed = len(forgettable) if forget else 0
    else:
        repo.flush()  # every new tree durable and indexed before a snapshot names it
        for entry, copy in pending:
            entry.repaired = save_snapshot(repo, copy)
            res.snapshots_written += 1
        if forget:
            res.snapshots_removed = _forget(repo, res, forgettable)
    res.duration = time.monotonic() - start
    return res


def _forget(repo: Repository, res: RepairSnapshotsResult, ids: list[str]) -> int:
    """Remove the originals (all repaired copies are durable by now) and snapshot files
    that cannot be opened."""
    removed = 0
    by_id = {r.original: r for r in res.repairs}
    for sid in ids:
        try:
            remove_snapshot(repo, sid)
        except NotFound:
            continue
        by_id[sid].forgotten = True
        removed += 1
    return removed


def repair_snapshots(repo: Repository, dry_run: bool = False, forget: bool = False,
                     emit: Emit = discard) -> RepairSnapshotsResult:
    """Rewrite damaged snapshots under the exclusive lock (a dry run takes a shared one,
    as prune's does, and writes nothing else)."""
    with repo.lock(exclusive=not dry_run):
        return _run(repo, dry_run, forget, emit)
