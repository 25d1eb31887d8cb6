"""The watch daemon as a real process: captures, commits, offline spool, signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers import lbk_proc


class WatchProc:
    """`lbk watch --json` in the background, its JSON Lines collected as they arrive."""

    def __init__(self, repo, path, *extra, env=None):
        e = dict(os.environ)
        e.update(env or {})
        self.p = subprocess.Popen(
            [sys.executable, "-m", "lbk", "-r", str(repo), "watch", str(path), "--json", *map(str, extra)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
        self.events: list[tuple[float, dict]] = []
        self.cursor = 0
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        self.wait_for(lambda ev: ev["message_type"] == "committed", timeout=30)

    def _read(self):
        for line in self.p.stdout:
            self.events.append((time.monotonic(), json.loads(line)))

    def of(self, kind: str) -> list[dict]:
        return [e for _, e in self.events if e["message_type"] == kind]

    def wait_for(self, pred, timeout: float = 20.0) -> dict:
        """The first matching event after the previous match (events are consumed in order)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            evs = list(self.events)
            for i in range(self.cursor, len(evs)):
                if pred(evs[i][1]):
                    self.cursor = i + 1
                    return evs[i][1]
            if self.p.poll() is not None:
                raise AssertionError(f"watch exited {self.p.returncode}: {self.p.stderr.read().decode()}")
            time.sleep(0.01)
        raise AssertionError(f"timed out; events: {[e for _, e in self.events][-10:]}")

    def committed(self, path) -> dict:
        return self.wait_for(lambda ev: ev["message_type"] == "committed" and str(path) in ev["paths"])

    def stop(self, sig=signal.SIGTERM) -> int:
        self.p.send_signal(sig)
        self.p.wait(timeout=30)
        self._t.join(timeout=5)
        return self.p.returncode


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "repo"
    assert lbk_proc("-r", r, "init").returncode == 0
    return r


@pytest.fixture
def tree(tmp_path):
    t = tmp_path / "tree"
    t.mkdir()
    (t / "existing.txt").write_text("before watch\n")
    return t


def restore_latest(repo, tmp_path, name="out"):
    out = tmp_path / name
    shutil.rmtree(out, ignore_errors=True)
    r = lbk_proc("-r", repo, "restore", "latest", "--target", out)
    assert r.returncode == 0, r.stderr
    return out


def version_of(repo, snap_id: str, path) -> bytes:
    r = subprocess.run([sys.executable, "-m", "lbk", "-r", str(repo), "ls", snap_id[:12], str(path), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[0])["size"]


def test_baseline_and_twenty_distinct_versions(repo, tree, tmp_path):
    w = WatchProc(repo, tree, "--debounce", "0.2", "--commit-interval", "0.1")
    f = tree / "doc.txt"
    commits = []
    for i in range(20):
        f.write_text("v" * (i + 1))
        commits.append(w.committed(f))
        time.sleep(0.3)
    assert w.stop() == 0
    ids = [c["snapshot_id"] for c in commits]
    assert len(set(ids)) == 20
    caps = [e for e in w.of("captured") if e["path"] == str(f)]
    assert [c["size"] for c in caps] == list(range(1, 21))
    assert len({c["content_id"] for c in caps}) == 20
    # every version is a real, restorable state: check a few through the CLI
    for i in (0, 9, 19):
        assert version_of(repo, ids[i], f) == i + 1
    # and each of the 20 saves is a distinct version in `lbk log`, newest first
    log = lbk_proc("-r", repo, "log", f, "--json")
    assert log.returncode == 0, log.stderr
    rows = json.loads(log.stdout)
    assert [r["size"] for r in rows] == list(range(20, 0, -1))
    assert [r["change"] for r in rows] == ["modified"] * 19 + ["added"]
    assert [r["snapshot"] for r in rows] == ids[::-1]
    out = restore_latest(repo, tmp_path)
    assert (out / str(tree).lstrip("/") / "existing.txt").read_text() == "before watch\n"
    assert lbk_proc("-r", repo, "check", "--read-data").returncode == 0


def test_continuously_written_file_is_captured_before_it_stops(repo, tree):
    w = WatchProc(repo, tree, "--max-delay", "1", "--debounce", "0.5")
    f = tree / "mailbox"
    start = time.monotonic()
    with open(f, "wb") as fh:
        while time.monotonic() - start < 5:
            fh.write(b"x" * 100)
            fh.flush()
            time.sleep(0.05)
    writing_ended = time.monotonic()
    w.committed(f)
    caps = [(t, e) for t, e in w.events if e["message_type"] == "captured" and e["path"] == str(f)]
    assert any(t < writing_ended for t, _ in caps), "no capture while the file was being written"
    assert len(caps) >= 3
    assert w.stop() == 0


def test_rename_delete_new_directory_and_temp_files(repo, tree, tmp_path):
    w = WatchProc(repo, tree, "--debounce", "0.2")
    (tree / "a.txt").write_text("a")
    w.committed(tree / "a.txt")
    os.rename(tree / "a.txt", tree / "b.txt")
    w.committed(tree / "b.txt")
    (tree / "existing.txt").unlink()
    w.committed(tree / "existing.txt")
    (tree / "newdir" / "sub").mkdir(parents=True)
    (tree / "newdir" / "sub" / "inner.txt").write_text("inner")
    (tree / "newdir" / "top.txt").write_text("top")
    for tmp in ("x.tmp", "y.swp", "z~", ".~lock.q#"):
        (tree / tmp).write_text("temp")
    time.sleep(1.5)
    assert w.stop() == 0
    out = restore_latest(repo, tmp_path)
    assert_same_tree_names(out / str(tree).lstrip("/"), {"b.txt", "newdir", "newdir/sub", "newdir/sub/inner.txt", "newdir/top.txt"})
    captured = {e["path"] for e in w.of("captured")}
    assert not any(p.endswith(("x.tmp", "y.swp", "z~", "#")) for p in captured)


def assert_same_tree_names(root, expect: set[str]) -> None:
    found = set()
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            found.add(os.path.relpath(os.path.join(d, n), root))
    assert found == expect


def test_burst_of_2000_files_all_captured(repo, tree, tmp_path):
    w = WatchProc(repo, tree, "--debounce", "0.3")
    burst = tree / "burst"
    burst.mkdir()
    for i in range(2000):
        (burst / f"f{i:04d}").write_text(str(i))
    marker = tree / "zz-marker"
    time.sleep(0.5)
    marker.write_text("done")
    w.committed(marker)
    time.sleep(1.0)
    assert w.stop() == 0
    out = restore_latest(repo, tmp_path)
    got = sorted(os.listdir(out / str(burst).lstrip("/")))
    assert got == [f"f{i:04d}" for i in range(2000)]
    assert (out / str(burst).lstrip("/") / "f1999").read_text() == "1999"


def test_sigterm_flushes_captures_still_in_debounce(repo, tree, tmp_path):
    w = WatchProc(repo, tree, "--debounce", "30")
    (tree / "late.txt").write_text("saved just before stop")
    time.sleep(0.3)
    assert w.stop() == 0
    out = restore_latest(repo, tmp_path)
    assert (out / str(tree).lstrip("/") / "late.txt").read_text() == "saved just before stop"


def test_sigint_also_exits_0(repo, tree):
    w = WatchProc(repo, tree)
    assert w.stop(signal.SIGINT) == 0


def status(env_cache=None) -> dict:
    r = lbk_proc("status", "--json")
    assert r.returncode == 0, r.stderr
    return r.json() if hasattr(r, "json") else json.loads(r.stdout)


def test_offline_spool_then_sync(repo, tree, tmp_path):
    w = WatchProc(repo, tree, "--debounce", "0.2")
    away = tmp_path / "repo.unplugged"
    os.rename(repo, away)  # the disk is gone
    for i in range(3):
        (tree / "offline.txt").write_text(f"offline version {i}")
        w.committed(tree / "offline.txt") if i == 0 else time.sleep(0.5)
    w.wait_for(lambda ev: ev["message_type"] == "committed" and ev["spooled"])
    time.sleep(0.5)
    st = status()["daemons"][0]
    assert st["running"] and not st["online"]
    assert st["spool_files"] > 0 and st["spool_bytes"] > 0 and st["rpo_seconds"] > 0
    os.rename(away, repo)
    w.wait_for(lambda ev: ev["message_type"] == "synced", timeout=30)
    time.sleep(0.3)
    st = status()["daemons"][0]
    assert st["spool_files"] == 0 and st["online"]
    assert w.stop() == 0
    assert lbk_proc("-r", repo, "check", "--read-data").returncode == 0
    out = restore_latest(repo, tmp_path)
    assert (out / str(tree).lstrip("/") / "offline.txt").read_text() == "offline version 2"


def test_kill_9_while_offline_loses_nothing(repo, tree, tmp_path):
    w = WatchProc(repo, tree, "--debounce", "0.2")
    away = tmp_path / "repo.unplugged"
    os.rename(repo, away)
    (tree / "precious.txt").write_text("written while offline")
    w.wait_for(lambda ev: ev["message_type"] == "committed" and ev["spooled"])
    w.stop(signal.SIGKILL)
    os.rename(away, repo)
    (tree / "precious.txt").write_text("changed after the crash")  # the spooled version must still arrive
    w2 = WatchProc(repo, tree, "--debounce", "0.2")
    w2.wait_for(lambda ev: ev["message_type"] == "synced", timeout=30)
    assert w2.stop() == 0
    snaps = json.loads(lbk_proc("-r", repo, "snapshots", "--json").stdout)
    sizes = set()
    for s in snaps:
        r = lbk_proc("-r", repo, "ls", s["id"][:12], tree / "precious.txt", "--json")
        if r.returncode == 0:
            sizes.add(json.loads(r.stdout.splitlines()[0])["size"])
    assert len("written while offline") in sizes
    assert len("changed after the crash") in sizes
    assert lbk_proc("-r", repo, "check", "--read-data").returncode == 0


def test_status_without_daemon():
    r = lbk_proc("status")
    assert r.returncode == 0 and "no watch daemon is running" in r.stdout
