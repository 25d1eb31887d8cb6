"""Two backups and a prune racing on one local repository, as real processes.

Backups take shared locks and may run together; prune needs the exclusive lock and
refuses with exit 11 while a backup runs (it never waits half-way, so a backup's new
data can never be judged unused). A backup started while prune runs is refused the same
way. Whatever the order, no snapshot loses data.
"""

from __future__ import annotations

import os
import subprocess
import time

from lbk.events import Collector
from lbk.ops.backup import BackupOptions, backup
from lbk.repo.snapshots import load_all, remove_snapshot
from tests.faults.common import assert_repository_valid, contents, create_repo, open_repo
from tests.helpers import lbk_popen, lbk_proc


def _tree(root, n: int, size: int) -> None:
    os.makedirs(root)
    for i in range(n):
        with open(os.path.join(root, f"f{i}.bin"), "wb") as f:
            f.write(os.urandom(size))


def one_line_error(p) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def _locks(root) -> int:
    return len([f for f in os.listdir(os.path.join(root, "locks")) if not f.startswith(".")])


def _wait_for_locks(root, n: int, procs) -> None:
    deadline = time.monotonic() + 30
    while _locks(root) < n:
        assert time.monotonic() < deadline, "the processes never took their locks"
        assert all(p.poll() is None for p in procs), "a process ended before the race began"
        time.sleep(0.01)


def test_prune_refuses_while_two_backups_run_and_nothing_is_lost(tmp_path):
    root = tmp_path / "repo"
    create_repo(root)
    a, b = tmp_path / "a", tmp_path / "b"
    _tree(a, 6, 300_000)
    _tree(b, 6, 300_000)
    # throttled uploads keep both backups running (and locked) while prune tries its luck
    backups = [lbk_popen("-r", root, "--limit-upload", "400", "backup", src, "-q", stderr=subprocess.PIPE)
               for src in (a, b)]
    _wait_for_locks(root, 2, backups)
    prune = lbk_proc("-r", root, "prune")
    assert prune.returncode == 11 and "locked" in one_line_error(prune)
    for p in backups:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    states = {"a": contents(a), "b": contents(b)}
    found = assert_repository_valid(root, states, a, b, tmp_path=tmp_path, via_cli=True)
    assert sorted(found.values()) == ["a", "b"]
    assert lbk_proc("-r", root, "prune").returncode == 0  # alone now: it runs
    assert sorted(assert_repository_valid(root, states, a, b, tmp_path=tmp_path).values()) == ["a", "b"]


def test_backup_refused_while_prune_runs_and_nothing_is_lost(tmp_path):
    root = tmp_path / "repo"
    repo = create_repo(root)
    src = tmp_path / "src"
    _tree(src, 24, 30_000)  # small files: several to a pack
    backup(repo, None, BackupOptions(paths=[os.fsencode(src)]), Collector())
    for i in range(0, 24, 2):  # every other file goes: every pack becomes half used
        (src / f"f{i}.bin").unlink()
    second = backup(open_repo(root), None, BackupOptions(paths=[os.fsencode(src)]), Collector())
    kept = contents(src)
    for s in load_all(open_repo(root)):
        if s.id != second.snapshot.id:
            remove_snapshot(open_repo(root), s.id)
    # repacking reads every pack; throttled, prune holds its exclusive lock for seconds
    prune = lbk_popen("-r", root, "--limit-download", "100", "prune", "--max-unused", "0", stderr=subprocess.PIPE)
    _wait_for_locks(root, 1, [prune])
    late = lbk_proc("-r", root, "backup", src)
    assert late.returncode == 11 and "locked" in one_line_error(late)
    assert prune.poll() is None  # the refusal happened while prune was at work
    _, err = prune.communicate(timeout=120)
    assert prune.returncode == 0, err
    assert [s.id for s in load_all(open_repo(root))] == [second.snapshot.id]
    assert_repository_valid(root, {"second": kept}, src, tmp_path=tmp_path, via_cli=True)
    assert lbk_proc("-r", root, "backup", src).returncode == 0
