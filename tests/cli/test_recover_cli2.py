"""checkpoint, rollback, forget and prune on the command line: exit codes, --json, the
confirmation rules."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from lbk.errors import ExitCode
from tests.helpers import lbk_proc, one_line_error


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
    (s / "sub").mkdir(parents=True)
    (s / "a.txt").write_text("alpha\n")
    (s / "sub" / "b.txt").write_text("beta\n")
    return s



def summary(res) -> dict:
    return [x for x in res.lines() if x["message_type"] == "summary"][0]


def snapshots(lbk, repo, *args) -> list:
    res = lbk("-r", repo, "snapshots", "--json", *args)
    assert res.code == 0, res.err
    return res.json()


# -- checkpoint ---------------------------------------------------------------------------


def test_checkpoint_named_default_and_boot(lbk, repo, src):
    res = lbk("-r", repo, "--json", "checkpoint", src, "--name", "good", "--tag", "a,b")
    assert res.code == 0, res.err
    s = summary(res)
    assert (s["kind"], s["name"], s["tags"]) == ("checkpoint", "good", ["a", "b"])
    res = lbk("-r", repo, "--json", "checkpoint", src)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}", summary(res)["name"])
    res = lbk("-r", repo, "--json", "checkpoint", src, "--boot")
    assert (summary(res)["name"], summary(res)["tags"]) == ("boot", ["boot"])
    res = lbk("-r", repo, "checkpoint", src, "--name", "x")
    assert res.code == 0 and "checkpoint 'x' saved as snapshot" in res.out
    assert lbk("-r", repo, "backup", src).code == 0
    cps = snapshots(lbk, repo, "--checkpoints")
    assert [c["name"] for c in cps][::2] == ["good", "boot"] and len(cps) == 4
    assert {c["kind"] for c in cps} == {"checkpoint"}


def test_checkpoint_paths_from_watch_config(lbk, repo, src, tmp_path):
    res = lbk("-r", repo, "checkpoint")
    assert res.code == ExitCode.USAGE and "watch_paths" in one_line_error(res)
    cfg = tmp_path / "_config" / "lbk" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f'watch_paths = ["{src}"]\n')
    res = lbk("-r", repo, "--json", "checkpoint", "--boot")
    assert res.code == 0, res.err
    assert summary(res)["paths"] == [str(src)]
    cfg.write_text('watch_paths = "/home/ann"\n')
    res = lbk("-r", repo, "checkpoint")
    assert res.code == ExitCode.USAGE and "must be a list" in one_line_error(res)


@pytest.mark.parametrize("name", ["", " padded", "@at", "tab\tname"])
def test_checkpoint_refuses_bad_names(lbk, repo, src, name):
    res = lbk("-r", repo, "checkpoint", src, "--name", name) if name else lbk("-r", repo, "checkpoint", src, "--name=")
    if name == "":  # an empty --name means "the default name"
        assert res.code == 0
        return
    assert res.code == ExitCode.USAGE and "invalid checkpoint name" in one_line_error(res)


# -- rollback ---------------------------------------------------------------------------------


def test_rollback_without_tty_and_without_yes_is_refused(lbk, repo, src):
    assert lbk("-r", repo, "checkpoint", src, "--name", "good").code == 0
    (src / "a.txt").write_text("changed\n")
    p = lbk_proc("-r", repo, "rollback", src, "--to", "@good", stdin=subprocess.DEVNULL)  # a real non-TTY stdin
    assert p.returncode == 1
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "--yes" in lines[0] and "Traceback" not in p.stderr
    assert (src / "a.txt").read_text() == "changed\n"
    assert [s["kind"] for s in snapshots(lbk, repo)] == ["checkpoint"]  # not even a pre-rollback snapshot
    res = lbk("-r", repo, "rollback", src, "--to", "@good", "--yes")
    assert res.code == 0, res.err
    assert (src / "a.txt").read_text() == "alpha\n"


def test_rollback_dry_run_json_then_yes_then_undo(lbk, repo, src):
    assert lbk("-r", repo, "checkpoint", src, "--name", "good").code == 0
    (src / "a.txt").write_text("changed\n")
    (src / "new.txt").write_text("new\n")
    (src / "sub" / "b.txt").unlink()
    os.chmod(src / "sub", 0o700)
    res = lbk("-r", repo, "--json", "rollback", src, "--to", "@good", "--dry-run")
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["dry_run"] is True
    got = {(a["action"], a["path"]) for a in doc["actions"]}
    assert {("rewrite", f"{src}/a.txt"), ("remove", f"{src}/new.txt"), ("create", f"{src}/sub/b.txt"),
            ("metadata", f"{src}/sub")} <= got
    assert all(a["action"] in ("rewrite", "create", "remove", "metadata") for a in doc["actions"])
    assert (src / "new.txt").exists() and (src / "a.txt").read_text() == "changed\n"
    res = lbk("-r", repo, "rollback", src, "--to", "@good", "--dry-run")
    assert res.code == 0 and f"rewrite   {src}/a.txt" in res.out and "would roll back" in res.out
    res = lbk("-r", repo, "--json", "rollback", src, "--to", "@good", "--yes")
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["errors"] == 0 and doc["done"]["rewrite"] == 1 and len(doc["pre_rollback_id"]) == 64
    assert (src / "a.txt").read_text() == "alpha\n" and not (src / "new.txt").exists()
    assert (src / "sub" / "b.txt").read_text() == "beta\n" and (os.stat(src / "sub").st_mode & 0o777) == 0o755
    res = lbk("-r", repo, "rollback", src, "--to", doc["pre_rollback_id"][:8], "--yes")
    assert res.code == 0, res.err
    assert "undo with: lbk rollback" in res.out
    assert (src / "a.txt").read_text() == "changed\n" and (src / "new.txt").exists()
    kinds = [s["kind"] for s in snapshots(lbk, repo)]
    assert kinds == ["checkpoint", "pre-rollback", "pre-rollback"]


def test_rollback_refs_pick_a_snapshot_covering_the_path(lbk, repo, src, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "o.txt").write_text("o\n")
    assert lbk("-r", repo, "backup", src).code == 0
    (src / "a.txt").write_text("v2\n")
    assert lbk("-r", repo, "backup", other).code == 0  # newer, but does not cover src
    res = lbk("-r", repo, "rollback", src / "a.txt", "--to", "latest", "--yes")
    assert res.code == 0, res.err
    assert (src / "a.txt").read_text() == "alpha\n"
    (src / "a.txt").write_text("v3\n")
    now = datetime.now(timezone.utc).isoformat()
    res = lbk("-r", repo, "rollback", src / "a.txt", "--to", now, "--yes")
    assert res.code == 0, res.err
    assert (src / "a.txt").read_text() == "v2\n"  # the newest covering it: the first rollback's pre-rollback
    other_id = [s["id"] for s in snapshots(lbk, repo) if s["paths"] == [str(other)]][0]
    res = lbk("-r", repo, "rollback", src, "--to", other_id[:8], "--yes")
    assert res.code == 1 and "does not contain" in one_line_error(res)
    res = lbk("-r", repo, "rollback", src, "--to", "@nope", "--yes")
    assert res.code == 1 and "no checkpoint named 'nope'" in one_line_error(res)
    res = lbk("-r", repo, "rollback", src, "--to", "2001-01-01", "--yes")
    assert res.code == 1 and "no snapshot at or before" in one_line_error(res)
    res = lbk("-r", repo, "rollback", src)
    assert res.code == ExitCode.USAGE


@pytest.mark.parametrize("answer,rolled_back", [("n\n", False), ("y\n", True)])
def test_rollback_on_a_tty_shows_the_plan_and_asks(lbk, repo, src, monkeypatch, answer, rolled_back):
    assert lbk("-r", repo, "checkpoint", src, "--name", "good").code == 0
    (src / "a.txt").write_text("changed\n")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Tty(answer))
    res = lbk("-r", repo, "rollback", src, "--to", "@good")
    assert f"rewrite   {src}/a.txt" in res.out and "Save the current state and apply" in res.err
    assert res.code == (0 if rolled_back else 1)
    assert (src / "a.txt").read_text() == ("alpha\n" if rolled_back else "changed\n")
    assert len(snapshots(lbk, repo)) == (2 if rolled_back else 1)


# -- forget and prune -------------------------------------------------------------------------


def test_forget_prune_json_and_exit_codes(lbk, repo, src):
    ids = []
    for i in range(4):
        (src / f"f{i}.bin").write_bytes(os.urandom(50_000))
        res = lbk("-r", repo, "--json", "backup", src)
        ids.append(summary(res)["snapshot_id"])
    assert lbk("-r", repo, "checkpoint", src, "--name", "good").code == 0
    res = lbk("-r", repo, "forget")
    assert res.code == ExitCode.USAGE and "refusing" in one_line_error(res)
    res = lbk("-r", repo, "forget", ids[0], "--keep-last", "1")
    assert res.code == ExitCode.USAGE
    res = lbk("-r", repo, "forget", "--keep-within", "3x")
    assert res.code == ExitCode.USAGE and "invalid duration" in res.err
    res = lbk("-r", repo, "prune", "--max-unused", "200%")
    assert res.code == ExitCode.USAGE
    res = lbk("-r", repo, "--json", "forget", "--keep-last", "2", "--dry-run")
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["dry_run"] and sorted(doc["removed"]) == sorted(ids[:2]) and len(doc["kept"]) == 3
    assert len(snapshots(lbk, repo)) == 5
    res = lbk("-r", repo, "--json", "forget", "--keep-last", "2", "--prune", "--max-unused", "0")
    assert res.code == 0, res.err
    doc = res.json()
    assert sorted(doc["removed"]) == sorted(ids[:2])
    group = doc["groups"][0]
    assert {s["id"] for s in group["keep"]} == set(ids[2:]) | {doc["kept"][-1]}
    assert any("checkpoint (no checkpoint rule)" in s["reasons"] for s in group["keep"])
    assert doc["prune"]["bytes_freed"] > 0 and doc["prune"]["dry_run"] is False
    assert sorted(s["id"] for s in snapshots(lbk, repo)) == sorted(doc["kept"])
    res = lbk("-r", repo, "forget", ids[2][:8])
    assert res.code == 0 and "removed 1 snapshots" in res.out
    res = lbk("-r", repo, "--json", "prune", "--dry-run")
    assert res.code == 0 and res.json()["dry_run"] is True
    res = lbk("-r", repo, "prune")
    assert res.code == 0 and "freed" in res.out
    res = lbk("-r", repo, "--json", "prune")
    assert res.code == 0 and res.json()["packs_deleted"] == 0
    chk = lbk("-r", repo, "check", "--read-data")
    assert chk.code == 0, chk.out + chk.err
    res = lbk("-r", repo, "forget", "--keep-last", "1", "--keep-checkpoints", "0")
    assert res.code == 0
    assert [s["kind"] for s in snapshots(lbk, repo)] == ["backup"]


def test_rollback_json_needs_yes_even_on_a_tty(lbk, repo, src, monkeypatch):
    assert lbk("-r", repo, "checkpoint", src, "--name", "good").code == 0
    (src / "a.txt").write_text("changed\n")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Tty("y\n"))
    res = lbk("-r", repo, "--json", "rollback", src, "--to", "@good")
    assert res.code == 1 and json.loads(res.err)["message"].startswith("Refusing to roll back without confirmation")
    assert (src / "a.txt").read_text() == "changed\n" and res.out == ""
