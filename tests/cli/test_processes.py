"""Real processes: kill -9 mid-backup, SIGINT, concurrent backups, unreadable files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.helpers import IS_ROOT, assert_same_tree, lbk_popen, lbk_proc, need



def _write_random_tree(root, files: int, size: int) -> None:
    os.makedirs(root, exist_ok=True)
    for i in range(files):
        with open(os.path.join(root, f"f{i:04d}.bin"), "wb") as f:
            f.write(os.urandom(size))


@pytest.fixture
def repo(tmp_path):
    r = str(tmp_path / "repo")
    p = lbk_proc("-r", r, "init")
    assert p.returncode == 0, p.stderr
    return r


@pytest.mark.slow
def test_kill_9_mid_backup_leaves_a_working_repository(repo, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    (small / "keep.txt").write_text("keep me\n")
    assert lbk_proc("-r", repo, "backup", small).returncode == 0
    big = str(tmp_path / "big")
    _write_random_tree(big, 40, 4 << 20)  # 160 MiB: ten 16 MiB packs
    killed_with_packs = 0
    for attempt in range(3):
        p = lbk_popen("-r", repo, "backup", big, "-q", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        before = _count(repo, "index")
        while time.monotonic() < deadline and p.poll() is None and _count(repo, "index") < before + 1:
            time.sleep(0.005)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
            killed_with_packs += 1
            break
        p.wait()
    assert killed_with_packs == 1, "backup finished before it could be killed"
    snaps = lbk_proc("-r", repo, "snapshots", "--json")
    assert snaps.returncode == 0
    import json

    assert len(json.loads(snaps.stdout)) == 1  # the killed backup wrote no snapshot
    chk = lbk_proc("-r", repo, "check", "--read-data")
    assert chk.returncode == 0, chk.stdout + chk.stderr
    # the earlier snapshot restores, and the next backup works and reuses stored data
    out = tmp_path / "out"
    assert lbk_proc("-r", repo, "restore", "latest", "--target", out).returncode == 0
    assert (out / str(small).lstrip("/") / "keep.txt").read_text() == "keep me\n"
    nxt = lbk_proc("-r", repo, "--json", "backup", big)
    assert nxt.returncode == 0, nxt.stderr
    summary = [json.loads(x) for x in nxt.stdout.splitlines() if '"summary"' in x][0]
    assert summary["data_added"] <= (160 - 4 * 16) << 20  # the packs indexed before the kill are reused
    assert lbk_proc("-r", repo, "check", "--read-data").returncode == 0
    out2 = tmp_path / "out2"
    assert lbk_proc("-r", repo, "restore", "latest", big, "--target", out2).returncode == 0
    assert_same_tree(big, str(out2 / big.lstrip("/")))


def _count(repo, kind: str = "data") -> int:
    n = 0
    for d, _, fs in os.walk(os.path.join(repo, kind)):
        n += sum(1 for f in fs if not f.startswith("."))
    return n


@pytest.mark.slow
def test_sigint_exits_130_without_snapshot(repo, tmp_path):
    big = str(tmp_path / "big")
    _write_random_tree(big, 40, 4 << 20)
    p = lbk_popen("-r", repo, "backup", big, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while p.poll() is None and _count(repo) < 1:
        time.sleep(0.005)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert b"interrupted" in err and b"Traceback" not in err
    assert lbk_proc("-r", repo, "snapshots", "--json").stdout.strip() == "[]"
    assert lbk_proc("-r", repo, "check").returncode == 0


def test_two_concurrent_backups(repo, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _write_random_tree(a, 10, 1 << 20)
    _write_random_tree(b, 10, 1 << 20)
    shutil.copy(os.path.join(a, "f0000.bin"), os.path.join(b, "shared.bin"))
    pa = lbk_popen("-r", repo, "backup", a, "-q", stderr=subprocess.PIPE)
    pb = lbk_popen("-r", repo, "backup", b, "-q", stderr=subprocess.PIPE)
    _, ea = pa.communicate(timeout=120)
    _, eb = pb.communicate(timeout=120)
    assert (pa.returncode, pb.returncode) == (0, 0), (ea, eb)
    assert lbk_proc("-r", repo, "check", "--read-data").returncode == 0
    for src in (a, b):
        out = tmp_path / ("out-" + os.path.basename(src))
        r = lbk_proc("-r", repo, "restore", "latest", src, "--target", out)  # latest covering src
        assert r.returncode == 0, r.stderr
        assert_same_tree(src, str(out / src.lstrip("/")))


def test_unreadable_source_file_is_exit_3_with_snapshot(tmp_path):
    if IS_ROOT:  # root reads everything: run lbk as nobody in a world-accessible dir
        import tempfile
        from pathlib import Path

        tmp_path = Path(tempfile.mkdtemp(prefix="lbk-nobody-"))
        os.chmod(tmp_path, 0o777)
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_text("ok")
    (src / "secret.txt").write_text("no")
    os.chmod(src / "secret.txt", 0o000)
    repo = tmp_path / "repo"
    prefix: list[str] = []
    if IS_ROOT:
        need(shutil.which("setpriv") is not None, "setpriv (util-linux) is needed to drop root for this test")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        os.chmod(src, 0o777)
    env = dict(os.environ, LBK_CACHE_DIR=str(tmp_path / "cache"), HOME=str(tmp_path))
    import sys

    def run(*args):
        return subprocess.run(prefix + [sys.executable, "-m", "lbk", *map(str, args)], capture_output=True, text=True, env=env)

    assert run("-r", repo, "init").returncode == 0
    res = run("-r", repo, "backup", src)
    assert res.returncode == 3, res.stderr
    assert "secret.txt" in res.stderr and "Permission denied" in res.stderr and "Traceback" not in res.stderr
    ls = run("-r", repo, "ls", "latest", src)
    assert ls.returncode == 0
    assert ls.stdout.splitlines() == [f"{src}/ok.txt"]
    if IS_ROOT:
        shutil.rmtree(tmp_path)
