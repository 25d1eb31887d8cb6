"""One prepared repository per test session: two backups of a small tree, real key.

Cases copy it (``forge.copy``) and damage their copy, so preparing costs once."""

from __future__ import annotations

import os

import pytest

from lbk.backend.local import LocalBackend
from lbk.events import Collector
from lbk.ops.backup import BackupOptions, backup
from lbk.ops.restore import tree_nodes
from lbk.repo.repository import Repository
from tests.helpers import PASSWORD
from tests.hostile.forge import Prepared


def _child(repo: Repository, tree: bytes, name: bytes):
    return next(n for n in tree_nodes(repo, tree) if n.name == name)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Prepared:
    base = tmp_path_factory.mktemp("prepared")
    src = base / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha\n" * 1000)
    (src / "sub" / "b.txt").write_bytes(b"bravo\n" * 1000)
    os.symlink("a.txt", src / "link")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LBK_INSECURE_FAST_KDF", "1")
        repo = Repository.create(LocalBackend(str(base / "repo")), PASSWORD.encode())
        first = backup(repo, None, BackupOptions(paths=[os.fsencode(src)]), Collector()).snapshot
        (src / "sub" / "b.txt").write_bytes(b"bravo, changed\n" * 1000)
        second = backup(repo, None, BackupOptions(paths=[os.fsencode(src)]), Collector()).snapshot
    t = first.tree
    for part in os.fsencode(src).split(b"/")[1:]:
        t = _child(repo, t, part).subtree
    sub = _child(repo, t, b"sub").subtree
    return Prepared(
        repo=str(base / "repo"), src=str(src), snapshot=first.id, snapshot2=second.id, src_tree=t, sub_tree=sub,
        file_blob=_child(repo, t, b"a.txt").content[0], other_blob=_child(repo, sub, b"b.txt").content[0],
    )
