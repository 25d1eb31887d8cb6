"""kill -9 at every write: backup, key passwd, rollback (prune: tests/cli/test_prune_kill.py,
watch: test_watch_kill.py).

Each test first runs the command once with its writes traced, then runs it again from the
same starting repository for each point N, killed with SIGKILL right after its N-th write
to the repository (``LBK_TEST_FAULTS=kill@N``). Afterwards ``check --read-data`` passes,
every snapshot restores to a state that really existed, and the next run of the same
command succeeds without any manual step (no ``lbk unlock``: the dead process's lock is
recognised as stale). The fast set kills at the points that matter most; ``-m slow``
sweeps every point.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from lbk.events import Collector
from lbk.ops.backup import BackupOptions, backup
from lbk.ops.restore import RestoreOptions, restore
from lbk.repo.snapshots import load_all
from tests.faults.common import (KILLED, assert_repository_valid, contents, copy_repo, create_repo, faulty,
                                 open_repo, sweep_points, traced_writes)
from tests.helpers import PASSWORD, assert_same_tree, lbk_proc


# -- backup -----------------------------------------------------------------------------------

def _backup_killed_at(n, pristine, src, states, tmp_path, via_cli=False) -> None:
    root = copy_repo(pristine, tmp_path, f"backup-{n}")
    p = faulty("-r", root, "backup", src, spec=f"kill@{n}")
    assert p.returncode == KILLED, (n, p.stdout, p.stderr)
    found = assert_repository_valid(root, states, src, tmp_path=tmp_path, via_cli=via_cli)
    assert "before" in found.values(), n  # the earlier snapshot survived
    again = lbk_proc("-r", root, "--json", "backup", src)  # no unlock, no repair
    assert again.returncode == 0, (n, again.stderr)
    found = assert_repository_valid(root, states, src, tmp_path=tmp_path)
    latest = max(load_all(open_repo(root)), key=lambda s: s.time)
    assert found[latest.id] == "after"


@pytest.mark.parametrize("slow", [pytest.param(False, id="key-points"), pytest.param(True, id="every-point", marks=pytest.mark.slow)])
def test_backup_killed_after_each_write(backup_scenario, tmp_path, slow):
    pristine, src, states = backup_scenario
    writes = traced_writes(tmp_path, "-r", copy_repo(pristine, tmp_path, "trace"), "backup", src)
    kinds = [w.split()[1].split("/")[0] for w in writes]
    assert kinds[0] == "locks" and kinds.count("data") >= 4 and "index" in kinds and "snapshots" in kinds
    snap_at = kinds.index("snapshots") + 1
    first_index = kinds.index("index") + 1
    points = sweep_points(len(writes), slow, [1, 2, first_index, snap_at - 1, snap_at, len(writes)])
    for n in points:
        _backup_killed_at(n, pristine, src, states, tmp_path, via_cli=n == snap_at - 1)


def test_a_killed_backup_leaves_packs_the_next_one_reuses(backup_scenario, tmp_path):
    pristine, src, states = backup_scenario
    writes = traced_writes(tmp_path, "-r", copy_repo(pristine, tmp_path, "trace"), "backup", src)
    last_index = max(i for i, w in enumerate(writes, 1) if w.startswith("save index/"))
    root = copy_repo(pristine, tmp_path, "reuse")
    full = json.loads(lbk_proc("-r", copy_repo(pristine, tmp_path, "full"), "--json", "backup", src)
                      .stdout.splitlines()[-1])["data_added"]
    assert faulty("-r", root, "backup", src, spec=f"kill@{last_index}").returncode == KILLED
    p = lbk_proc("-r", root, "--json", "backup", src)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[-1])["data_added"] < full / 2  # indexed packs were not written again
    assert_repository_valid(root, states, src, tmp_path=tmp_path)


# -- key passwd -------------------------------------------------------------------------------

def test_key_passwd_killed_after_each_write_never_locks_the_user_out(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"protected by a password")
    pristine = tmp_path / "pristine"
    backup(create_repo(pristine), None, BackupOptions(paths=[os.fsencode(src)]), Collector())
    (tmp_path / "new").write_text("the new password")
    (tmp_path / "newer").write_text("an even newer password")

    def opens(root, password: str) -> bool:
        return lbk_proc("-r", root, "snapshots", env={"LBK_PASSWORD": password}).returncode == 0

    writes = traced_writes(tmp_path, "-r", copy_repo(pristine, tmp_path, "trace"), "key", "passwd",
                           "--new-password-file", tmp_path / "new")
    assert writes[0].startswith("save keys/") and writes[-1].startswith("wipe keys/")
    # after each write, and between the old key's overwrite and its unlink
    for spec in [f"kill@{n}" for n in range(1, len(writes) + 1)] + ["kill:wipe@1"]:
        root = copy_repo(pristine, tmp_path, f"passwd-{spec}")
        p = faulty("-r", root, "key", "passwd", "--new-password-file", tmp_path / "new", spec=spec)
        assert p.returncode == KILLED, (spec, p.stderr)
        old_ok, new_ok = opens(root, PASSWORD), opens(root, "the new password")
        assert new_ok, spec  # the new key is written first, so the new password always works
        assert old_ok == (spec == "kill@1"), spec  # the old one until its key is wiped
        working = PASSWORD if old_ok else "the new password"
        assert lbk_proc("-r", root, "check", env={"LBK_PASSWORD": working}).returncode == 0
        again = lbk_proc("-r", root, "key", "passwd", "--new-password-file", tmp_path / "newer",
                         env={"LBK_PASSWORD": working})
        assert again.returncode == 0, (spec, again.stderr)
        assert opens(root, "an even newer password") and not opens(root, working)


# -- rollback ---------------------------------------------------------------------------------

@pytest.fixture
def rollback_scenario(tmp_path):
    """src at a checkpoint (state "good"), then changed in every way rollback undoes
    (state "bad"); a copy of the good state to compare metadata with."""
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    for i in range(8):
        (src / "docs" / f"d{i}.txt").write_text(f"good {i}\n" * 500)
    (src / "keep.bin").write_bytes(os.urandom(200_000))
    os.symlink("docs/d0.txt", src / "link")
    pristine = tmp_path / "pristine"
    repo = create_repo(pristine)
    good = backup(repo, None, BackupOptions(paths=[os.fsencode(src)], kind="checkpoint", name="good"), Collector())
    good_copy = tmp_path / "good-copy"
    restore(repo, good.snapshot, RestoreOptions(target=os.fsencode(good_copy)), Collector())
    states = {"good": contents(src)}
    for i in range(0, 8, 2):
        (src / "docs" / f"d{i}.txt").write_text(f"bad {i}\n" * 400)
    (src / "docs" / "d1.txt").unlink()
    (src / "new-dir").mkdir()
    (src / "new-dir" / "junk.bin").write_bytes(os.urandom(90_000))
    os.chmod(src / "keep.bin", 0o600)
    os.unlink(src / "link")
    os.symlink("docs/d3.txt", src / "link")
    states["bad"] = contents(src)
    shutil.copytree(src, tmp_path / "bad-copy", symlinks=True)
    return pristine, src, states, good_copy / str(src).lstrip("/")


def _rollback_killed(spec, pristine, src, states, good_copy, tmp_path, tag) -> None:
    root = copy_repo(pristine, tmp_path, tag)
    shutil.rmtree(src)
    shutil.copytree(tmp_path / "bad-copy", src, symlinks=True)  # each run starts from the same "bad" tree
    p = faulty("-r", root, "rollback", src, "--to", "@good", "--yes", spec=spec)
    assert p.returncode == KILLED, (spec, p.stdout, p.stderr)
    # src is now partly rolled back; each snapshot is wholly good or wholly bad, never half
    found = assert_repository_valid(root, states, src, tmp_path=tmp_path)
    assert "good" in found.values()
    again = lbk_proc("-r", root, "rollback", src, "--to", "@good", "--yes")
    assert again.returncode == 0, (spec, again.stderr)
    assert_same_tree(str(good_copy), str(src))


@pytest.mark.parametrize("slow", [pytest.param(False, id="key-points"), pytest.param(True, id="every-point", marks=pytest.mark.slow)])
def test_rollback_killed_while_saving_the_pre_rollback_snapshot(rollback_scenario, tmp_path, slow):
    pristine, src, states, good_copy = rollback_scenario
    writes = traced_writes(tmp_path, "-r", copy_repo(pristine, tmp_path, "trace"), "rollback", src, "--to", "@good", "--yes")
    snap_at = [i for i, w in enumerate(writes, 1) if w.startswith("save snapshots/")][0]
    for n in sweep_points(len(writes), slow, [1, snap_at - 1, snap_at, len(writes)]):
        _rollback_killed(f"kill@{n}", pristine, src, states, good_copy, tmp_path, f"w{n}")


@pytest.mark.parametrize("slow", [pytest.param(False, id="key-points"), pytest.param(True, id="every-point", marks=pytest.mark.slow)])
def test_rollback_killed_after_each_change_to_the_tree(rollback_scenario, tmp_path, slow):
    pristine, src, states, good_copy = rollback_scenario
    plan = lbk_proc("-r", copy_repo(pristine, tmp_path, "plan"), "--json", "rollback", src, "--to", "@good", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    changes = len(json.loads(plan.stdout)["actions"])
    assert changes >= 8
    for n in sweep_points(changes, slow, [1, changes // 2, changes]):
        _rollback_killed(f"kill:rollback-fs@{n}", pristine, src, states, good_copy, tmp_path, f"fs{n}")
