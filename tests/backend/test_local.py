"""Local-backend specifics beyond the contract: temp files, permissions, atomicity."""

from __future__ import annotations

import os
import stat

from lbk.backend.base import FileKind, Handle
from lbk.backend.local import LocalBackend


def test_temporary_files_are_not_listed_and_are_swept(tmp_path):
    b = LocalBackend(str(tmp_path / "r"))
    b.create()
    leftover = tmp_path / "r" / "snapshots" / ".tmp-deadbeef"
    leftover.write_bytes(b"partial")
    assert list(b.list(FileKind.SNAPSHOT)) == []
    assert b.sweep_temporary() == 1
    assert not leftover.exists()


def test_files_are_private(tmp_path):
    b = LocalBackend(str(tmp_path / "r"))
    b.create()
    b.save(Handle(FileKind.INDEX, "a" * 64), b"x")
    mode = os.stat(tmp_path / "r" / "index" / ("a" * 64)).st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "r").st_mode) == 0o700


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    b = LocalBackend(str(tmp_path / "r"))
    b.create()

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    import pytest
    from lbk.errors import BackendError

    with pytest.raises(BackendError, match="no space"):
        b.save(Handle(FileKind.INDEX, "b" * 64), b"x" * 100)
    monkeypatch.undo()
    assert list(os.scandir(tmp_path / "r" / "index")) == []
