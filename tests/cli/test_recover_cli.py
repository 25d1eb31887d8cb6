"""lbk log / diff / find through the command line: text, --json, REFs, errors, the catalog file."""

from __future__ import annotations

import json
import os
import shutil
import stat
from datetime import date, datetime, time, timedelta, timezone

import pytest

from lbk.backend.base import FileKind, Handle
from lbk.backend.local import LocalBackend
from lbk.errors import ExitCode
from lbk.repo.repository import Repository
from lbk.repo.snapshots import load_all, remove_snapshot, save_snapshot
from tests.helpers import PASSWORD, lbk_proc, one_line_error
from tests.ops.test_log import snap


@pytest.fixture
def repo(lbk, tmp_path):
    r = tmp_path / "repo"
    assert lbk("-r", r, "init").code == 0
    return r


def open_repo(path) -> Repository:
    return Repository.open(LocalBackend(str(path)), lambda: PASSWORD.encode())



@pytest.fixture
def history(repo, tmp_path):
    """src/notes.txt: added, modified, chmod; src/old.txt deleted; one snapshot each."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("one\n")
    (src / "old.txt").write_text("old\n")
    r = open_repo(repo)
    snaps = [snap(r, src)]
    (src / "notes.txt").write_text("one\ntwo\n")
    snaps.append(snap(r, src))
    (src / "notes.txt").chmod(0o600)
    (src / "old.txt").unlink()
    snaps.append(snap(r, src))
    return src, snaps


def test_log_text_and_json(lbk, repo, history):
    src, (s1, s2, s3) = history
    f = src / "notes.txt"
    res = lbk("-r", repo, "log", f)
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].split() == ["Time", "Snapshot", "Kind", "Change", "Size", "Content"]
    assert [ln.split()[2:4] for ln in lines[1:]] == [[s.short_id, "backup"] for s in (s3, s2, s1)]
    assert [ln.split()[4] for ln in lines[1:]] == ["metadata", "modified", "added"]
    res = lbk("-r", repo, "log", f, "--json")
    doc = json.loads(res.out)
    assert [(x["snapshot"], x["change"], x["size"], x["path"]) for x in doc] == [
        (s3.id, "metadata", 8, str(f)), (s2.id, "modified", 8, str(f)), (s1.id, "added", 4, str(f)),
    ]
    assert all(len(x["content"]) == 8 and datetime.fromisoformat(x["time"]).tzinfo for x in doc)


def test_log_of_a_directory_names_paths_and_deleted(lbk, repo, history):
    src, (s1, s2, s3) = history
    res = lbk("-r", repo, "log", src)
    assert res.code == 0
    assert res.out.splitlines()[0].split()[-1] == "Path"
    assert "deleted" in res.out and str(src / "old.txt") in res.out
    res = lbk("-r", repo, "--json", "log", src, "--deleted")
    got = [(x["path"], x["snapshot"], x["last_snapshot"]) for x in res.json()]
    assert got == [(str(src / "old.txt"), s3.id, s2.id)]
    res = lbk("-r", repo, "log", src, "--deleted")
    assert res.out.split()[2:4] == [s3.short_id, "deleted"] and res.out.split()[-1] == str(src / "old.txt")


def test_log_relative_path(lbk, repo, history, monkeypatch):
    src, _ = history
    monkeypatch.chdir(src)
    res = lbk("-r", repo, "--json", "log", "notes.txt")
    assert res.code == 0 and {x["path"] for x in res.json()} == {str(src / "notes.txt")}


def test_json_is_pure_on_a_real_stdout(repo, history, tmp_path):
    src, snaps = history
    p = lbk_proc("-r", repo, "log", src / "notes.txt", "--json")
    assert p.returncode == 0, p.stderr
    assert [x["snapshot"] for x in json.loads(p.stdout)] == [s.id for s in reversed(snaps)]
    p = lbk_proc("-r", repo, "find", "*.txt", "--json")
    assert p.returncode == 0 and len(json.loads(p.stdout)) == 3


def test_catalog_file_is_private_and_no_cache_gives_the_same_answer(lbk, repo, history, tmp_path):
    src, _ = history
    cache = tmp_path / "_cache"
    with_cache = lbk("-r", repo, "--json", "log", src)
    catalogs = list(cache.glob("*/catalog.sqlite"))
    assert len(catalogs) == 1
    assert stat.S_IMODE(catalogs[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(catalogs[0].parent.stat().st_mode) == 0o700
    os.unlink(catalogs[0])
    no_cache = lbk("-r", repo, "--no-cache", "--json", "log", src)
    assert not catalogs[0].exists()
    assert no_cache.json() == with_cache.json() != []


def test_log_of_a_path_never_backed_up(lbk, repo, history, tmp_path):
    res = lbk("-r", repo, "log", tmp_path / "elsewhere")
    assert res.code == ExitCode.FATAL and "no snapshot holds" in one_line_error(res)


# -- every REF form, and every REF error ------------------------------------------------------

@pytest.fixture(scope="module")
def dated(tmp_path_factory):
    """A repository with five snapshots at known times (30 d, 8 d, 2 d = checkpoint @good,
    60 s and 1 s ago), each with another version of f.txt. Shared by the module: the
    tests only read it."""
    base = tmp_path_factory.mktemp("dated")
    f = base / "f.txt"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LBK_INSECURE_FAST_KDF", "1")
        r = Repository.create(LocalBackend(str(base / "repo")), PASSWORD.encode())
    now = datetime.now().astimezone()
    made = []
    for i, age in enumerate([timedelta(days=30), timedelta(days=8), timedelta(days=2),
                             timedelta(seconds=60), timedelta(seconds=1)]):
        f.write_text("v" * (i + 1))
        kw = {"kind": "checkpoint", "name": "good"} if i == 2 else {}
        s = snap(r, f, **kw)
        remove_snapshot(r, s.id)
        s.time = now - age
        save_snapshot(r, s)
        made.append(s)
    return base / "repo", f, made


def _unique_prefix(s, snaps, n=4) -> str:
    while any(o.id != s.id and o.id.startswith(s.id[:n]) for o in snaps):
        n += 1
    return s.id[:n]


def _newest_at_or_before(snaps, when):
    return max((s for s in snaps if s.time <= when), key=lambda s: s.time)


def _end_of(d: date) -> datetime:
    return datetime.combine(d, time(23, 59, 59, 999999)).astimezone()


REF_FORMS = [
    "full id", "8 hex", "shortest prefix", "latest", "@checkpoint", "RFC 3339", "RFC 3339 Z", "no offset",
    "date", "90s ago", "15m ago", "2h ago", "3d ago", "1w ago", "yesterday",
]


@pytest.mark.parametrize("form", REF_FORMS)
def test_every_ref_form_is_accepted_by_log_since(lbk, dated, form):
    repo, f, s = dated
    now = datetime.now().astimezone()
    s2 = s[1]
    day = s2.time.astimezone().date()
    ref, expected = {
        "full id": (s2.id, s2),
        "8 hex": (s2.id[:8], s2),
        "shortest prefix": (_unique_prefix(s2, s), s2),
        "latest": ("latest", s[4]),
        "@checkpoint": ("@good", s[2]),
        "RFC 3339": (s2.time.isoformat(), s2),
        "RFC 3339 Z": (s2.time.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), s2),
        "no offset": (s2.time.astimezone().replace(tzinfo=None).isoformat(), s2),
        "date": (day.isoformat(), _newest_at_or_before(s, _end_of(day))),
        "90s ago": ("90s ago", _newest_at_or_before(s, now - timedelta(seconds=90))),
        "15m ago": ("15m ago", _newest_at_or_before(s, now - timedelta(minutes=15))),
        "2h ago": ("2h ago", _newest_at_or_before(s, now - timedelta(hours=2))),
        "3d ago": ("3d ago", _newest_at_or_before(s, now - timedelta(days=3))),
        "1w ago": ("1w ago", _newest_at_or_before(s, now - timedelta(weeks=1))),
        "yesterday": ("yesterday", _newest_at_or_before(s, _end_of(date.today() - timedelta(days=1)))),
    }[form]
    res = lbk("-r", repo, "--json", "log", f, "--since", ref)
    assert res.code == 0, res.err
    want = [x.id for x in reversed(s) if x.time >= expected.time]
    assert [x["snapshot"] for x in res.json()] == want
    # the same form as --until
    res = lbk("-r", repo, "--json", "log", f, "--until", ref)
    assert [x["snapshot"] for x in res.json()] == [x.id for x in reversed(s) if x.time <= expected.time]


def _make_ambiguous(repo_path) -> str:
    """Store a copy of a snapshot whose id shares its first 4 hex digits with another
    snapshot's (sealing uses a random nonce, so each copy gets another id)."""
    r = open_repo(repo_path)
    snaps = load_all(r)
    seen = {s.id[:4]: None for s in snaps}
    doc = snaps[0].encode()
    for _ in range(100_000):
        h, sealed = r.seal_file(FileKind.SNAPSHOT, doc)
        if h.name[:4] in seen:
            for earlier in filter(None, [seen[h.name[:4]]]):
                r.backend.save(Handle(FileKind.SNAPSHOT, earlier[0]), earlier[1])
            r.backend.save(Handle(FileKind.SNAPSHOT, h.name), sealed)
            return h.name[:4]
        seen[h.name[:4]] = (h.name, sealed)
    raise AssertionError("no collision")


@pytest.mark.parametrize(
    "command,ref,msg",
    [
        ("log", "0000000000000000", "no snapshot with id"),
        ("log", "bogus", "invalid snapshot reference"),
        ("log", "2001-01-01", "no snapshot at or before"),
        ("log", "2026-13-45T10:00:00", "invalid time"),
        ("log", "@nope", "no checkpoint named 'nope'"),
        ("log", "ambiguous", "is ambiguous"),
        ("diff", "bogus", "invalid snapshot reference"),
        ("diff", "ambiguous", "is ambiguous"),
        ("find", "2001-01-01", "no snapshot at or before"),
        ("find", "@nope", "no checkpoint named 'nope'"),
    ],
)
def test_ref_errors_are_one_line_exit_1(lbk, tmp_path, dated, command, ref, msg):
    repo, f, _ = dated
    if ref == "ambiguous":  # on a copy: the shared repository stays as it is
        shutil.copytree(repo, tmp_path / "copy")
        repo = tmp_path / "copy"
        ref = _make_ambiguous(repo)
    args = {
        "log": ["log", f, "--since", ref],
        "diff": ["diff", ref],
        "find": ["find", "*.txt", "--until", ref],
    }[command]
    res = lbk("-r", repo, *args)
    assert res.code == ExitCode.FATAL and res.out == ""
    assert msg in one_line_error(res)
    res = lbk("-r", repo, "--json", *args)
    assert res.code == 1 and res.out == ""
    err = json.loads(res.err)
    assert err["message_type"] == "error" and err["code"] == 1 and msg in err["message"]


# -- diff --------------------------------------------------------------------------------------

def test_diff_forms(lbk, repo, history, monkeypatch):
    src, (s1, s2, s3) = history
    (src / "new.txt").write_text("n")
    res = lbk("-r", repo, "diff", s3.short_id)  # against the disk
    assert res.code == 0, res.err
    assert res.out.splitlines() == [f"+    {src}/new.txt"]
    res = lbk("-r", repo, "diff", s1.short_id, s3.short_id)
    assert res.out.splitlines() == [f"M    {src}/notes.txt", f"-    {src}/old.txt"]
    res = lbk("-r", repo, "--json", "diff", s1.id, s2.id, src / "notes.txt")
    assert [(c["change"], c["path"]) for c in res.json()] == [("M", str(src / "notes.txt"))]
    monkeypatch.chdir(src)
    res = lbk("-r", repo, "--json", "diff", s1.id, "notes.txt")  # an existing relative PATH
    assert [(c["change"], c["path"]) for c in res.json()] == [("M", str(src / "notes.txt"))]
    res = lbk("-r", repo, "--json", "diff", "--at", s1.id, "--against", s3.id, "./old.txt")
    assert [(c["change"], c["path"]) for c in res.json()] == [("-", str(src / "old.txt"))]


def test_diff_content(lbk, repo, history):
    src, (s1, s2, s3) = history
    f = src / "notes.txt"
    f.write_text("one\nTWO\n")
    res = lbk("-r", repo, "diff", "--content", f, "--at", s2.id)
    assert res.code == 0, res.err
    assert res.out.splitlines() == [
        f"--- {f}@{s2.short_id}", f"+++ {f} (on disk)", "@@ -1,2 +1,2 @@", " one", "-two", "+TWO",
    ]
    res = lbk("-r", repo, "--json", "diff", "--content", f, s1.id, "--against", s2.id)
    doc = res.json()
    assert (doc["at"], doc["against"], doc["binary"], doc["old_size"], doc["new_size"]) == (s1.id, s2.id, False, 4, 8)
    assert doc["diff"].endswith("@@ -1 +1,2 @@\n one\n+two\n")
    (src / "bin").write_bytes(b"\0" * 10)
    s4 = snap(open_repo(repo), src)
    (src / "bin").write_bytes(b"\0" * 9 + b"\1")
    res = lbk("-r", repo, "diff", "--content", src / "bin", "--at", s4.id)
    assert res.out.strip() == f"binary file {src}/bin: 10 bytes -> 10 bytes; 1 bytes differ, first at offset 9"


@pytest.mark.parametrize(
    "args",
    [
        ["diff"],
        ["diff", "/an/absolute/path"],
        ["diff", "latest", "/a", "/b"],
        ["diff", "--content", "/x"],
        ["diff", "--content", "/x", "--at", "latest", "extra"],
    ],
)
def test_diff_usage_errors_are_exit_2(lbk, repo, history, args):
    res = lbk("-r", repo, *args)
    assert res.code == ExitCode.USAGE, res.err


# -- find --------------------------------------------------------------------------------------

def test_find_text_and_json(lbk, repo, history):
    src, (s1, s2, s3) = history
    res = lbk("-r", repo, "find", "old.txt")
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert lines[0] == str(src / "old.txt")
    assert f"in 2 snapshots: newest {s2.short_id}" in lines[1] and f"oldest {s1.short_id}" in lines[1]
    res = lbk("-r", repo, "--json", "find", "*.txt", "--since", s2.id)
    assert [(h["snapshot"], sorted(m["path"] for m in h["matches"])) for h in res.json()] == [
        (s3.id, [str(src / "notes.txt")]),
        (s2.id, [str(src / "notes.txt"), str(src / "old.txt")]),
    ]
    res = lbk("-r", repo, "find", "nothing*")
    assert res.code == 0 and res.out == ""
