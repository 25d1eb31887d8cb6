"""Repair index: rebuild the index from the packs themselves (``lbk repair index``).

Every pack ends with an encrypted header that repeats its index entries (docs/FORMAT.md,
"Packs"), so the index can be rebuilt from the packs alone: after an index file was lost
(its packs become indexed again), after a pack was lost (its blobs are no longer
indexed, so ``lbk repair snapshots`` can mark what used them), or with no index at all.

Under the exclusive lock:

1. the current index files are loaded as far as they can be: to report what changes,
   and to fall back on for a pack whose header cannot be read;
2. every pack is listed and its header read, in parallel. With ``read_data`` every pack
   is read whole instead, exactly as ``check --read-data`` reads it (its bytes against
   its name, its header, every blob authenticated, decompressed and its id recomputed);
3. with ``read_data``, a pack that fails any of that is *damaged*: it is left out of the
   new index, its good blobs are copied into new packs (unless an intact pack holds
   them already) and its bad blobs are dropped, so they become missing for
   ``repair snapshots``;
4. one new index naming every pack kept plus the new ones replaces every index file
   (``Repository.replace_index``, prune's last step: the new index is durable before the
   old ones are deleted, and readers ignore superseded files).

Only index files are ever deleted. Damaged and unreadable packs stay where they are,
unindexed, until ``lbk prune`` removes them. Killed at any point, the repository is no
worse than before: until step 4 it only gained packs and index files naming them.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lbk.backend.base import FileKind, NotFound
from lbk.errors import FormatError, IntegrityError
from lbk.events import Emit, Progress, discard
from lbk.ops.check import Checker, inspect_pack, load_pack, verify_blobs
from lbk.repo.index import Index
from lbk.repo.pack import BLOB_TYPES, PackEntry
from lbk.repo.repository import Repository

HEADER_WORKERS = 8  # reading headers is round trips, not CPU
DATA_WORKERS = max(2, os.cpu_count() or 2)
_DAMAGE = (IntegrityError, FormatError)  # a backend that fails otherwise stops the repair


@dataclass
class PackIssue:
    pack: str
    message: str

    def to_json(self) -> dict:
        return {"pack": self.pack, "message": self.message}


@dataclass
class DroppedBlob:
    id: str
    type: str
    pack: str
    message: str

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RepairIndexResult:
    read_data: bool = False
    packs: int = 0  # packs in the repository
    packs_read: int = 0  # whose header (or, with read_data, whose every byte) was read and found sound
    packs_indexed: int = 0  # packs the new index names, new ones included
    packs_unreadable: list[PackIssue] = field(default_factory=list)  # header unreadable
    packs_damaged: list[PackIssue] = field(default_factory=list)  # read_data: failed verification, unindexed
    packs_missing: int = 0  # named by the old index, absent from the repository
    packs_written: int = 0  # new packs holding the good blobs of damaged ones
    blobs_indexed: int = 0
    blobs_salvaged: int = 0  # copied out of damaged packs
    blobs_dropped: list[DroppedBlob] = field(default_factory=list)  # damaged, and no good copy anywhere
    blobs_newly_indexed: int = 0  # not in the old index
    blobs_unindexed: int = 0  # in the old index, not in the new one
    index_files_unreadable: int = 0
    index_files_replaced: int = 0
    index_file: str = ""
    bytes_read: int = 0
    duration: float = 0.0

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["packs_unreadable"] = [p.to_json() for p in self.packs_unreadable]
        d["packs_damaged"] = [p.to_json() for p in self.packs_damaged]
        d["blobs_dropped"] = [b.to_json() for b in self.blobs_dropped]
        d["duration"] = round(self.duration, 3)
        return d


def _fitting(entries: list[PackEntry], size: int) -> list[PackEntry]:
    """The entries of an old index that lie inside a pack of ``size`` bytes."""
    return [e for e in entries if e.offset + e.length <= size - 4]


class _Repair:
    def __init__(self, repo: Repository, read_data: bool, emit: Emit):
        self.repo = repo
        self.read_data = read_data
        self.emit = emit
        self.res = RepairIndexResult(read_data=read_data)
        self.old = Index()
        self.sizes: dict[str, int] = {}

    def _load_old_index(self) -> None:
        checker = Checker(self.repo, discard)  # check's loader: damaged index files are skipped
        self.old = checker.load_index()
        self.res.index_files_unreadable = len(checker.result.problems)

    # -- per pack, on a thread pool ------------------------------------------------------
    def _header(self, name: str) -> tuple:
        try:
            return ("ok", self.repo.pack_entries(name), 0)
        except NotFound:
            return ("missing",)
        except _DAMAGE as e:
            return ("unreadable", e.message)

    def _whole(self, name: str) -> tuple:
        try:
            data = load_pack(self.repo, name)
        except NotFound:
            return ("missing",)
        hash_ok, own, header_error = inspect_pack(self.repo, name, data)
        entries = own if own is not None else _fitting(self.old.packs.get(name, []), len(data))
        good, bad = verify_blobs(self.repo, name, data, entries, keep=True)
        if hash_ok and own is not None and not bad:
            return ("ok", entries, len(data))
        why = []
        if not hash_ok:
            why.append("content does not match its name")
        if own is None:
            why.append(f"header unreadable ({header_error})" + ("; its blobs were located by the old index" if entries else ""))
        if bad:
            why.append(f"{len(bad)} of {len(entries)} blobs damaged")
        return ("damaged", good, bad, "; ".join(why), len(data))

    # -- the repair ------------------------------------------------------------------------
    def run(self) -> RepairIndexResult:
        start = time.monotonic()
        res = self.res
        self._load_old_index()
        self.sizes = {f.name: f.size for f in self.repo.backend.list(FileKind.DATA)}
        res.packs = len(self.sizes)
        keep: dict[str, list[PackEntry]] = {}
        salvage: list[tuple[str, list[tuple[PackEntry, bytes]]]] = []
        bad_blobs: list[tuple[str, PackEntry, str]] = []
        names = sorted(self.sizes)
        work, workers = (self._whole, DATA_WORKERS) if self.read_data else (self._header, HEADER_WORKERS)
        with ThreadPoolExecutor(workers, thread_name_prefix="lbk-repair") as pool:
            for done, (name, out) in enumerate(zip(names, pool.map(work, names)), 1):
                if out[0] == "ok":
                    keep[name] = out[1]
                    res.packs_read += 1
                    res.bytes_read += out[2]
                elif out[0] == "unreadable":
                    self._unreadable(name, out[1], keep)
                elif out[0] == "damaged":
                    _, good, bad, why, nbytes = out
                    res.bytes_read += nbytes
                    res.packs_damaged.append(PackIssue(name, why))
                    salvage.append((name, good))
                    bad_blobs.extend((name, e, reason) for e, reason in bad)
                self.emit(Progress("repair index", done, res.bytes_read, files_total=len(names)))
        new_packs = self._salvage(keep, salvage)
        final = dict(sorted(keep.items()))
        final.update(new_packs)
        res.index_file, res.index_files_replaced = self.repo.replace_index(final)
        self._account(final, bad_blobs)
        self.repo.load_index()
        res.duration = time.monotonic() - start
        return res

    def _unreadable(self, name: str, message: str, keep: dict) -> None:
        """Without read_data a pack whose header cannot be read keeps the entries an old
        index gave it (those that fit in the file): dropping them would make a pack whose
        blobs may well be intact look lost. ``--read-data`` verifies and salvages them."""
        old = self.old.packs.get(name, [])
        fit = _fitting(old, self.sizes[name])
        if fit:
            keep[name] = fit
            note = f"kept {len(fit)} of its {len(old)} entries from the old index, unverified (run 'lbk repair index --read-data')"
        else:
            note = "left out of the index: its blobs are no longer indexed"
        self.res.packs_unreadable.append(PackIssue(name, f"header unreadable ({message}); {note}"))

    def _salvage(self, keep: dict[str, list[PackEntry]], salvage: list) -> dict[str, list[PackEntry]]:
        """Copy the good blobs of damaged packs that no kept pack holds into new packs."""
        if not salvage:
            return {}
        writer = Repository(self.repo.backend, self.repo.master, self.repo.config)
        for pack_id, entries in keep.items():
            writer.index.add_pack(pack_id, entries)
        writer.index_loaded = True
        for _name, good in salvage:
            for e, plain in good:
                if writer.save_blob(e.type, plain, e.id)[1]:
                    self.res.blobs_salvaged += 1
        writer.flush()  # new packs durable, and indexed (superseded by the index written next)
        new = {p: e for p, e in writer.index.packs.items() if p not in keep}
        self.res.packs_written = len(new)
        return new

    def _account(self, final: dict[str, list[PackEntry]], bad_blobs: list) -> None:
        res = self.res
        now = Index()
        for pack_id, entries in final.items():
            now.add_pack(pack_id, entries)
        res.packs_indexed = len(final)
        res.blobs_indexed = len(now)
        old_ids = {bid for bid, _ in self.old.blobs()}
        res.blobs_newly_indexed = sum(1 for bid, _ in now.blobs() if bid not in old_ids)
        res.blobs_unindexed = sum(1 for bid in old_ids if bid not in now)
        res.packs_missing = sum(1 for p in self.old.packs if p not in self.sizes)
        seen: set[bytes] = set()
        for pack_id, e, reason in bad_blobs:
            if e.id not in now and e.id not in seen:
                seen.add(e.id)
                res.blobs_dropped.append(DroppedBlob(e.id.hex(), BLOB_TYPES[e.type], pack_id, reason))


def repair_index(repo: Repository, read_data: bool = False, emit: Emit = discard) -> RepairIndexResult:
    """Rebuild the index from the packs, under the exclusive lock (see the module docstring)."""
    with repo.lock(exclusive=True):
        return _Repair(repo, read_data, emit).run()
