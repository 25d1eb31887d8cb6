"""The cache's repository locations and snapshot list (lbk/refcache.py): what shell
completion of REFs reads, without the password."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from lbk import refcache
from lbk.refcache import Known, SnapshotList, known_snapshots, location_key, lookup_location, ref_candidates, \
    remember_location, short_ids

T0 = datetime(2026, 11, 25, 14, 3, 7, tzinfo=timezone(timedelta(hours=1)))


def snap(sid: str, minutes: int = 0, kind: str = "backup", name: str = ""):
    return SimpleNamespace(id=sid.ljust(64, "0"), time=T0 + timedelta(minutes=minutes), kind=kind, name=name)


def known(sid: str, minutes: int = 0, kind: str = "backup", name: str = "") -> Known:
    s = snap(sid, minutes, kind, name)
    return Known(s.id, s.time.isoformat(), kind, name)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- locations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, want",
    [
        ("/srv/repo", "/srv/repo"),
        ("/srv/repo/", "/srv/repo"),
        ("/srv/../srv/repo", "/srv/repo"),
        ("file:///srv/repo", "/srv/repo"),
        ("repo", "{cwd}/repo"),
        ("./repo", "{cwd}/repo"),
        ("~/repo", "{home}/repo"),
        ("sftp:ann@nas:/backup/lbk", "sftp:ann@nas:/backup/lbk"),
        ("sftp://ann@nas:2222/backup", "sftp://ann@nas:2222/backup"),
        ("s3:http://127.0.0.1:8333/bucket/lbk", "s3:http://127.0.0.1:8333/bucket/lbk"),
    ],
)
def test_location_key(url, want):
    assert location_key(url) == want.format(cwd=os.getcwd(), home=os.path.expanduser("~"))


def test_remember_and_look_up_a_location(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    rid = "ab" * 32
    monkeypatch.chdir(tmp_path)
    assert lookup_location(str(root), "repo") is None
    remember_location(str(root), "repo", rid)
    # every spelling of the same local path finds it; another repository does not
    for url in ("repo", "./repo", str(tmp_path / "repo"), f"file://{tmp_path}/repo"):
        assert lookup_location(str(root), url) == rid
    assert lookup_location(str(root), str(tmp_path / "other")) is None
    files = list((root / "locations").iterdir())
    assert len(files) == 1
    # private, and the file holds the id only: not the URL, not the path
    assert mode(root) == 0o700 and mode(root / "locations") == 0o700 and mode(files[0]) == 0o600
    assert files[0].read_bytes() == rid.encode() + b"\n"
    assert b"repo" not in files[0].name.encode()
    assert (root / "CACHEDIR.TAG").read_bytes().startswith(b"Signature: 8a477f597d28d172789f06886806bc55")
    # unchanged: not rewritten (same inode); changed (re-initialised): replaced
    ino = files[0].stat().st_ino
    remember_location(str(root), "repo", rid)
    assert files[0].stat().st_ino == ino
    remember_location(str(root), "repo", "cd" * 32)
    assert lookup_location(str(root), "repo") == "cd" * 32


@pytest.mark.parametrize("content", [b"", b"not hex\n", b"\xff\xfe", b"ab" * 32 + b"/../x\n"])
def test_a_damaged_location_file_is_no_location(tmp_path, content):
    root = str(tmp_path)
    remember_location(root, "/srv/repo", "ab" * 32)
    (path,) = (tmp_path / "locations").iterdir()
    path.write_bytes(content)
    assert lookup_location(root, "/srv/repo") is None
    assert known_snapshots(root, "/srv/repo") == []


# -- the snapshot list --------------------------------------------------------------------------


def test_listed_saved_removed_round_trip(tmp_path):
    lst = SnapshotList(str(tmp_path), "ab" * 32)
    assert lst.read() == []
    lst.saved(snap("11"))  # no full listing yet: nothing is written
    assert not os.path.exists(lst.path)
    lst.listed([snap("22", 2), snap("11", 1, "checkpoint", "before-upgrade")])
    assert mode(lst.path) == 0o600 and mode(lst.dir) == 0o700
    assert lst.read() == [known("11", 1, "checkpoint", "before-upgrade"), known("22", 2)]
    lst.saved(snap("33", 3, "image", "sda"))
    lst.removed(snap("11").id)
    assert lst.read() == [known("22", 2), known("33", 3, "image", "sda")]
    lst.listed([snap("44", 4)])  # a new full listing replaces everything
    assert lst.read() == [known("44", 4)]
    lst.listed([])
    assert lst.read() == [] and os.path.exists(lst.path)


def test_an_unchanged_listing_is_not_rewritten(tmp_path):
    lst = SnapshotList(str(tmp_path), "ab" * 32)
    lst.listed([snap("11"), snap("22", 1)])
    ino = os.stat(lst.path).st_ino
    lst.listed([snap("22", 1), snap("11")])
    assert os.stat(lst.path).st_ino == ino
    lst.listed([snap("22", 1)])
    assert os.stat(lst.path).st_ino != ino


@pytest.mark.parametrize(
    "tail, want",
    [
        (b'["+", "33', ["11", "22"]),  # a torn append
        (b'["+"]\n[1, 2]\n"x"\n{}\n', ["11", "22"]),  # records of the wrong shape
        (b'\xff\xfe\n["-", "' + b"2" * 2 + b"0" * 62 + b'"]\n', ["11"]),  # garbage, then a good record
    ],
)
def test_bad_lines_are_skipped(tmp_path, tail, want):
    lst = SnapshotList(str(tmp_path), "ab" * 32)
    lst.listed([snap("11"), snap("22", 1)])
    with open(lst.path, "ab") as f:
        f.write(tail)
    assert [k.id[:2] for k in lst.read()] == want


@pytest.mark.parametrize("header", [b'{"version": 2, "base": 0}', b"[1]", b"garbage", b""])
def test_another_version_or_no_header_reads_as_nothing(tmp_path, header):
    lst = SnapshotList(str(tmp_path), "ab" * 32)
    lst.listed([snap("11")])
    lines = open(lst.path, "rb").read().split(b"\n")
    with open(lst.path, "wb") as f:
        f.write(b"\n".join([header] + lines[1:]))
    assert lst.read() == []


def test_appends_are_folded_in_once_the_file_doubles(tmp_path, monkeypatch):
    monkeypatch.setattr(refcache, "COMPACT_AT", 2000)
    lst = SnapshotList(str(tmp_path), "ab" * 32)
    lst.listed([snap(f"{i:02x}", i) for i in range(10)])
    base = os.path.getsize(lst.path)
    sizes = []
    for i in range(10, 60):
        lst.saved(snap(f"{i:02x}", i))
        lst.removed(snap(f"{i - 10:02x}").id)
        sizes.append(os.path.getsize(lst.path))
    # the file never grows past the threshold for long: records were folded in
    assert max(sizes) < 2 * 2000 + 400
    assert min(sizes[5:]) <= base + 200
    assert [k.id[:2] for k in lst.read()] == [f"{i:02x}" for i in range(50, 60)]


def test_an_unwritable_cache_is_ignored(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    lst = SnapshotList(str(blocker), "ab" * 32)
    lst.listed([snap("11")])  # cannot create <file>/<id>/: no exception
    lst.saved(snap("22"))
    lst.removed("11")
    assert lst.read() == []
    with pytest.raises(OSError):
        remember_location(str(blocker), "/srv/repo", "ab" * 32)  # the caller decides


# -- candidates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, want",
    [
        ([], {}),
        (["1a2b3c4d" + "0" * 56], {"1a2b3c4d" + "0" * 56: "1a2b3c4d"}),
        (["1a2b3c4d5" + "0" * 55, "1a2b3c4d6" + "0" * 55, "ffff0000" + "0" * 56],
         {"1a2b3c4d5" + "0" * 55: "1a2b3c4d5", "1a2b3c4d6" + "0" * 55: "1a2b3c4d6", "ffff0000" + "0" * 56: "ffff0000"}),
        (["1a2b3c4d5e" + "0" * 54, "1a2b3c4d5f" + "0" * 54],
         {"1a2b3c4d5e" + "0" * 54: "1a2b3c4d5e", "1a2b3c4d5f" + "0" * 54: "1a2b3c4d5f"}),
    ],
)
def test_short_ids_are_unique_prefixes_of_at_least_8(ids, want):
    assert short_ids(ids) == want


KNOWN = [
    known("1a2b3c4d", 0),
    known("1a2b9999", 1, "checkpoint", "before-upgrade"),
    known("5e6f7a8b", 2, "image", "sda"),
    known("9c0d1e2f", 3, "checkpoint", "nightly"),
    known("aa000000", 4, "checkpoint", "nightly"),  # an older "nightly" is not offered twice
    known("bb000000", 5, "live"),
]


@pytest.mark.parametrize(
    "incomplete, kind, want",
    [
        ("", None, ["latest", "@nightly", "@before-upgrade", "bb000000", "aa000000", "9c0d1e2f", "5e6f7a8b",
                    "1a2b9999", "1a2b3c4d"]),
        ("l", None, ["latest"]),
        ("@", None, ["@nightly", "@before-upgrade"]),
        ("@be", None, ["@before-upgrade"]),
        ("@x", None, []),
        ("1a2b", None, ["1a2b9999", "1a2b3c4d"]),
        ("1a2b3", None, ["1a2b3c4d"]),
        ("1a2b3c4d", None, ["1a2b3c4d"]),
        ("1a2b3c4d0", None, ["1a2b3c4d" + "0" * 56]),  # past the short form: the full id
        ("zz", None, []),
        ("", "image", ["latest", "5e6f7a8b"]),  # an image REF: images only, no @names
        ("@", "image", []),
        ("", "checkpoint", ["latest", "@nightly", "@before-upgrade", "aa000000", "9c0d1e2f", "1a2b9999"]),
    ],
)
def test_ref_candidates(incomplete, kind, want):
    assert [v for v, _ in ref_candidates(KNOWN, incomplete, kind)] == want


def test_candidate_descriptions_say_what_and_when():
    got = dict(ref_candidates(KNOWN, "", None))
    assert got["latest"] == "newest snapshot: bb000000, 2026-11-25 14:08"
    assert got["@nightly"] == "checkpoint aa000000, 2026-11-25 14:07"
    assert got["5e6f7a8b"] == "2026-11-25 14:05 image sda"
    assert got["1a2b3c4d"] == "2026-11-25 14:03 backup"


@pytest.mark.parametrize("kind", [None, "image"])
def test_no_snapshots_no_candidates(kind):
    assert ref_candidates([], "", kind) == []
    assert ref_candidates([known("11", 0)], "", "image") == []


def test_known_snapshots_follows_the_location(tmp_path):
    root = str(tmp_path / "cache")
    rid = "ab" * 32
    remember_location(root, "/srv/repo", rid)
    SnapshotList(root, rid).listed([snap("11")])
    assert [k.id[:2] for k in known_snapshots(root, "/srv/repo")] == ["11"]
    assert known_snapshots(root, "/srv/elsewhere") == []
    assert known_snapshots(str(tmp_path / "nothing"), "/srv/repo") == []
    header, body = open(SnapshotList(root, rid).path, "rb").read().split(b"\n", 1)
    assert json.loads(header) == {"version": 1, "base": len(body)}
