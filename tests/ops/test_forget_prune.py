"""Retention (restic's keep rules, checkpoints, pre-rollback) and prune (delete, repack,
crash safety at every step)."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timedelta, timezone

import pytest

from lbk.backend.base import FileKind, Handle
from lbk.backend.local import LocalBackend
from lbk.errors import FormatError, UsageError
from lbk.events import Collector
from lbk.model import Snapshot
from lbk.ops.backup import BackupOptions, backup
from lbk.ops.check import check
from lbk.ops.policy import Duration, Policy, apply_policy, forget, parse_duration
from lbk.ops import prune as prune_mod
from lbk.ops.prune import PruneError, parse_max_unused, prune
from lbk.ops.restore import RestoreOptions, restore
from lbk.repo import crypto
from lbk.repo.repository import Repository
from lbk.repo.snapshots import load_all, remove_snapshot
from tests.helpers import PASSWORD

UTC = timezone.utc


@pytest.fixture(autouse=True)
def fast_locks(monkeypatch):
    monkeypatch.setattr("lbk.repo.lock.RECHECK_DELAY", 0.0)


@pytest.fixture
def utc_tz():
    """Buckets are local time: pin it to UTC."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


# -- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("2y5m7d3h", Duration(2, 5, 7, 3)),
    ("7d", Duration(days=7)),
    ("12h", Duration(hours=12)),
    ("1m", Duration(months=1)),
    ("3h1d", Duration(days=1, hours=3)),
    ("1d1d", Duration(days=2)),
])
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "1w", "1.5d", "-1d", "1d 2h", "2y5m7dx"])
def test_parse_duration_refuses(text):
    with pytest.raises(UsageError):
        parse_duration(text)


@pytest.mark.parametrize("duration,t,expected", [
    (Duration(months=1), datetime(2025, 3, 31, 12, tzinfo=UTC), datetime(2025, 2, 28, 12, tzinfo=UTC)),
    (Duration(years=1), datetime(2024, 2, 29, tzinfo=UTC), datetime(2023, 2, 28, tzinfo=UTC)),
    (Duration(months=14, days=1, hours=2), datetime(2025, 3, 1, 1, tzinfo=UTC), datetime(2023, 12, 30, 23, tzinfo=UTC)),
])
def test_duration_before(duration, t, expected):
    assert duration.before(t) == expected


# -- keep rules (synthetic snapshots) --------------------------------------------------------

TIMES = {
    "s01": (2024, 1, 1, 10, 0), "s02": (2024, 6, 15, 9, 0), "s03": (2025, 3, 1, 8, 0),
    "s04": (2025, 3, 31, 23, 0), "s05": (2025, 4, 1, 1, 0), "s06": (2025, 4, 7, 12, 0),
    "s07": (2025, 4, 8, 12, 0), "s08": (2025, 4, 13, 18, 0), "s09": (2025, 4, 14, 9, 0),
    "s10": (2025, 4, 14, 9, 30), "s11": (2025, 4, 14, 10, 15), "s12": (2025, 4, 14, 10, 45),
    "s13": (2025, 4, 15, 8, 0),
}
TAGS = {"s02": ["keep"], "s05": ["keep", "x"], "s07": ["x"]}
NOW = datetime(2025, 4, 20, tzinfo=UTC)


def snap(sid, t, kind="backup", name="", tags=(), paths=(b"/home/ann",), host="h") -> Snapshot:
    return Snapshot(time=datetime(*t, tzinfo=UTC) if isinstance(t, tuple) else t, tree=b"\0" * 32,
                    paths=list(paths), host=host, user="ann", kind=kind, name=name, tags=list(tags), id=sid)


def series() -> list[Snapshot]:
    return [snap(k, t, tags=TAGS.get(k, ())) for k, t in TIMES.items()]


def kept(policy: Policy, snaps=None, now=NOW) -> set[str]:
    groups = apply_policy(snaps or series(), policy, now)
    return {s.id for g in groups for s in g.kept}


ALL = set(TIMES)


@pytest.mark.parametrize("policy,expected", [
    (Policy(last=3), {"s13", "s12", "s11"}),
    (Policy(hourly=3), {"s13", "s12", "s10"}),  # s11 shares 10h with s12
    (Policy(hourly=2), {"s13", "s12"}),
    (Policy(daily=3), {"s13", "s12", "s08"}),
    (Policy(weekly=2), {"s13", "s08"}),  # ISO weeks 16 and 15
    (Policy(weekly=3), {"s13", "s08", "s05"}),
    (Policy(monthly=2), {"s13", "s04"}),
    (Policy(yearly=2), {"s13", "s02"}),
    (Policy(yearly=5), {"s13", "s02"}),  # fewer buckets than asked: all buckets
    (Policy(within=Duration(days=1)), {"s13", "s12", "s11", "s10", "s09"}),  # from the newest, not from now
    (Policy(within=Duration(months=2)), ALL - {"s01", "s02"}),
    (Policy(tags=[("keep",)]), {"s02", "s05"}),
    (Policy(tags=[("keep", "x")]), {"s05"}),
    (Policy(tags=[("keep",), ("x",)]), {"s02", "s05", "s07"}),
    (Policy(last=1, monthly=3), {"s13", "s04", "s02"}),
    (Policy(daily=-1), ALL - {"s09", "s10", "s11"}),
    (Policy(last=-1), ALL),
    (Policy(last=2, daily=2, weekly=2), {"s13", "s12", "s08"}),
])
def test_keep_rules(utc_tz, policy, expected):
    assert kept(policy) == expected


def test_buckets_use_local_time():
    old = os.environ.get("TZ")
    os.environ["TZ"] = "XYZ-05:45"
    time.tzset()
    try:
        # the same UTC day, but 22:45 on the 14th and 00:45 on the 15th at UTC+05:45
        snaps = [snap("a", (2025, 4, 14, 17, 0)), snap("b", (2025, 4, 14, 19, 0))]
        assert kept(Policy(daily=2), snaps) == {"a", "b"}
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_groups_by_host_and_paths(utc_tz):
    snaps = series() + [snap("o1", (2025, 1, 1, 0, 0), paths=(b"/srv",)), snap("o2", (2025, 1, 2, 0, 0), paths=(b"/srv",)),
                        snap("h1", (2025, 1, 3, 0, 0), host="other")]
    assert kept(Policy(last=1), snaps) == {"s13", "o2", "h1"}


def test_checkpoints_have_their_own_rule(utc_tz):
    cps = [
        snap("c1", (2025, 1, 1, 0, 0), "checkpoint", "before-upgrade"),
        snap("c2", (2025, 2, 1, 0, 0), "checkpoint", "before-upgrade"),
        snap("c3", (2025, 3, 1, 0, 0), "checkpoint", "boot", ["boot"]),
        snap("c4", (2025, 3, 2, 0, 0), "checkpoint", "boot", ["boot"]),
        snap("c5", (2025, 4, 14, 10, 0), "checkpoint", "2025-04-14T10:00"),
        snap("c6", (2025, 4, 15, 7, 0), "checkpoint", "2025-04-15T07:00"),
    ]
    everything = series() + cps
    cp_ids = {s.id for s in cps}
    # no checkpoint rule: the general rules neither keep nor remove checkpoints
    assert kept(Policy(last=1), everything) == {"s13"} | cp_ids
    # newest 1 per name; timestamp names are one series
    assert kept(Policy(last=1, checkpoints=1), everything) == {"s13", "c2", "c4", "c6"}
    assert kept(Policy(last=1, checkpoints=2), everything) == {"s13"} | cp_ids
    assert kept(Policy(last=1, checkpoints=0), everything) == {"s13"}
    # only a checkpoint rule: backups are not touched
    assert kept(Policy(checkpoints=0), everything) == ALL
    # --keep-tag does not keep a checkpoint once a checkpoint rule is given
    assert kept(Policy(tags=[("boot",)], checkpoints=0), everything) == set()


def test_pre_rollback_snapshots_are_kept_seven_days(utc_tz):
    snaps = series() + [
        snap("p1", NOW - timedelta(days=3), "pre-rollback"),
        snap("p2", NOW - timedelta(days=10), "pre-rollback"),
    ]
    assert kept(Policy(last=1), snaps) == {"p1"}  # p1 is also the newest: kept by both
    assert kept(Policy(yearly=1), snaps) == {"p1"}
    snaps.append(snap("s14", NOW - timedelta(hours=1)))
    assert kept(Policy(last=1), snaps) == {"s14", "p1"}
    assert kept(Policy(last=1, pre_rollback_within=Duration(days=30)), snaps) == {"s14", "p1", "p2"}
    assert kept(Policy(last=1, pre_rollback_within=Duration()), snaps) == {"s14"}


def test_no_rule_is_refused():
    with pytest.raises(UsageError, match="refusing"):
        apply_policy(series(), Policy())
    with pytest.raises(UsageError, match="refusing"):
        apply_policy(series(), Policy(last=0, within=Duration()))


# -- forget and prune on a real repository ----------------------------------------------------


def write(path, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def tree_contents(root) -> dict:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def do_backup(repo, src, **kw):
    res = backup(repo, None, BackupOptions(paths=[os.fsencode(src)], **kw), Collector())
    assert res.errors == 0
    return res.snapshot


def repo_bytes(repo) -> int:
    return sum(f.size for k in (FileKind.DATA, FileKind.INDEX) for f in repo.backend.list(k))


def assert_restores(repo, snaps_and_contents, src, tmp_path) -> None:
    by_id = {s.id: s for s in load_all(repo)}
    for i, (snap_id, contents) in enumerate(snaps_and_contents):
        out = tmp_path / f"restore-{i}-{time.monotonic_ns()}"
        res = restore(repo, by_id[snap_id], RestoreOptions(target=os.fsencode(out), verify=True), Collector())
        assert res.errors == 0
        assert tree_contents(out / str(src).lstrip("/")) == contents


def fresh(repo) -> Repository:
    """The repository as a new process sees it."""
    return Repository.open(repo.backend, lambda: PASSWORD.encode())


@pytest.fixture
def history(local_repo, tmp_path):
    """Six backups of a changing tree; returns (repo, src, [(snapshot id, contents)])."""
    src = tmp_path / "src"
    out = []
    for i in range(6):
        write(src / f"gen{i}.bin", os.urandom(200_000))  # unique to this and later generations
        if i >= 2:
            os.unlink(src / f"gen{i - 2}.bin")  # each generation's data lives in two snapshots
        write(src / "common.txt", b"shared by all\n" * 100)
        s = do_backup(local_repo, src, tags=["t"] if i == 1 else [])
        out.append((s.id, tree_contents(src)))
    return local_repo, src, out


def test_forget_and_prune_keep_exactly_the_right_snapshots(history, tmp_path):
    repo, src, gens = history
    before = repo_bytes(repo)
    res = forget(repo, Policy(last=2, tags=[("t",)]), prune=True, max_unused=0.0)
    keep_ids = [gens[1][0], gens[4][0], gens[5][0]]
    assert sorted(s.id for s in res.kept) == sorted(keep_ids)
    assert sorted(s.id for s in res.removed) == sorted(g[0] for i, g in enumerate(gens) if i in (0, 2, 3))
    repo2 = fresh(repo)
    assert sorted(s.id for s in load_all(repo2)) == sorted(keep_ids)
    p = res.prune
    assert p.packs_deleted >= 1 and p.bytes_freed > 0
    assert repo_bytes(repo2) == p.bytes_after < before - 190_000  # gen2 (200 kB, only in s2, s3) is gone
    chk = check(repo2, Collector(), read_data=True)
    assert chk.ok, chk.problems
    assert chk.unindexed_packs == 0 and len(list(repo2.backend.list(FileKind.INDEX))) == 1
    assert_restores(repo2, [g for g in gens if g[0] in keep_ids], src, tmp_path)


def test_forget_by_id_and_dry_run(history):
    repo, src, gens = history
    res = forget(repo, None, ids=[gens[0][0][:8], gens[2][0]], dry_run=True)
    assert [s.id for s in res.removed] == [gens[0][0], gens[2][0]]
    assert len(load_all(repo)) == 6
    res = forget(repo, None, ids=[gens[0][0][:8], gens[2][0]])
    assert sorted(s.id for s in load_all(repo)) == sorted(g[0] for i, g in enumerate(gens) if i not in (0, 2))
    with pytest.raises(UsageError):
        forget(repo, Policy(last=1), ids=[gens[1][0]])
    with pytest.raises(UsageError):
        forget(repo, Policy())


def test_prune_repacks_partly_used_packs(local_repo, tmp_path):
    src = tmp_path / "src"
    write(src / "a.bin", os.urandom(1 << 20))
    write(src / "b.bin", os.urandom(1 << 20))
    first = do_backup(local_repo, src)
    os.unlink(src / "a.bin")
    second = do_backup(local_repo, src)
    remove_snapshot(local_repo, first.id)
    data_packs = lambda r: {f.name for f in r.backend.list(FileKind.DATA)}  # noqa: E731
    before = data_packs(local_repo)
    # unlimited: the half-used data pack is kept as it is
    res = prune(local_repo, max_unused=None)
    assert (res.packs_repacked, res.blobs_repacked) == (0, 0)
    assert res.packs_unused >= 1  # the first snapshot's tree packs
    assert res.bytes_unused_after > 900_000
    kept_packs = data_packs(local_repo)
    # default 5%: 1 MiB unused of 2 MiB is far above it
    res = prune(local_repo)
    assert res.packs_repacked == 1 and res.packs_written == 1 and res.blobs_repacked >= 1
    assert res.bytes_unused_after == 0 and res.bytes_freed > 900_000
    after = data_packs(local_repo)
    assert not (after & (kept_packs - before)) and len(after - kept_packs) == 1
    repo2 = fresh(local_repo)
    chk = check(repo2, Collector(), read_data=True)
    assert chk.ok, chk.problems
    assert_restores(repo2, [(second.id, {"b.bin": (src / "b.bin").read_bytes()})], src, tmp_path)
    assert prune(repo2).packs_deleted == 0  # nothing left to do


def test_prune_removes_unindexed_packs_and_leftover_temporary_files(local_repo, tmp_path):
    src = tmp_path / "src"
    write(src / "f", b"data")
    s = do_backup(local_repo, src)
    junk = os.urandom(5000)
    name = crypto.content_hash(junk)
    local_repo.backend.save(Handle(FileKind.DATA, name), junk)  # as a killed backup leaves it
    tmp = os.path.join(local_repo.backend.root, "data", name[:2], ".tmp-deadbeef")
    write(tmp, b"partial")
    res = prune(fresh(local_repo))
    assert res.packs_unindexed == 1 and res.temporary_files_removed == 1
    assert name not in {f.name for f in local_repo.backend.list(FileKind.DATA)} and not os.path.exists(tmp)
    assert check(fresh(local_repo), Collector(), read_data=True).ok
    assert_restores(fresh(local_repo), [(s.id, {"f": b"data"})], src, tmp_path)


def test_prune_refuses_when_used_data_is_missing(local_repo, tmp_path):
    src = tmp_path / "src"
    write(src / "f", os.urandom(10000))
    do_backup(local_repo, src)
    write(src / "g", os.urandom(10000))
    do_backup(local_repo, src)
    data = list(local_repo.backend.list(FileKind.DATA))
    victim = next(f.name for f in data if f.size > 10000)
    local_repo.backend.remove(Handle(FileKind.DATA, victim))
    listing = {k: sorted(f.name for f in local_repo.backend.list(k)) for k in FileKind if k is not FileKind.LOCK}
    with pytest.raises(PruneError, match="nothing was deleted"):
        prune(fresh(local_repo))
    assert {k: sorted(f.name for f in local_repo.backend.list(k)) for k in FileKind if k is not FileKind.LOCK} == listing


def test_prune_dry_run_changes_nothing(history):
    repo, src, gens = history
    for sid, _ in gens[:4]:
        remove_snapshot(repo, sid)
    listing = {k: sorted(f.name for f in repo.backend.list(k)) for k in FileKind if k is not FileKind.LOCK}
    dry = prune(repo, dry_run=True)
    assert dry.dry_run and dry.packs_deleted >= 1 and dry.bytes_freed > 0
    assert {k: sorted(f.name for f in repo.backend.list(k)) for k in FileKind if k is not FileKind.LOCK} == listing
    real = prune(repo)
    assert (real.packs_deleted, real.packs_repacked) == (dry.packs_deleted, dry.packs_repacked)


@pytest.mark.parametrize("max_unused", ["5", "5%", "0", "100", "unlimited", "12.5%"])
def test_parse_max_unused(max_unused):
    v = parse_max_unused(max_unused)
    assert v is None if max_unused in ("100", "unlimited") else v == float(max_unused.rstrip("%"))


@pytest.mark.parametrize("bad", ["", "-1", "101", "x", "5%%"])
def test_parse_max_unused_refuses(bad):
    with pytest.raises(UsageError):
        parse_max_unused(bad)


class Crash(BaseException):
    pass


def test_prune_interrupted_after_every_single_change_leaves_a_valid_repository(history, tmp_path, monkeypatch):
    """The in-process twin of tests/cli/test_prune_kill.py: stop prune right after its N-th
    change to the backend (its lock included), for every N, and check the repository each time."""
    import lbk.backend.faulty as faulty_mod
    from lbk.backend.faulty import FaultyBackend
    from lbk.faults import Faults, parse

    repo, src, gens = history
    for sid, _ in gens[:3]:
        remove_snapshot(repo, sid)
    remaining = gens[3:]
    pristine = tmp_path / "pristine"
    shutil.copytree(repo.backend.root, pristine)

    def crash():
        raise Crash

    monkeypatch.setattr(faulty_mod, "die", crash)

    def open_with(root, spec: str):
        faults = Faults(parse(spec))
        backend = FaultyBackend(LocalBackend(str(root)), faults)
        return Repository.open(backend, lambda: PASSWORD.encode()), faults

    counting, faults = open_with(shutil.copytree(pristine, tmp_path / "count"), "")
    changes = prune(counting, max_unused=0.0).backend_changes
    total = faults.counted("write")
    assert changes >= 6 and total == changes + 2  # new pack(s), index, removals; + lock save and removal
    for n in range(1, total + 1):
        root = tmp_path / f"r{n}"
        shutil.copytree(pristine, root)
        r, _ = open_with(root, f"kill@{n}")
        with pytest.raises(Crash):
            prune(r, max_unused=0.0)
        for lk in list(LocalBackend(str(root)).list(FileKind.LOCK)):  # a dead process's lock: stale
            LocalBackend(str(root)).remove(Handle(FileKind.LOCK, lk.name))
        r = Repository.open(LocalBackend(str(root)), lambda: PASSWORD.encode())
        chk = check(r, Collector(), read_data=True)
        assert chk.ok, (n, chk.problems)
        assert_restores(r, remaining, src, tmp_path)
        again = prune(r, max_unused=0.0)  # the next prune finishes the job
        assert check(Repository.open(LocalBackend(str(root)), lambda: PASSWORD.encode()), Collector(), read_data=True).ok
        assert again.packs_after == len(list(LocalBackend(str(root)).list(FileKind.DATA)))


def test_tree_references_agree_with_the_model():
    from lbk.errors import FormatError
    from lbk.model import Node, encode_tree
    from lbk.ops.prune import tree_references

    nodes = [
        Node(name=b"d", type="dir", subtree=b"\x01" * 32),
        Node(name=b"f", type="file", size=3, content=[b"\x02" * 32, b"\x03" * 32]),
        Node(name=b"l", type="symlink", target=b"f"),
        Node(name=b"e", type="dir"),
        Node(name=b"\xff", type="file"),
    ]
    assert tree_references(encode_tree(nodes), "t") == ([b"\x01" * 32], [b"\x02" * 32, b"\x03" * 32])
    for bad in (b"{", b'{"version": 2, "nodes": []}', b'{"version": 1}', b'{"version": 1, "nodes": [{"type": "dir", "subtree": "zz"}]}',
                b'{"version": 1, "nodes": [{"name": "x"}]}', b"[" * 100000):
        with pytest.raises(FormatError):
            tree_references(bad, "t")


# -- prune's own tree reader ---------------------------------------------------------------

_ID = "ab" * 32


@pytest.mark.parametrize(
    "nodes,refs",
    [
        ([{"name": "d", "type": "dir", "subtree": _ID}, {"name": "f", "type": "file", "content": [_ID, _ID]}],
         ([bytes.fromhex(_ID)], [bytes.fromhex(_ID)] * 2)),
        ([{"name": "d", "type": "dir", "subtree": None}, {"name": "l", "type": "symlink", "content": ["x"]}], ([], [])),
        # found by fuzzing (tests/fuzz, target tree): ids that are not 32 bytes reached the marking
        ([{"name": "f", "type": "file", "content": ["ab"]}], None),
        ([{"name": "d", "type": "dir", "subtree": "abcd"}], None),
        ([{"name": "d", "type": "dir", "subtree": ""}], None),
        ([{"name": "f", "type": "file", "content": ["ab " * 21 + "a"]}], None),
        ([{"name": "f", "type": "file", "content": ["ab" * 31 + " a"]}], None),  # 64 characters, 31 bytes
    ],
)
def test_tree_references(nodes, refs):
    data = json.dumps({"version": 1, "nodes": nodes}).encode()
    if refs is None:
        with pytest.raises(FormatError, match="^tree x: malformed tree"):
            prune_mod.tree_references(data, "tree x")
    else:
        assert prune_mod.tree_references(data, "tree x") == refs
