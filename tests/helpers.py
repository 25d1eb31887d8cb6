"""Test helpers: an isolated environment, repositories, the CLI in-process and as a
subprocess, and a torture tree with a metadata-exact comparison."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass

import pytest

from lbk.backend.local import LocalBackend
from lbk.backend.mem import MemoryBackend
from lbk.repo.repository import Repository

PASSWORD = "correct horse battery staple"
IS_ROOT = os.geteuid() == 0
IN_CI = os.environ.get("CI") == "true"


def need(condition: bool, reason: str) -> None:
    """Skip with a clear reason on a developer machine; fail in CI."""
    if not condition:
        if IN_CI:
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def lbk_env(tmp_path, monkeypatch):
    """Cheap KDF, a password, and private config/data/cache dirs for every test."""
    for var in ("LBK_REPOSITORY", "LBK_PASSWORD_FILE", "LBK_PASSWORD_COMMAND"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LBK_INSECURE_FAST_KDF", "1")
    monkeypatch.setenv("LBK_PASSWORD", PASSWORD)
    monkeypatch.setenv("LBK_CACHE_DIR", str(tmp_path / "_cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "_config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "_data"))
    yield


@pytest.fixture
def mem_repo():
    return Repository.create(MemoryBackend(), PASSWORD.encode())


@pytest.fixture
def local_repo(tmp_path):
    return Repository.create(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode())


def open_local(root) -> Repository:
    """The local repository at ``root`` as a new process opens it."""
    return Repository.open(LocalBackend(str(root)), lambda: PASSWORD.encode())


def one_line_error(res) -> str:
    """The single line a failing command printed on stderr (no traceback), for matching."""
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert len(lines) == 1, res.err
    assert "Traceback" not in res.err
    return lines[0]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)

    def lines(self):
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


@pytest.fixture
def lbk(capsysbinary):
    """Run the CLI in-process: lbk("-r", repo, "backup", path) -> Result."""
    from lbk.cli.main import _register, run

    _register()

    def call(*args) -> Result:
        capsysbinary.readouterr()
        code = run([os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args])
        o, e = capsysbinary.readouterr()
        return Result(code, o.decode(errors="surrogateescape"), e.decode(errors="surrogateescape"))

    return call


def lbk_proc(*args, env=None, **kw) -> subprocess.CompletedProcess:
    """Run lbk as a real process (for exit codes, signals and crashes)."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "lbk", *map(str, args)], capture_output=True, text=True, env=e, **kw)


def lbk_popen(*args, env=None, **kw) -> subprocess.Popen:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "lbk", *map(str, args)], env=e, **kw)


def remove_tree(root: str) -> None:
    """rmtree that does not recurse (pytest's cleanup would hit the recursion limit)."""
    if not os.path.lexists(root):
        return
    stack, dirs = [root], []
    while stack:
        d = stack.pop()
        dirs.append(d)
        for e in os.scandir(d):
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            else:
                os.unlink(e.path)
    for d in reversed(dirs):
        os.rmdir(d)


def files_under(root) -> dict[str, bytes]:
    """Every regular file beneath ``root``: relative path -> content (a repository's
    files, to show that a command wrote nothing; a restore, to compare it)."""
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


# -- a torture tree ---------------------------------------------------------------

def make_torture_tree(root: str) -> dict:
    """Everything SPEC.md's fidelity list names; returns facts the tests check."""
    r = os.fsencode(root)
    os.makedirs(r, exist_ok=True)
    j = lambda *p: os.path.join(r, *p)  # noqa: E731
    os.makedirs(j(b"dir", b"sub", b"deeper"))
    os.makedirs(j(b"empty-dir"))
    with open(j(b"dir", b"hello.txt"), "wb") as f:
        f.write(b"hello world\n" * 1000)
    open(j(b"empty-file"), "wb").close()
    with open(j(b"dir", b"sub", b"random.bin"), "wb") as f:
        f.write(os.urandom(3 * 1024 * 1024 + 123))
    # sparse: 8 MiB hole, 5 bytes, 4 MiB hole at the end
    with open(j(b"sparse.img"), "wb") as f:
        f.seek(8 << 20)
        f.write(b"data!")
        f.truncate(12 << 20)
    os.symlink(b"dir/hello.txt", j(b"link-rel"))
    os.symlink(b"/nonexistent/target\xff", j(b"link-dangling"))
    os.link(j(b"dir", b"hello.txt"), j(b"hardlink-to-hello"))
    os.mkfifo(j(b"fifo"))
    bad = j(b"latin1-\xe9\xff.txt")
    with open(bad, "wb") as f:
        f.write(b"not utf-8 name")
    os.makedirs(j(b"dir-\xfe"))
    with open(j(b"dir-\xfe", b"inside"), "wb") as f:
        f.write(b"x")
    with open(j(b"setuid"), "wb") as f:
        f.write(b"#!/bin/sh\n")
    os.chmod(j(b"setuid"), 0o4755)
    with open(j(b"setgid"), "wb") as f:
        f.write(b"g")
    os.chmod(j(b"setgid"), 0o2750)
    os.makedirs(j(b"sticky"))
    os.chmod(j(b"sticky"), 0o1777)
    with open(j(b"readonly"), "wb") as f:
        f.write(b"ro")
    os.chmod(j(b"readonly"), 0o400)
    facts = {"xattr": False, "device": False, "owner": False}
    try:
        os.setxattr(j(b"dir", b"hello.txt"), b"user.lbk-test", b"\x00value\xff")
        os.setxattr(j(b"dir"), b"user.dirattr", b"d")
        facts["xattr"] = True
    except OSError:
        pass
    if IS_ROOT:
        os.mknod(j(b"chardev"), stat.S_IFCHR | 0o644, os.makedev(1, 3))
        facts["device"] = True
        os.chown(j(b"dir", b"sub", b"random.bin"), 1234, 5678)
        os.lchown(j(b"link-rel"), 4321, 8765)
        facts["owner"] = True
    # nanosecond mtimes, set last (children first so directory times stick)
    t = 1_600_000_000_123_456_789
    for dirpath, dirnames, filenames in os.walk(r, topdown=False):
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            os.utime(p, ns=(t, t), follow_symlinks=False)
            t += 1_000_000_007
    os.utime(r, ns=(t, t))
    return facts


def snapshot_of(root: str) -> dict:
    """Every observable property of every entry beneath root, keyed by relative path."""
    r = os.fsencode(root)
    out = {}
    inodes: dict[int, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(r):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, r)
            st = os.lstat(p)
            d = {
                "type": stat.S_IFMT(st.st_mode),
                "mode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mtime_ns": st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else st.st_mtime_ns,
            }
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    d["content"] = f.read()
                d["blocks"] = st.st_blocks
                if st.st_nlink > 1:
                    d["linked_with"] = inodes.setdefault(st.st_ino, rel)
            elif stat.S_ISLNK(st.st_mode):
                d["target"] = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                d["rdev"] = st.st_rdev
            try:
                d["xattrs"] = {n: os.getxattr(p, n, follow_symlinks=False) for n in os.listxattr(p, follow_symlinks=False)}
            except OSError:
                d["xattrs"] = {}
            out[rel] = d
    return out


def assert_same_tree(src: str, dst: str) -> None:
    a, b = snapshot_of(src), snapshot_of(dst)
    assert sorted(a) == sorted(b), f"entries differ: only in source {set(a) - set(b)}, only in restore {set(b) - set(a)}"
    for rel in a:
        for key in a[rel]:
            if key == "blocks":
                continue
            assert a[rel][key] == b[rel].get(key), f"{rel!r}: {key} differs: {a[rel][key]!r:.80} != {b[rel].get(key)!r:.80}"
