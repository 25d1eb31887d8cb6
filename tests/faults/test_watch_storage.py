"""The watch daemon when storage fails under it: its spool fills up, or the repository's
disk starts failing. It must keep going, lose no save, and never commit a snapshot that
references data it could not store."""

from __future__ import annotations

import json
import os
import time

from tests.faults.common import contents
from tests.helpers import lbk_proc
from tests.watch.test_watch import WatchProc, restore_latest, status

FAST = ("--debounce", "0.2", "--commit-interval", "0.1")


def wait_until(pred, timeout=30.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_spool_full_then_repository_back_loses_nothing(tmp_path):
    repo, tree = tmp_path / "repo", tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("before\n")
    assert lbk_proc("-r", repo, "init").returncode == 0
    w = WatchProc(repo, tree, *FAST, "--spool-cap", "1")
    away = tmp_path / "repo.unplugged"
    os.rename(repo, away)
    for i in range(4):  # 4 x 400 KiB of incompressible data: more than the 1 MiB spool holds
        (tree / f"big{i}.bin").write_bytes(os.urandom(400 << 10))
        time.sleep(0.5)
    w.wait_for(lambda ev: ev["message_type"] == "warning" and "spool is full" in ev["message"])
    os.rename(away, repo)
    w.wait_for(lambda ev: ev["message_type"] == "synced", timeout=30)
    (tree / "after.txt").write_text("saved once the repository is back\n")
    w.committed(tree / "after.txt")
    wait_until(lambda: status()["daemons"][0]["spool_files"] == 0, what="the spool to drain")
    assert w.stop() == 0
    chk = lbk_proc("-r", repo, "check", "--read-data")
    assert chk.returncode == 0, chk.stdout + chk.stderr
    out = restore_latest(repo, tmp_path)
    assert contents(out / str(tree).lstrip("/")) == contents(tree)


def test_repository_disk_full_under_the_daemon_spools_then_syncs(tmp_path):
    """The repository's disk fills up after the baseline: every save fails for good. The
    daemon keeps the saves in its spool; restarted once there is room, it uploads them."""
    repo, tree = tmp_path / "repo", tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("before\n")
    assert lbk_proc("-r", repo, "init").returncode == 0
    w = WatchProc(repo, tree, *FAST, env={"LBK_TEST_FAULTS": "enospc@5+"})  # lock + 4 baseline saves succeed
    (tree / "while-full.txt").write_text("saved while the repository disk was full\n")
    ev = w.committed(tree / "while-full.txt")
    assert ev["spooled"]
    st = status()["daemons"][0]
    assert st["spool_files"] > 0 and not st["online"]
    assert w.stop() == 0
    w2 = WatchProc(repo, tree, *FAST)
    wait_until(lambda: status()["daemons"][0]["spool_files"] == 0, what="the spool to drain")
    assert w2.stop() == 0
    chk = lbk_proc("-r", repo, "check", "--read-data")
    assert chk.returncode == 0, chk.stdout + chk.stderr
    out = restore_latest(repo, tmp_path)
    assert contents(out / str(tree).lstrip("/")) == contents(tree)


def _prune_everything_elsewhere(repo) -> None:
    """What another machine does while this daemon's lock has lapsed (stale after a long
    suspend): remove the lock, forget every snapshot, prune every chunk."""
    p = lbk_proc("-r", repo, "unlock", "--remove-all")
    assert p.returncode == 0, p.stderr
    ids = [s["id"] for s in json.loads(lbk_proc("-r", repo, "snapshots", "--json").stdout)]
    p = lbk_proc("-r", repo, "forget", *ids, "--prune")
    assert p.returncode == 0, p.stderr
    assert not os.listdir(repo / "snapshots")


def _assert_whole(repo, tree, tmp_path) -> None:
    chk = lbk_proc("-r", repo, "check", "--read-data")
    assert chk.returncode == 0, chk.stdout + chk.stderr
    out = restore_latest(repo, tmp_path)
    assert contents(out / str(tree).lstrip("/")) == contents(tree)


def test_lock_removed_and_repository_pruned_under_a_running_daemon(tmp_path):
    """The daemon's lock vanishes and a prune removes every chunk it knew; its next commit
    must not reference them: it notices, reloads the index and rescans."""
    repo, tree = tmp_path / "repo", tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "kept.txt").write_text("unchanged all along\n")
    (tree / "a.txt").write_text("before\n")
    assert lbk_proc("-r", repo, "init").returncode == 0
    w = WatchProc(repo, tree, *FAST)
    _prune_everything_elsewhere(repo)
    (tree / "a.txt").write_text("after the prune\n")
    w.wait_for(lambda ev: ev["message_type"] == "warning" and "held no lock" in ev["message"])
    w.wait_for(lambda ev: ev["message_type"] == "committed")  # the rescan's new baseline
    assert w.stop() == 0
    _assert_whole(repo, tree, tmp_path)


def test_spooled_snapshots_that_lost_their_data_never_reach_the_repository(tmp_path):
    """Offline, the daemon captures a copy of a file it already stored (the chunk is
    deduplicated); meanwhile its lock lapses and a prune elsewhere removes that chunk.
    Back online, the spooled snapshot referencing it is dropped, and a rescan stores
    the file again."""
    repo, tree = tmp_path / "repo", tmp_path / "tree"
    tree.mkdir()
    (tree / "original.bin").write_bytes(os.urandom(100_000))
    assert lbk_proc("-r", repo, "init").returncode == 0
    w = WatchProc(repo, tree, *FAST)
    away = tmp_path / "repo.unplugged"
    os.rename(repo, away)
    (tree / "copy.bin").write_bytes((tree / "original.bin").read_bytes())
    ev = w.committed(tree / "copy.bin")
    assert ev["spooled"]
    _prune_everything_elsewhere(away)
    os.rename(away, repo)
    w.wait_for(lambda ev: ev["message_type"] == "warning" and "spooled snapshots" in ev["message"], timeout=30)
    wait_until(lambda: status()["daemons"][0]["spool_files"] == 0, what="the spool to drain")
    assert w.stop() == 0
    _assert_whole(repo, tree, tmp_path)


def test_daemon_starts_while_the_repository_disk_is_unplugged(tmp_path):
    """Started at boot with the USB disk not there yet: the daemon opens the repository
    from its offline copies, spools the baseline and the saves, and uploads them once the
    disk is back."""
    repo, tree = tmp_path / "repo", tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("before\n")
    assert lbk_proc("-r", repo, "init").returncode == 0
    assert WatchProc(repo, tree, *FAST).stop() == 0  # once online: it keeps copies of config, keys, index
    away = tmp_path / "repo.unplugged"
    os.rename(repo, away)
    w = WatchProc(repo, tree, *FAST)  # waits for the baseline commit, spooled
    assert w.of("committed")[0]["spooled"]
    (tree / "b.txt").write_text("saved while the disk was away\n")
    assert w.committed(tree / "b.txt")["spooled"]
    os.rename(away, repo)
    w.wait_for(lambda ev: ev["message_type"] == "synced", timeout=30)
    wait_until(lambda: status()["daemons"][0]["spool_files"] == 0, what="the spool to drain")
    assert w.stop() == 0
    _assert_whole(repo, tree, tmp_path)
