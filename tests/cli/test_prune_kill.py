"""prune killed midway (a real process dying abruptly) leaves a repository that checks
clean with --read-data and where every snapshot restores; the next prune finishes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from lbk.backend.base import FileKind, Handle
from lbk.backend.local import LocalBackend
from lbk.events import Collector
from lbk.ops.backup import BackupOptions, backup
from lbk.ops.check import check
from lbk.ops.restore import RestoreOptions, restore
from lbk.repo.repository import Repository
from lbk.repo.snapshots import load_all, remove_snapshot
from tests.faults.common import contents, open_repo
from tests.helpers import PASSWORD, lbk_popen, lbk_proc

KILLED = -9  # LBK_TEST_FAULTS=kill@N: the process SIGKILLs itself, as kill -9 would


@pytest.fixture(autouse=True)
def fast_locks(monkeypatch):
    monkeypatch.setattr("lbk.repo.lock.RECHECK_DELAY", 0.0)


@pytest.fixture
def scenario(tmp_path):
    """A repository with small packs and 5 backups, 3 of them forgotten: prune has unused
    packs to delete, partly used ones to repack and several index files to replace.
    Returns (pristine repo dir, src, [(snapshot id, contents)] that must survive)."""
    root = tmp_path / "pristine"
    repo = Repository.create(LocalBackend(str(root)), PASSWORD.encode())
    repo.config.pack_size = 128 * 1024  # many packs from little data (test-only)
    repo.save_sealed(Handle(FileKind.CONFIG), repo.config.encode(), overwrite=True)
    repo = open_repo(root)
    src = tmp_path / "src"
    src.mkdir()
    survivors = []
    for i in range(5):
        for j in range(6):
            (src / f"g{i}-{j}.bin").write_bytes(os.urandom(60_000))
        if i:
            for j in range(5):  # one file of the previous generation stays: its pack (3 blobs) is partly used
                (src / f"g{i - 1}-{j}.bin").unlink()
        res = backup(repo, None, BackupOptions(paths=[os.fsencode(src)]), Collector())
        if i >= 3:
            survivors.append((res.snapshot.id, contents(src)))
    for s in load_all(repo):
        if s.id not in {x[0] for x in survivors}:
            remove_snapshot(repo, s.id)
    return root, src, survivors


def assert_valid(root, src, survivors, tmp_path, via_cli: bool = False, restores: bool = True) -> None:
    if via_cli:
        p = lbk_proc("-r", root, "check", "--read-data")
        assert p.returncode == 0, p.stdout + p.stderr
    repo = open_repo(root)
    res = check(repo, Collector(), read_data=True)
    assert res.ok, res.problems
    snaps = {s.id: s for s in load_all(repo)}
    assert sorted(snaps) == sorted(x[0] for x in survivors)
    for sid, expected in survivors if restores else ():
        out = tmp_path / f"out-{time.monotonic_ns()}"
        r = restore(repo, snaps[sid], RestoreOptions(target=os.fsencode(out), verify=True), Collector())
        assert r.errors == 0
        assert contents(out / str(src).lstrip("/")) == expected
        shutil.rmtree(out)


def _kill_points(pristine, src, survivors, tmp_path) -> tuple[int, int]:
    """Run prune to the end once, tracing its writes: (number of backend changes, the
    change that writes the new index)."""
    full = tmp_path / "full"
    shutil.copytree(pristine, full)
    trace = tmp_path / "trace"
    p = lbk_proc("-r", full, "--json", "prune", "--max-unused", "0", env={"LBK_TEST_FAULTS": f"trace={trace}"})
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["packs_repacked"] >= 2 and report["packs_unused"] >= 1 and report["index_files_before"] >= 5
    assert_valid(full, src, survivors, tmp_path, restores=False)
    writes = trace.read_text().splitlines()
    assert len(writes) == report["backend_changes"] + 2  # + its lock, written and removed
    new_index = [i for i, w in enumerate(writes, 1) if w.startswith("save index/")][-1]
    assert writes[new_index:] and all(w.startswith("remove ") for w in writes[new_index:])
    return len(writes), new_index


def _kill_at(n, pristine, src, survivors, tmp_path, via_cli: bool) -> None:
    root = tmp_path / f"killed-{n}"
    shutil.copytree(pristine, root)
    p = lbk_proc("-r", root, "prune", "--max-unused", "0", env={"LBK_TEST_FAULTS": f"kill@{n}"})
    assert p.returncode == KILLED, (n, p.stderr)
    assert_valid(root, src, survivors, tmp_path, via_cli=via_cli)
    from lbk.ops.prune import prune

    prune(open_repo(root), max_unused=0.0)  # the next prune finishes the job
    assert_valid(root, src, survivors, tmp_path, restores=False)
    assert len(list(LocalBackend(str(root)).list(FileKind.INDEX))) == 1
    assert check(open_repo(root), Collector()).unindexed_packs == 0


def test_prune_killed_at_the_critical_steps(scenario, tmp_path):
    """After the first new pack, just before and just after the new index is written,
    and in the middle of the deletions."""
    pristine, src, survivors = scenario
    total, new_index = _kill_points(pristine, src, survivors, tmp_path)
    for n in sorted({1, new_index - 1, new_index, (new_index + total) // 2}):
        _kill_at(n, pristine, src, survivors, tmp_path, via_cli=n == new_index)


@pytest.mark.slow
def test_prune_killed_after_every_step(scenario, tmp_path):
    pristine, src, survivors = scenario
    total, _ = _kill_points(pristine, src, survivors, tmp_path)
    for n in range(1, total + 1):
        _kill_at(n, pristine, src, survivors, tmp_path, via_cli=False)


def test_prune_killed_with_sigkill_while_repacking(scenario, tmp_path):
    pristine, src, survivors = scenario
    for attempt in range(3):
        root = tmp_path / f"sigkill-{attempt}"
        shutil.copytree(pristine, root)
        before = {f.name for f in LocalBackend(str(root)).list(FileKind.DATA)}
        p = lbk_popen("-r", root, "prune", "--max-unused", "0", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while p.poll() is None and time.monotonic() < deadline:
            if {f.name for f in LocalBackend(str(root)).list(FileKind.DATA)} - before:
                break  # the first repacked pack is durable: kill now
            time.sleep(0.002)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
            break
        p.wait()
    else:
        pytest.fail("prune finished before it could be killed, three times")
    assert p.returncode == -signal.SIGKILL
    assert_valid(root, src, survivors, tmp_path, via_cli=True)
    assert lbk_proc("-r", root, "prune").returncode == 0
    assert_valid(root, src, survivors, tmp_path)
