"""repair index and repair snapshots on a real local repository: after an index file is
deleted, a pack is deleted, a byte is flipped, a pack header is damaged; the damage made
visible (restore, check); the next backup healing it; and crash safety, by stopping each
repair right after every single change it makes to the backend."""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass

import pytest

from lbk.backend.base import FileKind, Handle
from lbk.backend.local import LocalBackend
from lbk.cache import Cache
from lbk.events import Collector, FileError
from lbk.model import DIR, FILE, Node, encode_tree
from lbk.ops.backup import BackupOptions, backup
from lbk.ops.check import check
from lbk.ops.prune import prune
from lbk.ops.repair_index import repair_index
from lbk.ops.repair_snapshots import REPAIRED_TAG, repair_snapshots
from lbk.ops.restore import RestoreOptions, restore, tree_nodes
from lbk.repo.pack import DATA, TREE
from lbk.repo.repository import Repository
from lbk.repo.snapshots import load_all, load_snapshot, save_snapshot
from lbk.units import human_size
from tests.helpers import PASSWORD, files_under, open_local as open_repo

KIB = 1024


@pytest.fixture(autouse=True)
def fast_locks(monkeypatch):
    monkeypatch.setattr("lbk.repo.lock.RECHECK_DELAY", 0.0)


def small_chunk_repo(root) -> Repository:
    """A repository whose chunks are 16-128 KiB (test-only), so a few hundred KiB make a
    file of many chunks."""
    repo = Repository.create(LocalBackend(str(root)), PASSWORD.encode())
    repo.config.chunker.min, repo.config.chunker.avg, repo.config.chunker.max = 16 * KIB, 64 * KIB, 128 * KIB
    repo.save_sealed(Handle(FileKind.CONFIG), repo.config.encode(), overwrite=True)
    return open_repo(root)


def run_backup(repo, src, cache):
    res = backup(repo, cache, BackupOptions(paths=[os.fsencode(src)]), Collector())
    assert res.errors == 0
    return res


def restored(repo, snap, tmp_path, name) -> tuple[dict[str, bytes], list[FileError]]:
    ev = Collector()
    out = tmp_path / name
    restore(repo, snap, RestoreOptions(target=os.fsencode(out)), ev)
    return files_under(out), ev.of(FileError)


def data_packs(repo) -> set[str]:
    return {f.name for f in repo.backend.list(FileKind.DATA)}


def pack_path(repo, pack) -> str:
    return os.path.join(repo.backend.root, "data", pack[:2], pack)


def node_at(repo, snap, path) -> Node:
    parts = [p for p in os.fsencode(path).split(b"/") if p]
    t, node = snap.tree, None
    for part in parts:
        node = next(n for n in tree_nodes(repo, t) if n.name == part)
        t = node.subtree
    return node


@dataclass
class Scenario:
    root: object
    src: object
    cache: Cache
    s1: str
    s2: str
    before: dict  # snapshot id -> the source files as backed up (relative to the target root)
    victim_pack: str  # the data pack only s2 uses: the new tail of victim.bin


@pytest.fixture
def scenario(tmp_path) -> Scenario:
    """Two backups. The second adds a/victim.bin = a/base.bin + new bytes: its first
    chunks are base.bin's (stored by the first backup), its tail is new and is the only
    data in the second backup's data pack."""
    rng = random.Random(7)
    root = tmp_path / "repo"
    repo = small_chunk_repo(root)
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    base = rng.randbytes(512 * KIB)
    (src / "a" / "base.bin").write_bytes(base)
    (src / "a" / "keep.txt").write_bytes(b"keep me\n" * 100)
    (src / "b" / "other.txt").write_bytes(b"other\n")
    cache = Cache(str(tmp_path / "cache"), repo.id)
    packs0 = data_packs(repo)
    s1 = run_backup(repo, src, cache).snapshot
    packs1 = data_packs(repo)
    victim = base + rng.randbytes(300 * KIB)
    (src / "a" / "victim.bin").write_bytes(victim)
    s2 = run_backup(repo, src, cache).snapshot
    new = data_packs(repo) - packs1
    assert len(packs1 - packs0) == 2 and len(new) == 2  # one data pack and one tree pack per backup
    types = {p: repo.index.get(repo.index.packs[p][0].id).type for p in new}
    victim_pack = next(p for p, t in types.items() if t == DATA)
    top = str(src).lstrip("/")
    before = {}
    for s, files in ((s1, ["a/base.bin", "a/keep.txt", "b/other.txt"]),
                     (s2, ["a/base.bin", "a/keep.txt", "a/victim.bin", "b/other.txt"])):
        before[s.id] = {f"{top}/{f}": (src / f).read_bytes() for f in files}
    return Scenario(root, src, cache, s1.id, s2.id, before, victim_pack)


def snap(repo, sid):
    return load_snapshot(repo, sid)


def assert_every_snapshot_restores(repo, sc: Scenario, tmp_path) -> None:
    for sid, want in sc.before.items():
        got, errors = restored(repo, snap(repo, sid), tmp_path, f"r-{sid[:8]}-{os.urandom(4).hex()}")
        assert errors == [] and got == want


# -- repair index ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["the second backup's index file", "every index file"])
def test_repair_index_after_an_index_file_was_deleted(scenario, tmp_path, which):
    sc = scenario
    repo = open_repo(sc.root)
    names = sorted(f.name for f in repo.backend.list(FileKind.INDEX))
    assert len(names) == 2
    indexed_before = {bid for bid, _ in repo.ensure_index().blobs()}
    if which == "every index file":
        doomed = names
    else:  # the one that names the victim's pack
        doomed = [n for n in names if _names_pack(repo, n, sc.victim_pack)]
    for n in doomed:
        os.unlink(os.path.join(sc.root, "index", n))
    repo = open_repo(sc.root)
    chk = check(repo, Collector())
    assert not chk.ok and chk.unindexed_packs == (2 if len(doomed) == 1 else 4)
    assert any("not in any index" in p.message or "missing" in p.message for p in chk.problems)

    res = repair_index(open_repo(sc.root))
    assert res.packs == res.packs_read == res.packs_indexed == 4
    assert res.index_files_replaced == 2 - len(doomed)
    assert res.blobs_newly_indexed > 0 and res.blobs_unindexed == 0 and not res.packs_unreadable
    repo = open_repo(sc.root)
    assert [f.name for f in repo.backend.list(FileKind.INDEX)] == [res.index_file]
    assert {bid for bid, _ in repo.ensure_index().blobs()} == indexed_before
    assert check(repo, Collector(), read_data=True).ok
    assert_every_snapshot_restores(repo, sc, tmp_path)


def _names_pack(repo, index_name, pack) -> bool:
    from lbk.repo import index as index_mod

    _sup, packs = index_mod.decode(repo.load_sealed(Handle(FileKind.INDEX, index_name)), index_name)
    return pack in packs


def test_repair_index_is_harmless_on_a_sound_repository(scenario, tmp_path):
    repo = open_repo(scenario.root)
    before = {bid: loc for bid, loc in repo.ensure_index().blobs()}
    res = repair_index(repo)
    assert res.blobs_indexed == len(before) and res.blobs_newly_indexed == res.blobs_unindexed == 0
    assert {bid: loc for bid, loc in open_repo(scenario.root).ensure_index().blobs()} == before
    assert check(open_repo(scenario.root), Collector(), read_data=True).ok


# -- a lost pack: the whole walk-through ------------------------------------------------------


def test_lost_pack_repair_index_then_snapshots_then_backup_heals(scenario, tmp_path):
    sc = scenario
    os.unlink(pack_path(open_repo(sc.root), sc.victim_pack))
    repo = open_repo(sc.root)
    lost_chunks = len(repo.ensure_index().packs[sc.victim_pack])

    ri = repair_index(repo)
    assert ri.packs_missing == 1 and ri.blobs_unindexed == lost_chunks and ri.blobs_newly_indexed == 0

    # dry run: nothing written, what would change reported
    pristine = files_under(sc.root)
    dry = repair_snapshots(open_repo(sc.root), dry_run=True)
    assert files_under(sc.root) == pristine
    victim_path = os.fsencode(sc.src / "a" / "victim.bin")
    assert [(d.snapshot, d.path, d.type) for d in dry.damage] == [(sc.s2, victim_path, FILE)]
    assert [(r.original, r.status) for r in dry.repairs] == [(sc.s2, "would repair")]
    assert dry.intact == 1 and dry.snapshots_written == 1 and dry.trees_written >= 4  # victim's dir up to the root

    res = repair_snapshots(open_repo(sc.root))
    assert [d.message for d in res.damage] == [d.message for d in dry.damage]
    assert res.snapshots_written == 1 and res.snapshots_removed == 0 and res.trees_written == dry.trees_written
    repo = open_repo(sc.root)
    snaps = {s.id: s for s in load_all(repo)}
    assert set(snaps) == {sc.s1, sc.s2, res.repairs[0].repaired}  # the original stays without --forget
    fixed = snaps[res.repairs[0].repaired]
    orig = snaps[sc.s2]
    assert (fixed.time, fixed.paths, fixed.host, fixed.kind, fixed.name) == (orig.time, orig.paths, orig.host, orig.kind, orig.name)
    assert fixed.tags == [REPAIRED_TAG] and fixed.summary["repaired_from"] == sc.s2

    # the repaired snapshot: intact files exact, the damaged one restored as far as it goes, and named
    got, errors = restored(repo, fixed, tmp_path, "fixed")
    key = f"{str(sc.src).lstrip('/')}/a/victim.bin"
    part = got.pop(key)
    want = dict(sc.before[sc.s2])
    whole = want.pop(key)
    assert got == want
    assert 0 < len(part) < len(whole) and part == whole[: len(part)]  # the shared head survived
    node = node_at(repo, fixed, sc.src / "a" / "victim.bin")
    assert node.size == len(part)
    missing = len(node_at(repo, orig, sc.src / "a" / "victim.bin").content) - len(node.content)
    assert missing == lost_chunks
    message = f"damaged: {missing} of {missing + len(node.content)} chunks missing, {human_size(len(whole) - len(part))} lost"
    assert node.error == message
    assert [(e.path, e.message) for e in errors] == [(victim_path, f"restored incomplete: {message}")]

    chk = check(repo, Collector())
    assert {p.snapshot for p in chk.problems} == {sc.s2[:8]}  # only the original is still broken
    assert chk.marked_damaged >= 1

    # the next backup of the still-present source re-reads what was lost (the directory
    # a/ is unchanged, so only a content check of the reused tree's files notices)
    nxt = run_backup(open_repo(sc.root), sc.src, sc.cache)
    assert nxt.files_changed == 1 and nxt.bytes_added > 0
    repo = open_repo(sc.root)
    assert check(repo, Collector(), read_data=True).ok  # the same chunks are back: even the original is whole
    got, errors = restored(repo, nxt.snapshot, tmp_path, "next")
    assert errors == [] and got == sc.before[sc.s2]


def test_repair_snapshots_forget_and_a_second_run(scenario, tmp_path):
    sc = scenario
    os.unlink(pack_path(open_repo(sc.root), sc.victim_pack))
    repair_index(open_repo(sc.root))
    first = repair_snapshots(open_repo(sc.root))
    again = repair_snapshots(open_repo(sc.root))  # the original is still damaged, but already repaired
    assert [(r.original, r.status, r.repaired) for r in again.repairs] == [(sc.s2, "already repaired", first.repairs[0].repaired)]
    assert again.snapshots_written == 0
    gone = repair_snapshots(open_repo(sc.root), forget=True)
    assert gone.snapshots_written == 0 and gone.snapshots_removed == 1 and gone.repairs[0].forgotten
    repo = open_repo(sc.root)
    assert {s.id for s in load_all(repo)} == {sc.s1, first.repairs[0].repaired}
    assert check(repo, Collector(), read_data=True).ok
    assert repair_snapshots(repo).repairs == []  # nothing left to repair


# -- a flipped byte: repair index --read-data ---------------------------------------------------


def test_flipped_byte_read_data_drops_the_blob_and_salvages_the_rest(scenario, tmp_path):
    sc = scenario
    repo = open_repo(sc.root)
    entries = repo.ensure_index().packs[sc.victim_pack]
    assert len(entries) >= 2
    bad = entries[len(entries) // 2]
    with open(pack_path(repo, sc.victim_pack), "r+b") as f:
        f.seek(bad.offset + bad.length // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x10]))

    assert repair_index(open_repo(sc.root)).blobs_dropped == []  # headers alone cannot see it
    res = repair_index(open_repo(sc.root), read_data=True)
    assert [p.pack for p in res.packs_damaged] == [sc.victim_pack]
    assert [(b.id, b.type, b.pack) for b in res.blobs_dropped] == [(bad.id.hex(), "data", sc.victim_pack)]
    assert res.blobs_salvaged == len(entries) - 1 and res.packs_written == 1
    repo = open_repo(sc.root)
    assert sc.victim_pack not in repo.ensure_index().packs and bad.id not in repo.index

    rs = repair_snapshots(repo)
    assert [(d.snapshot, d.path) for d in rs.damage] == [(sc.s2, os.fsencode(sc.src / "a" / "victim.bin"))]
    assert rs.damage[0].message.startswith("damaged: 1 of ")
    repo = open_repo(sc.root)
    fixed = load_snapshot(repo, rs.repairs[0].repaired)
    assert check(repo, Collector(), read_data=True).ok is False  # the original still names the bad blob
    repair_snapshots(open_repo(sc.root), forget=True)
    assert check(open_repo(sc.root), Collector(), read_data=True).ok
    got, errors = restored(open_repo(sc.root), fixed, tmp_path, "fixed")
    assert len(errors) == 1 and errors[0].path == os.fsencode(sc.src / "a" / "victim.bin")
    pr = prune(open_repo(sc.root))  # the damaged pack is unindexed now: prune deletes it
    assert pr.packs_unindexed == 1 and sc.victim_pack not in data_packs(open_repo(sc.root))
    assert check(open_repo(sc.root), Collector(), read_data=True).ok


def test_damaged_pack_header_keeps_old_entries_until_read_data_salvages(scenario, tmp_path):
    sc = scenario
    path = pack_path(open_repo(sc.root), sc.victim_pack)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # a byte inside the sealed header, just before the 4-byte trailer
        f.seek(size - 10)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x01]))

    res = repair_index(open_repo(sc.root))
    assert [p.pack for p in res.packs_unreadable] == [sc.victim_pack]
    assert "kept" in res.packs_unreadable[0].message and res.blobs_unindexed == 0
    assert check(open_repo(sc.root), Collector()).ok  # nothing was made worse
    assert_every_snapshot_restores(open_repo(sc.root), sc, tmp_path)

    res = repair_index(open_repo(sc.root), read_data=True)
    assert [p.pack for p in res.packs_damaged] == [sc.victim_pack] and res.blobs_dropped == []
    assert res.packs_written == 1 and res.blobs_salvaged > 0
    repo = open_repo(sc.root)
    assert sc.victim_pack not in repo.ensure_index().packs
    assert check(repo, Collector(), read_data=True).ok
    assert_every_snapshot_restores(repo, sc, tmp_path)


def test_truncated_pack_without_an_old_index_entry_is_left_out(scenario):
    sc = scenario
    repo = open_repo(sc.root)
    for f in repo.backend.list(FileKind.INDEX):
        os.unlink(os.path.join(sc.root, "index", f.name))
    with open(pack_path(repo, sc.victim_pack), "r+b") as f:
        f.truncate(100)
    res = repair_index(open_repo(sc.root))
    assert [p.pack for p in res.packs_unreadable] == [sc.victim_pack]
    assert "left out" in res.packs_unreadable[0].message and res.packs_indexed == 3


# -- lost trees ----------------------------------------------------------------------------------


def test_lost_trees_become_empty_marked_directories_and_lost_roots_are_reported(scenario, tmp_path):
    """A directory whose tree is missing (or has none) becomes an empty directory carrying
    an error; a snapshot whose root tree is missing has nothing left and is only reported
    (and forgotten with --forget); an image with damage is left alone."""
    sc = scenario
    repo = open_repo(sc.root)
    repo.ensure_index()
    ghost = repo.master.blob_id(b"a tree that was never stored")
    s1 = load_snapshot(repo, sc.s1)
    nodes = tree_nodes(repo, s1.tree) + [Node(name=b"lost", type=DIR, mode=0o755, subtree=ghost),
                                         Node(name=b"treeless", type=DIR, mode=0o755, subtree=None)]
    root, _ = repo.save_blob(TREE, encode_tree(nodes))
    repo.flush()
    s1.tree, s1.id = root, ""
    crafted = save_snapshot(repo, s1)
    s1.tree, s1.id = ghost, ""
    rootless = save_snapshot(repo, s1)
    s1.tree, s1.id, s1.kind = root, "", "image"
    image = save_snapshot(repo, s1)

    res = repair_snapshots(open_repo(sc.root))
    status = {r.original: r.status for r in res.repairs}
    assert status == {crafted: "repaired", rootless: "root lost", image: "image (left alone)"}
    assert sorted((d.snapshot, d.path, d.type) for d in res.damage) == sorted(
        [(crafted, b"/lost", DIR), (crafted, b"/treeless", DIR), (image, b"/lost", DIR), (image, b"/treeless", DIR)])
    assert all(d.message.startswith("damaged: directory contents lost") for d in res.damage)
    repo = open_repo(sc.root)
    fixed = load_snapshot(repo, next(r.repaired for r in res.repairs if r.original == crafted))
    lost = {n.name: n for n in tree_nodes(repo, fixed.tree)}
    for name in (b"lost", b"treeless"):
        assert lost[name].error.startswith("damaged: directory contents lost")
        assert tree_nodes(repo, lost[name].subtree) == []
    ev = Collector()
    restore(repo, fixed, RestoreOptions(target=os.fsencode(tmp_path / "out")), ev)
    assert sorted(e.path for e in ev.of(FileError)) == [b"/lost", b"/treeless"]
    assert (tmp_path / "out" / "lost").is_dir() and os.listdir(tmp_path / "out" / "lost") == []

    gone = repair_snapshots(open_repo(sc.root), forget=True)
    left = {s.id for s in load_all(open_repo(sc.root))}
    assert crafted not in left and rootless not in left and image in left  # images are never forgotten here
    assert gone.snapshots_removed == 2


def test_unreadable_snapshot_file_is_reported_and_forgotten_only_with_forget(scenario):
    sc = scenario
    path = os.path.join(sc.root, "snapshots", sc.s1)
    data = bytearray(open(path, "rb").read())
    data[40] ^= 0xFF
    open(path, "wb").write(bytes(data))
    res = repair_snapshots(open_repo(sc.root))
    assert [(r.original, r.status) for r in res.repairs] == [(sc.s1, "unreadable")]
    assert os.path.exists(path)
    res = repair_snapshots(open_repo(sc.root), forget=True)
    assert res.snapshots_removed == 1 and not os.path.exists(path)


# -- crash safety ---------------------------------------------------------------------------------


class Crash(BaseException):
    pass


class StopAfter:
    """The backend, stopping the process's work (an exception no code catches) right after
    its N-th save or remove of a repository file (lock files do not count)."""

    def __init__(self, inner, n: int):
        self.inner, self.n, self.count = inner, n, 0
        self.location = inner.location

    def _done(self, h: Handle) -> None:
        if h.kind is not FileKind.LOCK:
            self.count += 1
            if self.count == self.n:
                raise Crash

    def save(self, h, data, *, overwrite=False):
        self.inner.save(h, data, overwrite=overwrite)
        self._done(h)

    def remove(self, h):
        self.inner.remove(h)
        self._done(h)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _sweep(pristine, tmp_path, run, verify) -> int:
    """Run ``run`` on a copy of ``pristine`` stopped after its n-th change, for every n;
    ``verify(root)`` checks each result. Returns the number of changes."""
    whole = tmp_path / "whole"
    shutil.copytree(pristine, whole)
    counter = StopAfter(LocalBackend(str(whole)), 0)
    run(Repository.open(counter, lambda: PASSWORD.encode()))
    total = counter.count
    for n in range(1, total + 1):
        root = tmp_path / f"crash-{n}"
        shutil.copytree(pristine, root)
        with pytest.raises(Crash):
            run(Repository.open(StopAfter(LocalBackend(str(root)), n), lambda: PASSWORD.encode()))
        verify(root, n)
    return total


def test_repair_index_stopped_after_every_change_leaves_the_repository_no_worse(scenario, tmp_path):
    """An index file lost and a byte flipped: repair index --read-data salvages into a new
    pack, writes its partial index, the new index, and removes the old index file. Stopped
    after any of those, the repository still opens, every blob indexed before that is
    intact is still indexed, the untouched snapshot restores, and a second run ends where
    an uninterrupted one does."""
    sc = scenario
    repo = open_repo(sc.root)
    index_files = sorted(f.name for f in repo.backend.list(FileKind.INDEX))
    doomed = next(n for n in index_files if not _names_pack(repo, n, sc.victim_pack))
    os.unlink(os.path.join(sc.root, "index", doomed))
    repo = open_repo(sc.root)
    entries = repo.ensure_index().packs[sc.victim_pack]
    bad = entries[0]
    with open(pack_path(repo, sc.victim_pack), "r+b") as f:
        f.seek(bad.offset + 5)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x01]))
    sound_before = {bid for bid, _ in open_repo(sc.root).ensure_index().blobs()} - {bad.id}
    pristine = tmp_path / "pristine"
    shutil.copytree(sc.root, pristine)
    ref_root = tmp_path / "reference"
    shutil.copytree(pristine, ref_root)
    repair_index(open_repo(ref_root), read_data=True)
    reference = {bid for bid, _ in open_repo(ref_root).ensure_index().blobs()}
    assert bad.id not in reference and sound_before < reference

    def verify(root, n):
        r = open_repo(root)
        now = {bid for bid, _ in r.load_index().blobs()}
        assert sound_before <= now, n
        assert all(loc.pack in data_packs(r) for _, loc in r.index.blobs()), n
        repair_index(open_repo(root), read_data=True)
        r = open_repo(root)
        assert {bid for bid, _ in r.ensure_index().blobs()} == reference, n
        got, errors = restored(r, load_snapshot(r, sc.s1), tmp_path, f"crash-{n}-s1")
        assert errors == [] and got == sc.before[sc.s1], n

    total = _sweep(pristine, tmp_path, lambda r: repair_index(r, read_data=True), verify)
    assert total >= 4  # salvage pack, its index, the new index, at least one removal


def test_repair_snapshots_stopped_after_every_change_leaves_the_repository_no_worse(scenario, tmp_path):
    """repair snapshots --forget writes a tree pack, its index, the repaired snapshot and
    removes the original. Stopped after any of those, every snapshot is still there or has
    a durable repaired copy, the intact one is untouched, and a second run finishes with
    exactly one repaired copy."""
    sc = scenario
    os.unlink(pack_path(open_repo(sc.root), sc.victim_pack))
    repair_index(open_repo(sc.root))
    pristine = tmp_path / "pristine"
    shutil.copytree(sc.root, pristine)

    def verify(root, n):
        r = open_repo(root)
        snaps = load_all(r)
        ids = {s.id for s in snaps}
        copies = [s for s in snaps if s.summary.get("repaired_from") == sc.s2]
        assert sc.s1 in ids and (sc.s2 in ids or copies), n
        assert check(r, Collector()).ok or sc.s2 in ids, n  # only the original may still be broken
        res = repair_snapshots(open_repo(root), forget=True)
        assert res.snapshots_written == (0 if copies else 1), n
        snaps = load_all(open_repo(root))
        assert sorted(s.summary.get("repaired_from", "") for s in snaps) == ["", sc.s2], n
        assert check(open_repo(root), Collector(), read_data=True).ok, n

    total = _sweep(pristine, tmp_path, lambda r: repair_snapshots(r, forget=True), verify)
    assert total >= 4
