"""A directory tree as deep as a Linux path can reach: every tree walker recurses, and
Python's default limit (1,000 frames) stopped at about 500 levels."""

from __future__ import annotations

import json
import os
import resource

import pytest

from lbk.backend.local import LocalBackend
from lbk.repo import pack as pack_mod
from lbk.repo.repository import Repository
from tests.helpers import PASSWORD, lbk_proc, remove_tree
from tests.hostile import forge as F

# Deeper than the default recursion limit allows (about two frames per level), and
# shallow enough that the restored copy's path (target + source path) fits in PATH_MAX.
DEPTH = 1800
CONTENT = b"at the bottom\n"


def _make_chain(root: str, depth: int) -> None:
    """``root/d/d/.../d/f`` through directory fds: os.makedirs recurses too."""
    os.mkdir(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        f = os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(f, CONTENT)
        os.close(f)
    finally:
        os.close(fd)


def _chain_depth_and_content(root: str) -> tuple[int, bytes | None]:
    """How many ``d`` levels lie beneath ``root``, and the bottom ``f``'s content."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    depth = 0
    try:
        while "d" in os.listdir(fd):
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            depth += 1
        if "f" not in os.listdir(fd):
            return depth, None
        f = os.open("f", os.O_RDONLY, dir_fd=fd)
        try:
            return depth, os.read(f, 1 << 16)
        finally:
            os.close(f)
    finally:
        os.close(fd)


@pytest.mark.slow
def test_a_tree_1800_levels_deep_survives_every_walk(tmp_path):
    try:
        _every_walk(tmp_path)
    finally:
        remove_tree(str(tmp_path))  # pytest's own cleanup recurses and would fail later runs


def _every_walk(tmp_path) -> None:
    src = str(tmp_path / "s")
    repo = str(tmp_path / "r")
    _make_chain(src, DEPTH)
    deep_file = src + "/d" * DEPTH + "/f"
    assert lbk_proc("-r", repo, "init").returncode == 0

    def ok(*args: str) -> str:
        res = lbk_proc("-r", repo, *args)
        assert res.returncode == 0, (args, res.stderr[-500:])
        assert "Traceback" not in res.stderr
        return res.stdout

    ok("backup", src)
    ok("check", "--read-data")
    target = str(tmp_path / "t")
    ok("restore", "latest", "--target", target)
    assert _chain_depth_and_content(target + src) == (DEPTH, CONTENT)

    listed = [json.loads(line) for line in ok("ls", "latest", src, "--recursive", "--json").splitlines()]
    assert sum(e.get("type") == "dir" for e in listed) >= DEPTH
    assert any(e.get("path") == deep_file for e in listed)
    assert deep_file in ok("find", "f")
    assert json.loads(ok("stats", "--json"))["files"] == 1
    assert ok("log", deep_file).count("\n") >= 1
    assert json.loads(ok("diff", "latest", "--json")) == []  # against the live tree: nothing changed
    ok("repair", "snapshots", "--dry-run")
    ok("backup", src)  # the second backup reuses every tree through the files cache
    ok("forget", "--keep-last", "1")
    ok("prune")
    ok("check", "--read-data")


@pytest.mark.slow
@pytest.mark.parametrize("stack_kib", [1024, 2048, 8192])
def test_a_forged_chain_deeper_than_any_path_is_a_clean_error_on_any_stack(tmp_path, stack_kib):
    """lbk's recursion limit follows the stack it has (lbk.cli.main.allow_deep_trees): a
    limit fixed for 8 MiB crashed (SIGSEGV) with ``ulimit -s 1024``, in C code that
    recurses (generators, json)."""
    root = str(tmp_path / "repo")
    repo = Repository.create(LocalBackend(root), PASSWORD.encode())
    t, _ = repo.save_blob(pack_mod.TREE, F.tree_json())
    for _ in range(20_500):  # deeper than the highest limit lbk ever sets
        t, _ = repo.save_blob(pack_mod.TREE, F.tree_json(F.node("d", "dir", subtree=t.hex())))
    F.put_tree_snapshot(repo, F.tree_json(F.node("top", "dir", subtree=t.hex())), None, path="/x")
    repo.close()

    def small_stack() -> None:
        resource.setrlimit(resource.RLIMIT_STACK, (stack_kib << 10, resource.getrlimit(resource.RLIMIT_STACK)[1]))

    for args in (["ls", "-R", "latest"], ["check"], ["stats"]):
        res = lbk_proc("-r", root, *args, preexec_fn=small_stack)
        assert res.returncode == 1, (args, res.returncode, res.stderr[-300:])
        assert "nested too deeply" in res.stderr
