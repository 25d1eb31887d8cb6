"""The single-file build for rescue systems: ``python scripts/build_pyz.py`` makes one
file that runs, with a Python that has none of lbk's dependencies, every step of a
recovery: init, backup, restore (metadata-exact), image create and image restore."""

from __future__ import annotations

import glob
import importlib.util
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import PASSWORD, assert_same_tree, make_torture_tree, need

pytestmark = pytest.mark.slow  # the build resolves and bundles wheels for three Pythons: minutes

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def find_python(minor: int) -> str | None:
    """An interpreter for CPython 3.<minor>, outside any virtualenv."""
    if sys.version_info[:2] == (3, minor):
        return getattr(sys, "_base_executable", None) or sys.executable
    names = [shutil.which(f"python3.{minor}")] + sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/3.{minor}.*/bin/python3.{minor}")))
    for exe in filter(None, names):
        r = subprocess.run([exe, "-c", "import sys; print(sys.prefix == sys.base_prefix)"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip() == "True":
            return exe
    return None


@pytest.fixture(scope="module")
def pyz(tmp_path_factory) -> Path:
    need(importlib.util.find_spec("pex") is not None, "pex is not installed (pip install -e '.[pyz]')")
    out = tmp_path_factory.mktemp("dist") / "lbk.pyz"
    t = time.monotonic()
    r = subprocess.run([sys.executable, "scripts/build_pyz.py", "-o", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"\nbuilt {out.name}: {out.stat().st_size / MiB:.1f} MiB in {time.monotonic() - t:.0f} s")
    return out


class Bare:
    """A venv made with ``--without-pip`` from one interpreter: nothing but the standard
    library, and a clean environment with no path back to this checkout's venv."""

    def __init__(self, python: str, where: Path):
        subprocess.run([python, "-m", "venv", "--without-pip", str(where / "venv")], check=True)
        self.python = str(where / "venv" / "bin" / "python")
        self.pex_root = where / "pex-root"
        self.env = {
            "PATH": f"{where / 'venv' / 'bin'}:/usr/bin:/bin",
            "HOME": str(where / "home"),
            "PEX_ROOT": str(self.pex_root),
            "LBK_CACHE_DIR": str(where / "cache"),
            "XDG_CONFIG_HOME": str(where / "config"),
            "LBK_PASSWORD": PASSWORD,
            "LBK_INSECURE_FAST_KDF": "1",
            "LANG": "C.UTF-8",
        }
        self.cwd = where

    def run(self, pyz: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([self.python, str(pyz), *map(str, args)], env=self.env, cwd=self.cwd, capture_output=True,
                           text=True, timeout=600, stdin=subprocess.DEVNULL)
        if check:
            assert r.returncode == 0, f"lbk {args}: exit {r.returncode}: {r.stderr}"
        return r

    def lacks(self, module: str) -> bool:
        r = subprocess.run([self.python, "-c", f"import {module}"], env=self.env, cwd=self.cwd, capture_output=True)
        return r.returncode != 0


def python_or_skip(minor: int) -> str:
    exe = find_python(minor)
    if exe is None:
        if sys.version_info[:2] == (3, minor):
            need(False, f"python3.{minor}")
        pytest.skip(f"no CPython 3.{minor} on this machine (looked on PATH and in ~/.pyenv/versions)")
    return exe


def test_recovery_from_the_single_file_with_a_bare_python(pyz, tmp_path):
    bare = Bare(python_or_skip(sys.version_info[1]), tmp_path)
    for mod in ("click", "nacl", "zstandard", "blake3", "pyfastcdc", "asyncssh", "lbk"):
        assert bare.lacks(mod), f"the bare interpreter can import {mod}"

    t = time.monotonic()
    assert bare.run(pyz, "--version").stdout.strip() == "lbk, version 0.1.0"
    first = time.monotonic() - t
    t = time.monotonic()
    bare.run(pyz, "--version")
    warm = time.monotonic() - t
    print(f"\nfirst run {first:.2f} s, warm {warm:.2f} s")
    # it ran from a venv of its own, which sees none of this machine's site-packages
    (cfg,) = bare.pex_root.glob("venvs/*/*/*/pyvenv.cfg")
    assert "include-system-site-packages = false" in cfg.read_text()
    assert list(cfg.parent.glob("lib/python3.*/site-packages/nacl"))

    src = tmp_path / "src"
    make_torture_tree(str(src))
    repo = tmp_path / "repo"
    bare.run(pyz, "-r", repo, "init")
    bare.run(pyz, "-r", repo, "backup", src)
    target = tmp_path / "restored"
    bare.run(pyz, "-r", repo, "restore", "latest", "--target", target, "--verify")
    assert_same_tree(str(src), str(target / str(src).lstrip("/")))

    disk = tmp_path / "disk.img"
    rng = random.Random(3)
    with open(disk, "wb") as f:
        f.write(rng.randbytes(2 * MiB))
        f.write(bytes(MiB))
        f.write(rng.randbytes(MiB // 2))
        f.truncate(5 * MiB)
    bare.run(pyz, "-r", repo, "image", "create", disk, "--name", "disk")
    out = tmp_path / "disk-restored.img"
    bare.run(pyz, "-r", repo, "image", "restore", "latest", out)
    assert out.read_bytes() == disk.read_bytes()
    assert bare.run(pyz, "-r", repo, "image", "verify", "latest", out).returncode == 0

    # the /bin/sh header: `sh lbk.pyz` goes straight to the venv built above
    r = subprocess.run(["sh", str(pyz), "-r", str(repo), "snapshots"], env=bare.env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "2 snapshots" in r.stdout, r.stderr
    # errors stay one line with the documented exit code
    r = bare.run(pyz, "-r", tmp_path / "nowhere", "snapshots", check=False)
    assert r.returncode == 10 and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("minor", [11, 12, 13])
def test_the_same_file_runs_on_each_bundled_python(pyz, tmp_path, minor):
    bare = Bare(python_or_skip(minor), tmp_path)
    assert bare.lacks("click")
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_bytes(os.urandom(100_000))
    repo = tmp_path / "repo"
    bare.run(pyz, "-r", repo, "init")
    bare.run(pyz, "-r", repo, "backup", src)
    bare.run(pyz, "-r", repo, "restore", "latest", "--target", tmp_path / "r")
    assert (tmp_path / "r" / str(src).lstrip("/") / "notes.txt").read_bytes() == (src / "notes.txt").read_bytes()
    (cfg,) = bare.pex_root.glob("venvs/*/*/*/pyvenv.cfg")
    assert f"version = 3.{minor}." in cfg.read_text()  # its own interpreter, not another one found on PATH
