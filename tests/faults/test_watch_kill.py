"""kill -9 of the watch daemon after each of its writes to the repository.

The daemon commits a baseline, then one live snapshot per save below. Killed right after
its N-th write (``LBK_TEST_FAULTS=kill@N``), then started again without faults and
stopped: ``check --read-data`` passes, every snapshot restores to a state the tree really
had, and the last one holds the tree as it is now, so nothing saved was lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.faults.common import KILLED, assert_repository_valid, contents, copy_repo, sweep_points
from tests.helpers import lbk_proc
from tests.watch.test_watch import WatchProc

FAST = ("--debounce", "0.2", "--commit-interval", "0.1")


def edit_script(tree):
    """The saves the daemon sees, one commit each; yields after each save."""
    (tree / "f1.txt").write_text("first file\n")
    yield
    (tree / "f2.txt").write_text("second file\n" * 50)
    yield
    with open(tree / "a.txt", "a") as f:
        f.write("appended\n")
    yield


def states_of(tree) -> dict[str, dict[str, bytes]]:
    """Every state the edit script passes through, by name."""
    snap = tree.parent / "states-scratch"
    snap.mkdir()
    (snap / "a.txt").write_text("there before the daemon\n")
    states = {"s0": contents(snap)}
    for i, _ in enumerate(edit_script(snap), 1):
        states[f"s{i}"] = contents(snap)
    import shutil

    shutil.rmtree(snap)
    return states


def run_daemon(repo, tree, spec: str) -> tuple[int, str]:
    """Start the daemon with faults, make the edits while it lives; SIGTERM it at the end."""
    env = dict(os.environ, LBK_TEST_FAULTS=spec)
    p = subprocess.Popen([sys.executable, "-m", "lbk", "-r", str(repo), "watch", str(tree), "--json", *FAST],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.monotonic() + 30
    while p.poll() is None and time.monotonic() < deadline:  # wait for the baseline commit
        line = p.stdout.readline()
        if '"committed"' in line:
            break
    for _ in edit_script(tree):
        time.sleep(0.6)
        if p.poll() is not None:
            break
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return p.returncode, err


@pytest.fixture
def scenario(tmp_path):
    pristine = tmp_path / "pristine"
    assert lbk_proc("-r", pristine, "init").returncode == 0
    return pristine


def fresh_tree(tmp_path, tag):
    tree = tmp_path / f"tree-{tag}"
    tree.mkdir()
    (tree / "a.txt").write_text("there before the daemon\n")
    return tree


def _killed_at(n, pristine, states, tmp_path) -> None:
    repo = copy_repo(pristine, tmp_path, f"w{n}")
    tree = fresh_tree(tmp_path, n)
    code, err = run_daemon(repo, tree, f"kill@{n}")
    assert code in (KILLED, 0), (n, err)
    w = WatchProc(repo, tree, *FAST)  # the restart scans, commits what the dead one missed
    assert w.stop() == 0
    found = assert_repository_valid(repo, states, tree, tmp_path=tmp_path)
    from lbk.repo.snapshots import load_all
    from tests.faults.common import open_repo

    latest = max(load_all(open_repo(repo)), key=lambda s: s.time)
    assert states[found[latest.id]] == contents(tree), n  # the tree as it is now: no save lost


@pytest.mark.parametrize("slow", [pytest.param(False, id="key-points"), pytest.param(True, id="every-point", marks=pytest.mark.slow)])
def test_watch_killed_after_each_write(scenario, tmp_path, slow):
    states = states_of(tmp_path / "x")
    trace = tmp_path / "trace"
    code, err = run_daemon(copy_repo(scenario, tmp_path, "trace"), fresh_tree(tmp_path, "trace"), f"trace={trace}")
    assert code == 0, err
    writes = trace.read_text().splitlines()
    snaps = [i for i, w in enumerate(writes, 1) if w.startswith("save snapshots/")]
    assert len(snaps) == len(states), writes  # the baseline + one commit per save
    marks = [1, snaps[0] - 1, snaps[0], snaps[1] - 1, snaps[1], len(writes)]
    for n in sweep_points(len(writes), slow, marks):
        _killed_at(n, scenario, states, tmp_path)
