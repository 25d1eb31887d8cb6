"""check: a clean repository passes; damage is found and traced to what it affects."""

from __future__ import annotations

import os

import pytest

from lbk.backend.base import FileKind, Handle
from lbk.events import Collector
from lbk.ops.check import check, parse_subset
from lbk.errors import UsageError
from tests.ops.test_backup_restore import do_backup


def _pack_paths(repo):
    return [os.path.join(repo.backend.root, "data", f.name[:2], f.name) for f in repo.backend.list(FileKind.DATA)]


def _data_pack_of(repo, blob_id):
    loc = repo.index.get(blob_id)
    return loc.pack, os.path.join(repo.backend.root, "data", loc.pack[:2], loc.pack), loc


@pytest.fixture
def populated(local_repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "victim.bin").write_bytes(os.urandom(300_000))
    (src / "bystander.txt").write_bytes(b"unrelated" * 100)
    first, _ = do_backup(local_repo, [src])
    (src / "later.txt").write_bytes(b"later")
    second, _ = do_backup(local_repo, [src])
    return local_repo, src, first.snapshot, second.snapshot


def test_clean_repository_passes_with_read_data(populated):
    repo, *_ = populated
    res = check(repo, Collector(), read_data=True)
    assert res.ok, res.problems
    assert res.snapshots == 2 and res.packs_read == res.packs >= 2


def test_flipped_byte_in_pack_is_found_and_traced(populated):
    repo, src, s1, s2 = populated
    from lbk.ops.restore import tree_nodes
    from tests.ops.test_backup_restore import subtree

    victim = next(n for n in tree_nodes(repo, subtree(repo, s1, src)) if n.name == b"victim.bin")
    pack, path, loc = _data_pack_of(repo, victim.content[0])
    with open(path, "r+b") as f:
        f.seek(loc.offset + loc.length // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x01]))
    assert check(repo, Collector()).ok  # structure alone cannot see it
    res = check(repo, Collector(), read_data=True)
    assert not res.ok
    files = [p for p in res.problems if p.kind == "file"]
    assert {p.snapshot for p in files} == {s1.id[:8], s2.id[:8]}
    assert {p.path for p in files} == {os.fsdecode(os.fsencode(src / "victim.bin"))}
    assert any(p.kind == "blob" and p.object == victim.content[0].hex() for p in res.problems)
    assert not any("bystander" in p.path for p in res.problems)


def test_read_data_walks_the_trees_it_verified_without_reading_them_again(populated, monkeypatch):
    repo, src, s1, s2 = populated
    loads = []
    real = repo.load_blob
    monkeypatch.setattr(repo, "load_blob", lambda t, bid: loads.append(bid) or real(t, bid))
    res = check(repo, Collector(), read_data=True)
    assert res.ok and res.trees > 2
    assert loads == []  # every tree came from its verified pack
    res = check(repo, Collector())  # without --read-data the walk loads each tree
    assert res.ok and len(loads) == res.trees


def test_flipped_byte_in_a_tree_is_found_and_traced_with_read_data(populated):
    repo, src, s1, s2 = populated
    from tests.ops.test_backup_restore import subtree

    tree_id = subtree(repo, s2, src)  # only the second snapshot has this directory tree
    pack, path, loc = _data_pack_of(repo, tree_id)
    with open(path, "r+b") as f:
        f.seek(loc.offset + loc.length // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x01]))
    repo._tree_cache.clear()
    res = check(repo, Collector(), read_data=True)
    assert not res.ok
    trees = [p for p in res.problems if p.kind == "tree"]
    assert {p.object for p in trees} == {tree_id.hex()} and {p.snapshot for p in trees} == {s2.id[:8]}
    assert any(p.kind == "blob" and p.object == tree_id.hex() for p in res.problems)


def test_missing_pack_is_reported(populated):
    repo, src, s1, s2 = populated
    for p in _pack_paths(repo):
        os.unlink(p)
    res = check(repo, Collector())
    assert any(p.kind == "pack" and "missing" in p.message for p in res.problems)
    assert any(p.kind == "tree" for p in res.problems)


def test_damaged_snapshot_and_index_files_are_named(populated):
    repo, src, s1, s2 = populated
    path = os.path.join(repo.backend.root, "snapshots", s2.id)
    data = bytearray(open(path, "rb").read())
    data[30] ^= 0xFF
    open(path, "wb").write(bytes(data))
    idx_name = next(iter(repo.backend.list(FileKind.INDEX))).name
    open(os.path.join(repo.backend.root, "index", idx_name), "ab").write(b"junk")
    res = check(repo, Collector())
    kinds = {(p.kind, p.object) for p in res.problems}
    assert ("snapshot", s2.id) in kinds
    assert ("index", idx_name) in kinds


def test_read_data_subset_reads_only_part(populated):
    repo, *_ = populated
    total = check(repo, Collector(), read_data=True).packs_read
    parts = [check(repo, Collector(), subset=f"{i}/3").packs_read for i in (1, 2, 3)]
    assert sum(parts) == total


@pytest.mark.parametrize("spec,expect", [("10%", ("pct", 10.0)), ("2/5", ("part", 2, 5)), (None, None)])
def test_parse_subset(spec, expect):
    assert parse_subset(spec) == expect


@pytest.mark.parametrize("spec", ["0%", "101%", "0/3", "4/3", "abc", "5"])
def test_parse_subset_rejects(spec):
    with pytest.raises(UsageError):
        parse_subset(spec)


def test_swapped_pack_is_detected(populated):
    repo, *_ = populated
    packs = _pack_paths(repo)
    assert len(packs) >= 2
    a, b = packs[0], packs[1]
    da, db = open(a, "rb").read(), open(b, "rb").read()
    open(a, "wb").write(db)
    open(b, "wb").write(da)
    res = check(repo, Collector(), read_data=True)
    assert sum(1 for p in res.problems if p.kind == "pack" and "does not match its name" in p.message) == 2
    _ = Handle
