"""Shared by the fault tests: repositories with small packs (many write points from little
data), running lbk with ``LBK_TEST_FAULTS``, and the checks every fault must pass."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from lbk.backend.base import FileKind, Handle
from lbk.backend.local import LocalBackend
from lbk.events import Collector
from lbk.ops.check import check
from lbk.ops.restore import RestoreOptions, restore
from lbk.repo.repository import Repository
from lbk.repo.snapshots import load_all
from tests.helpers import PASSWORD, lbk_proc

KILLED = -signal.SIGKILL
PACK_SIZE = 128 * 1024


def create_repo(root, pack_size: int = PACK_SIZE) -> Repository:
    """A local repository whose packs close at ``pack_size`` bytes (test-only setting)."""
    repo = Repository.create(LocalBackend(str(root)), PASSWORD.encode())
    repo.config.pack_size = pack_size
    repo.save_sealed(Handle(FileKind.CONFIG), repo.config.encode(), overwrite=True)
    return open_repo(root)


def open_repo(root, password: str = PASSWORD) -> Repository:
    return Repository.open(LocalBackend(str(root)), lambda: password.encode())


def contents(root) -> dict[str, bytes]:
    """Relative path -> bytes of every regular file beneath root."""
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, root)] = fh.read()
    return out


def faulty(*args, spec: str, **kw) -> subprocess.CompletedProcess:
    """``lbk ARGS`` as a real process with ``LBK_TEST_FAULTS=spec``."""
    return lbk_proc(*args, env={"LBK_TEST_FAULTS": spec}, **kw)


def traced_writes(tmp_path, *args) -> list[str]:
    """Run ``lbk ARGS`` once without faults, tracing its backend writes (one line each)."""
    trace = tmp_path / f"trace-{time.monotonic_ns()}"
    p = faulty(*args, spec=f"trace={trace}")
    assert p.returncode == 0, p.stderr
    return trace.read_text().splitlines() if trace.exists() else []


def copy_repo(pristine, tmp_path, tag) -> str:
    root = tmp_path / f"repo-{tag}"
    shutil.copytree(pristine, root)
    return str(root)


def assert_repository_valid(root, expected: dict[str, dict[str, bytes]], *sources, tmp_path,
                            via_cli: bool = False) -> dict[str, str]:
    """``check --read-data`` passes and every snapshot restores to one of the expected
    states (name -> contents of a source directory; each snapshot is compared beneath the
    source it covers); returns snapshot id -> the state's name."""
    if via_cli:
        p = lbk_proc("-r", root, "check", "--read-data")
        assert p.returncode == 0, p.stdout + p.stderr
    repo = open_repo(root)
    res = check(repo, Collector(), read_data=True)
    assert res.ok, res.problems
    found = {}
    for snap in load_all(repo):
        base = next(s for s in sources if os.fsencode(str(s)) in snap.paths)
        out = tmp_path / f"restore-{time.monotonic_ns()}"
        r = restore(repo, snap, RestoreOptions(target=os.fsencode(out)), Collector())
        assert r.errors == 0, snap.id
        got = contents(out / str(base).lstrip("/"))
        names = [n for n, c in expected.items() if c == got]
        assert names, f"snapshot {snap.short_id} ({snap.kind}) restores to an unexpected state: {sorted(got)}"
        found[snap.id] = names[0]
        shutil.rmtree(out)
    return found


def sweep_points(total: int, slow: bool, marks: list[int]) -> list[int]:
    """Every point 1..total for the slow sweep, else the marked ones (clamped)."""
    if slow:
        return list(range(1, total + 1))
    return sorted({min(max(1, m), total) for m in marks})
