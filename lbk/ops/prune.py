"""Prune: remove data that no snapshot references, repacking partly used packs.

Under the exclusive lock (no backup can be adding data), prune

1. loads every index file and lists every pack;
2. marks every blob reachable from every snapshot (each tree is read once);
3. sorts packs: *unused* (no used blob: deleted), *unindexed* (no index names them:
   leftovers of killed writers, garbage under the exclusive lock: deleted), *partly
   used* (kept, or repacked when the unused bytes they hold exceed ``max_unused`` percent
   of the repository, most wasteful first, as restic does) and *fully used* (kept);
4. copies the used blobs of the packs to repack into new packs (each blob is
   authenticated, decompressed, checked against its id and sealed again);
5. writes ONE index file that lists every remaining pack (kept and new) and supersedes
   every index file that existed (including those the repacking wrote);
6. only then deletes the superseded index files, then the packs no longer needed, then
   leftover temporary files.

Crash safety (docs/FORMAT.md, "Prune"): until step 5 the repository only gained packs
and indexes (duplicates of blobs are harmless); after step 5 the new index alone
describes a complete repository, so what steps 5-6 leave behind is at most superseded
index files and unindexed packs, both ignored by readers and removed by the next prune.
Killed at any point, ``check --read-data`` passes and every snapshot restores.

Tests kill prune after each of its changes to the backend with ``LBK_TEST_FAULTS=kill@N``
(``lbk/faults.py``).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lbk.backend.base import FileKind, Handle
from lbk.errors import IntegrityError, FormatError, BackendError, LbkError, UsageError
from lbk.events import Emit, Progress, discard
from lbk.model import DIR, FILE, TREE_VERSION, Snapshot, decode_id
from lbk.repo.pack import TREE, PackEntry
from lbk.repo.repository import Repository, remove_files
from lbk.repo.snapshots import damaged_snapshots, load_all

DEFAULT_MAX_UNUSED = 5.0
WORKERS = max(2, min(8, os.cpu_count() or 2))


class PruneError(LbkError):
    """Prune refused to run or could not finish; the repository is unchanged or still valid."""


def parse_max_unused(text: str) -> float | None:
    """``5%``, ``5`` or ``unlimited`` -> percent (None for unlimited)."""
    t = text.strip().lower()
    if t == "unlimited":
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%?", t)
    if not m or float(m.group(1)) > 100:
        raise UsageError(f"invalid --max-unused {text!r}: use a percentage 0-100 (e.g. 5%) or 'unlimited'")
    pct = float(m.group(1))
    return None if pct >= 100 else pct


class _Mutations:
    """The backend as prune writes to it: counts saves and removes for the report;
    everything else goes straight to the real backend."""

    def __init__(self, inner):
        self.inner = inner
        self.location = inner.location
        self.count = 0
        self._lock = threading.Lock()

    def _done(self) -> None:
        with self._lock:
            self.count += 1

    def save(self, h: Handle, data: bytes, *, overwrite: bool = False) -> None:
        self.inner.save(h, data, overwrite=overwrite)
        self._done()

    def remove(self, h: Handle) -> None:
        self.inner.remove(h)
        self._done()

    def __getattr__(self, name):
        return getattr(self.inner, name)


@dataclass
class PrunePlan:
    snapshots: int = 0
    duration: float = 0.0
    index_files: dict[str, int] = field(default_factory=dict)  # every index file -> size
    pack_sizes: dict[str, int] = field(default_factory=dict)  # every pack on the backend -> size
    keep: dict[str, list[PackEntry]] = field(default_factory=dict)  # indexed packs kept as they are
    repack: dict[str, list[PackEntry]] = field(default_factory=dict)  # pack -> its used blobs to copy
    unused: list[str] = field(default_factory=list)  # indexed packs without a used blob
    unindexed: list[str] = field(default_factory=list)  # packs no index names
    dropped_missing: list[str] = field(default_factory=list)  # indexed, missing, unused: dropped from the index
    blobs_used: int = 0
    bytes_used: int = 0
    bytes_unused: int = 0  # in indexed packs, before prune
    bytes_unused_after: int = 0  # left in kept partly used packs

    @property
    def bytes_total(self) -> int:
        return sum(self.pack_sizes.values()) + sum(self.index_files.values())

    def packs_to_delete(self) -> list[str]:
        return sorted(set(self.unused) | set(self.repack) | set(self.unindexed))

    def nothing_to_do(self) -> bool:
        return not (self.unused or self.unindexed or self.repack or self.dropped_missing) and len(self.index_files) <= 1


@dataclass
class PruneResult:
    dry_run: bool
    snapshots: int = 0
    packs_before: int = 0
    packs_after: int = 0
    packs_deleted: int = 0  # every pack removed (unused + repacked + unindexed)
    packs_unused: int = 0
    packs_repacked: int = 0
    packs_unindexed: int = 0
    packs_written: int = 0
    blobs_used: int = 0
    blobs_repacked: int = 0
    bytes_repacked: int = 0
    index_files_before: int = 0
    index_files_removed: int = 0
    index_files_written: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    bytes_unused_before: int = 0
    bytes_unused_after: int = 0
    temporary_files_removed: int = 0
    backend_changes: int = 0
    plan_duration: float = 0.0  # loading indexes and snapshots, marking used blobs
    duration: float = 0.0  # plan and execution

    @property
    def bytes_freed(self) -> int:
        return self.bytes_before - self.bytes_after

    def to_json(self) -> dict:
        d = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}
        d["bytes_freed"] = self.bytes_freed
        return d


# -- mark ------------------------------------------------------------------------------------


def tree_references(data: bytes, what: str) -> tuple[list[bytes], list[bytes]]:
    """(subtree ids, data blob ids) that a tree blob references (docs/FORMAT.md, "Trees").

    Marking needs only these two fields, so the tree is not turned into ``Node`` objects
    (five times faster over thousands of trees); the version is still checked and a
    malformed tree is still an error.
    """
    try:
        doc = json.loads(data)
        if doc.get("version") != TREE_VERSION:
            raise FormatError(f"{what}: unknown tree version {doc.get('version')!r}")
        subtrees: list[bytes] = []
        content: list[bytes] = []
        for d in doc["nodes"]:
            t = d["type"]
            if t == DIR:
                if d.get("subtree") is not None:
                    subtrees.append(decode_id(d["subtree"]))
            elif t == FILE:
                content.extend(decode_id(c) for c in d.get("content", ()))
        return subtrees, content
    except FormatError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise FormatError(f"{what}: malformed tree") from None


def used_blobs(repo: Repository, snapshots: list[Snapshot], emit: Emit = discard) -> set[bytes]:
    """Every tree and data blob reachable from ``snapshots``; each tree is read once.
    A tree that cannot be read stops prune: it cannot know what that tree references."""
    used: set[bytes] = set()
    trees = 0
    last = time.monotonic()
    for snap in snapshots:
        stack = [snap.tree]
        while stack:
            t = stack.pop()
            if t in used:
                continue
            try:
                subtrees, content = tree_references(repo.load_blob(TREE, t), f"tree {t.hex()[:16]}")
            except (IntegrityError, FormatError, BackendError) as e:
                raise PruneError(
                    f"snapshot {snap.short_id} references tree {t.hex()[:16]} that cannot be read ({e.message}); "
                    "run 'lbk check' - nothing was deleted"
                ) from None
            used.add(t)
            trees += 1
            stack.extend(subtrees)
            used.update(content)
            now = time.monotonic()
            if now - last > 0.2:
                last = now
                emit(Progress("prune: marking", trees, 0, current=snap.short_id))
    return used


# -- plan ------------------------------------------------------------------------------------


def plan(repo: Repository, snapshots: list[Snapshot] | None, max_unused: float | None = DEFAULT_MAX_UNUSED,
         emit: Emit = discard) -> PrunePlan:
    """Decide what prune does; reads indexes, snapshots and trees, changes nothing.

    ``snapshots`` None means every snapshot in the repository (forget passes the ones it
    keeps). ``max_unused``: the share (percent) of the repository that unused blobs in kept
    packs may take, as restic computes it (unused <= pct / (100 - pct) * used); None:
    unlimited (never repack).
    """
    start = time.monotonic()
    p = PrunePlan()
    backend = repo.backend
    p.index_files = {f.name: f.size for f in backend.list(FileKind.INDEX)}
    idx = repo.load_index()
    p.pack_sizes = {f.name: f.size for f in backend.list(FileKind.DATA)}
    snaps = load_all(repo) if snapshots is None else snapshots
    damaged = damaged_snapshots(repo)
    if damaged:
        name = min(damaged)
        raise PruneError(
            f"snapshot {name[:8]} is damaged; prune must read every snapshot to know which data is in use: "
            f"remove it with 'lbk forget {name[:8]}' first - nothing was deleted"
        )
    p.snapshots = len(snaps)
    used = used_blobs(repo, snaps, emit)
    missing = [b for b in used if b not in idx]
    if missing:
        raise PruneError(
            f"{len(missing)} blobs referenced by snapshots are not in any index (e.g. {missing[0].hex()[:16]}); "
            "run 'lbk check' - nothing was deleted"
        )
    p.blobs_used = len(used)

    used_entries: dict[str, list[PackEntry]] = {}
    for pack_id, entries in idx.packs.items():
        mine = []
        for e in entries:
            if e.id in used:
                loc = idx.get(e.id)
                if loc is not None and loc.pack == pack_id and loc.offset == e.offset:
                    mine.append(e)
        used_entries[pack_id] = mine

    partly: list[tuple[float, int, str]] = []
    for pack_id, entries in idx.packs.items():
        mine = used_entries[pack_id]
        mine_set = set(mine)
        if pack_id not in p.pack_sizes:
            if mine:
                raise PruneError(
                    f"pack {pack_id[:16]} holds {len(mine)} blobs that snapshots use but is missing; "
                    "run 'lbk check' - nothing was deleted"
                )
            p.dropped_missing.append(pack_id)
            continue
        size = p.pack_sizes[pack_id]
        used_bytes = sum(e.length for e in mine)
        # a pack's header and trailer count as used as long as the pack is kept
        unused_bytes = sum(e.length for e in entries if e not in mine_set) if mine else size
        p.bytes_used += used_bytes
        p.bytes_unused += unused_bytes
        if not mine:
            p.unused.append(pack_id)
        elif unused_bytes > 0:
            partly.append((unused_bytes / size, unused_bytes, pack_id))
            p.keep[pack_id] = entries
        else:
            p.keep[pack_id] = entries
    p.unindexed = sorted(set(p.pack_sizes) - set(idx.packs))

    left = sum(u for _, u, _ in partly)
    if max_unused is not None:
        limit = max_unused / (100.0 - max_unused) * p.bytes_used
        for _share, unused_bytes, pack_id in sorted(partly, reverse=True):
            if left <= limit:
                break
            p.repack[pack_id] = used_entries[pack_id]
            del p.keep[pack_id]
            left -= unused_bytes
    p.bytes_unused_after = left
    p.unused.sort()
    p.duration = time.monotonic() - start
    return p


# -- execute ---------------------------------------------------------------------------------


def _repack(repo: Repository, writer: Repository, p: PrunePlan, res: PruneResult, emit: Emit) -> None:
    """Copy the used blobs of the packs to repack into new packs. Blobs are opened
    (authenticated, decompressed, id checked) on a thread pool, but stored in order from
    this thread, so the new packs do not depend on thread timing."""

    def opened(args) -> bytes:
        pack_id, raw, e = args
        try:
            return repo.verify_blob(pack_id, e, raw[e.offset : e.offset + e.length])
        except (IntegrityError, FormatError) as err:
            raise PruneError(f"cannot repack: {err.message}; run 'lbk check' - nothing was deleted") from None

    done = 0
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="lbk-repack") as pool:
        for pack_id in sorted(p.repack):
            raw = repo.backend.load(Handle(FileKind.DATA, pack_id))
            entries = p.repack[pack_id]
            for e, data in zip(entries, pool.map(opened, [(pack_id, raw, e) for e in entries])):
                writer.save_blob(e.type, data, e.id)
                res.blobs_repacked += 1
                res.bytes_repacked += e.length
            done += 1
            emit(Progress("prune: repacking", done, res.bytes_repacked, files_total=len(p.repack)))


def execute(repo: Repository, p: PrunePlan, emit: Emit = discard) -> PruneResult:
    """Carry out a plan; the caller holds the exclusive lock. The order is the crash-safety
    argument of this module's docstring: add, then switch the index, then delete."""
    start = time.monotonic()
    res = _result_from_plan(p, dry_run=False)
    if p.nothing_to_do():
        res.bytes_after = res.bytes_before
        res.packs_after = res.packs_before
        res.duration = p.duration + time.monotonic() - start
        return res
    backend = _Mutations(repo.backend)
    writer = Repository(backend, repo.master, repo.config)
    writer.index_loaded = True  # starts empty: every blob handed to it is stored anew

    # 1. copy used blobs of packs to repack into new packs (+ their partial indexes)
    _repack(repo, writer, p, res, emit)
    writer.flush()
    new_packs = dict(writer.index.packs)
    res.packs_written = len(new_packs)

    # 2. one index for everything that remains, superseding every index file there is,
    # and only then the superseded index files deleted
    final = dict(new_packs)  # first: a blob copied out of a repacked pack resolves to its new copy
    final.update(p.keep)
    _name, res.index_files_removed = writer.replace_index(final)
    res.index_files_written = 1

    # 3. delete packs, then temporary files. The order does not matter (readers ignore
    # all of them now): many at a time.
    res.packs_deleted = remove_files(backend, [Handle(FileKind.DATA, x) for x in p.packs_to_delete()])
    if hasattr(repo.backend, "sweep_temporary"):
        res.temporary_files_removed = repo.backend.sweep_temporary()
    res.backend_changes = backend.count

    repo.load_index()
    new_sizes = {f.name: f.size for f in repo.backend.list(FileKind.DATA)}
    res.packs_after = len(new_sizes)
    res.bytes_after = sum(new_sizes.values()) + sum(f.size for f in repo.backend.list(FileKind.INDEX))
    res.duration = p.duration + time.monotonic() - start
    return res


def _result_from_plan(p: PrunePlan, dry_run: bool) -> PruneResult:
    res = PruneResult(dry_run=dry_run)
    res.snapshots = p.snapshots
    res.packs_before = len(p.pack_sizes)
    res.packs_unused = len(p.unused)
    res.packs_repacked = len(p.repack)
    res.packs_unindexed = len(p.unindexed)
    res.blobs_used = p.blobs_used
    res.index_files_before = len(p.index_files)
    res.bytes_before = p.bytes_total
    res.bytes_unused_before = p.bytes_unused
    res.bytes_unused_after = p.bytes_unused_after
    res.plan_duration = p.duration
    return res


def plan_result(repo: Repository, snapshots: list[Snapshot] | None, max_unused: float | None = DEFAULT_MAX_UNUSED,
                emit: Emit = discard) -> PruneResult:
    """What prune would do, as a result (dry run): estimated sizes, nothing changed."""
    p = plan(repo, snapshots, max_unused, emit)
    res = _result_from_plan(p, dry_run=True)
    res.packs_deleted = len(p.packs_to_delete())
    res.blobs_repacked = sum(len(v) for v in p.repack.values())
    res.bytes_repacked = sum(e.length for v in p.repack.values() for e in v)
    res.packs_written = -(-res.bytes_repacked // repo.config.pack_size) if p.repack else 0
    res.packs_after = res.packs_before - res.packs_deleted + res.packs_written
    deleted = sum(p.pack_sizes[x] for x in p.packs_to_delete())
    res.bytes_after = res.bytes_before - deleted + res.bytes_repacked
    res.index_files_removed = 0 if p.nothing_to_do() else len(p.index_files)
    res.index_files_written = 0 if p.nothing_to_do() else 1
    res.duration = p.duration
    return res


def prune_locked(repo: Repository, max_unused: float | None = DEFAULT_MAX_UNUSED, emit: Emit = discard) -> PruneResult:
    """Prune while the caller holds the exclusive lock (forget --prune)."""
    return execute(repo, plan(repo, None, max_unused, emit), emit)


def prune(repo: Repository, max_unused: float | None = DEFAULT_MAX_UNUSED, dry_run: bool = False,
          emit: Emit = discard) -> PruneResult:
    """Prune under the exclusive lock (a dry run takes a shared one and changes nothing)."""
    with repo.lock(exclusive=not dry_run):
        if dry_run:
            return plan_result(repo, None, max_unused, emit)
        return prune_locked(repo, max_unused, emit)
