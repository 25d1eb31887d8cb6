"""lbk/ops/refs.py: every REF form of SPEC.md, its errors, and the host/tag/path filters.

Local time is pinned to UTC+05:45 so that "end of the day, local time" cannot pass by
accident on a machine that runs in UTC.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone

import pytest

from lbk.errors import RefError
from lbk.model import Snapshot
from lbk.ops import refs
from lbk.ops.refs import Filter, covers, parse_time, resolve

LOCAL = timezone(timedelta(hours=5, minutes=45))
UTC = timezone.utc


@pytest.fixture(autouse=True)
def local_tz():
    old = os.environ.get("TZ")
    os.environ["TZ"] = "XYZ-05:45"  # POSIX: five hours 45 minutes east of UTC
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def utc(*a) -> datetime:
    return datetime(*a, tzinfo=UTC)


def local(*a) -> datetime:
    return datetime(*a, tzinfo=LOCAL)


# -- parse_time ----------------------------------------------------------------------

REFERENCE = local(2026, 3, 10, 12, 0, 0)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("90s ago", REFERENCE - timedelta(seconds=90)),
        ("15m ago", REFERENCE - timedelta(minutes=15)),
        ("2h ago", REFERENCE - timedelta(hours=2)),
        ("3d ago", REFERENCE - timedelta(days=3)),
        ("1w ago", REFERENCE - timedelta(weeks=1)),
        ("0s ago", REFERENCE),
        ("2 hours ago", REFERENCE - timedelta(hours=2)),
        ("1 week ago", REFERENCE - timedelta(weeks=1)),
        ("45 mins ago", REFERENCE - timedelta(minutes=45)),
        ("  3D AGO ", REFERENCE - timedelta(days=3)),
        ("now", REFERENCE),
        ("yesterday", local(2026, 3, 9, 23, 59, 59, 999999)),
        ("2026-03-01T10:00:00+01:00", datetime(2026, 3, 1, 10, tzinfo=timezone(timedelta(hours=1)))),
        ("2026-03-01T10:00:00-07:30", datetime(2026, 3, 1, 10, tzinfo=timezone(-timedelta(hours=7, minutes=30)))),
        ("2026-03-01T09:00:00Z", utc(2026, 3, 1, 9)),
        ("2026-03-01t09:00:00z", utc(2026, 3, 1, 9)),
        ("2026-03-01 09:00:00+00:00", utc(2026, 3, 1, 9)),
        ("2026-03-01T09:00:00.250Z", utc(2026, 3, 1, 9, 0, 0, 250000)),
        ("2026-03-01T10:00:00", local(2026, 3, 1, 10)),  # no offset: local time
        ("2026-03-01", local(2026, 3, 1, 23, 59, 59, 999999)),  # a date: end of that day, local
        ("2024-02-29", local(2024, 2, 29, 23, 59, 59, 999999)),
    ],
)
def test_parse_time(text, expected):
    got = parse_time(text, REFERENCE)
    assert got == expected
    assert got.tzinfo is not None


@pytest.mark.parametrize("text", ["2026-03-01", "2026-03-01T10:00:00", "yesterday"])
def test_parse_time_local_forms_carry_the_local_offset(text):
    assert parse_time(text, REFERENCE).utcoffset() == timedelta(hours=5, minutes=45)


def test_parse_time_uses_now_without_reference(monkeypatch):
    monkeypatch.setattr(refs, "now", lambda: REFERENCE)
    assert parse_time("2h ago") == REFERENCE - timedelta(hours=2)
    assert parse_time("yesterday") == local(2026, 3, 9, 23, 59, 59, 999999)


@pytest.mark.parametrize("text", ["latest", "@good", "abcd1234", "garbage", "2h", "ago", "-2h ago", "2 fortnights ago", "1.5h ago", "tomorrow"])
def test_parse_time_not_a_time(text):
    assert parse_time(text, REFERENCE) is None


@pytest.mark.parametrize(
    "text",
    ["2026-13-45", "2026-02-30", "2026-02-29", "2026-00-10", "2026-03-01T25:00:00Z", "2026-03-01T10:61", "2026-03-01garbage", "2026-03-01T10:00:00+25:00", "9999-99-99"],
)
def test_parse_time_bad_time(text):
    with pytest.raises(RefError, match="invalid time"):
        parse_time(text, REFERENCE)


# -- resolve ---------------------------------------------------------------------------

def snap(sid: str, when: datetime, *, paths=(b"/home",), host="laptop", tags=(), kind="backup", name="") -> Snapshot:
    return Snapshot(time=when, tree=bytes(32), paths=list(paths), host=host, user="ann",
                    kind=kind, name=name, tags=list(tags), id=(sid * 64)[:64] if len(sid) < 64 else sid)


OLD = snap("0123", utc(2026, 2, 20, 8))
A = snap("aaaa1111", utc(2026, 3, 1, 8), tags=("daily", "weekly"))
B = snap("aaaa2222", utc(2026, 3, 2, 8), host="server", paths=(b"/etc",), tags=("daily",))
C = snap("bbbb", utc(2026, 3, 2, 20), kind="checkpoint", name="good")  # 01:45 on the 3rd, local
D = snap("cccc", utc(2026, 3, 4, 8), host="server", kind="checkpoint", name="good", paths=(b"/etc",))
E = snap("dddd", utc(2026, 3, 5, 8), kind="pre-rollback", name="good")
F = snap("eeee", utc(2026, 3, 6, 8), host="server", kind="checkpoint", name="other", paths=(b"/",))
G = snap("ffff", utc(2026, 3, 6, 20))  # 01:45 on the 7th, local
SNAPS = [OLD, A, B, C, D, E, F, G]  # oldest first, as load_all returns them
NOW = utc(2026, 3, 7, 8)  # 13:45 local


@pytest.fixture(autouse=True)
def fixed_now(monkeypatch):
    monkeypatch.setattr(refs, "now", lambda: NOW.astimezone(LOCAL))


@pytest.mark.parametrize(
    "ref,flt,expected",
    [
        ("latest", Filter(), G),
        ("latest", Filter(host="server"), F),
        ("latest", Filter(tags=("daily",)), B),
        ("latest", Filter(tags=("daily", "weekly")), A),  # every tag must be present
        ("latest", Filter(kind="checkpoint"), F),
        # ids
        ("aaaa1", Filter(), A),
        ("aaaa2222", Filter(), B),
        ("bbbb", Filter(), C),
        (C.id, Filter(), C),
        ("0123", Filter(), OLD),
        # checkpoints by name
        ("@good", Filter(), D),  # newest *checkpoint* named good; E is a pre-rollback
        ("@good", Filter(host="laptop"), C),
        ("@other", Filter(), F),
        # RFC 3339: at or before, inclusive
        ("2026-03-02T08:00:00Z", Filter(), B),
        ("2026-03-02T07:59:59Z", Filter(), A),
        ("2026-03-02T09:00:00+01:00", Filter(), B),
        ("2026-03-02T08:59:59.999999+01:00", Filter(), A),
        ("2026-03-02T13:45:00", Filter(), B),  # local, = 08:00Z
        ("2026-03-02T13:44:59", Filter(), A),
        # a date is the end of that day, local time (C at 20:00Z is already the 3rd, local)
        ("2026-03-02", Filter(), B),
        ("2026-03-03", Filter(), C),
        ("2026-03-02", Filter(host="laptop"), A),
        # relative to now (2026-03-07T08:00Z)
        ("90s ago", Filter(), G),
        ("15m ago", Filter(), G),
        ("2h ago", Filter(), G),
        ("12h ago", Filter(), G),  # 20:00Z on the 6th, inclusive
        ("12h ago", Filter(host="laptop"), G),
        ("13h ago", Filter(), F),
        ("1d ago", Filter(), F),
        ("3d ago", Filter(), D),
        ("3d ago", Filter(host="laptop"), C),
        ("1w ago", Filter(), OLD),
        ("yesterday", Filter(), F),  # end of the 6th local = 18:14:59Z; G is the 7th, local
        ("yesterday", Filter(tags=("daily",)), B),
    ],
)
def test_resolve(ref, flt, expected):
    assert resolve(ref, SNAPS, flt) is expected


def test_resolve_does_not_depend_on_list_order():
    for ref, expected in [("latest", G), ("@good", D), ("2026-03-02", B), ("1d ago", F)]:
        assert resolve(ref, list(reversed(SNAPS))) is expected


@pytest.mark.parametrize(
    "ref,flt,snaps,match",
    [
        ("aaaa", Filter(), SNAPS, "ambiguous"),
        ("ab12", Filter(), SNAPS, "no snapshot with id 'ab12'"),
        ("a" * 64, Filter(), SNAPS, "no snapshot with id"),
        ("abc", Filter(), SNAPS, "invalid snapshot reference 'abc'"),  # too short for a prefix
        ("garbage", Filter(), SNAPS, "invalid snapshot reference 'garbage'"),
        ("5 fortnights ago", Filter(), SNAPS, "invalid snapshot reference"),
        ("@", Filter(), SNAPS, "no checkpoint named ''"),
        ("2026-13-45", Filter(), SNAPS, "invalid time '2026-13-45'"),
        ("2026-02-30T10:00:00Z", Filter(), SNAPS, "invalid time"),
        ("2026-01-01", Filter(), SNAPS, "no snapshot at or before 2026-01-01T23:59:59\\+05:45"),
        ("2026-02-20T07:59:59Z", Filter(), SNAPS, "no snapshot at or before"),
        ("4w ago", Filter(), SNAPS, "no snapshot at or before"),
        ("2026-03-01T12:00:00Z", Filter(host="server"), SNAPS, "no snapshot at or before .* for host server"),
        ("@unknown", Filter(), SNAPS, "no checkpoint named 'unknown'"),
        ("@good", Filter(host="nowhere"), SNAPS, "no checkpoint named 'good' for host nowhere"),
        ("@dddd", Filter(), SNAPS, "no checkpoint named"),
        ("latest", Filter(host="nowhere"), SNAPS, "no snapshot found for host nowhere"),
        ("latest", Filter(tags=("monthly",)), SNAPS, "no snapshot found with tags monthly"),
        ("latest", Filter(), [], "no snapshot found"),
        ("2h ago", Filter(), [], "no snapshot at or before"),
        ("", Filter(), SNAPS, "empty snapshot reference"),
    ],
)
def test_resolve_errors(ref, flt, snaps, match):
    with pytest.raises(RefError, match=match):
        resolve(ref, snaps, flt)


# -- the path filter ----------------------------------------------------------------

P_HOME = snap("1111", utc(2026, 1, 1), paths=(b"/home",))
P_PROJ = snap("2222", utc(2026, 1, 2), paths=(b"/home/ann/projects",))
P_ETC = snap("3333", utc(2026, 1, 3), paths=(b"/etc", b"/srv/"))
P_WORK = snap("4444", utc(2026, 1, 4), paths=(b"/homework",))
P_BYTES = snap("5555", utc(2026, 1, 5), paths=(b"/data/\xff\xfe",))
PATH_SNAPS = [P_HOME, P_PROJ, P_ETC, P_WORK, P_BYTES]


@pytest.mark.parametrize(
    "ref,path,expected",
    [
        ("latest", b"/home/ann/doc.txt", P_HOME),  # /homework does not cover /home/...
        ("latest", b"/home", P_HOME),
        ("latest", b"/home/", P_HOME),
        ("latest", b"/home/ann/projects", P_PROJ),
        ("latest", b"/home/ann/projects/x/y", P_PROJ),
        ("latest", b"/home/ann/projects/../doc", P_HOME),
        ("latest", b"/homework/a", P_WORK),
        ("latest", b"/srv/www", P_ETC),  # a snapshot path with a trailing slash
        ("latest", b"/data/\xff\xfe/f", P_BYTES),
        ("2026-01-03T12:00:00Z", b"/home/ann/projects/x", P_PROJ),
        ("2026-01-03T12:00:00Z", b"/home/ann/other", P_HOME),
        ("2026-01-01T12:00:00Z", b"/home/ann", P_HOME),
    ],
)
def test_resolve_path_filter_picks_newest_covering(ref, path, expected):
    assert resolve(ref, PATH_SNAPS, Filter(path=path)) is expected


@pytest.mark.parametrize(
    "ref,path",
    [
        ("latest", b"/var/log"),
        ("latest", b"/"),  # no snapshot backed up the whole tree
        ("latest", b"/data/\xff"),
        ("2026-01-02T12:00:00Z", b"/etc/passwd"),  # /etc was first backed up on the 3rd
    ],
)
def test_resolve_path_filter_errors(ref, path):
    with pytest.raises(RefError, match="covering"):
        resolve(ref, PATH_SNAPS, Filter(path=path))


@pytest.mark.parametrize(
    "roots,path,covered",
    [
        ([b"/"], b"/anything/at/all", True),
        ([b"/"], b"/", True),
        ([b"/home"], b"/home", True),
        ([b"/home/"], b"/home/a", True),
        ([b"/home"], b"/homes", False),
        ([b"/home"], b"/", False),
        ([b"/home/ann"], b"/home", False),
        ([b"/etc", b"/home"], b"/home/x", True),
        ([], b"/home", False),
    ],
)
def test_covers(roots, path, covered):
    assert covers(snap("9999", utc(2026, 1, 1), paths=roots), path) is covered


@pytest.mark.parametrize(
    "flt,matches",
    [
        (Filter(), True),
        (Filter(host="laptop"), True),
        (Filter(host="server"), False),
        (Filter(tags=("daily",)), True),
        (Filter(tags=("daily", "weekly")), True),
        (Filter(tags=("daily", "monthly")), False),
        (Filter(kind="backup"), True),
        (Filter(kind="checkpoint"), False),
        (Filter(path=b"/home/x"), True),
        (Filter(path=b"/etc"), False),
        (Filter(host="laptop", tags=("weekly",), path=b"/home"), True),
    ],
)
def test_filter_matches(flt, matches):
    assert flt.matches(A) is matches
