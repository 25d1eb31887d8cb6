"""The command line: exit codes from SPEC.md, --json shapes, one-line errors."""

from __future__ import annotations

import json
import os

import pytest

from lbk.errors import ExitCode
from tests.helpers import PASSWORD, one_line_error


@pytest.fixture
def repo(lbk, tmp_path):
    r = tmp_path / "repo"
    res = lbk("-r", r, "init")
    assert res.code == 0, res.err
    return r


@pytest.fixture
def src(tmp_path):
    s = tmp_path / "src"
    (s / "sub").mkdir(parents=True)
    (s / "a.txt").write_text("alpha\n")
    (s / "sub" / "b.txt").write_text("beta\n")
    return s



def test_init_backup_snapshots_restore(lbk, repo, src, tmp_path):
    res = lbk("-r", repo, "backup", src)
    assert res.code == 0, res.err
    assert "snapshot" in res.out and "2 new" in res.out
    res = lbk("snapshots", "-r", repo, "--json")  # global option after the subcommand
    snaps = res.json()
    assert len(snaps) == 1 and snaps[0]["paths"] == [str(src)] and snaps[0]["kind"] == "backup"
    res = lbk("-r", repo, "restore", snaps[0]["short_id"], "--target", tmp_path / "out")
    assert res.code == 0, res.err
    assert (tmp_path / "out" / str(src).lstrip("/") / "sub" / "b.txt").read_text() == "beta\n"


def test_backup_json_lines(lbk, repo, src):
    res = lbk("-r", repo, "--json", "backup", src)
    assert res.code == 0
    lines = res.lines()
    assert all("message_type" in x for x in lines)
    summary = [x for x in lines if x["message_type"] == "summary"]
    assert len(summary) == 1 and summary[0]["files_new"] == 2 and len(summary[0]["snapshot_id"]) == 64


def test_ls_and_cat_and_stats(lbk, repo, src):
    lbk("-r", repo, "backup", src)
    res = lbk("-r", repo, "ls", "latest", src, "--recursive")
    assert res.code == 0
    assert res.out.splitlines() == [f"{src}/a.txt", f"{src}/sub/", f"{src}/sub/b.txt"]
    res = lbk("-r", repo, "cat", "snapshot", "latest")
    tree = json.loads(res.out)["tree"]
    res = lbk("-r", repo, "cat", "tree", tree)
    assert json.loads(res.out)["version"] == 1
    res = lbk("-r", repo, "stats", "--json")
    st = res.json()
    assert st["files"] == 2 and st["original_bytes"] == len("alpha\n") + len("beta\n")
    res = lbk("-r", repo, "cat", "config")
    assert json.loads(res.out)["version"] == 1


def test_init_refuses_existing_repository(lbk, repo):
    res = lbk("-r", repo, "init")
    assert res.code == ExitCode.FATAL
    assert "already exists" in one_line_error(res)


def test_init_refuses_non_empty_directory(lbk, tmp_path):
    d = tmp_path / "full"
    d.mkdir()
    (d / "x").write_text("x")
    res = lbk("-r", d, "init")
    assert res.code == ExitCode.FATAL
    assert "not empty" in one_line_error(res)


@pytest.mark.parametrize("setup", ["missing", "empty-dir"])
def test_missing_repository_is_exit_10(lbk, tmp_path, setup):
    r = tmp_path / "nope"
    if setup == "empty-dir":
        r.mkdir()
    res = lbk("-r", r, "snapshots")
    assert res.code == ExitCode.NO_REPOSITORY == 10
    assert "does not exist" in one_line_error(res)


def test_wrong_password_is_exit_12(lbk, repo, monkeypatch):
    monkeypatch.setenv("LBK_PASSWORD", "wrong")
    res = lbk("-r", repo, "snapshots")
    assert res.code == ExitCode.WRONG_PASSWORD == 12
    assert "wrong password" in one_line_error(res)


def test_json_errors_go_to_stderr_as_json(lbk, tmp_path):
    res = lbk("--json", "-r", tmp_path / "nope", "snapshots")
    assert res.code == 10 and res.out == ""
    err = json.loads(res.err)
    assert err == {"message_type": "error", "code": 10, "message": err["message"]}


def test_usage_error_is_exit_2(lbk, repo):
    assert lbk("-r", repo, "backup").code == ExitCode.USAGE
    assert lbk("-r", repo, "restore", "latest").code == ExitCode.USAGE  # --target missing
    assert lbk("frobnicate").code == ExitCode.USAGE
    assert lbk("-r", repo, "check", "--read-data-subset", "200%").code == ExitCode.USAGE


@pytest.mark.parametrize("ref,msg", [("zzzz", "invalid snapshot reference"), ("abcd", "no snapshot with id"),
                                     ("2001-01-01", "no snapshot at or before"), ("2026-13-45", "invalid time")])
def test_bad_refs_are_exit_1(lbk, repo, src, ref, msg):
    lbk("-r", repo, "backup", src)
    res = lbk("-r", repo, "ls", ref)
    assert res.code == ExitCode.FATAL
    assert msg in one_line_error(res)


def test_no_repository_configured(lbk):
    res = lbk("snapshots")
    assert res.code == ExitCode.FATAL
    assert "no repository given" in one_line_error(res)


@pytest.mark.parametrize(
    "content,args,msg",
    [
        # found by fuzzing (tests/fuzz, target user_config): a UnicodeDecodeError escaped
        (b'repository = "/srv/\xe9"\n', ["snapshots"], "not UTF-8"),
        (b"x = " + b"[" * 50_000, ["snapshots"], "nested too deeply"),  # RecursionError in tomllib
        (b"repository = 5\n", ["snapshots"], "repository must be a string"),
        (b"repository = [\n", ["snapshots"], "cannot read"),
        (b"watch_paths = 5\n", ["watch"], "watch_paths in config.toml must be a list"),  # TypeError in watch
    ],
    ids=["not-utf8", "deep-nesting", "repository-not-a-string", "not-toml", "watch-paths-not-a-list"],
)
def test_bad_user_config_is_a_one_line_usage_error(lbk, tmp_path, content, args, msg):
    cfg = tmp_path / "_config" / "lbk" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_bytes(content)
    res = lbk(*args)
    assert res.code == ExitCode.USAGE
    assert msg in one_line_error(res)


def test_init_without_repo_creates_default_and_records_it(lbk, tmp_path, src):
    res = lbk("init")
    assert res.code == 0, res.err
    default = tmp_path / "_data" / "lbk" / "repository"
    assert (default / "config").exists()
    assert str(default) in (tmp_path / "_config" / "lbk" / "config.toml").read_text()
    res = lbk("backup", src)
    assert res.code == 0, res.err
    assert len(lbk("snapshots", "--json").json()) == 1


def test_password_file_and_command(lbk, repo, tmp_path, monkeypatch):
    monkeypatch.delenv("LBK_PASSWORD")
    pf = tmp_path / "pw"
    pf.write_text(PASSWORD + "\n")
    assert lbk("-r", repo, "--password-file", pf, "snapshots").code == 0
    assert lbk("-r", repo, "--password-command", f"cat {pf}", "snapshots").code == 0
    assert lbk("-r", repo, "--password-command", "false", "snapshots").code == ExitCode.FATAL
    res = lbk("-r", repo, "snapshots")  # no password source and no TTY
    assert res.code == ExitCode.FATAL and "no password" in res.err


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize(
    "env, option",
    [
        ("LBK_REPOSITORY", "-r"),
        ("LBK_PASSWORD_FILE", "--password-file"),
        ("LBK_PASSWORD_COMMAND", "--password-command"),
    ],
)
def test_an_option_beats_its_environment_variable_before_or_after_the_command(lbk, repo, tmp_path, monkeypatch,
                                                                              env, option, where):
    """Global options are processed on the group and again on the command: the
    environment variable must not undo an option given at the other level."""
    monkeypatch.delenv("LBK_PASSWORD")
    pf = tmp_path / "pw"
    pf.write_text(PASSWORD + "\n")
    good = {"-r": str(repo), "--password-file": str(pf), "--password-command": f"cat {pf}"}[option]
    monkeypatch.setenv(env, str(tmp_path / "wrong"))
    base = [] if option == "-r" else ["-r", repo]
    if option == "-r":
        monkeypatch.setenv("LBK_PASSWORD", PASSWORD)
    args = [option, good, *base, "snapshots"] if where == "before" else [*base, "snapshots", option, good]
    res = lbk(*args)
    assert res.code == 0, res.err


def test_key_add_list_remove_passwd(lbk, repo, tmp_path, monkeypatch):
    second = tmp_path / "second"
    second.write_text("second password")
    assert lbk("-r", repo, "key", "add", "--new-password-file", second).code == 0
    keys = lbk("-r", repo, "key", "list", "--json").json()
    assert len(keys) == 2 and sum(k["current"] for k in keys) == 1
    other = next(k for k in keys if not k["current"])
    monkeypatch.setenv("LBK_PASSWORD", "second password")
    assert lbk("-r", repo, "snapshots").code == 0
    # remove the first key while opened with the second
    first = next(k for k in keys if k["current"])
    assert lbk("-r", repo, "key", "remove", first["id"][:8]).code == 0
    monkeypatch.setenv("LBK_PASSWORD", PASSWORD)
    assert lbk("-r", repo, "snapshots").code == ExitCode.WRONG_PASSWORD
    monkeypatch.setenv("LBK_PASSWORD", "second password")
    res = lbk("-r", repo, "key", "remove", other["id"][:8])
    assert res.code == ExitCode.FATAL and "last key" in res.err  # it is also the key in use
    third = tmp_path / "third"
    third.write_text("third password")
    assert lbk("-r", repo, "key", "passwd", "--new-password-file", third).code == 0
    assert lbk("-r", repo, "snapshots").code == ExitCode.WRONG_PASSWORD
    monkeypatch.setenv("LBK_PASSWORD", "third password")
    assert lbk("-r", repo, "snapshots").code == 0
    assert len(lbk("-r", repo, "key", "list", "--json").json()) == 1


def test_check_reports_damage_with_exit_1(lbk, repo, src):
    lbk("-r", repo, "backup", src)
    assert lbk("-r", repo, "check", "--read-data").code == 0
    packs = [os.path.join(d, f) for d, _, fs in os.walk(repo / "data") for f in fs]
    for p in packs:
        data = bytearray(open(p, "rb").read())
        data[0] ^= 0x80
        open(p, "wb").write(bytes(data))
    res = lbk("-r", repo, "--json", "check", "--read-data")
    assert res.code == ExitCode.FATAL
    summary = res.lines()[-1]
    assert summary["message_type"] == "summary" and summary["ok"] is False
    assert len(summary["damaged_snapshots"]) == 1


def test_unlock_removes_stale_lock_and_backup_is_locked_out_by_live_one(lbk, repo, src):
    from lbk.backend.local import LocalBackend
    from lbk.repo.lock import Lock
    from lbk.repo.repository import Repository

    r = Repository.open(LocalBackend(str(repo)), lambda: PASSWORD.encode())
    held = Lock(r, exclusive=True).acquire()
    res = lbk("-r", repo, "backup", src)
    assert res.code == ExitCode.LOCKED == 11
    assert "locked" in one_line_error(res)
    held._stop.set()  # simulate a crashed holder: the lock file stays, its pid is reported dead
    import lbk.repo.lock as lockmod

    orig = lockmod._pid_alive
    lockmod._pid_alive = lambda pid: False
    try:
        res = lbk("-r", repo, "unlock", "--json")
        assert res.code == 0 and len(res.json()["removed"]) == 1
    finally:
        lockmod._pid_alive = orig
    assert lbk("-r", repo, "backup", src).code == 0


def test_version_and_help(lbk):
    res = lbk("--version")
    assert res.code == 0 and "lbk" in res.out
    res = lbk("backup", "-h")
    assert res.code == 0 and "Example" in res.out
