"""lbk/ops/find.py: which snapshots hold paths matching a pattern, from the catalog."""

from __future__ import annotations

import os

import pytest

from lbk.catalog import Catalog
from lbk.errors import UsageError
from lbk.ops.find import find
from tests.ops.test_log import snap


@pytest.fixture
def cat():
    c = Catalog.memory()
    yield c
    c.close()


@pytest.fixture
def history(mem_repo, tmp_path):
    root = tmp_path / "root"
    (root / "dir1").mkdir(parents=True)
    (root / "dir2" / "sub").mkdir(parents=True)
    (root / "dir1" / "report1.txt").write_text("1")
    (root / "dir2" / "sub" / "Report2.txt").write_text("2")
    (root / "other.txt").write_text("o")
    for i in range(20):  # a subtree without matches, which name searches must not enter
        (root / "big" / str(i)).mkdir(parents=True)
        (root / "big" / str(i) / "data.bin").write_text(str(i))
    s1 = snap(mem_repo, root)
    (root / "dir1" / "report1.txt").unlink()
    s2 = snap(mem_repo, root)
    (root / "reports").mkdir()
    s3 = snap(mem_repo, root)
    return root, [s1, s2, s3]


def found(hits) -> list[tuple[str, list[str]]]:
    return [(h.snapshot.id, sorted(os.fsdecode(m.path) for m in h.matches)) for h in hits]


def test_name_pattern(mem_repo, cat, history):
    root, (s1, s2, s3) = history
    r = str(root)
    assert found(find(mem_repo, cat, "report*")) == [
        (s3.id, [f"{r}/reports"]),
        (s1.id, [f"{r}/dir1/report1.txt"]),
    ]
    assert found(find(mem_repo, cat, "report*", ignore_case=True)) == [
        (s3.id, [f"{r}/dir2/sub/Report2.txt", f"{r}/reports"]),
        (s2.id, [f"{r}/dir2/sub/Report2.txt"]),
        (s1.id, [f"{r}/dir1/report1.txt", f"{r}/dir2/sub/Report2.txt"]),
    ]
    assert find(mem_repo, cat, "nothing-like-this") == []


def test_path_pattern_matches_the_full_path(mem_repo, cat, history):
    root, (s1, s2, s3) = history
    r = str(root)
    want = [f"{r}/dir2/sub", f"{r}/dir2/sub/Report2.txt"]
    assert found(find(mem_repo, cat, f"{r}/dir2/*")) == [(s.id, want) for s in (s3, s2, s1)]
    # '*' crosses '/', as in fnmatch
    assert found(find(mem_repo, cat, "*/dir1/*.txt")) == [(s1.id, [f"{r}/dir1/report1.txt"])]
    assert found(find(mem_repo, cat, "*/sub")) == [(s.id, [f"{r}/dir2/sub"]) for s in (s3, s2, s1)]
    # a relative path pattern matches the end of the path; a trailing / is ignored
    assert found(find(mem_repo, cat, "dir2/sub/*.txt")) == [(s.id, [f"{r}/dir2/sub/Report2.txt"]) for s in (s3, s2, s1)]
    assert found(find(mem_repo, cat, "reports/")) == [(s3.id, [f"{r}/reports"])]


def test_since_until(mem_repo, cat, history):
    root, (s1, s2, s3) = history
    ids = lambda hits: [h.snapshot.id for h in hits]  # noqa: E731
    assert ids(find(mem_repo, cat, "other.txt")) == [s3.id, s2.id, s1.id]
    assert ids(find(mem_repo, cat, "other.txt", since=s2.id)) == [s3.id, s2.id]
    assert ids(find(mem_repo, cat, "other.txt", until=s2.id)) == [s2.id, s1.id]
    assert ids(find(mem_repo, cat, "other.txt", since=s2.id, until=s2.id)) == [s2.id]
    with pytest.raises(UsageError):
        find(mem_repo, cat, "other.txt", since=s3.id, until=s1.id)


def test_name_search_enters_only_trees_that_hold_a_match(mem_repo, cat, history, monkeypatch):
    root, snaps = history
    cat.update(mem_repo)
    big = {e.subtree for s in snaps for e in _entries_at(cat, s, root / "big")}
    listed: list[int] = []
    real = cat.entries
    monkeypatch.setattr(cat, "entries", lambda t: (listed.append(t), real(t))[1])
    assert len(find(mem_repo, cat, "Report2.txt")) == 3
    assert big and not (set(listed) & big)
    # a tree shared by the three snapshots is listed once per query
    assert len(listed) == len(set(listed))


def _entries_at(cat, s, path):
    (entry, known), = cat.lookup([s], os.fsencode(path))
    return cat.entries(entry.subtree)
