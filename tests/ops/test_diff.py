"""lbk/ops/diff.py: markers between snapshots and against the live tree; content diffs."""

from __future__ import annotations

import os

import pytest

import lbk.ops.diff as diff_mod
from lbk.errors import LbkError, UsageError
from lbk.ops.diff import byte_summary, content_diff, diff, split_args
from lbk.ops.walk import Reader
from tests.ops.test_log import snap

T0 = 1_700_000_000_000_000_000


def _write(p, data: bytes, mtime_ns: int = T0) -> None:
    p.write_bytes(data)
    os.utime(p, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    for d in ("olddir", "keepdir/a/b", "chdir"):
        (src / d).mkdir(parents=True)
    for name in ("same.txt", "mod.txt", "samesize.txt", "meta.txt", "touched.txt", "gone.txt", "type",
                 "olddir/x.txt", "keepdir/a/b/deep.txt", "chdir/in.txt"):
        _write(src / name, f"content of {name}\n".encode())
    (src / "link").symlink_to("same.txt")
    return src


def mutate(src) -> None:
    """One change of every kind; mtimes are set explicitly so no clock granularity matters."""
    _write(src / "mod.txt", b"longer content than before\n", T0 + 10**9)
    _write(src / "samesize.txt", b"CONTENT OF samesize.txt\n", T0 + 10**9)
    (src / "meta.txt").chmod(0o600)
    os.utime(src / "touched.txt", ns=(T0 + 5 * 10**9, T0 + 5 * 10**9))
    (src / "gone.txt").unlink()
    (src / "type").unlink()
    (src / "type").mkdir()
    (src / "link").unlink()
    (src / "link").symlink_to("mod.txt")
    (src / "olddir" / "x.txt").unlink()
    (src / "olddir").rmdir()
    (src / "chdir").chmod(0o700)
    _write(src / "added.txt", b"new\n")
    (src / "newdir").mkdir()
    _write(src / "newdir" / "y.txt", b"y\n")
    _write(src / "junk.tmp", b"excluded by default\n")


EXPECTED = sorted([
    ("+", "added.txt"), ("+", "newdir"), ("+", "newdir/y.txt"),
    ("-", "gone.txt"), ("-", "olddir"), ("-", "olddir/x.txt"),
    ("M", "mod.txt"), ("M", "samesize.txt"), ("M", "link"),
    ("U", "meta.txt"), ("U", "touched.txt"), ("U", "chdir"),
    ("T", "type"),
])


def changes(res, src) -> list[tuple[str, str]]:
    return sorted((c.change, os.path.relpath(os.fsdecode(c.path), src)) for c in res.changes)


@pytest.mark.parametrize("against", ["snapshot", "live"])
def test_every_marker(mem_repo, tree, against):
    s1 = snap(mem_repo, tree)
    mutate(tree)
    s2 = snap(mem_repo, tree) if against == "snapshot" else None
    res = diff(mem_repo, s1.id, s2.id if s2 else None)
    assert changes(res, tree) == EXPECTED
    assert res.counts() == {"+": 3, "-": 3, "M": 3, "U": 3, "T": 1}
    assert (res.old.id, res.new.id if res.new else None) == (s1.id, s2.id if s2 else None)
    by_path = {os.path.basename(c.path): c.to_json() for c in res.changes}
    mod = by_path[b"mod.txt"]
    assert (mod["change"], mod["type"], mod["old"]["size"], mod["new"]["size"]) == ("M", "file", 19, 27)
    assert by_path[b"type"]["old"]["type"] == "file" and by_path[b"type"]["new"]["type"] == "dir"
    assert by_path[b"gone.txt"]["new"] is None and by_path[b"added.txt"]["old"] is None
    assert by_path[b"link"]["new"]["target"] == "mod.txt"


def test_no_changes_no_output(mem_repo, tree):
    s1 = snap(mem_repo, tree)
    assert diff(mem_repo, s1.id).changes == []
    s2 = snap(mem_repo, tree)
    assert diff(mem_repo, s1.id, s2.id).changes == []


def test_path_restricts_the_comparison(mem_repo, tree, monkeypatch):
    s1 = snap(mem_repo, tree)
    mutate(tree)
    s2 = snap(mem_repo, tree)
    assert changes(diff(mem_repo, s1.id, s2.id, os.fsencode(tree / "olddir")), tree) == [
        ("-", "olddir"), ("-", "olddir/x.txt"),
    ]
    monkeypatch.chdir(tree)
    assert changes(diff(mem_repo, s1.id, None, b"mod.txt"), tree) == [("M", "mod.txt")]


def test_excludes_apply_to_both_sides(mem_repo, tree):
    s1 = snap(mem_repo, tree)
    mutate(tree)
    got = changes(diff(mem_repo, s1.id, excludes=["added.txt", "**/olddir"]), tree)
    assert got == [c for c in EXPECTED if c[1] not in ("added.txt", "olddir", "olddir/x.txt")]


def test_equal_subtrees_are_not_read(mem_repo, tree, monkeypatch):
    s1 = snap(mem_repo, tree)
    mutate(tree)
    s2 = snap(mem_repo, tree)
    keep = diff_mod._SnapSide(mem_repo, s1).node_at(os.fsencode(tree / "keepdir")).subtree
    assert keep == diff_mod._SnapSide(mem_repo, s2).node_at(os.fsencode(tree / "keepdir")).subtree
    loaded = []
    real = diff_mod.tree_nodes
    monkeypatch.setattr(diff_mod, "tree_nodes", lambda repo, t: (loaded.append(t), real(repo, t))[1])
    assert changes(diff(mem_repo, s1.id, s2.id), tree) == EXPECTED
    assert loaded and keep not in loaded


def test_live_files_are_read_only_when_size_matches_and_mtime_differs(mem_repo, tree, monkeypatch):
    s1 = snap(mem_repo, tree)
    mutate(tree)
    read = []
    real = Reader.read
    monkeypatch.setattr(Reader, "read", lambda self, p, st: (read.append(os.path.basename(p)), real(self, p, st))[1])
    diff(mem_repo, s1.id)
    assert sorted(read) == [b"samesize.txt", b"touched.txt"]


def test_root_path_gone_from_disk(mem_repo, tree):
    import shutil

    s1 = snap(mem_repo, tree)
    shutil.rmtree(tree)
    res = diff(mem_repo, s1.id)
    assert ("-", ".") in changes(res, tree) and len(res.changes) == 17


# -- the positional arguments ------------------------------------------------------------------

@pytest.mark.parametrize(
    "args,at,against,expected",
    [
        (["latest"], None, None, ("latest", None, None)),
        (["1a2b3c4d", "latest"], None, None, ("1a2b3c4d", "latest", None)),
        (["1a2b", "latest", "/home/ann"], None, None, ("1a2b", "latest", "/home/ann")),
        (["2h ago", "/home/ann"], None, None, ("2h ago", None, "/home/ann")),
        (["latest", "./notes.txt"], None, None, ("latest", None, "./notes.txt")),
        (["latest", "on-disk.txt"], None, None, ("latest", None, "on-disk.txt")),  # exists
        (["latest", "@good"], None, None, ("latest", "@good", None)),
        (["/home/ann"], "latest", None, ("latest", None, "/home/ann")),
        ([], "latest", "@good", ("latest", "@good", None)),
        (["on-disk.txt"], "latest", "@good", ("latest", "@good", "on-disk.txt")),
    ],
)
def test_split_args(args, at, against, expected):
    assert split_args(args, at, against, exists=lambda a: a == "on-disk.txt") == expected


@pytest.mark.parametrize(
    "args,at,against",
    [
        ([], None, None),
        (["/home/ann"], None, None),  # a PATH where a REF must be
        (["latest", "/a", "/b"], None, None),
        (["latest", "a", "b"], None, None),
        (["latest", "b"], None, "@good"),  # REF2 twice
    ],
)
def test_split_args_usage_errors(args, at, against):
    with pytest.raises(UsageError):
        split_args(args, at, against, exists=lambda a: False)


# -- one file's content ----------------------------------------------------------------------

def test_content_diff_of_a_text_file(mem_repo, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("a\nb\nc\n")
    s1 = snap(mem_repo, f)
    f.write_text("a\nB\nc\nd")
    res = content_diff(mem_repo, os.fsencode(f), s1.id)
    assert (res.binary, res.identical, res.old_size, res.new_size) == (False, False, 6, 7)
    assert res.diff == (
        f"--- {f}@{s1.short_id}\n+++ {f} (on disk)\n@@ -1,3 +1,4 @@\n a\n-b\n+B\n c\n+d\n\\ No newline at end of file\n"
    )
    s2 = snap(mem_repo, f)
    against = content_diff(mem_repo, os.fsencode(f), s1.id, s2.id)
    assert against.diff == res.diff.replace(f"{f} (on disk)", f"{f}@{s2.short_id}") and against.against.id == s2.id
    same = content_diff(mem_repo, os.fsencode(f), s2.id)
    assert same.identical and same.diff == ""
    f.unlink()
    gone = content_diff(mem_repo, os.fsencode(f), s1.id)
    assert gone.new_size is None and not gone.identical
    assert gone.diff.splitlines()[1:] == ["+++ /dev/null", "@@ -1,3 +0,0 @@", "-a", "-b", "-c"]


@pytest.mark.parametrize(
    "old,new,changed,first",
    [
        (b"\0\1\2\3" * 10, None, 5, 5),  # two bytes changed at 5 and 17, three appended
        (b"caf\xe9 latin-1\n", b"caf\xe9 Latin-1\n", 1, 5),  # not UTF-8: binary
        (b"\0abc", b"\0abc", 0, None),
        (b"\0" * 8, b"", 8, 0),
    ],
)
def test_content_diff_of_a_binary_file(mem_repo, tmp_path, old, new, changed, first):
    if new is None:
        b = bytearray(old)
        b[5] ^= 0xFF
        b[17] ^= 0x01
        new = bytes(b) + b"xyz"
    f = tmp_path / "blob.bin"
    f.write_bytes(old)
    s1 = snap(mem_repo, f)
    f.write_bytes(new)
    res = content_diff(mem_repo, os.fsencode(f), s1.id)
    assert (res.binary, res.diff, res.changed_bytes, res.first_difference) == (True, None, changed, first)
    assert (res.old_size, res.new_size, res.identical) == (len(old), len(new), changed == 0)


def test_content_diff_of_a_file_too_large_for_text(mem_repo, tmp_path, monkeypatch):
    f = tmp_path / "big.txt"
    f.write_text("line\n" * 100)
    s1 = snap(mem_repo, f)
    f.write_text("line\n" * 99 + "LINE\n")
    monkeypatch.setattr(diff_mod, "TEXT_LIMIT", 64)
    res = content_diff(mem_repo, os.fsencode(f), s1.id)
    assert (res.too_large, res.binary, res.diff, res.changed_bytes, res.first_difference) == (True, False, None, 4, 495)


def test_content_diff_errors(mem_repo, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    s1 = snap(mem_repo, tmp_path / "d")
    with pytest.raises(LbkError, match="is a dir, not a file"):
        content_diff(mem_repo, os.fsencode(tmp_path / "d"), s1.id)
    with pytest.raises(LbkError, match="is not in snapshot"):
        content_diff(mem_repo, os.fsencode(tmp_path / "d" / "nope"), s1.id)


@pytest.mark.parametrize(
    "a,b,changed,first",
    [
        ([b"abc", b"def"], [b"abXdefg"], 2, 2),
        ([b"a", b"bcdefgh", b"ij"], [b"abcdefghij"], 0, None),
        ([b"abcdefgh"], [b"abcd", b"efgX"], 1, 7),
        ([b"abcd" * 3], [b"abcd" * 2], 4, 8),
        ([], [b"xyz"], 3, 0),
    ],
)
def test_byte_summary_streams_in_blocks(a, b, changed, first):
    assert byte_summary(a, b, block=4) == (changed, first)
    assert byte_summary(b, a, block=3) == (changed, first)
