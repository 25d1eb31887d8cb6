"""lbk/ops/excludes.py: name patterns, path patterns, defaults and exclude files."""

from __future__ import annotations

import os

import pytest

from lbk.errors import UsageError
from lbk.ops.excludes import DEFAULT_EXCLUDES, Excluder, read_exclude_file


def excluded(patterns: list[str], path: bytes, exact: list[bytes] = ()) -> bool:
    return Excluder(patterns, list(exact)).excluded(path, os.path.basename(path))


@pytest.mark.parametrize(
    "path,expected",
    [
        # *.tmp
        (b"/home/ann/report.tmp", True),
        (b"/home/ann/.tmp", True),
        (b"/home/ann/report.tmp.txt", False),
        (b"/home/ann/report.TMP", False),
        (b"/home/ann/tmp", False),
        # *.swp
        (b"/home/ann/.notes.txt.swp", True),
        (b"/home/ann/swp", False),
        # *~
        (b"/home/ann/notes.txt~", True),
        (b"/home/ann/~", True),
        (b"/home/ann/~notes", False),
        # .~lock.*
        (b"/home/ann/.~lock.budget.ods#", True),
        (b"/home/ann/~lock.budget.ods#", False),
        # ~$*
        (b"/home/ann/~$report.docx", True),
        (b"/home/ann/$report.docx", False),
        (b"/home/ann/a~$b", False),
        # .#*
        (b"/home/ann/.#main.c", True),
        (b"/home/ann/#main.c#", False),
        # __pycache__, as a name anywhere, but only as the whole name
        (b"/home/ann/proj/__pycache__", True),
        (b"/__pycache__", True),
        (b"/home/ann/proj/__pycache__x", False),
        (b"/home/ann/proj/x__pycache__", False),
        # a directory name containing a pattern does not exclude by itself
        (b"/home/ann/x.tmp.d/file", False),
        # names that are not UTF-8
        (b"/home/ann/\xff\xfe.tmp", True),
        (b"/home/ann/\xe9t\xe9~", True),
        (b"/home/ann/\xff\xfe", False),
        (b"/home/ann/\xff.tmp/inner", False),
        # ordinary files
        (b"/home/ann/report.txt", False),
        (b"/home/ann/.bashrc", False),
    ],
)
def test_default_excludes(path, expected):
    assert excluded(DEFAULT_EXCLUDES, path) is expected


def test_default_excludes_are_those_of_the_spec():
    assert set(DEFAULT_EXCLUDES) == {"*.tmp", "*.swp", "*~", ".~lock.*", "~$*", ".#*", "__pycache__"}


@pytest.mark.parametrize(
    "pattern,path,expected",
    [
        # name patterns (no '/') match any single component's name
        ("*.iso", b"/srv/images/debian.iso", True),
        ("*.iso", b"/srv/images/debian.iso.part", False),
        ("node_modules", b"/home/ann/web/node_modules", True),
        ("node_modules", b"/home/ann/web/node_modules2", False),
        ("node_modules/", b"/home/ann/web/node_modules", True),  # a trailing slash still names a component
        ("?.o", b"/src/a.o", True),
        ("?.o", b"/src/ab.o", False),
        ("[ab].log", b"/var/b.log", True),
        ("[ab].log", b"/var/c.log", False),
        ("[!ab].log", b"/var/c.log", True),
        ("*", b"/anything", True),
        ("*.log", b"/var/log/dir.log/file", False),  # only the last component is tested
        ("a.b", b"/x/aXb", False),  # '.' is literal
        ("~$*", b"/x/~$", True),
        ("x+y(1)", b"/x/x+y(1)", True),  # regex metacharacters are literal
        ("\udcff*", b"/x/\xffabc", True),  # a non-UTF-8 pattern (as read with surrogateescape)
        ("\udcff*", b"/x/abc", False),
        ("caf\u00e9", b"/x/caf\xc3\xa9", True),  # non-ASCII pattern against UTF-8 bytes
        ("caf\u00e9", b"/x/caf\xe9", False),
        # path patterns (with '/') match the absolute path
        ("/home/*/.cache", b"/home/ann/.cache", True),
        ("/home/*/.cache", b"/home/ann/x/.cache", False),  # '*' does not cross '/'
        ("/home/*/.cache", b"/home/.cache", False),
        ("/home/*/.cache", b"/home/ann/.cache2", False),
        ("/home/*/.cache/", b"/home/ann/.cache", True),
        ("/tmp", b"/tmp", True),
        ("/tmp", b"/var/tmp", False),
        ("/tmp", b"/tmpfoo", False),
        ("/home/ann/*.iso", b"/home/ann/a.iso", True),
        ("/home/ann/*.iso", b"/home/ann/sub/a.iso", False),
        ("/srv/?", b"/srv/a", True),
        ("/srv/?", b"/srv/ab", False),
        ("/srv/*", b"/srv/a/b", False),
        ("/data/\udcff*", b"/data/\xff\xfe", True),
        ("/data/\udcff*", b"/data/\xfe", False),
        # ** crosses '/'
        ("/home/**/.cache", b"/home/ann/.cache", True),
        ("/home/**/.cache", b"/home/ann/a/b/.cache", True),
        ("/home/**/.cache", b"/home/ann/.cache2", False),
        ("/home/**/.cache", b"/var/ann/.cache", False),
        ("/data/**", b"/data/a/b/c", True),
        ("/data/**", b"/data", False),
        ("/data/**/*.log", b"/data/a/b/c.log", True),
        ("/data/**/*.log", b"/data/a/b/c.txt", False),
        ("/data/**/*.log", b"/data/x.log/b/c", False),
        ("**/build", b"/home/ann/proj/build", True),
        ("**/build", b"/home/ann/proj/build2", False),
        pytest.param(
            "/home/**/x/*.txt", b"/home/a/x/sub/f.txt", False,
            id="single-star-in-doublestar-pattern-crosses-slash",
        ),
        pytest.param(
            "/data/**/*.log", b"/data/a/b/c.txt/d.log", True,
            id="doublestar-then-star",
        ),
        pytest.param(
            "/home/**/.cache", b"/home/.cache", True,
            id="doublestar-matches-zero-directories",
        ),
    ],
)
def test_pattern(pattern, path, expected):
    assert excluded([pattern], path) is expected


@pytest.mark.parametrize(
    "exact,path,expected",
    [
        ([b"/srv/repo"], b"/srv/repo", True),
        ([b"/srv/repo/"], b"/srv/repo", True),
        ([b"/srv//repo"], b"/srv/repo", True),
        ([b"/srv/repo"], b"/srv/repo2", False),
        ([b"/srv/repo"], b"/srv", False),
        ([b"/home/ann/.cache/lbk"], b"/home/ann/.cache/lbk", True),
    ],
)
def test_exact_paths(exact, path, expected):
    """The repository, cache and spool are excluded by their exact path."""
    assert excluded([], path, exact) is expected


def test_several_patterns_any_match():
    ex = Excluder(["*.iso", "/srv/*/cache", "build"])
    assert [ex.excluded(p, os.path.basename(p)) for p in (b"/a.iso", b"/srv/web/cache", b"/x/build", b"/x/src")] == [
        True, True, True, False,
    ]


def test_no_patterns_exclude_nothing():
    ex = Excluder([])
    assert not any(ex.excluded(p, os.path.basename(p)) for p in (b"/a.tmp", b"/__pycache__", b"/x~"))


@pytest.mark.parametrize(
    "pattern",
    ["", "   ", "# *.txt", "#", "  # indented comment"],
)
def test_blank_and_comment_patterns_are_ignored(pattern):
    ex = Excluder([pattern])
    assert ex.name_patterns == [] and ex.path_patterns == []
    assert not ex.excluded(b"/x/# *.txt", b"# *.txt")
    assert not ex.excluded(b"/x/a.txt", b"a.txt")


def test_surrounding_whitespace_is_stripped():
    assert excluded(["  *.iso  "], b"/x/a.iso")


# -- exclude files -----------------------------------------------------------------------

def test_read_exclude_file(tmp_path):
    f = tmp_path / "excludes"
    f.write_bytes(
        b"# caches\n"
        b"\n"
        b"*.iso\n"
        b"   \n"
        b"/home/*/.cache\n"
        b"  # indented comment\n"
        b"\xff\xfe*\n"
        b"last-without-newline"
    )
    patterns = read_exclude_file(str(f))
    ex = Excluder(patterns)
    cases = {
        b"/srv/a.iso": True,
        b"/home/ann/.cache": True,
        b"/x/\xff\xfe-latin1": True,
        b"/x/last-without-newline": True,
        b"/x/# caches": False,
        b"/x/caches": False,
        b"/x/a.txt": False,
    }
    assert {p: ex.excluded(p, os.path.basename(p)) for p in cases} == cases
    assert len(ex.name_patterns) == 3 and len(ex.path_patterns) == 1


def test_read_exclude_file_crlf(tmp_path):
    f = tmp_path / "excludes"
    f.write_bytes(b"*.iso\r\n# c\r\n")
    assert excluded(read_exclude_file(str(f)), b"/x/a.iso")


def test_read_exclude_file_missing(tmp_path):
    with pytest.raises(UsageError, match="cannot read exclude file .*nope"):
        read_exclude_file(str(tmp_path / "nope"))
