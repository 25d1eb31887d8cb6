"""Removing a key wipes it: the old key file's bytes are overwritten before it goes.

A removed key file and its old password open the repository for as long as the bytes
exist, so ``key remove`` and ``key passwd`` overwrite the file in place on a local disk
and over SFTP (checked through a hard link and an open descriptor to the same inode) and
replace the object with random bytes elsewhere; the last key and the key in use are never removed.
"""

from __future__ import annotations

import json
import os

import pytest

from lbk.backend.base import FileKind, Handle
from lbk.backend.mem import MemoryBackend
from lbk.errors import ExitCode
from lbk.ops.repo_admin import add_key, change_password, remove_key
from lbk.repo.repository import Repository
from tests.helpers import PASSWORD, lbk_proc, one_line_error


@pytest.fixture
def two_keys(tmp_path):
    repo = tmp_path / "repo"
    assert lbk_proc("-r", repo, "init").returncode == 0
    (tmp_path / "second").write_text("second password")
    assert lbk_proc("-r", repo, "key", "add", "--new-password-file", tmp_path / "second").returncode == 0
    keys = json.loads(lbk_proc("-r", repo, "key", "list", "--json").stdout)
    current = next(k["id"] for k in keys if k["current"])
    other = next(k["id"] for k in keys if not k["current"])
    return repo, current, other


@pytest.mark.parametrize("how", ["remove", "passwd"])
def test_old_key_file_is_overwritten_in_place_then_removed(tmp_path, two_keys, how):
    repo, current, other = two_keys
    (tmp_path / "third").write_text("third password")
    victim, old_password, command = {
        "remove": (other, "second password", ["key", "remove", other[:8]]),
        "passwd": (current, PASSWORD, ["key", "passwd", "--new-password-file", tmp_path / "third"]),
    }[how]
    path = repo / "keys" / victim
    original = path.read_bytes()
    os.link(path, tmp_path / "held")  # the inode outlives the name
    fd = os.open(path, os.O_RDONLY)
    try:
        res = lbk_proc("-r", repo, *command)
        assert res.returncode == 0, res.stderr
        assert not path.exists()
        through_fd = os.pread(fd, len(original) + 1, 0)
    finally:
        os.close(fd)
    assert through_fd == (tmp_path / "held").read_bytes()
    assert len(through_fd) == len(original) and through_fd != original
    assert b'"kdf"' not in through_fd and b"argon2id" not in through_fd
    assert lbk_proc("-r", repo, "snapshots", env={"LBK_PASSWORD": old_password}).returncode == ExitCode.WRONG_PASSWORD


def test_over_sftp_the_old_key_file_is_overwritten_in_place(ssh_home, tmp_path):
    """SFTP opens the file for writing without truncation: the same inode gets the random
    bytes (a rename over it would leave the old bytes in the freed blocks)."""
    where = ssh_home.server.root / f"{tmp_path.name}-repo"
    url = ssh_home.url(where)
    assert lbk_proc("-r", url, "init").returncode == 0
    (tmp_path / "second").write_text("second password")
    assert lbk_proc("-r", url, "key", "add", "--new-password-file", tmp_path / "second").returncode == 0
    keys = json.loads(lbk_proc("-r", url, "key", "list", "--json").stdout)
    other = next(k["id"] for k in keys if not k["current"])
    path = where / "keys" / other
    original = path.read_bytes()
    os.link(path, tmp_path / "held")
    res = lbk_proc("-r", url, "key", "remove", other[:8])
    assert res.returncode == 0, res.stderr
    assert not path.exists()
    held = (tmp_path / "held").read_bytes()
    assert len(held) == len(original) and held != original and b"argon2id" not in held
    res = lbk_proc("-r", url, "snapshots", env={"LBK_PASSWORD": "second password"})
    assert res.returncode == ExitCode.WRONG_PASSWORD


class RecordingBackend(MemoryBackend):
    """A backend without ``wipe`` (like SFTP and S3) that records saves and removals."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def save(self, h, data, *, overwrite=False):
        self.calls.append(("save", h, bytes(data), overwrite))
        super().save(h, data, overwrite=overwrite)

    def remove(self, h):
        self.calls.append(("remove", h))
        super().remove(h)


@pytest.mark.parametrize("how", ["remove", "passwd"])
def test_backends_without_wipe_get_random_bytes_before_the_removal(how):
    repo = Repository.create(RecordingBackend(), PASSWORD.encode())
    second = add_key(repo, b"second password")
    victim = second if how == "remove" else repo.key_name
    h = Handle(FileKind.KEY, victim)
    original = repo.backend.files[h]
    if how == "remove":
        repo.backend.calls.clear()
        remove_key(repo, second[:8])
    else:
        repo.backend.calls.clear()
        change_password(repo, b"third password")
    calls = [c for c in repo.backend.calls if c[1] == h]
    assert [(c[0], c[-1]) for c in calls] == [("save", True), ("remove", h)]
    assert len(calls[0][2]) == len(original) and calls[0][2] != original
    assert h not in repo.backend.files


@pytest.mark.parametrize("keys,which,message", [
    (1, "current", "refusing to remove the last key"),
    (2, "current", "refusing to remove the key in use"),
])
def test_last_key_and_key_in_use_are_never_removed(lbk, tmp_path, keys, which, message):
    repo = tmp_path / "repo"
    assert lbk("-r", repo, "init").code == 0
    if keys == 2:
        (tmp_path / "second").write_text("second password")
        assert lbk("-r", repo, "key", "add", "--new-password-file", tmp_path / "second").code == 0
    listed = lbk("-r", repo, "key", "list", "--json").json()
    victim = next(k["id"] for k in listed if k["current"] == (which == "current"))
    before = sorted(os.listdir(repo / "keys"))
    res = lbk("-r", repo, "key", "remove", victim[:8])
    assert res.code == ExitCode.FATAL
    assert one_line_error(res).startswith(f"lbk: {message}")
    assert sorted(os.listdir(repo / "keys")) == before


def test_a_removed_key_leaves_the_watch_mirror_when_the_repository_is_next_seen(two_keys, tmp_path):
    """The watch daemon keeps copies of key files in its cache to start offline; a key
    removed meanwhile must not go on opening the repository from there."""
    from lbk.backend.local import LocalBackend
    from lbk.errors import BackendError, WrongPassword
    from lbk.watch.spool import SpoolingBackend

    repo, current, other = two_keys
    state = tmp_path / "state"

    def spooled() -> SpoolingBackend:
        return SpoolingBackend(LocalBackend(str(repo)), str(state))

    r = Repository.open(spooled(), lambda: PASSWORD.encode())
    r.list_keys()  # loads, and so mirrors, both key files
    r.close()
    assert sorted(os.listdir(state / "mirror")) == sorted(["config.config", f"keys.{current}", f"keys.{other}"])
    res = lbk_proc("-r", repo, "key", "remove", other[:8])
    assert res.returncode == 0, res.stderr
    Repository.open(spooled(), lambda: PASSWORD.encode()).close()  # online: the repository's list is the truth
    assert sorted(os.listdir(state / "mirror")) == ["config.config", f"keys.{current}"]


    class Unreachable:  # the network is down
        location = str(repo)

        def close(self):
            pass

        def __getattr__(self, name):
            def fail(*a, **kw):
                raise BackendError("unreachable")
            return fail

    def offline() -> SpoolingBackend:
        return SpoolingBackend(Unreachable(), str(state))

    Repository.open(offline(), lambda: PASSWORD.encode()).close()  # from the mirror
    with pytest.raises(WrongPassword):
        Repository.open(offline(), lambda: b"second password")
