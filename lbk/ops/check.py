"""Check: structure, indexes, snapshots and tree references; optionally every blob.

With read-data, each selected pack is read whole: its name must equal the hash of its
bytes, its header must agree with the index, and every blob is authenticated,
decompressed and its keyed id recomputed. Damaged or missing blobs are then traced to
the snapshots and files that reference them, so the report says what is affected.
"""

from __future__ import annotations

import os
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lbk.backend.base import BackendError, FileKind, Handle
from lbk.errors import FormatError, IntegrityError, UsageError
from lbk.events import Emit, Progress
from lbk.model import DIR, FILE, decode_tree
from lbk.repo import compress, crypto, index as index_mod
from lbk.repo.index import Index
from lbk.repo.pack import TREE, PackEntry, header_length, parse_header
from lbk.repo.repository import Repository
from lbk.repo.snapshots import load_snapshot

_DAMAGE = (IntegrityError, FormatError, BackendError)
# --read-data verifies every tree as it reads tree packs; their compressed payloads (a
# few per cent of a repository) are kept up to this many bytes, so that the walk over
# the snapshots does not read, decrypt and hash each tree a second time.
TREES_KEPT_MAX = 256 << 20


@dataclass
class Problem:
    kind: str  # index, pack, blob, snapshot, tree, file
    object: str
    message: str
    snapshot: str = ""
    path: str = ""

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v}


@dataclass
class CheckResult:
    snapshots: int = 0
    trees: int = 0
    packs: int = 0
    blobs: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    unindexed_packs: int = 0
    marked_damaged: int = 0  # nodes marked by 'lbk repair snapshots' (counted once per tree): not problems
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_subset(spec: str | None) -> tuple | None:
    """``N%`` -> ("pct", N); ``n/m`` -> ("part", n, m); None -> None."""
    if spec is None:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", spec.strip())
    if m and 0 < float(m.group(1)) <= 100:
        return ("pct", float(m.group(1)))
    m = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if m and 1 <= int(m.group(1)) <= int(m.group(2)):
        return ("part", int(m.group(1)), int(m.group(2)))
    raise UsageError(f"invalid subset {spec!r}: use N% (e.g. 10%) or n/m (e.g. 2/5)")


def _select(packs: list[str], subset: tuple | None) -> list[str]:
    if subset is None:
        return packs
    if subset[0] == "pct":
        k = max(1, round(len(packs) * subset[1] / 100)) if packs else 0
        return random.sample(packs, min(k, len(packs)))
    _, n, m = subset
    return [p for p in packs if int(p[:8], 16) % m == n - 1]


def load_pack(repo: Repository, pack_id: str) -> bytes:
    """A whole pack file, as stored."""
    return repo.backend.load(Handle(FileKind.DATA, pack_id))


def inspect_pack(repo: Repository, pack_id: str, data: bytes) -> tuple[bool, list[PackEntry] | None, str]:
    """(name matches the hash of the bytes, the pack's own header entries or None, why
    the header could not be read)."""
    what = f"pack {pack_id[:16]}"
    hash_ok = crypto.content_hash(data) == pack_id
    try:
        n = header_length(data[-4:], len(data), what)
        return hash_ok, parse_header(repo.master.encrypt, data[-4 - n : -4], len(data) - 4 - n, what), ""
    except _DAMAGE as e:
        return hash_ok, None, e.message


def verify_blobs(repo: Repository, pack_id: str, data: bytes, entries: list[PackEntry],
                 keep: bool = False, payload: bool = False,
                 ) -> tuple[list[tuple[PackEntry, bytes | None]], list[tuple[PackEntry, str]]]:
    """Open every blob of ``entries`` in a pack's bytes and recompute its id:
    (good entries with their plaintext when ``keep`` - or their compressed payload with
    ``payload`` - and bad entries with the reason)."""
    good: list[tuple[PackEntry, bytes | None]] = []
    bad: list[tuple[PackEntry, str]] = []
    view = memoryview(data)
    for e in entries:
        if e.offset + e.length > len(data):
            bad.append((e, "blob lies beyond the end of the pack (truncated)"))
            continue
        try:
            plain = repo.verify_blob(pack_id, e, view[e.offset : e.offset + e.length], payload)
        except _DAMAGE as err:
            bad.append((e, err.message))
            continue
        good.append((e, plain if keep or payload else None))
    return good, bad


class Checker:
    def __init__(self, repo: Repository, emit: Emit):
        self.repo = repo
        self.emit = emit
        self.result = CheckResult()
        self.damaged: dict[bytes, str] = {}  # blob id -> reason
        self.packs: dict[str, list[PackEntry]] = {}  # the index's, decoded by check_packs
        self.trees: dict[bytes, tuple[bytes, int]] = {}  # verified tree id -> (payload, raw length)
        self._trees_bytes = 0
        self._trees_lock = threading.Lock()

    def problem(self, *a, **kw) -> None:
        self.result.problems.append(Problem(*a, **kw))

    def load_index(self) -> Index:
        idx = Index()
        names = [f.name for f in self.repo.backend.list(FileKind.INDEX)]
        loaded = []
        for name in names:
            try:
                data = self.repo.load_sealed(Handle(FileKind.INDEX, name))
                loaded.append((name, index_mod.decode_records(data, f"index/{name}")))
            except _DAMAGE as e:
                self.problem("index", name, e.message)
        superseded = {s for _, (sup, _) in loaded for s in sup}
        for name, (_sup, packs) in loaded:
            if name not in superseded:
                for pack_id, records in packs.items():
                    idx.add_records(pack_id, records)
        self.repo.index = idx
        self.repo.index_loaded = True
        return idx

    def check_packs(self, idx: Index) -> dict[str, int]:
        sizes = {f.name: f.size for f in self.repo.backend.list(FileKind.DATA)}
        self.packs = dict(idx.packs)  # decoded once: read_data goes over them again
        self.result.packs = len(self.packs)
        self.result.blobs = len(idx)
        for pack_id, entries in self.packs.items():
            if pack_id not in sizes:
                self.problem("pack", pack_id, "pack is in the index but missing from the repository")
                for e in entries:
                    self.damaged[e.id] = f"its pack {pack_id[:16]} is missing"
            elif entries and sizes[pack_id] < max(e.offset + e.length for e in entries) + 4:
                self.problem("pack", pack_id, f"pack is truncated ({sizes[pack_id]} bytes)")
                for e in entries:
                    self.damaged[e.id] = f"its pack {pack_id[:16]} is truncated"
        self.result.unindexed_packs = len(set(sizes) - set(self.packs))
        return sizes

    def read_pack(self, pack_id: str, entries) -> list[tuple[bytes, str]]:
        """Return (blob id, reason) for every bad blob in a pack."""
        try:
            data = load_pack(self.repo, pack_id)
        except _DAMAGE as e:
            return [(e_.id, f"cannot read pack: {e.message}") for e_ in entries]
        self.result.bytes_read += len(data)
        hash_ok, own, header_error = inspect_pack(self.repo, pack_id, data)
        if not hash_ok:
            self.problem("pack", pack_id, "pack content does not match its name (damaged)")
        if own is None:
            self.problem("pack", pack_id, f"pack header unreadable: {header_error}")
        else:
            own_ids = {(e.id, e.offset, e.length) for e in own}
            for e in entries:
                if (e.id, e.offset, e.length) not in own_ids:
                    self.problem("pack", pack_id, f"index entry for blob {e.id.hex()[:16]} disagrees with the pack header")
        tree_pack = bool(entries) and all(e.type == TREE for e in entries)
        good, bad = verify_blobs(self.repo, pack_id, data, entries, payload=tree_pack)
        if tree_pack:
            with self._trees_lock:
                for e, payload in good:
                    if self._trees_bytes + len(payload) <= TREES_KEPT_MAX:
                        self.trees[e.id] = (payload, e.raw_length)
                        self._trees_bytes += len(payload)
        return [(e.id, reason) for e, reason in bad]

    def read_data(self, idx: Index, subset: tuple | None) -> None:
        packs = _select(sorted(self.packs), subset)
        done = 0
        with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as ex:
            futures = [(p, ex.submit(self.read_pack, p, self.packs[p])) for p in packs]
            for pack_id, f in futures:
                for bid, reason in f.result():
                    self.damaged[bid] = reason
                    self.problem("blob", bid.hex(), reason, path=f"pack {pack_id[:16]}")
                done += 1
                self.result.packs_read = done
                self.emit(Progress("check", done, self.result.bytes_read, files_total=len(packs)))

    def check_snapshots(self, idx: Index) -> None:
        names = self.repo.list_snapshot_names()
        seen_trees: dict[bytes, list[tuple[str, str]]] = {}
        for name in sorted(names):
            try:
                snap = load_snapshot(self.repo, name)
            except _DAMAGE as e:
                self.problem("snapshot", name, e.message, snapshot=name[:8])
                continue
            self.result.snapshots += 1
            self._tree(snap.tree, snap.id, b"/", idx, seen_trees)

    def _tree(self, tree_id: bytes, snap: str, path: bytes, idx: Index, seen: dict) -> None:
        """Walk a tree once per id; damage inside a shared tree is reported per snapshot."""
        if tree_id in seen:
            for kind, obj, msg, p in seen[tree_id]:
                self.problem(kind, obj, msg, snapshot=snap[:8], path=p)
            return
        found: list = []
        seen[tree_id] = found
        before = len(self.result.problems)
        self.result.trees += 1
        what = f"tree {tree_id.hex()[:16]}"
        try:
            if tree_id in self.damaged:
                raise IntegrityError(f"{what}: {self.damaged[tree_id]}")
            loc = idx.get(tree_id)
            if loc is None:
                raise IntegrityError(f"{what}: not in any index (missing)")
            kept = self.trees.pop(tree_id, None)  # verified while reading its pack
            data = compress.decompress(*kept, what) if kept else self.repo.load_blob(TREE, tree_id)
            nodes = decode_tree(data, what)
        except _DAMAGE as e:
            self.problem("tree", tree_id.hex(), e.message, snapshot=snap[:8], path=os.fsdecode(path))
        else:
            for n in nodes:
                p = path.rstrip(b"/") + b"/" + n.name
                if n.error:
                    self.result.marked_damaged += 1
                if n.type == DIR:
                    if n.subtree is None:
                        self.problem("tree", tree_id.hex(), f"directory {n.name!r} has no subtree", snapshot=snap[:8])
                    else:
                        self._tree(n.subtree, snap, p, idx, seen)
                elif n.type == FILE:
                    for c in n.content:
                        reason = self.damaged.get(c) or (None if c in idx else "blob is missing")
                        if reason:
                            self.problem("file", c.hex(), f"content damaged: {reason}", snapshot=snap[:8], path=os.fsdecode(p))
                            break
        for pr in self.result.problems[before:]:
            found.append((pr.kind, pr.object, pr.message, pr.path))


def check(repo: Repository, emit: Emit, read_data: bool = False, subset: str | None = None) -> CheckResult:
    sub = parse_subset(subset)
    c = Checker(repo, emit)
    with repo.lock(exclusive=False):
        idx = c.load_index()
        c.check_packs(idx)
        if read_data or sub is not None:
            c.read_data(idx, sub)
        c.check_snapshots(idx)
    return c.result

