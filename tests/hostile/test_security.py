"""Security checks that can fail: private cache and spool, no password anywhere, no plaintext.

One scenario per module, run under umask 0 (so lbk's own modes are what is tested) with
a distinctive password and markers in everything a user could leak: file and directory
names (one not UTF-8), content, symlink targets, xattr names and values, host, user,
tags, checkpoint and image names, the paths given to backup and watch. It initialises a
repository, backs up, takes a checkpoint and an image, runs the read commands with
--json and -vv, and runs ``watch`` while the repository is away, so captures go to the
spool. The tests then look at what the scenario left and printed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time

import pytest

from tests.helpers import PASSWORD as REPO_PASSWORD
from tests.watch.test_watch import WatchProc

PASSWORD = "pw-Zq8vX3rT9k-not-in-any-output"
M = "q7r2k9"  # every marker carries this; each is long enough not to occur by chance
MARKERS = {
    "path": f"pathmark-{M}", "dir": f"dirmark-{M}", "name": f"namemark-{M}", "content": f"contentmark-{M}",
    "target": f"targetmark-{M}", "xattr-name": f"xattrname-{M}", "xattr-value": f"xattrvalue-{M}",
    "host": f"hostmark-{M}", "user": f"usermark-{M}", "tag": f"tagmark-{M}", "checkpoint": f"ckptmark-{M}",
    "image": f"imagemark-{M}", "watched": f"watchmark-{M}", "spooled-name": f"spoolname-{M}",
    "spooled-content": f"spoolcontent-{M}", "spooled-target": f"spooltarget-{M}",
}
NON_UTF8 = f"latin1-{M}-".encode() + b"\xe9\xff"


def _tree(root: str, tag: str) -> None:
    """Names, content, a symlink target and an xattr carrying markers (``tag`` varies them)."""
    d = os.path.join(root, MARKERS["dir"])
    os.makedirs(d)
    with open(os.path.join(d, MARKERS["name"] + tag + ".txt"), "w") as f:
        f.write(MARKERS["content"] * 200)
    with open(os.path.join(os.fsencode(d), NON_UTF8), "wb") as f:
        f.write(MARKERS["content"].encode() + os.urandom(50_000))  # incompressible: stored as is
    os.symlink(MARKERS["target"], os.path.join(d, "link"))
    try:
        os.setxattr(d, "user." + MARKERS["xattr-name"], MARKERS["xattr-value"].encode())
    except OSError:
        pass


class Scene:
    def __init__(self, base):
        self.base = base
        self.repo = str(base / "repo")
        self.cache = str(base / "cache")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LBK_")}
        self.env.update(LBK_INSECURE_FAST_KDF="1", LBK_PASSWORD=PASSWORD, LBK_CACHE_DIR=self.cache,
                        XDG_CONFIG_HOME=str(base / "config"), XDG_DATA_HOME=str(base / "data"),
                        USER=MARKERS["user"], LOGNAME=MARKERS["user"])
        self.outputs: list[tuple[list[str], str, str]] = []
        self.cmdlines: list[bytes] = []
        self.offline_modes: dict[str, int] = {}
        self.spool_copy = str(base / "spool-copy")
        self.state_json = ""

    def lbk(self, *args, ok: bool = True, **env) -> subprocess.CompletedProcess:
        e = dict(self.env, **env)
        res = subprocess.run([sys.executable, "-m", "lbk", "-r", self.repo, *map(str, args)], env=e,
                             capture_output=True, text=True, errors="surrogateescape", timeout=120)
        self.outputs.append(([str(a) for a in args], res.stdout, res.stderr))
        if ok:
            assert res.returncode == 0, (args, res.stderr)
        return res


def _modes(root: str) -> dict[str, int]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files + ([] if dirpath != root else ["."]):
            p = os.path.normpath(os.path.join(dirpath, n))
            out[p] = os.lstat(p).st_mode
    return out


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Scene:
    s = Scene(tmp_path_factory.mktemp("security"))
    old_umask = os.umask(0)  # lbk must not rely on the user's umask
    try:
        _run(s)
    finally:
        os.umask(old_umask)
    return s


def _run(s: Scene) -> None:
    src = str(s.base / MARKERS["path"])
    _tree(src, "-backup")
    image = s.base / (MARKERS["path"] + ".img")
    image.write_bytes((MARKERS["content"] * 1000).encode() + os.urandom(300_000))
    s.lbk("init", "--json")
    s.lbk("backup", src, "--host", MARKERS["host"], "--tag", MARKERS["tag"], "-vv")
    s.lbk("backup", src, "--json", "-vv")
    s.lbk("checkpoint", src, "--name", MARKERS["checkpoint"], "--tag", MARKERS["tag"])
    s.lbk("image", "create", image, "--name", MARKERS["image"])
    ckpt = "@" + MARKERS["checkpoint"]  # latest is the image
    for args in (["snapshots"], ["snapshots", "--json"], ["ls", "-l", "-R", ckpt], ["ls", "-R", ckpt, "--json"],
                 ["restore", ckpt, "--target", s.base / "out", "-vv"],
                 ["restore", ckpt, "--target", s.base / "out2", "--json", "-vv"],
                 ["check", "--read-data", "-vv"], ["check", "--read-data", "--json"], ["stats", "--json"],
                 ["log", src, "--json"], ["log", src], ["find", f"*{M}*", "--json"], ["diff", ckpt, src, "--json"],
                 ["key", "list", "--json"], ["cat", "config"], ["cat", "snapshot", "latest"],
                 ["forget", "--keep-last", "1", "--dry-run", "--json"], ["status", "--json"], ["image", "list", "--json"]):
        s.lbk(*args)
    s.lbk("snapshots", ok=False, LBK_PASSWORD="wrong " + PASSWORD[::-1])  # a failure prints no password

    watched = s.base / MARKERS["watched"]
    watched.mkdir()
    (watched / "before.txt").write_text("before")
    w = WatchProc(s.repo, watched, "--debounce", "0.2", "-vv", env={k: v for k, v in s.env.items()})
    try:
        s.cmdlines.append(open(f"/proc/{w.p.pid}/cmdline", "rb").read())
        os.rename(s.repo, s.repo + ".away")  # the disk is unplugged
        d = watched / MARKERS["dir"]
        d.mkdir()
        (d / (MARKERS["spooled-name"] + ".txt")).write_text(MARKERS["spooled-content"] * 100)
        os.symlink(MARKERS["spooled-target"], d / "link")
        (watched / os.fsdecode(NON_UTF8)).write_bytes(MARKERS["spooled-content"].encode() + os.urandom(40_000))
        w.wait_for(lambda ev: ev["message_type"] == "committed" and ev.get("spooled"), timeout=30)
        time.sleep(0.3)
        s.cmdlines.append(open(f"/proc/{w.p.pid}/cmdline", "rb").read())
        s.offline_modes = _modes(s.cache)
        (state_dir,) = [os.path.join(s.cache, d) for d in os.listdir(s.cache) if d.startswith("watch-")]
        shutil.copytree(state_dir, s.spool_copy)
        with open(os.path.join(state_dir, "state.json")) as f:
            s.state_json = f.read()
        s.outputs.append((["status"], subprocess.run([sys.executable, "-m", "lbk", "status", "--json"], env=s.env,
                                                     capture_output=True, text=True).stdout, ""))
        assert any(f.startswith("0") for f in os.listdir(os.path.join(state_dir, "spool"))), "nothing was spooled"
        os.rename(s.repo + ".away", s.repo)
        w.wait_for(lambda ev: ev["message_type"] == "synced", timeout=30)
    finally:
        if os.path.exists(s.repo + ".away"):
            os.rename(s.repo + ".away", s.repo)
        code = w.stop()
    s.outputs.append((["watch"], "\n".join(json.dumps(e) for _, e in w.events), w.p.stderr.read().decode()))
    assert code == 0


def _files(root: str):
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                with open(p, "rb") as fh:
                    yield p, fh.read()


def test_cache_and_spool_are_0700_and_0600_under_umask_0(scene):
    seen = {**scene.offline_modes, **_modes(scene.cache)}  # the spool existed while offline
    assert any("/spool/" in p for p in seen) and any(p.endswith("catalog.sqlite") for p in seen)
    assert any(p.endswith("state.json") for p in seen) and any("/mirror/" in p for p in seen)
    wrong = {p: oct(stat.S_IMODE(m)) for p, m in seen.items()
             if stat.S_IMODE(m) != (0o700 if stat.S_ISDIR(m) else 0o600)}
    assert not wrong, wrong


def test_the_password_appears_nowhere(scene):
    pw = PASSWORD.encode()
    assert len(scene.outputs) >= 25
    for args, out, err in scene.outputs:
        assert PASSWORD not in out and PASSWORD not in err, args
    assert scene.cmdlines and all(pw not in c for c in scene.cmdlines)
    assert scene.state_json and PASSWORD not in scene.state_json
    for root in (scene.repo, scene.cache, scene.spool_copy):
        for path, data in _files(root):
            assert pw not in data, path


@pytest.mark.parametrize("where", ["repository", "spool"])
def test_no_marker_in_plaintext(scene, where):
    """The repository and the offline spool (and its mirror) hold ciphertext only."""
    root = scene.repo if where == "repository" else os.path.join(scene.spool_copy)
    needles = [m.encode() for m in MARKERS.values()] + [NON_UTF8, M.encode()]
    if len(os.uname().nodename) >= 6:  # shorter names collide with random bytes
        needles.append(os.uname().nodename.encode())
    files = dict(_files(root)) if where == "repository" else {
        p: d for p, d in _files(root) if "/spool/" in p or "/mirror/" in p}
    assert len(files) > 3
    listed = next(out for args, out, _ in scene.outputs if args[:3] == ["ls", "-l", "-R"])
    captured = next(out for args, out, _ in scene.outputs if args == ["watch"])
    for m in ("path", "dir", "name", "target"):  # the markers did go in: the decrypted listing shows them
        assert MARKERS[m] in listed
    assert MARKERS["spooled-name"] in captured and MARKERS["host"] in listed + str(scene.outputs)
    for path, data in files.items():
        for n in needles:
            assert n not in data, f"{n!r} in {path}"


@pytest.mark.parametrize("script,shown,hidden", [
    # prints the password, then fails: lbk must not echo what it printed
    (f"echo {PASSWORD}; exit 1", None, PASSWORD),
    # a helper's own message on stderr reaches the user (as ssh-askpass's does); stdout never
    (f"echo {PASSWORD}-stdout; echo helper-says-no >&2; exit 3", "helper-says-no", PASSWORD),
])
def test_a_failing_password_command_is_not_echoed(lbk, tmp_path, script, shown, hidden):
    assert lbk("-r", tmp_path / "repo", "init").code == 0
    cmd = f"sh -c '{script}'"
    for extra in ([], ["--json"]):
        res = subprocess.run([sys.executable, "-m", "lbk", "-r", str(tmp_path / "repo"), "snapshots", *extra,
                              "--password-command", cmd], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "LBK_PASSWORD"})
        assert res.returncode == 1
        assert hidden not in res.stdout + res.stderr
        assert "password command exited with status" in res.stderr
        if shown:
            assert shown in res.stderr


def test_password_command_output_opens_the_repository(lbk, tmp_path):
    assert lbk("-r", tmp_path / "repo", "init").code == 0
    env = {k: v for k, v in os.environ.items() if k != "LBK_PASSWORD"}
    res = subprocess.run([sys.executable, "-m", "lbk", "-r", str(tmp_path / "repo"), "snapshots", "--json",
                          "--password-command", f"printf '%s\\n' '{REPO_PASSWORD}'"], capture_output=True, text=True,
                         env=env)
    assert res.returncode == 0, res.stderr
    assert REPO_PASSWORD not in res.stdout + res.stderr
