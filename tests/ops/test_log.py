"""lbk/ops/log.py and the catalog behind it (lbk/catalog.py): the audit trail of a path."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from datetime import datetime, timedelta, timezone

import blake3
import pytest

import lbk.catalog as catalog_mod
from lbk.catalog import CATALOG_VERSION, Catalog
from lbk.errors import LbkError, UsageError
from lbk.events import Collector
from lbk.model import DIR, FILE, Node, Snapshot, encode_tree
from lbk.ops.backup import Backup, BackupOptions
from lbk.ops.diff import _SnapSide
from lbk.ops.listing import walk_snapshot
from lbk.ops.log import log
from lbk.ops.refs import Filter
from lbk.repo.pack import DATA, TREE
from lbk.repo.snapshots import remove_snapshot, save_snapshot


def snap(repo, *paths, **kw) -> Snapshot:
    """One backup snapshot (without the repository lock, whose 100 ms settle time would
    dominate these tests)."""
    repo.ensure_index()
    return Backup(repo, None, BackupOptions(paths=[os.fsencode(p) for p in paths], **kw), Collector()).run().snapshot


@pytest.fixture
def cat(tmp_path):
    c = Catalog.open(str(tmp_path / "catalog.sqlite"))
    yield c
    c.close()


def rows(res) -> list[tuple[str, str, str]]:
    """(snapshot id, path, change) per row, newest first."""
    return [(r.snapshot.id, os.fsdecode(r.path), r.change) for r in res.rows]


def content_id(repo, s: Snapshot, path) -> str:
    node = next(iter(walk_snapshot(repo, s, os.fsencode(path)))).node
    return blake3.blake3(b"".join(node.content)).hexdigest()[:8]


# -- one file -------------------------------------------------------------------------------

def test_create_modify_chmod_delete_recreate(mem_repo, cat, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    f = src / "notes.txt"
    f.write_text("one\n")
    s1 = snap(mem_repo, src)
    f.write_text("one\ntwo\n")
    s2 = snap(mem_repo, src)
    s3 = snap(mem_repo, src)  # unchanged: collapses into s2's row
    f.chmod(0o600)
    s4 = snap(mem_repo, src)
    f.unlink()
    s5 = snap(mem_repo, src)
    s6 = snap(mem_repo, src)  # still absent: no second "deleted"
    f.write_text("three\n")
    s7 = snap(mem_repo, src)

    res = log(mem_repo, cat, os.fsencode(f))
    p = str(f)
    assert rows(res) == [
        (s7.id, p, "added"), (s5.id, p, "deleted"), (s4.id, p, "metadata"), (s2.id, p, "modified"), (s1.id, p, "added"),
    ]
    assert res.snapshots == 7 and s3.id and s6.id
    by_snap = {r.snapshot.id: r for r in res.rows}
    # the short content id is the hash of the file's content id list
    assert by_snap[s1.id].entry.short_content == content_id(mem_repo, s1, f)
    assert by_snap[s2.id].entry.short_content == content_id(mem_repo, s2, f)
    assert by_snap[s7.id].entry.short_content == content_id(mem_repo, s7, f)
    assert len({by_snap[x.id].entry.short_content for x in (s1, s2, s7)}) == 3
    assert by_snap[s4.id].entry.short_content == by_snap[s2.id].entry.short_content
    assert stat.S_IMODE(by_snap[s4.id].entry.mode) == 0o600
    j = by_snap[s2.id].to_json()
    assert (j["size"], j["type"], j["kind"], j["snapshot"]) == (8, "file", "backup", s2.id)
    gone = by_snap[s5.id].to_json()
    assert (gone["change"], gone["size"], gone["content"]) == ("deleted", None, None)


def _same_bytes_same_mtime(p):
    st = p.stat()
    p.write_bytes(p.read_bytes())
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def _to_symlink(p):
    p.unlink()
    p.symlink_to("elsewhere")


def _xattr(p):
    try:
        os.setxattr(p, b"user.lbk-log", b"1")
    except OSError:
        pytest.skip("no user xattrs on this file system")


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda p: p.write_bytes(b"other content"), "modified"),
        (lambda p: p.write_bytes(b"v1 content!!"), "modified"),  # same size, other bytes
        (lambda p: p.chmod(0o640), "metadata"),
        (lambda p: os.utime(p, ns=(1_000_000_000, 1_000_000_000)), "metadata"),
        (_xattr, "metadata"),
        (_same_bytes_same_mtime, None),  # a new inode and ctime are not a new version
        (_to_symlink, "modified"),
        (lambda p: p.unlink(), "deleted"),
    ],
    ids=["content", "same-size-content", "chmod", "mtime", "xattr", "rewritten-identical", "to-symlink", "unlink"],
)
def test_each_kind_of_change(mem_repo, cat, tmp_path, mutate, expected):
    src = tmp_path / "src"
    src.mkdir()
    f = src / "f"
    f.write_bytes(b"v1 content\n")
    s1 = snap(mem_repo, src)
    mutate(f)
    s2 = snap(mem_repo, src)
    got = rows(log(mem_repo, cat, os.fsencode(f)))
    assert got[-1] == (s1.id, str(f), "added")
    assert got[:-1] == ([(s2.id, str(f), expected)] if expected else [])


def test_relative_path_is_made_absolute(mem_repo, cat, tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("a")
    s1 = snap(mem_repo, tmp_path / "a.txt")
    monkeypatch.chdir(tmp_path)
    res = log(mem_repo, cat, b"a.txt")
    assert res.path == os.fsencode(tmp_path / "a.txt") and rows(res) == [(s1.id, str(tmp_path / "a.txt"), "added")]


def test_path_no_snapshot_holds_is_an_error(mem_repo, cat, tmp_path):
    (tmp_path / "a").mkdir()
    snap(mem_repo, tmp_path / "a")
    with pytest.raises(LbkError, match="no snapshot holds"):
        log(mem_repo, cat, os.fsencode(tmp_path / "b"))


def test_host_filter(mem_repo, cat, tmp_path):
    f = tmp_path / "f"
    f.write_text("1")
    a1 = snap(mem_repo, f, host="a")
    f.write_text("22")
    snap(mem_repo, f, host="b")
    a2 = snap(mem_repo, f, host="a")
    assert rows(log(mem_repo, cat, os.fsencode(f), flt=Filter(host="a"))) == [
        (a2.id, str(f), "modified"), (a1.id, str(f), "added"),
    ]


# -- directories ------------------------------------------------------------------------------

def test_directory_log_with_partial_snapshots_agrees_with_every_file_log(mem_repo, cat, tmp_path):
    root = tmp_path / "root"
    (root / "d1" / "e").mkdir(parents=True)
    (root / "d2").mkdir()
    (root / "a.txt").write_text("a")
    (root / "d1" / "b.txt").write_text("b")
    (root / "d1" / "e" / "c.txt").write_text("c")
    (root / "d2" / "x.txt").write_text("x")
    s1 = snap(mem_repo, root)
    (root / "d1" / "b.txt").write_text("b2")
    s2 = snap(mem_repo, root)
    (root / "d1" / "e" / "c.txt").write_text("c2")
    (root / "d2" / "new.txt").write_text("n")  # not seen by the partial snapshot s3
    s3 = snap(mem_repo, root / "d1")
    shutil.rmtree(root / "d1" / "e")
    s4 = snap(mem_repo, root / "d1")
    s5 = snap(mem_repo, root)
    (root / "a.txt").chmod(0o600)
    os.rename(root / "d2", root / "d3")
    s6 = snap(mem_repo, root)

    res = log(mem_repo, cat, os.fsencode(root))
    r = str(root)
    assert rows(res) == [
        (s6.id, f"{r}/a.txt", "metadata"),
        (s6.id, f"{r}/d2/new.txt", "deleted"),
        (s6.id, f"{r}/d2/x.txt", "deleted"),
        (s6.id, f"{r}/d3/new.txt", "added"),
        (s6.id, f"{r}/d3/x.txt", "added"),
        (s5.id, f"{r}/d2/new.txt", "added"),
        (s4.id, f"{r}/d1/e/c.txt", "deleted"),
        (s3.id, f"{r}/d1/e/c.txt", "modified"),
        (s2.id, f"{r}/d1/b.txt", "modified"),
        (s1.id, f"{r}/a.txt", "added"),
        (s1.id, f"{r}/d1/b.txt", "added"),
        (s1.id, f"{r}/d1/e/c.txt", "added"),
        (s1.id, f"{r}/d2/x.txt", "added"),
    ]
    # every file's own log is exactly its rows in the directory log
    for path in {p for _, p, _ in rows(res)}:
        assert rows(log(mem_repo, cat, os.fsencode(path))) == [x for x in rows(res) if x[1] == path], path
    # a subdirectory's log is the directory log restricted to it
    sub = rows(log(mem_repo, cat, os.fsencode(root / "d1")))
    assert sub == [x for x in rows(res) if x[1].startswith(f"{r}/d1/")]


def test_deleted_lists_what_existed_and_is_gone(mem_repo, cat, tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    for name in ("keep.txt", "gone.txt", "back.txt", "sub/inner.txt"):
        (root / name).write_text(name)
    s1 = snap(mem_repo, root)
    (root / "gone.txt").unlink()
    (root / "back.txt").unlink()
    shutil.rmtree(root / "sub")
    s2 = snap(mem_repo, root)
    (root / "back.txt").write_text("again")
    s3 = snap(mem_repo, root)

    def deleted(**kw):
        res = log(mem_repo, cat, os.fsencode(root), deleted=True, **kw)
        return sorted((os.fsdecode(d.path), d.deleted_in.id, d.last_in.id, d.entry.size) for d in res.deleted)

    r = str(root)
    assert deleted() == [(f"{r}/gone.txt", s2.id, s1.id, 8), (f"{r}/sub/inner.txt", s2.id, s1.id, 13)]
    assert deleted(until=s2.id) == [
        (f"{r}/back.txt", s2.id, s1.id, 8),
        (f"{r}/gone.txt", s2.id, s1.id, 8),
        (f"{r}/sub/inner.txt", s2.id, s1.id, 13),
    ]
    assert deleted(since=s3.id) == []
    assert deleted(since=s2.id) == deleted()


def test_a_directory_that_could_not_be_read_reports_no_deletions(mem_repo, cat):
    blob, _ = mem_repo.save_blob(DATA, b"x")
    f = Node(name=b"f", type=FILE, mode=0o644, size=1, content=[blob])
    full, _ = mem_repo.save_blob(TREE, encode_tree([f]))
    empty, _ = mem_repo.save_blob(TREE, encode_tree([]))
    made = []
    for i, d in enumerate([
        Node(name=b"d", type=DIR, mode=0o755, subtree=full),
        Node(name=b"d", type=DIR, mode=0o755, subtree=empty, error="permission denied"),
        Node(name=b"d", type=DIR, mode=0o755, subtree=full),
        Node(name=b"d", type=DIR, mode=0o755, subtree=empty),
    ]):
        root, _ = mem_repo.save_blob(TREE, encode_tree([d]))
        mem_repo.flush()
        s = Snapshot(time=datetime(2026, 1, 1 + i, tzinfo=timezone.utc), tree=root, paths=[b"/d"], host="h", user="u")
        save_snapshot(mem_repo, s)
        made.append(s)
    expected = [(made[3].id, "/d/f", "deleted"), (made[0].id, "/d/f", "added")]
    assert rows(log(mem_repo, cat, b"/d/f")) == expected
    assert rows(log(mem_repo, cat, b"/d")) == expected


# -- since / until ---------------------------------------------------------------------------

@pytest.fixture
def five(mem_repo, tmp_path):
    f = tmp_path / "f.txt"
    snaps = []
    for i in range(5):
        f.write_text("x" * (i + 1))
        snaps.append(snap(mem_repo, f))
    return f, snaps


@pytest.mark.parametrize(
    "since,until,expected",
    [
        (None, None, [4, 3, 2, 1, 0]),
        (2, None, [4, 3, 2]),
        (None, 1, [1, 0]),
        (1, 3, [3, 2, 1]),
        (4, 4, [4]),
        ("latest", None, [4]),
    ],
)
def test_since_until(mem_repo, cat, five, since, until, expected):
    f, snaps = five
    ref = lambda x: x if isinstance(x, str) or x is None else snaps[x].id[:8]  # noqa: E731
    res = log(mem_repo, cat, os.fsencode(f), since=ref(since), until=ref(until))
    assert [r.snapshot.id for r in res.rows] == [snaps[i].id for i in expected]
    # the first row inside the window is still compared with the version before it
    assert [r.change for r in res.rows] == ["added" if i == 0 else "modified" for i in expected]


def test_since_after_until_is_a_usage_error(mem_repo, cat, five):
    f, snaps = five
    with pytest.raises(UsageError, match="after --until"):
        log(mem_repo, cat, os.fsencode(f), since=snaps[3].id, until=snaps[1].id)


# -- the catalog ------------------------------------------------------------------------------

@pytest.fixture
def counted_loads(monkeypatch):
    """Every tree id the catalog loads from the repository, in order."""
    loads: list[bytes] = []
    real = catalog_mod.tree_nodes

    def counting(repo, tree_id):
        loads.append(tree_id)
        return real(repo, tree_id)

    monkeypatch.setattr(catalog_mod, "tree_nodes", counting)
    return loads


def _deep_tree(root):
    deep = root / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("0")
    for i in range(5):
        (root / f"other{i}").mkdir()
        for j in range(10):
            (root / f"other{i}" / f"{j}.txt").write_text(str(j))
    return deep / "f.txt"


def test_catalog_update_is_incremental_and_never_loads_a_tree_twice(mem_repo, cat, tmp_path, counted_loads):
    root = tmp_path / "root"
    f = _deep_tree(root)
    snap(mem_repo, root)
    first = cat.update(mem_repo)
    assert (first.added, first.removed) == (1, 0)
    assert first.trees == len(counted_loads) == len(root.parts) + 3 + 5  # path to root, a/b/c, other0..4
    before = len(counted_loads)
    for i in range(1, 4):
        f.write_text(str(i))
        snap(mem_repo, root)
        u = cat.update(mem_repo)
        # only the trees on the path down to the changed file are new
        assert (u.added, u.trees) == (1, len(f.parent.parts))
    assert len(counted_loads) == before + 3 * len(f.parent.parts)
    assert len(set(counted_loads)) == len(counted_loads)
    assert cat.update(mem_repo).added == 0
    assert len(rows(log(mem_repo, cat, os.fsencode(f)))) == 4


def test_rebuild_after_deleting_the_catalog_gives_identical_results(mem_repo, tmp_path):
    root = tmp_path / "root"
    f = _deep_tree(root)
    path = str(tmp_path / "catalog.sqlite")
    for i in range(3):
        f.write_text(str(i))
        (root / "other1" / f"{i}.txt").chmod(0o600)
        snap(mem_repo, root)
        with Catalog.open(path) as c:  # updated incrementally, one snapshot at a time
            log(mem_repo, c, os.fsencode(root))
    (root / "other2" / "3.txt").unlink()
    snap(mem_repo, root)
    with Catalog.open(path) as c:
        assert not c.rebuilt
        warm = [r.to_json() for r in log(mem_repo, c, os.fsencode(root), deleted=True).rows]
        warm_stats = c.stats()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.unlink(path)
    with Catalog.open(path) as c:
        assert c.rebuilt
        assert [r.to_json() for r in log(mem_repo, c, os.fsencode(root), deleted=True).rows] == warm
        assert c.stats() == warm_stats
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(warm) == 51 + 2 + 2 + 1  # 51 files added, f modified twice, two chmods, one deletion


@pytest.mark.parametrize("damage", ["version", "garbage", "empty"])
def test_stale_or_damaged_catalog_is_rebuilt(mem_repo, tmp_path, damage):
    f = tmp_path / "f"
    f.write_text("1")
    s1 = snap(mem_repo, f)
    path = str(tmp_path / "catalog.sqlite")
    with Catalog.open(path) as c:
        c.update(mem_repo)
    if damage == "version":
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA user_version = {CATALOG_VERSION + 1}")
        db.execute("DELETE FROM snapshots")  # a stale catalog must not be trusted
        db.commit()
        db.close()
    else:
        with open(path, "wb") as fh:
            fh.write(b"this is not a database" * 100 if damage == "garbage" else b"")
    with Catalog.open(path) as c:
        assert c.rebuilt
        assert rows(log(mem_repo, c, os.fsencode(f))) == [(s1.id, str(f), "added")]


def test_forgotten_snapshot_disappears_and_its_trees_are_dropped(mem_repo, cat, tmp_path):
    f = tmp_path / "d" / "f.txt"
    f.parent.mkdir()
    made = []
    for content in ("v1", "v2", "v3"):
        f.write_text(content)
        made.append(snap(mem_repo, f.parent))
    assert [r.snapshot.id for r in log(mem_repo, cat, os.fsencode(f)).rows] == [s.id for s in reversed(made)]
    remove_snapshot(mem_repo, made[1].id)
    res = log(mem_repo, cat, os.fsencode(f))
    assert rows(res) == [(made[2].id, str(f), "modified"), (made[0].id, str(f), "added")]
    assert made[1].id not in {s.id for s in cat.snapshots()}
    fresh = Catalog.memory()
    fresh.update(mem_repo)
    assert cat.stats() == fresh.stats()  # nothing of the forgotten snapshot is left behind


def test_catalog_answers_without_reading_trees_from_the_repository(mem_repo, cat, tmp_path, monkeypatch):
    f = tmp_path / "f"
    f.write_text("1")
    s1 = snap(mem_repo, f)
    cat.update(mem_repo)

    def refuse(*a, **kw):
        raise AssertionError("the repository was read")

    monkeypatch.setattr(mem_repo, "load_blob", refuse)
    assert rows(log(mem_repo, cat, os.fsencode(f))) == [(s1.id, str(f), "added")]


def test_snapshot_times_order_the_history_not_the_order_of_indexing(mem_repo, cat, tmp_path):
    """A snapshot that arrives late (a spooled capture) with an older time slots in."""
    f = tmp_path / "f"
    f.write_text("1")
    s1 = snap(mem_repo, f)
    f.write_text("22")
    s3 = snap(mem_repo, f)
    cat.update(mem_repo)
    f.write_text("333")
    late = snap(mem_repo, f)
    remove_snapshot(mem_repo, late.id)
    late.time = s1.time + (s3.time - s1.time) / 2
    save_snapshot(mem_repo, late)
    assert [(r.snapshot.id, r.change) for r in log(mem_repo, cat, os.fsencode(f)).rows] == [
        (s3.id, "modified"), (late.id, "modified"), (s1.id, "added"),
    ]
    assert late.time - s1.time < timedelta(seconds=60)


def test_lookup_agrees_with_walking_the_snapshot(mem_repo, cat, tmp_path):
    """Starting at a snapshot's backed-up path (table roots) finds what a walk from / finds."""
    root = tmp_path / "root"
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "f").write_text("f")
    (root / "g").write_text("g")
    snaps = [snap(mem_repo, root), snap(mem_repo, root / "d"), snap(mem_repo, root / "g"),
             snap(mem_repo, root / "d" / "e" / "f", root / "g")]
    cat.update(mem_repo)
    r = os.fsencode(root)
    probes = [b"/", r, r + b"/d", r + b"/d/e", r + b"/d/e/f", r + b"/g", r + b"/g/below-a-file", r + b"/nope",
              os.path.dirname(r)]
    for p in probes:
        for s, (entry, known) in zip(snaps, cat.lookup(snaps, p)):
            assert known
            node = _SnapSide(mem_repo, s).node_at(p)  # a walk from / through the repository's trees
            if p == b"/":
                assert entry.type == DIR and entry.subtree == cat.root(s)
            elif node is None:
                assert entry is None, (p, s.paths)
            else:
                assert (entry.name, entry.type, entry.size, entry.mode) == (node.name, node.type, node.size, node.mode)
