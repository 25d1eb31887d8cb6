"""Storage that fails: no space, I/O errors (once or for good), short writes, failing reads,
injected below the real local backend (``LBK_TEST_FAULTS``), plus a really full disk.

Each case ends in a successful retry or in a clear error (exit 1, the reason on the last
line, no traceback), and never in a snapshot that references missing data: afterwards
``check --read-data`` passes and the next run succeeds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess

import pytest

from lbk.repo.snapshots import load_all
from tests.faults.common import assert_repository_valid, contents, copy_repo, faulty, open_repo, traced_writes
from tests.helpers import need, lbk_proc


def last_line(p) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr, p.stderr
    return lines[-1] if lines else ""


def nth_data_save(writes: list[str], k: int) -> int:
    """The save count (saves only, as the fault rules count them) of the k-th pack written."""
    saves = [w for w in writes if w.startswith("save ")]
    return [i for i, w in enumerate(saves, 1) if w.startswith("save data/")][k - 1]


@pytest.fixture
def failing(backup_scenario, tmp_path):
    """(pristine repo, src, states, the save number of the 3rd pack of the next backup)."""
    pristine, src, states = backup_scenario
    writes = traced_writes(tmp_path, "-r", copy_repo(pristine, tmp_path, "trace"), "backup", src)
    return pristine, src, states, nth_data_save(writes, 3)


@pytest.mark.parametrize("rule,code,message", [
    ("enospc@{k}", 1, "no space left on device"),
    ("enospc@{k}+", 1, "no space left on device"),
    ("eio@{k}", 0, None),  # retried once: success, with a warning
    ("eio@{k}+", 1, "Input/output error"),  # four attempts, then a clear error
    ("short@{k}", 0, None),  # caught by the size check, written again
    ("short@{k}+", 1, "stored"),
])
def test_backup_on_failing_storage(failing, tmp_path, rule, code, message):
    pristine, src, states, k = failing
    root = copy_repo(pristine, tmp_path, "r")
    p = faulty("-r", root, "backup", src, spec=rule.format(k=k))
    assert p.returncode == code, p.stderr
    snaps = load_all(open_repo(root))
    if code:
        line = last_line(p)
        assert line.startswith("lbk: ") and message in line, p.stderr
        assert len(snaps) == 1  # no snapshot: it would have referenced what was not stored
    else:
        assert "retrying in" in p.stderr and len(snaps) == 2
    found = assert_repository_valid(root, states, src, tmp_path=tmp_path)
    assert sorted(found.values()) == (["after", "before"] if not code else ["before"])
    again = lbk_proc("-r", root, "backup", src)
    assert again.returncode == 0, again.stderr
    assert "after" in assert_repository_valid(root, states, src, tmp_path=tmp_path).values()


@pytest.mark.parametrize("rule,code", [("eio-read@3", 0), ("eio-read@3+", 1)])
def test_restore_and_check_with_failing_reads(backup_scenario, tmp_path, rule, code):
    pristine, src, states = backup_scenario
    out = tmp_path / "out"
    p = faulty("-r", pristine, "restore", "latest", "--target", out, spec=rule)
    assert p.returncode == code, p.stderr
    if code:
        assert "Input/output error" in p.stderr and "Traceback" not in p.stderr
        assert last_line(p).startswith("lbk: ")
    else:
        assert contents(out / str(src).lstrip("/")) == states["before"]
    c = faulty("-r", pristine, "check", "--read-data", spec=rule)
    assert c.returncode == code, c.stdout + c.stderr
    if code:
        assert "Input/output error" in c.stderr and "Traceback" not in c.stderr


@contextlib.contextmanager
def tmpfs(where, size: str):
    where.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                       capture_output=True, text=True)
    need(p.returncode == 0, f"cannot mount a tmpfs (root needed): {p.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_backup_to_a_really_full_disk(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_text("fits\n")
    with tmpfs(tmp_path / "disk", "3m") as disk:
        root = disk / "repo"
        assert lbk_proc("-r", root, "init").returncode == 0
        assert lbk_proc("-r", root, "backup", src).returncode == 0
        (src / "big.bin").write_bytes(os.urandom(5 << 20))
        p = lbk_proc("-r", root, "backup", src)
        assert p.returncode == 1 and "no space left on device" in last_line(p), p.stderr
        assert [f for f in os.listdir(disk / "repo" / "snapshots")].__len__() == 1
        tmp_left = [f for d, _, fs in os.walk(root) for f in fs if f.startswith(".tmp-")]
        assert tmp_left == []  # the failed write cleaned up after itself
        (src / "big.bin").unlink()
        (src / "second.txt").write_text("fits too\n")
        again = lbk_proc("-r", root, "--json", "backup", src)
        assert again.returncode == 0, again.stderr
        chk = lbk_proc("-r", root, "check", "--read-data")
        assert chk.returncode == 0, chk.stdout + chk.stderr
        out = tmp_path / "out"
        assert lbk_proc("-r", root, "restore", "latest", "--target", out).returncode == 0
        assert contents(out / str(src).lstrip("/")) == contents(src)


def test_restore_to_a_really_full_disk(tmp_path, local_repo):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    (src / "small.txt").write_text("small\n")
    root = local_repo.backend.root
    assert lbk_proc("-r", root, "backup", src).returncode == 0
    with tmpfs(tmp_path / "target", "1m") as target:
        p = lbk_proc("-r", root, "--json", "restore", "latest", "--target", target)
        assert p.returncode == 1, p.stderr
        errors = [json.loads(ln) for ln in p.stdout.splitlines() if '"error"' in ln]
        assert any(e.get("path", "").endswith("big.bin") and "No space left on device" in e["message"]
                   for e in errors), p.stdout
        assert "Traceback" not in p.stderr
        leftovers = [f for d, _, fs in os.walk(target) for f in fs if f not in ("small.txt",)]
        assert leftovers == [] or all(not f.startswith(".") for f in leftovers), leftovers
    shutil.rmtree(tmp_path / "target", ignore_errors=True)
