"""Fixtures shared by the fault tests."""

from __future__ import annotations

import os

import pytest

from lbk.events import Collector
from lbk.ops.backup import BackupOptions, backup
from tests.faults.common import contents, create_repo


@pytest.fixture
def backup_scenario(tmp_path):
    """A repository holding one backup of src (state "before"); src then changed (state
    "after") so the next backup writes several packs, partial indexes and a snapshot."""
    src = tmp_path / "src"
    for d in ("a", "b/c"):
        (src / d).mkdir(parents=True)
    for i in range(6):
        (src / "a" / f"old{i}.bin").write_bytes(os.urandom(50_000))
    (src / "b" / "notes.txt").write_text("first version\n" * 100)
    pristine = tmp_path / "pristine"
    repo = create_repo(pristine)
    backup(repo, None, BackupOptions(paths=[os.fsencode(src)]), Collector())
    before = contents(src)
    for i in range(10):
        (src / "b" / "c" / f"new{i}.bin").write_bytes(os.urandom(60_000))
    (src / "b" / "notes.txt").write_text("second version\n" * 100)
    (src / "a" / "old0.bin").unlink()
    return pristine, src, {"before": before, "after": contents(src)}
