"""Swapped objects: a valid object moved under another id or name is refused, and named.

A blob's seal binds its type and id (AD ``lbk:blob || type || id``), and every file is
named by the hash of its bytes, so moving valid ciphertext is caught by authentication
or by the name check; sealing one blob's content under another's id (which needs the
key) is caught by recomputing the id. Each row runs a command as a real process.
"""

from __future__ import annotations

import os
import shutil
from typing import Callable

import pytest

from lbk.backend.base import FileKind, Handle
from lbk.repo import crypto, pack as pack_mod
from tests.hostile import forge as F
from tests.hostile.run import assert_clean_failure, run_limited


def _point(victim: Callable, source: Callable):
    """Rewrite (with the key) the index so that blob ``victim`` is found at ``source``'s bytes."""
    def f(repo, prep):
        v, s = victim(prep), source(prep)
        src = F.blob_loc(repo, s)
        packs = F.all_packs(repo)
        for pid, entries in packs.items():
            packs[pid] = [e for e in entries if e.id != v]
        packs[src.pack].append(pack_mod.PackEntry(src.type, v, src.offset, src.length, src.raw_length))
        F.replace_index(repo, packs)
        return v
    return f


def _copy_over(repo, prep):
    """Copy a.txt's sealed blob over b.txt's place in their pack; the pack is renamed to
    its new hash, its header and the index rewritten (with the key) to match."""
    a, b = prep.file_blob, prep.other_blob
    loc = F.blob_loc(repo, b)
    old = open(F.pack_path(prep.repo, loc.pack), "rb").read()
    entries = F.all_packs(repo)[loc.pack]
    a_loc = F.blob_loc(repo, a)
    a_bytes = old[a_loc.offset : a_loc.offset + a_loc.length]
    blobs, new_entries, off = b"", [], 0
    for e in entries:
        sealed = a_bytes if e.id == b else old[e.offset : e.offset + e.length]
        new_entries.append(pack_mod.PackEntry(e.type, e.id, off, len(sealed), e.raw_length))
        blobs += sealed
        off += len(sealed)
    name = F.put_pack(repo, blobs, F.header([(e.type, e.id, e.length, e.raw_length) for e in new_entries]))
    repo.backend.remove(Handle(FileKind.DATA, loc.pack))
    packs = F.all_packs(repo)
    packs.pop(loc.pack)
    packs[name] = new_entries
    F.replace_index(repo, packs)
    return b


def _resealed(repo, prep):
    """b.txt's id, sealed (with the key) over a.txt's content: the MAC is valid."""
    b = prep.other_blob
    _point(lambda p: b, lambda p: p.file_blob)(repo, prep)
    data = open(os.path.join(prep.src, "a.txt"), "rb").read()
    repo.index_loaded = False
    bid, sealed = F.sealed_blob(repo, pack_mod.DATA, data, b)
    name = F.put_pack(repo, sealed, F.header([(pack_mod.DATA, b, len(sealed), len(data))]))
    packs = F.all_packs(repo)
    for pid in packs:
        packs[pid] = [e for e in packs[pid] if e.id != b]
    packs[name] = [pack_mod.PackEntry(pack_mod.DATA, b, 0, len(sealed), len(data))]
    F.replace_index(repo, packs)
    return b


BLOB_SWAPS = [
    ("index-points-b-at-a", _point(lambda p: p.other_blob, lambda p: p.file_blob), "authentication failed"),
    ("a-copied-over-b-in-its-pack", _copy_over, "authentication failed"),
    ("a-content-sealed-as-b", _resealed, "content does not match its id"),
]


@pytest.mark.parametrize("command", ["restore", "read-data", "cat-blob"])
@pytest.mark.parametrize("swap,reason", [pytest.param(f, r, id=i) for i, f, r in BLOB_SWAPS])
def test_swapped_data_blob_is_refused_and_named(prepared, tmp_path, swap, reason, command):
    prep = F.copy(prepared, str(tmp_path / "repo"))
    repo = F.open_repo(prep.repo)
    victim = swap(repo, prep).hex()
    repo.close()
    args = {
        "restore": ["restore", prep.snapshot, "--target", str(tmp_path / "t")],  # b.txt's first version is there
        "read-data": ["check", "--read-data"],
        "cat-blob": ["cat", "blob", victim],
    }[command]
    res = run_limited(prep.repo, *args)
    assert_clean_failure(res, command, 1, rf"blob {victim[:16]} in pack \w+: {reason}")
    if command == "restore":  # the swapped blob spoils its file only
        restored = tmp_path / "t" / prep.src.lstrip("/")
        assert (restored / "a.txt").read_bytes() == b"alpha\n" * 1000
        assert not (restored / "sub" / "b.txt").exists()


@pytest.mark.parametrize("command,args", [
    ("ls", ["ls", "-R", "{good}"]),
    ("restore", ["restore", "{good}", "--target", "{target}"]),
    ("check", ["check"]),
])
def test_tree_swapped_with_another_tree_is_refused_and_named(prepared, tmp_path, command, args):
    prep = F.copy(prepared, str(tmp_path / "repo"))
    repo = F.open_repo(prep.repo)
    _point(lambda p: p.sub_tree, lambda p: p.src_tree)(repo, prep)
    repo.close()
    subs = {"{good}": prep.snapshot, "{target}": str(tmp_path / "t")}
    res = run_limited(prep.repo, *[subs.get(a, a) for a in args])
    assert_clean_failure(res, command, 1, rf"blob {prep.sub_tree.hex()[:16]} in pack \w+: authentication failed")


@pytest.mark.parametrize("kind,command", [
    (FileKind.SNAPSHOT, ["snapshots"]),
    (FileKind.SNAPSHOT, ["restore", "latest", "--target", "t"]),
    (FileKind.INDEX, ["ls", "latest"]),
    (FileKind.INDEX, ["check"]),
])
def test_file_copied_under_another_name_is_refused_and_named(prepared, tmp_path, kind, command):
    """A snapshot or index file copied over another of its kind (no key needed)."""
    prep = F.copy(prepared, str(tmp_path / "repo"))
    first, second = F.files_of(prep.repo, kind)[:2]
    shutil.copyfile(F.path_of(prep.repo, Handle(kind, first)), F.path_of(prep.repo, Handle(kind, second)))
    res = run_limited(prep.repo, *command, cwd=str(tmp_path))
    name = "check" if command[0] == "check" else command[0]
    # A snapshot file is skipped with a warning (the others stay usable); an index is fatal.
    code = 0 if kind == FileKind.SNAPSHOT else 1
    assert_clean_failure(res, name, code, rf"{kind.value}/{second[:16]}\w*: content does not match its name \(damaged or swapped\)")
    assert second[:8] not in res.stdout
    assert crypto.content_hash(open(F.path_of(prep.repo, Handle(kind, second)), "rb").read()) == first
