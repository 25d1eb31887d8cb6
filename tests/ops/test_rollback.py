"""Rollback: exact reproduction of a checkpoint, single files, undo, dry runs, and touching
only what changed."""

from __future__ import annotations

import os
import shutil

import pytest

from lbk.backend.base import FileKind
from lbk.events import Collector, FileError
from lbk.ops import backup as backup_mod
from lbk.ops.backup import BackupOptions, backup
from lbk.ops.checkpoint import CheckpointOptions, checkpoint
from lbk.ops.listing import find_snapshot
from lbk.ops.refs import Filter
from lbk.ops.rollback import RollbackError, RollbackOptions, plan_rollback, rollback
from lbk.repo.snapshots import load_all
from tests.helpers import IS_ROOT, make_torture_tree, snapshot_of
from tests.ops.test_backup_restore import subtree


@pytest.fixture(autouse=True)
def fast_locks(monkeypatch):
    monkeypatch.setattr("lbk.repo.lock.RECHECK_DELAY", 0.0)


def take_checkpoint(repo, path, name="good"):
    res = checkpoint(repo, None, CheckpointOptions(paths=[os.fsencode(path)], name=name), Collector())
    assert res.errors == 0
    return res.snapshot


def state(root) -> dict:
    """Everything snapshot_of compares, plus the root's own mode and mtime."""
    st = os.lstat(root)
    return {"entries": snapshot_of(str(root)), "root": (st.st_mode, st.st_mtime_ns)}


def assert_same_state(got: dict, want: dict) -> None:
    assert got["root"] == want["root"], "root mode/mtime differ"
    a, b = got["entries"], want["entries"]
    assert sorted(a) == sorted(b), f"only now: {set(a) - set(b)}, only wanted: {set(b) - set(a)}"
    for rel in b:
        for key in b[rel]:
            if key == "blocks":  # hole granularity differs (64 KiB); sparseness is checked apart
                continue
            assert a[rel].get(key) == b[rel][key], f"{rel!r}: {key}: {a[rel].get(key)!r:.80} != {b[rel][key]!r:.80}"


def stats(root) -> dict:
    """(inode, mtime, ctime) of every entry: proof of what was (not) touched."""
    out = {}
    for dirpath, dirs, files in os.walk(os.fsencode(root)):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[p] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    return out


def do_rollback(repo, snap, path, **kw):
    ev = Collector()
    res = rollback(repo, None, snap, os.fsencode(path), RollbackOptions(**kw), ev)
    assert ev.of(FileError) == [], [e.message for e in ev.of(FileError)]
    return res


def mutate_torture_tree(src) -> None:
    """Every kind of change rollback has to undo."""
    j = lambda *p: os.path.join(os.fsencode(src), *p)  # noqa: E731
    with open(j(b"dir", b"hello.txt"), "r+b") as f:  # in place: both hardlinked names change
        f.write(b"HELLO")
    rnd = j(b"dir", b"sub", b"random.bin")  # same size, same mtime, other bytes: only a read tells
    st = os.lstat(rnd)
    with open(rnd, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 16)
    os.utime(rnd, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(j(b"setuid"), 0o755)  # metadata only
    os.utime(j(b"empty-file"), ns=(1, 1))
    os.unlink(j(b"latin1-\xe9\xff.txt"))
    shutil.rmtree(j(b"dir-\xfe"))
    os.unlink(j(b"link-rel"))
    os.symlink(b"elsewhere", j(b"link-rel"))
    os.unlink(j(b"fifo"))
    with open(j(b"fifo"), "wb") as f:  # type change fifo -> file
        f.write(b"now a file")
    os.rmdir(j(b"empty-dir"))
    with open(j(b"empty-dir"), "wb") as f:  # dir -> file
        f.write(b"x")
    os.unlink(j(b"empty-file"))
    os.makedirs(j(b"empty-file", b"inner"))  # file -> dir with contents
    with open(j(b"sparse.img"), "ab") as f:
        f.write(b"appended")
    os.makedirs(j(b"new-dir", b"deep"))
    with open(j(b"new-dir", b"deep", b"added.txt"), "wb") as f:
        f.write(b"added later")
    with open(j(b"dir", b"sub", b"added.bin"), "wb") as f:
        f.write(os.urandom(1000))
    os.chmod(j(b"sticky"), 0o755)
    # changes that leave nothing but a new ctime or inode behind: nothing to roll back,
    # but a backup of this state records them
    dangling = j(b"link-dangling")
    st = os.lstat(dangling)
    target = os.readlink(dangling)
    os.unlink(dangling)
    os.symlink(target, dangling)
    os.utime(dangling, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    deeper = j(b"dir", b"sub", b"deeper")
    mode = os.lstat(deeper).st_mode
    os.chmod(deeper, 0o700)
    os.chmod(deeper, mode & 0o7777)
    if IS_ROOT:
        os.chown(j(b"readonly"), 4242, 4343)


@pytest.fixture
def torture(local_repo, tmp_path):
    src = tmp_path / "src"
    facts = make_torture_tree(str(src))
    good = state(src)
    snap = take_checkpoint(local_repo, src)
    return local_repo, src, snap, good, facts


def test_tree_rollback_to_checkpoint_reproduces_it_exactly(torture):
    repo, src, _snap, good, facts = torture
    mutate_torture_tree(src)
    try:
        os.setxattr(src / "dir" / "sub" / "random.bin", b"user.added", b"later")
        os.setxattr(src / "readonly", b"user.other", b"v")
    except OSError:
        pass
    assert state(src) != good
    snap = find_snapshot(repo, "@good", Filter(path=os.fsencode(src)))
    res = do_rollback(repo, snap, src)
    assert_same_state(state(src), good)
    assert res.pre_rollback is not None and res.pre_rollback.kind == "pre-rollback"
    assert not (src / "new-dir").exists() and not (src / "dir" / "sub" / "added.bin").exists()
    a, b = os.lstat(src / "dir" / "hello.txt"), os.lstat(src / "hardlink-to-hello")
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    assert os.stat(src / "sparse.img").st_blocks * 512 < 1 << 20  # holes stay holes
    assert res.plan.files_hashed >= 1  # random.bin: same size and mtime, found by its content ids
    reasons = {os.path.basename(a.path): (a.action, a.reason) for a in res.plan.actions}
    assert reasons[b"random.bin"] == ("rewrite", "content")
    assert reasons[b"setuid"] == ("metadata", "mode")
    assert reasons[b"new-dir"] == ("remove", "new")
    assert b"link-dangling" not in reasons and b"deeper" not in reasons  # identical: left alone


def test_excluded_files_survive_rollback(torture):
    repo, src, snap, _good, _ = torture
    (src / "draft.tmp").write_bytes(b"temp")
    (src / "dir" / "__pycache__").mkdir()
    (src / "dir" / "__pycache__" / "m.pyc").write_bytes(b"c")
    (src / "mine.log").write_bytes(b"log")
    res = do_rollback(repo, snap, src, excludes=["*.log"])
    assert (src / "draft.tmp").read_bytes() == b"temp"
    assert (src / "dir" / "__pycache__" / "m.pyc").exists() and (src / "mine.log").exists()
    # only the directories' mtimes (moved by adding the files) are put back
    assert sorted((a.action, a.path, a.reason) for a in res.plan.actions) == [
        ("metadata", os.fsencode(src), "mtime"), ("metadata", os.fsencode(src / "dir"), "mtime")]
    assert os.stat(src).st_mtime_ns == _good["root"][1]
    again = do_rollback(repo, snap, src, excludes=["*.log"])
    assert again.plan.actions == [] and again.pre_rollback is None  # nothing differs: no snapshot either


def test_undo_through_the_pre_rollback_snapshot(torture):
    repo, src, snap, good, _ = torture
    mutate_torture_tree(src)
    changed = state(src)
    # what a plain backup records for this state: the pre-rollback snapshot must be the same
    # although it reuses the checkpoint's trees for the directories that did not change
    plain = backup(repo, None, BackupOptions(paths=[os.fsencode(src)]), Collector()).snapshot
    res = do_rollback(repo, snap, src)
    assert subtree(repo, res.pre_rollback, src) == subtree(repo, plain, src)
    for k in ("total_files", "total_bytes", "dirs"):
        assert res.pre_rollback.summary[k] == plain.summary[k], k
    assert_same_state(state(src), good)
    pre = find_snapshot(repo, res.pre_rollback.id)
    undo = do_rollback(repo, pre, src)
    assert_same_state(state(src), changed)
    assert undo.pre_rollback is not None
    again = do_rollback(repo, find_snapshot(repo, "@good", Filter(path=os.fsencode(src))), src)
    assert_same_state(state(src), good)
    assert again.pre_rollback.id not in (res.pre_rollback.id, undo.pre_rollback.id)


def test_rollback_of_one_file_leaves_its_siblings(local_repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"original a\n")
    (src / "b.txt").write_bytes(b"original b\n")
    os.chmod(src / "a.txt", 0o640)
    snap = take_checkpoint(local_repo, src)
    before = os.lstat(src / "a.txt")
    (src / "a.txt").write_bytes(b"edited a, now longer\n")
    os.chmod(src / "a.txt", 0o600)
    (src / "b.txt").write_bytes(b"edited b\n")
    res = do_rollback(local_repo, snap, src / "a.txt")
    assert (src / "a.txt").read_bytes() == b"original a\n"
    st = os.lstat(src / "a.txt")
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o640, before.st_mtime_ns)
    assert (src / "b.txt").read_bytes() == b"edited b\n"
    assert [a.action for a in res.plan.actions] == ["rewrite"]
    assert res.pre_rollback.paths == [os.fsencode(src / "a.txt")]
    undo = do_rollback(local_repo, res.pre_rollback, src / "a.txt")
    assert (src / "a.txt").read_bytes() == b"edited a, now longer\n" and undo.done["rewrite"] == 1


def test_dry_run_changes_nothing(torture):
    repo, src, snap, good, _ = torture
    mutate_torture_tree(src)
    before_state, before_stats = state(src), stats(src)
    files_before = {k: sorted(f.name for f in repo.backend.list(k)) for k in FileKind}
    plan = plan_rollback(repo, snap, os.fsencode(src))
    assert {a.action for a in plan.actions} == {"rewrite", "create", "remove", "metadata"}
    assert state(src) == before_state and stats(src) == before_stats
    files_after = {k: sorted(f.name for f in repo.backend.list(k)) for k in FileKind}
    assert files_after == files_before  # no pre-rollback snapshot, no lock left


@pytest.mark.parametrize("change", ["content", "same-size-content", "metadata"])
def test_one_changed_file_of_100_is_the_only_one_touched(local_repo, tmp_path, change, monkeypatch):
    src = tmp_path / "src"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(25):
            (src / f"d{d}" / f"f{i:02d}.txt").write_bytes(os.urandom(2000 + i))
    os.symlink("f00.txt", src / "d1" / "link")
    snap = take_checkpoint(local_repo, src)
    victim = src / "d2" / "f07.txt"
    original = victim.read_bytes()
    if change == "content":
        victim.write_bytes(b"replaced")
    elif change == "same-size-content":
        victim.write_bytes(bytes(len(original)))
    else:
        os.chmod(victim, 0o600)
    # a look-alike: same bytes, mode and mtime, but a new inode (an editor's save-as-copy):
    # nothing to roll back, yet the current state differs from the checkpoint's tree
    twin = src / "d3" / "f10.txt"
    data, st, dst = twin.read_bytes(), os.lstat(twin), os.lstat(twin.parent)
    twin.unlink()
    twin.write_bytes(data)
    os.utime(twin, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(twin.parent, ns=(dst.st_atime_ns, dst.st_mtime_ns))
    link, lst, dst = src / "d1" / "link", os.lstat(src / "d1" / "link"), os.lstat(src / "d1")
    link.unlink()
    os.symlink("f00.txt", link)  # the same link made again: only its inode and ctime differ
    os.utime(link, ns=(lst.st_atime_ns, lst.st_mtime_ns), follow_symlinks=False)
    os.utime(link.parent, ns=(dst.st_atime_ns, dst.st_mtime_ns))
    before = stats(src)
    plain = backup(local_repo, None, BackupOptions(paths=[os.fsencode(src)]), Collector()).snapshot
    nodes_made = []
    real_make_node = backup_mod.make_node
    monkeypatch.setattr(backup_mod, "make_node", lambda *a: nodes_made.append(a[0]) or real_make_node(*a))
    res = do_rollback(local_repo, snap, src)
    after = stats(src)
    # the pre-rollback snapshot equals a plain backup, but walked only the changed directory
    assert subtree(local_repo, res.pre_rollback, src) == subtree(local_repo, plain, src)
    assert res.pre_rollback.summary["total_files"] == 100  # (the symlink is not a file)
    walked = {os.path.dirname(p) for p in nodes_made if p.startswith(os.fsencode(src) + b"/")}
    assert walked == {os.fsencode(src), os.fsencode(src / "d1"), os.fsencode(src / "d2"), os.fsencode(src / "d3")}
    vkey = os.fsencode(victim)
    assert victim.read_bytes() == original
    untouched = {k: v for k, v in before.items() if k != vkey and k != os.fsencode(src / "d2")}
    assert {k: after[k] for k in untouched} == untouched  # same inode, mtime and ctime: not even opened for writing
    assert after[os.fsencode(src / "d2")][1] == before[os.fsencode(src / "d2")][1]  # dir mtime put back
    if change == "metadata":
        assert after[vkey][0] == before[vkey][0]  # fixed in place, not rewritten
        assert [(a.action, a.reason) for a in res.plan.actions] == [("metadata", "mode")]
    else:
        assert after[vkey][0] != before[vkey][0]  # written beside and renamed over
        assert [a.action for a in res.plan.actions] == ["rewrite"]
    # the comparison read only the suspicious files (same size, other ctime or inode);
    # saving the current state read only what differs from the checkpoint
    assert res.plan.files_hashed == (1 if change == "content" else 2)
    assert res.pre_rollback.summary["bytes_read"] == len(data) + (len(b"replaced") if change == "content" else len(original))


def test_rollback_recreates_a_deleted_tree_and_undo_removes_it(local_repo, tmp_path):
    src = tmp_path / "src"
    (src / "proj" / "lib").mkdir(parents=True)
    (src / "proj" / "lib" / "m.py").write_bytes(b"print(1)\n")
    (src / "proj" / "README").write_bytes(b"readme\n")
    good = state(src / "proj")
    snap = take_checkpoint(local_repo, src)
    shutil.rmtree(src / "proj")
    res = do_rollback(local_repo, snap, src / "proj")
    assert state(src / "proj") == good
    assert [a.action for a in res.plan.actions] == ["create"] * 4
    pre = res.pre_rollback
    assert pre.paths == [os.fsencode(src / "proj")] and pre.summary["total_files"] == 0
    do_rollback(local_repo, pre, src / "proj")  # its absence is what was saved
    assert not (src / "proj").exists()


def test_paths_outside_the_snapshot_and_missing_everywhere_are_refused(local_repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"1")
    other = tmp_path / "other"
    other.mkdir()
    snap = take_checkpoint(local_repo, src)
    with pytest.raises(RollbackError, match="does not contain"):
        rollback(local_repo, None, snap, os.fsencode(other))
    with pytest.raises(RollbackError, match="neither now nor"):
        rollback(local_repo, None, snap, os.fsencode(src / "never"))
    assert [s.kind for s in load_all(local_repo)] == ["checkpoint"]


def test_directory_swapped_for_a_symlink_is_not_followed(local_repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_bytes(b"payload")
    snap = take_checkpoint(local_repo, src)
    (src / "d" / "f.txt").write_bytes(b"changed")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_bytes(b"victim")
    import lbk.ops.rollback as rb

    real = rb.save_current_state

    def swap(*a, **kw):  # an attacker's swap between the plan and the writes
        snap_ = real(*a, **kw)
        shutil.rmtree(src / "d")
        os.symlink(outside, src / "d")
        return snap_

    monkeypatch.setattr(rb, "save_current_state", swap)
    ev = Collector()
    res = rollback(local_repo, None, snap, os.fsencode(src), emit=ev)
    assert (outside / "f.txt").read_bytes() == b"victim"
    assert os.listdir(outside) == ["f.txt"]
    assert res.errors == 1 and [e.path for e in ev.of(FileError)] == [os.fsencode(src / "d" / "f.txt")]


def test_protected_paths_inside_a_new_directory_are_kept(local_repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"1")
    snap = take_checkpoint(local_repo, src)
    keep = src / "later" / "repo"
    keep.mkdir(parents=True)
    (keep / "config").write_bytes(b"precious")
    (src / "later" / "junk").write_bytes(b"junk")
    do_rollback(local_repo, snap, src, exclude_paths=[os.fsencode(keep)])
    assert (keep / "config").read_bytes() == b"precious"
    assert not (src / "later" / "junk").exists()
