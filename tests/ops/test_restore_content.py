"""Restore writes file contents pack by pack (lbk/ops/restore_content.py): few reads,
every blob in every place it belongs, failures confined to their file."""

from __future__ import annotations

import os

import pytest

import lbk.ops.restore_content as rc
from lbk.backend.base import FileKind, Handle
from lbk.events import Collector, FileError
from lbk.ops.backup import BackupOptions, backup
from lbk.ops.restore import RestoreOptions, restore
from lbk.repo.repository import Repository
from tests.helpers import PASSWORD


@pytest.fixture
def small_packs(local_repo):
    """Packs of 64 KiB: a few hundred KiB of files spread over many packs."""
    local_repo.config.pack_size = 64 * 1024
    local_repo.save_sealed(Handle(FileKind.CONFIG), local_repo.config.encode(), overwrite=True)
    return Repository.open(local_repo.backend, lambda: PASSWORD.encode())


class CountingLoads:
    def __init__(self, inner):
        self.inner = inner
        self.location = inner.location
        self.data_loads = 0

    def load(self, h, offset=0, length=None):
        if h.kind is FileKind.DATA:
            self.data_loads += 1
        return self.inner.load(h, offset, length)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def tree_contents(root) -> dict[str, bytes]:
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.relpath(os.path.join(d, f), root)] = fh.read()
    return out


def make_source(src) -> None:
    """Shared and repeated chunks, files over many packs, empty and sparse files."""
    src.mkdir()
    shared = os.urandom(20_000)
    for i in range(40):  # small files, each its own blob, several to a pack
        (src / f"small{i:02}.txt").write_bytes(os.urandom(3_000 + i))
    for i in range(5):  # the same content five times: one blob, five files
        (src / f"copy{i}.bin").write_bytes(shared)
    (src / "empty").write_bytes(b"")
    big = os.urandom(300_000)  # > the 256 KiB minimum chunk: cut into chunks in several packs
    (src / "twice.bin").write_bytes(big + big)  # its chunks repeat within the file
    with open(src / "sparse.img", "wb") as f:
        f.seek(1 << 20)
        f.write(b"tail")


def test_contents_round_trip_with_few_reads(small_packs, tmp_path):
    src = tmp_path / "src"
    make_source(src)
    res = backup(small_packs, None, BackupOptions(paths=[os.fsencode(src)]), Collector())
    counting = CountingLoads(small_packs.backend)
    repo = Repository.open(counting, lambda: PASSWORD.encode())
    out = tmp_path / "out"
    r = restore(repo, res.snapshot, RestoreOptions(target=os.fsencode(out)), Collector())
    assert r.errors == 0
    restored = out / str(src).lstrip("/")
    assert tree_contents(restored) == tree_contents(src)
    assert os.stat(restored / "sparse.img").st_blocks * 512 < 64 * 1024  # the hole stayed a hole
    from lbk.repo.pack import DATA, TREE

    entries = [e for es in repo.index.packs.values() for e in es]
    trees = sum(1 for e in entries if e.type == TREE)  # each tree is read on its own, as before
    data_blobs = sum(1 for e in entries if e.type == DATA)
    data_packs = sum(1 for es in repo.index.packs.values() if any(e.type == DATA for e in es))
    assert data_blobs > 3 * data_packs
    assert counting.data_loads <= data_packs + trees  # a pack's blobs come in one read, not one each


def test_few_open_descriptors_still_restore_files_spread_over_packs(small_packs, tmp_path, monkeypatch):
    monkeypatch.setattr(rc, "MAX_OPEN", 1)
    monkeypatch.setattr(rc, "MAX_READ", 32 * 1024)  # more, smaller reads: files finish out of order
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"big{i}.bin").write_bytes(os.urandom(700_000))
    res = backup(small_packs, None, BackupOptions(paths=[os.fsencode(src)]), Collector())
    out = tmp_path / "out"
    r = restore(small_packs, res.snapshot, RestoreOptions(target=os.fsencode(out)), Collector())
    assert r.errors == 0
    assert tree_contents(out / str(src).lstrip("/")) == tree_contents(src)


def test_a_damaged_blob_fails_its_files_only_and_leaves_no_temporary_file(small_packs, tmp_path):
    src = tmp_path / "src"
    make_source(src)
    res = backup(small_packs, None, BackupOptions(paths=[os.fsencode(src)]), Collector())
    from lbk.ops.restore import tree_nodes

    nodes = {n.name: n for n in tree_nodes(small_packs, _subtree(small_packs, res.snapshot.tree, src))}
    victim = nodes[b"small07.txt"].content[0]
    loc = small_packs.index.get(victim)
    h = Handle(FileKind.DATA, loc.pack)
    path = small_packs.backend._path(h)
    with open(path, "r+b") as f:  # flip a byte inside that blob
        f.seek(loc.offset + 30)
        b = f.read(1)
        f.seek(loc.offset + 30)
        f.write(bytes([b[0] ^ 1]))
    repo = Repository.open(small_packs.backend, lambda: PASSWORD.encode())
    ev = Collector()
    out = tmp_path / "out"
    r = restore(repo, res.snapshot, RestoreOptions(target=os.fsencode(out)), ev)
    failed = {os.path.basename(e.path) for e in ev.of(FileError)}
    assert failed == {b"small07.txt"} and r.errors == 1
    got = tree_contents(out / str(src).lstrip("/"))
    want = tree_contents(src)
    del want["small07.txt"]
    assert got == want  # everything else, and no .lbk-restore-* leftover


def _subtree(repo, tree, path):
    from lbk.ops.restore import tree_nodes

    for part in [p for p in os.fsencode(path).split(b"/") if p]:
        tree = next(n for n in tree_nodes(repo, tree) if n.name == part).subtree
    return tree
