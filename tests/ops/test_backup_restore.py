"""Backup then restore: fidelity, unchanged files, dedup, secrecy, hostile snapshots."""

from __future__ import annotations

import os
import shutil

import pytest

from lbk.backend.base import FileKind
from lbk.cache import Cache
from lbk.errors import FormatError
from lbk.events import Collector, FileError
from lbk.model import Node, Snapshot, encode_tree
from lbk.ops.backup import BackupOptions, backup
from lbk.ops.restore import RestoreOptions, restore
from lbk.repo.pack import TREE
from lbk.repo.snapshots import save_snapshot
from tests.helpers import IS_ROOT, PASSWORD, assert_same_tree, make_torture_tree


def do_backup(repo, paths, cache=None, **kw):
    ev = Collector()
    res = backup(repo, cache, BackupOptions(paths=[os.fsencode(p) for p in paths], **kw), ev)
    return res, ev


def subtree(repo, snap, path) -> bytes:
    """The tree id of directory ``path`` inside ``snap``."""
    from lbk.ops.restore import tree_nodes

    t = snap.tree
    for part in [p for p in os.fsencode(path).split(b"/") if p]:
        t = next(n for n in tree_nodes(repo, t) if n.name == part).subtree
    return t


def do_restore(repo, snap, target, **kw):
    ev = Collector()
    res = restore(repo, snap, RestoreOptions(target=os.fsencode(target), **kw), ev)
    return res, ev


def test_torture_tree_round_trips_exactly(local_repo, tmp_path):
    src = tmp_path / "src"
    facts = make_torture_tree(str(src))
    res, ev = do_backup(local_repo, [src])
    assert ev.of(FileError) == []
    out = tmp_path / "out"
    rres, rev = do_restore(local_repo, res.snapshot, out)
    assert rev.of(FileError) == []
    restored = out / str(src).lstrip("/")
    assert_same_tree(str(src), str(restored))
    # hardlinks stay hardlinks
    a = os.lstat(restored / "dir" / "hello.txt")
    b = os.lstat(restored / "hardlink-to-hello")
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    # holes stay holes: 12 MiB apparent, a few KiB allocated
    sp = os.stat(restored / "sparse.img")
    assert sp.st_size == 12 << 20 and sp.st_blocks * 512 < 1 << 20
    # the tree's own root dir mtime (ns) is restored too
    assert os.stat(restored).st_mtime_ns == os.stat(src).st_mtime_ns
    if IS_ROOT:
        assert facts["device"] and facts["owner"]


def test_restore_with_verify_and_selected_path(local_repo, tmp_path):
    src = tmp_path / "src"
    make_torture_tree(str(src))
    res, _ = do_backup(local_repo, [src])
    out = tmp_path / "out"
    sel = os.fsencode(src / "dir" / "sub")
    rres, rev = do_restore(local_repo, res.snapshot, out, paths=[sel], verify=True)
    assert rev.of(FileError) == []
    base = out / str(src).lstrip("/")
    assert (base / "dir" / "sub" / "random.bin").read_bytes() == (src / "dir" / "sub" / "random.bin").read_bytes()
    assert not (base / "empty-file").exists()
    assert not (base / "dir" / "hello.txt").exists()
    assert rres.verified == 1


def test_unchanged_second_backup_reads_nothing_and_adds_nothing(local_repo, tmp_path):
    src = tmp_path / "src"
    make_torture_tree(str(src))
    cache = Cache(str(tmp_path / "cache"), local_repo.id)
    first, _ = do_backup(local_repo, [src], cache)
    assert first.bytes_read > 3 << 20
    size_before = sum(f.size for k in FileKind for f in local_repo.backend.list(k) if k is not FileKind.LOCK)
    second, _ = do_backup(local_repo, [src], cache)
    assert second.bytes_read == 0
    assert second.files_unchanged == first.files_new and second.files_new == second.files_changed == 0
    assert second.bytes_added == 0
    size_after = sum(f.size for k in FileKind for f in local_repo.backend.list(k) if k is not FileKind.LOCK)
    # only a new snapshot file (and no pack) was added
    assert size_after - size_before < 4096
    assert subtree(local_repo, second.snapshot, src) == subtree(local_repo, first.snapshot, src)  # parents like /tmp change


def test_changed_file_is_reread_and_cache_loss_changes_nothing(local_repo, tmp_path):
    src = tmp_path / "src"
    make_torture_tree(str(src))
    cache = Cache(str(tmp_path / "cache"), local_repo.id)
    first, _ = do_backup(local_repo, [src], cache)
    (src / "dir" / "hello.txt").write_bytes(b"changed\n")
    second, _ = do_backup(local_repo, [src], cache)
    assert second.files_changed == 2  # the file and its hardlink
    assert second.bytes_read == 2 * len(b"changed\n")
    shutil.rmtree(tmp_path / "cache")
    third, _ = do_backup(local_repo, [src], Cache(str(tmp_path / "cache"), local_repo.id))
    # same result without the cache (the parent dir changed: compare the subtree of src)
    assert subtree(local_repo, third.snapshot, src) == subtree(local_repo, second.snapshot, src)
    assert third.bytes_added == 0


def test_copied_large_file_is_stored_once(local_repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(12 << 20)
    (src / "a.bin").write_bytes(data)
    first, _ = do_backup(local_repo, [src])
    (src / "copy.bin").write_bytes(data)
    (src / "shifted.bin").write_bytes(b"prefix" + data)
    second, _ = do_backup(local_repo, [src])
    assert first.bytes_added == len(data)
    # an exact copy adds nothing; a shifted copy adds roughly one chunk
    assert second.bytes_added < 9 << 20
    assert second.stored_added < 9 << 20


def test_no_plaintext_in_repository(local_repo, tmp_path):
    src = tmp_path / "src" / "secret-dirname-7f3a"
    src.mkdir(parents=True)
    marker = b"PLAINTEXT-MARKER-4b1d9e"
    (src / "secret-filename-c0ffee.txt").write_bytes(marker * 100)
    (src / "incompressible.bin").write_bytes(marker + os.urandom(100000))
    do_backup(local_repo, [src], tags=["tag-marker-91ab"], host="host-marker-5e2f")
    needles = [marker, b"secret-dirname-7f3a", b"secret-filename-c0ffee", b"tag-marker-91ab",
               b"host-marker-5e2f", os.fsencode(tmp_path.name)]
    if len(os.uname().nodename) >= 6:  # shorter names collide with random bytes
        needles.append(os.uname().nodename.encode())
    for dirpath, _dirs, files in os.walk(local_repo.backend.root):
        for f in files:
            blob = open(os.path.join(dirpath, f), "rb").read()
            for n in needles:
                assert n not in blob, f"{n!r} found in {f}"


def test_unreadable_file_is_reported_and_snapshot_written(local_repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_bytes(b"fine")
    (src / "gone.txt").write_bytes(b"x")
    import lbk.ops.walk as walk

    real = walk.Reader._read_once

    def failing(self, path, expect, strict=True):
        if path.endswith(b"gone.txt"):
            raise PermissionError(13, "Permission denied")
        return real(self, path, expect, strict)

    monkeypatch.setattr(walk.Reader, "_read_once", failing)
    res, ev = do_backup(local_repo, [src])
    errs = ev.of(FileError)
    assert [e.path for e in errs] == [os.fsencode(src / "gone.txt")]
    assert res.errors == 1 and res.snapshot is not None


def _hostile_snapshot(repo, tree_bytes: bytes) -> Snapshot:
    from datetime import datetime, timezone

    tid, _ = repo.save_blob(TREE, tree_bytes)
    repo.flush()
    snap = Snapshot(time=datetime.now(timezone.utc), tree=tid, paths=[b"/x"], host="h", user="u")
    save_snapshot(repo, snap)
    return snap


@pytest.mark.parametrize("name", ["..", "../escape", "a/../../escape", "/abs", "nul\u0000name", "."])
def test_hostile_names_cannot_escape_target(local_repo, tmp_path, name):
    import json

    bad = json.dumps({"version": 1, "nodes": [{"name": name, "type": "file", "mode": 420, "size": 0, "content": []}]})
    snap = _hostile_snapshot(local_repo, bad.encode())
    target = tmp_path / "t" / "target"
    target.mkdir(parents=True)
    with pytest.raises(FormatError, match="invalid file name"):
        do_restore(local_repo, snap, target)
    assert sorted(os.listdir(tmp_path / "t")) == ["target"]
    assert os.listdir(target) == []


def test_symlinked_parent_in_target_is_not_followed(local_repo, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_bytes(b"payload")
    res, _ = do_backup(local_repo, [src])
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    parent = target / str(src).lstrip("/")
    parent.mkdir(parents=True)
    os.symlink(outside, parent / "d")  # an attacker-placed symlink where a directory will go
    rres, ev = do_restore(local_repo, res.snapshot, target)
    assert os.listdir(outside) == []
    assert [e.path for e in ev.of(FileError)] == [os.fsencode(src / "d")]


def test_existing_symlink_at_file_path_is_replaced_not_followed(local_repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"payload")
    res, _ = do_backup(local_repo, [src])
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    target = tmp_path / "target"
    parent = target / str(src).lstrip("/")
    parent.mkdir(parents=True)
    os.symlink(victim, parent / "f.txt")
    do_restore(local_repo, res.snapshot, target)
    assert victim.read_bytes() == b"keep me"
    assert not os.path.islink(parent / "f.txt")
    assert (parent / "f.txt").read_bytes() == b"payload"


@pytest.mark.parametrize("mode,expect", [("always", b"new"), ("never", b"mine"), ("if-changed", b"new")])
def test_overwrite_modes(local_repo, tmp_path, mode, expect):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"new")
    res, _ = do_backup(local_repo, [src])
    target = tmp_path / "t"
    dst = target / str(src).lstrip("/") / "f"
    dst.parent.mkdir(parents=True)
    dst.write_bytes(b"mine")
    do_restore(local_repo, res.snapshot, target, overwrite=mode)
    assert dst.read_bytes() == expect


def test_excludes_default_and_custom(local_repo, tmp_path):
    src = tmp_path / "src"
    (src / "__pycache__").mkdir(parents=True)
    (src / "__pycache__" / "x.pyc").write_bytes(b"c")
    for n in ["keep.txt", "a.tmp", "b.swp", "c~", ".~lock.d#", "~$e.docx", ".#f", "big.iso"]:
        (src / n).write_bytes(b"1")
    res, _ = do_backup(local_repo, [src], excludes=["*.iso"])
    out = tmp_path / "out"
    do_restore(local_repo, res.snapshot, out)
    assert sorted(os.listdir(out / str(src).lstrip("/"))) == ["keep.txt"]


def test_dry_run_writes_nothing(local_repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(1000))
    before = {k: list(local_repo.backend.list(k)) for k in (FileKind.DATA, FileKind.INDEX, FileKind.SNAPSHOT)}
    res, _ = do_backup(local_repo, [src], dry_run=True)
    assert res.snapshot is None and res.bytes_added == 1000
    after = {k: list(local_repo.backend.list(k)) for k in (FileKind.DATA, FileKind.INDEX, FileKind.SNAPSHOT)}
    assert before == after


def test_tree_ids_are_shared_between_snapshots(mem_repo, tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "a" / "1").write_bytes(b"1")
    (src / "b" / "2").write_bytes(b"2")
    first, _ = do_backup(mem_repo, [src])
    (src / "b" / "2").write_bytes(b"22")
    second, _ = do_backup(mem_repo, [src])
    assert subtree(mem_repo, first.snapshot, src / "a") == subtree(mem_repo, second.snapshot, src / "a")
    assert subtree(mem_repo, first.snapshot, src / "b") != subtree(mem_repo, second.snapshot, src / "b")


def test_node_for_file_names_that_are_not_utf8_round_trip():
    n = Node(name=b"\xff\xfe-x", type="file", content=[b"\x01" * 32], size=3)
    from lbk.model import decode_tree

    assert decode_tree(encode_tree([n]))[0].name == b"\xff\xfe-x"


def test_unchanged_directories_reuse_their_tree_without_rebuilding_nodes(local_repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_torture_tree(str(src))
    cache = Cache(str(tmp_path / "cache"), local_repo.id)
    first, _ = do_backup(local_repo, [src], cache)
    import lbk.ops.backup as backup_mod

    calls = []
    real = backup_mod.make_node
    monkeypatch.setattr(backup_mod, "make_node", lambda p, *a: calls.append(p) or real(p, *a))
    second, _ = do_backup(local_repo, [src], cache)
    assert subtree(local_repo, second.snapshot, src) == subtree(local_repo, first.snapshot, src)  # parents like /tmp change
    assert not [c for c in calls if c.startswith(os.fsencode(src) + b"/")], "unchanged entries were rebuilt"
    assert second.files_unchanged == first.files_new


def test_a_reused_directory_tree_never_carries_chunks_the_index_lost(local_repo, tmp_path):
    """The directory's tree is indexed but one file's chunk is not (a killed run indexed
    the tree pack and not the data pack after a prune removed both): the shortcut must
    not be taken, the file is read again and the snapshot is whole."""
    from lbk.ops.check import check
    from lbk.repo.repository import Repository

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_text("stays indexed\n")
    (src / "d" / "b.txt").write_text("its chunk is lost\n")
    cache = Cache(str(tmp_path / "cache"), local_repo.id)
    first, _ = do_backup(local_repo, [src], cache)
    from lbk.ops.restore import tree_nodes

    lost = next(n for n in tree_nodes(local_repo, subtree(local_repo, first.snapshot, src / "d")) if n.name == b"b.txt").content[0]
    from lbk.backend.base import Handle
    from lbk.repo import index as index_mod

    names = [f.name for f in local_repo.backend.list(FileKind.INDEX)]
    packs = {}
    for n in names:  # rewrite the index without the chunk, as if its pack had never been indexed
        packs.update(index_mod.decode(local_repo.load_sealed(Handle(FileKind.INDEX, n)), n)[1])
    packs = {pid: [e for e in es if e.id != lost] for pid, es in packs.items()}
    local_repo.save_file(FileKind.INDEX, index_mod.encode(packs, supersedes=[bytes.fromhex(n) for n in names]))
    second, _ = do_backup(local_repo, [src], cache)
    assert second.files_unchanged == 1 and second.files_changed == 1
    assert check(Repository.open(local_repo.backend, lambda: PASSWORD.encode()), Collector()).ok


@pytest.mark.parametrize("change", ["chmod", "xattr", "touch", "rename"])
def test_metadata_only_changes_are_seen_by_the_directory_signature(local_repo, tmp_path, change):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    f = src / "d" / "f.txt"
    f.write_bytes(b"content")
    cache = Cache(str(tmp_path / "cache"), local_repo.id)
    first, _ = do_backup(local_repo, [src], cache)
    if change == "chmod":
        os.chmod(f, 0o600)
    elif change == "xattr":
        try:
            os.setxattr(f, b"user.changed", b"1")
        except OSError:
            pytest.skip("no user xattrs on this file system")
    elif change == "touch":
        os.utime(f, ns=(1, 1))
    else:
        os.rename(f, src / "d" / "g.txt")
    second, _ = do_backup(local_repo, [src], cache)
    assert subtree(local_repo, second.snapshot, src / "d") != subtree(local_repo, first.snapshot, src / "d")
    out = tmp_path / "out"
    do_restore(local_repo, second.snapshot, out)
    assert_same_tree(str(src), str(out / str(src).lstrip("/")))


@pytest.mark.parametrize("writes_during_read,expect_warning", [(1, False), (10, True)])
def test_file_changing_while_read_is_reread_or_reported(local_repo, tmp_path, monkeypatch, writes_during_read, expect_warning):
    src = tmp_path / "src"
    src.mkdir()
    f = src / "growing.log"
    f.write_bytes(b"start\n" * 100000)
    import lbk.ops.walk as walk
    from lbk.events import Warning_

    real = walk.Reader._read_once
    calls = {"n": 0}

    def racing(self, path, expect, strict=True):
        out = real(self, path, expect, strict)
        calls["n"] += 1
        if calls["n"] <= writes_during_read:  # a writer appends right as the read ends
            with open(path, "ab") as fh:
                fh.write(b"appended during the read\n")
            os.utime(path, ns=(calls["n"], calls["n"] * 1_000_000_000))
        return out

    def strict_check(self, path, expect, strict=True):
        out = racing(self, path, expect, strict)
        st = os.lstat(path)
        if strict and (st.st_size != out[1] or st.st_mtime_ns != expect.st_mtime_ns):
            raise walk.FileChanged
        return out

    monkeypatch.setattr(walk.Reader, "_read_once", strict_check)
    res, ev = do_backup(local_repo, [src])
    warnings = [w for w in ev.of(Warning_) if w.path == os.fsencode(f)]
    assert bool(warnings) == expect_warning
    out = tmp_path / "out"
    do_restore(local_repo, res.snapshot, out)
    restored = (out / str(f).lstrip("/")).read_bytes()
    if not expect_warning:
        assert restored == f.read_bytes()  # the re-read stored the settled version
    assert calls["n"] >= 2


def test_concurrent_writer_is_detected_by_fstat_before_and_after(local_repo, tmp_path):
    import threading

    from lbk.events import Warning_

    src = tmp_path / "src"
    src.mkdir()
    f = src / "busy.db"
    f.write_bytes(os.urandom(48 << 20))  # reading, chunking and sealing takes a while
    stop = threading.Event()

    def writer():
        with open(f, "r+b") as fh:
            i = 0
            while not stop.is_set():
                fh.seek(i % (48 << 20))
                fh.write(b"x")
                fh.flush()
                i += 4096
                time.sleep(0.002)

    import time

    t = threading.Thread(target=writer)
    t.start()
    try:
        res, ev = do_backup(local_repo, [src])
    finally:
        stop.set()
        t.join()
    assert [w.path for w in ev.of(Warning_)] == [os.fsencode(f)]
    assert res.snapshot is not None and res.errors == 0


def test_backup_refuses_to_commit_when_its_lock_was_removed(local_repo, tmp_path, monkeypatch):
    """A lock removed mid-run (stale after a suspend, then pruned elsewhere) means the
    data this backup deduplicated against may be gone: no snapshot may be written."""
    from lbk.errors import LockFailed
    from lbk.repo import lock as lock_mod

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    real_flush = local_repo.flush

    def flush_then_lose_lock(*a, **kw):
        real_flush(*a, **kw)
        lock_mod.remove_stale(local_repo, all_locks=True)  # e.g. 'lbk unlock --remove-all' elsewhere

    monkeypatch.setattr(local_repo, "flush", flush_then_lose_lock)
    with pytest.raises(LockFailed, match="lock was removed"):
        do_backup(local_repo, [src])
    assert list(local_repo.backend.list(FileKind.SNAPSHOT)) == []
