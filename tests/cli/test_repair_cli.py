"""lbk repair index / repair snapshots from the command line: the README walk-through
after a lost pack, what ls, restore and check then show, the exit codes, and one
repair over SFTP against the real sshd."""

from __future__ import annotations

import os

import pytest

from lbk.backend.base import FileKind
from lbk.errors import ExitCode
from lbk.repo.lock import Lock
from lbk.repo.pack import DATA
from tests.helpers import files_under, one_line_error, open_local as open_repo


@pytest.fixture(autouse=True)
def fast_locks(monkeypatch):
    monkeypatch.setattr("lbk.repo.lock.RECHECK_DELAY", 0.0)


@pytest.fixture
def repo(lbk, tmp_path):
    r = tmp_path / "repo"
    assert lbk("-r", r, "init").code == 0
    return r


@pytest.fixture
def src(tmp_path):
    s = tmp_path / "src"
    s.mkdir()
    (s / "keep.txt").write_text("keep me\n")
    return s


@pytest.fixture
def lost_pack(lbk, repo, src):
    """Two backups; the second one's data pack (only lost.bin's content) is deleted."""
    assert lbk("-r", repo, "backup", src).code == 0
    before = {f.name for f in open_repo(repo).backend.list(FileKind.DATA)}
    (src / "lost.bin").write_bytes(os.urandom(100_000))
    assert lbk("-r", repo, "backup", src).code == 0
    r = open_repo(repo)
    idx = r.ensure_index()
    pack = next(p for p in set(idx.packs) - before if idx.packs[p][0].type == DATA)
    os.unlink(repo / "data" / pack[:2] / pack)
    return pack


def test_walk_through_after_a_lost_pack(lbk, repo, src, lost_pack, tmp_path):
    lost = f"{src}/lost.bin"
    res = lbk("-r", repo, "--json", "check")
    assert res.code == ExitCode.FATAL and res.lines()[-1]["ok"] is False

    res = lbk("-r", repo, "--json", "repair", "index")
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["packs_missing"] == 1 and doc["blobs_unindexed"] == 1 and doc["packs_unreadable"] == []
    assert len(doc["index_file"]) == 64 and doc["index_files_replaced"] == 2

    pristine = files_under(repo)
    res = lbk("-r", repo, "repair", "snapshots", "--dry-run")
    assert res.code == 0 and files_under(repo) == pristine
    assert f"{lost}: damaged: 1 of 1 chunks missing, 97.7 KiB lost" in res.out
    assert f"would write {len(src.parts)} trees and 1 snapshots" in res.out  # src and every directory above it

    res = lbk("-r", repo, "--json", "repair", "snapshots")
    assert res.code == 0, res.err
    doc = res.json()
    assert [d["path"] for d in doc["damage"]] == [lost] and doc["snapshots_written"] == 1
    (fixed,) = [r["repaired"] for r in doc["repairs"]]

    res = lbk("-r", repo, "ls", fixed[:8], src, "--long")
    assert res.code == 0
    line = next(x for x in res.out.splitlines() if x.endswith("]"))
    assert f" {lost}  [damaged: 1 of 1 chunks missing, 97.7 KiB lost]" in line and " 0 " in line
    nodes = lbk("-r", repo, "--json", "ls", fixed[:8], src).lines()
    assert {n["path"]: n["error"] for n in nodes} == {f"{src}/keep.txt": None, lost: doc["damage"][0]["message"]}

    res = lbk("-r", repo, "restore", fixed[:8], "--target", tmp_path / "out")
    assert res.code == ExitCode.FATAL
    assert f"error: {lost}: restored incomplete: damaged: 1 of 1 chunks missing" in res.err
    assert (tmp_path / "out" / f"{src}"[1:] / "keep.txt").read_text() == "keep me\n"
    assert (tmp_path / "out" / lost[1:]).read_bytes() == b""

    res = lbk("-r", repo, "--json", "repair", "snapshots", "--forget")
    assert res.code == 0 and res.json()["snapshots_removed"] == 1
    res = lbk("-r", repo, "--json", "check")
    summary = res.lines()[-1]
    assert res.code == 0 and summary["ok"] is True and summary["marked_damaged"] == 1

    assert lbk("-r", repo, "backup", src).code == 0  # lost.bin is still here: it goes up again
    res = lbk("-r", repo, "check", "--read-data")
    assert res.code == 0 and "no errors found" in res.out
    assert lbk("-r", repo, "restore", "latest", "--target", tmp_path / "again").code == 0
    assert (tmp_path / "again" / lost[1:]).read_bytes() == (src / "lost.bin").read_bytes()


def test_check_points_at_repair_index_when_an_index_file_is_lost(lbk, repo, src):
    assert lbk("-r", repo, "backup", src).code == 0
    for f in os.listdir(repo / "index"):
        os.unlink(repo / "index" / f)
    res = lbk("-r", repo, "check")
    assert res.code == ExitCode.FATAL and "'lbk repair index' indexes the sound ones again" in res.out
    assert lbk("-r", repo, "repair", "index").code == 0
    assert lbk("-r", repo, "check", "--read-data").code == 0


COMMANDS = [("repair", "index"), ("repair", "index", "--read-data"), ("repair", "snapshots"),
            ("repair", "snapshots", "--dry-run"), ("repair", "snapshots", "--forget")]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_missing_repository_is_exit_10(lbk, tmp_path, cmd):
    res = lbk("-r", tmp_path / "nope", *cmd)
    assert res.code == ExitCode.NO_REPOSITORY
    assert "does not exist" in one_line_error(res)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_wrong_password_is_exit_12(lbk, repo, monkeypatch, cmd):
    monkeypatch.setenv("LBK_PASSWORD", "wrong")
    res = lbk("-r", repo, *cmd)
    assert res.code == ExitCode.WRONG_PASSWORD
    assert "wrong password" in one_line_error(res)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_locked_repository_is_exit_11_and_nothing_changes(lbk, repo, src, cmd):
    assert lbk("-r", repo, "backup", src).code == 0
    held = Lock(open_repo(repo), exclusive=True).acquire()
    try:
        before = {k: v for k, v in files_under(repo).items() if not k.startswith("locks")}
        res = lbk("-r", repo, *cmd)
        assert res.code == ExitCode.LOCKED
        assert "locked" in one_line_error(res)
        assert {k: v for k, v in files_under(repo).items() if not k.startswith("locks")} == before
    finally:
        held.release()


def test_repair_over_sftp_after_an_index_file_was_deleted(lbk, ssh_home, src, tmp_path):
    where = ssh_home.server.root / f"{tmp_path.name}-repo"
    url = f"sftp:lbktest:{where}"
    assert lbk("-r", url, "init").code == 0
    assert lbk("-r", url, "backup", src).code == 0
    blobs = len(open_repo(where).ensure_index())  # the server's disk is this machine's
    for f in os.listdir(where / "index"):
        os.unlink(where / "index" / f)
    assert lbk("-r", url, "check").code == ExitCode.FATAL
    res = lbk("-r", url, "--json", "repair", "index", "--read-data")
    assert res.code == 0, res.err
    assert res.json()["blobs_newly_indexed"] == res.json()["blobs_indexed"] == blobs
    assert res.json()["index_files_replaced"] == 0
    assert lbk("-r", url, "check", "--read-data").code == 0
    assert lbk("-r", url, "restore", "latest", "--target", tmp_path / "out").code == 0
    assert (tmp_path / "out" / str(src)[1:] / "keep.txt").read_text() == "keep me\n"
