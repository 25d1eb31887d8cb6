"""The CLI against a real OpenSSH sshd (tests/sshd.py), as real processes, over ``sftp:``.

Each test runs ``lbk`` with HOME pointing at a test home whose ``~/.ssh/config`` names
the server as ``Host lbktest``, so every repository URL here is ``sftp:lbktest:/path``:
the alias, port, user, key and known_hosts all come from that file, as for a user.
Covers issue 5's list: a full round trip (init, backup, log, check --read-data,
restore), refusals (unknown host key, wrong client key), the server killed in the middle
of a backup, and the server stopped and restarted under ``lbk watch``; plus a server
frozen mid-backup (keepalive) and an unknown host key met by ``watch``. A failing command must exit 1 with one ``lbk: ...`` line on stderr: asyncio's
or asyncssh's noise around it counts as a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import assert_same_tree, lbk_popen, lbk_proc, make_torture_tree, need
from tests.sshd import SshHome, SshServer, keygen, write_ssh_home
from tests.watch.test_watch import WatchProc

PACK_NAME = re.compile(r"[0-9a-f]{64}\Z")


def run(home: SshHome, *args) -> subprocess.CompletedProcess:
    """``lbk ARGS`` as a process whose HOME is ``home`` (LBK_* from lbk_env are kept)."""
    return lbk_proc(*args, env={"HOME": str(home.path)})


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr}"
    return p


def one_line_error(p: subprocess.CompletedProcess | tuple[int, str], code: int = 1) -> str:
    """The process failed with ``code`` and said why in exactly one line, no traceback."""
    rc, err = (p.returncode, p.stderr) if isinstance(p, subprocess.CompletedProcess) else p
    lines = err.splitlines()
    assert rc == code, f"exit {rc} (want {code}): {err}"
    assert len(lines) == 1 and lines[0].startswith("lbk: "), f"not one line: {err!r}"
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


def summary(p: subprocess.CompletedProcess) -> dict:
    return [json.loads(x) for x in ok(p).stdout.splitlines() if '"summary"' in x][-1]


def files_in(d: Path) -> list[Path]:
    """Committed repository files under ``d`` (no ``.tmp-*`` uploads in progress)."""
    if not d.exists():
        return []
    return [p for p in d.rglob("*") if PACK_NAME.match(p.name)]


@pytest.fixture
def own_home(tmp_path, monkeypatch):
    """A test home for a server of the test's own; the developer's ssh-agent is kept out."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)

    def make(server: SshServer, **kw) -> SshHome:
        return write_ssh_home(tmp_path / "home", server, **kw)

    return make


# -- a full round trip through the Host alias ---------------------------------------------


def test_init_backup_log_check_restore_through_host_alias(ssh_home, tmp_path):
    where = ssh_home.server.root / f"{tmp_path.name}-repo"
    url = f"sftp:lbktest:{where}"
    src = tmp_path / "src"
    make_torture_tree(str(src))
    notes = src / "notes.txt"
    notes.write_text("first version\n")

    out = ok(run(ssh_home, "-r", url, "init")).stdout
    assert url in out
    assert (where / "config").is_file() and (where / "keys").is_dir()  # it went to the server's disk
    first = summary(run(ssh_home, "-r", url, "--json", "backup", src))
    notes.write_text("second version, longer\n")
    second = summary(run(ssh_home, "-r", url, "--json", "backup", src))
    assert first["files_new"] > 5 and second["files_changed"] == 1, (first, second)
    assert files_in(where / "snapshots") and len(files_in(where / "snapshots")) == 2
    assert not list(where.rglob(".tmp-*"))  # every upload was renamed into place

    log = json.loads(ok(run(ssh_home, "-r", url, "--json", "log", notes)).stdout)
    assert [(v["snapshot"], v["change"], v["size"]) for v in log] == [
        (second["snapshot_id"], "modified", len("second version, longer\n")),
        (first["snapshot_id"], "added", len("first version\n")),
    ]

    chk = ok(run(ssh_home, "-r", url, "check", "--read-data"))
    assert "no errors" in chk.stdout

    target = tmp_path / "restored"
    ok(run(ssh_home, "-r", url, "restore", "latest", "--target", target))
    assert_same_tree(str(src), str(target / str(src).lstrip("/")))


# -- refusals -----------------------------------------------------------------------------


def test_unknown_host_key_is_refused_with_how_to_accept(sshd, own_home, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    home = own_home(sshd, known_hosts=empty)
    where = sshd.root / f"{tmp_path.name}-repo"
    msg = one_line_error(run(home, "-r", f"sftp:lbktest:{where}", "init"))
    assert "host key is unknown" in msg
    advice = f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}"
    assert "`ssh lbktest`" in msg and f"`{advice}`" in msg, msg
    assert not where.exists()  # nothing was written to a server nobody vouched for
    assert empty.read_text() == ""  # and the key was not accepted behind the user's back

    # the advice works: run it as printed, and the same command succeeds
    need(shutil.which("ssh-keyscan") is not None, "ssh-keyscan (openssh-client) is needed")
    subprocess.run(advice, shell=True, check=True, capture_output=True)
    ok(run(home, "-r", f"sftp:lbktest:{where}", "init"))
    assert (where / "config").is_file()


def test_wrong_client_key_is_refused_with_a_clear_error(sshd, own_home, tmp_path):
    home = own_home(sshd, identity=keygen(tmp_path / "stranger"))
    where = sshd.root / f"{tmp_path.name}-repo"
    msg = one_line_error(run(home, "-r", f"sftp:lbktest:{where}", "init"))
    assert "refused every key" in msg and f"{sshd.user}@127.0.0.1" in msg and "IdentityFile" in msg
    assert not where.exists()


def test_watch_refuses_unknown_host_key_with_the_reason(sshd, own_home, tmp_path):
    where = sshd.root / f"{tmp_path.name}-repo"
    url = f"sftp:lbktest:{where}"
    ok(run(own_home(sshd), "-r", url, "init"))
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    home = own_home(sshd, known_hosts=empty)  # e.g. a new laptop, or the server was reinstalled
    tree = tmp_path / "tree"
    tree.mkdir()
    msg = one_line_error(lbk_proc("-r", url, "watch", tree, env={"HOME": str(home.path)}, timeout=60))
    assert "host key is unknown" in msg, msg


# -- the server dies ----------------------------------------------------------------------


def _random_tree(root: Path, files: int, size: int) -> None:
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"f{i:03d}.bin").write_bytes(os.urandom(size))


def _backup_until_first_pack(home: SshHome, url: str, where: Path, src: Path) -> subprocess.Popen:
    """Start ``lbk backup src``; return once a new pack is in place on the server."""
    packs = len(files_in(where / "data"))
    p = lbk_popen("-r", url, "backup", src, env={"HOME": str(home.path)},
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(files_in(where / "data")) <= packs:
        assert p.poll() is None, f"backup ended before the server could be stopped: {p.communicate()}"
        assert time.monotonic() < deadline, "no pack reached the server in 60 s"
        time.sleep(0.005)
    return p


def _exit_of(p: subprocess.Popen, timeout: float) -> tuple[int, str, float]:
    """(exit code, stderr, seconds) of ``p``, failing the test when it hangs."""
    t = time.monotonic()
    try:
        _out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"lbk hung: still running {timeout:.0f} s after the server went away")
    return p.returncode, err, time.monotonic() - t


@pytest.mark.slow
def test_server_killed_mid_backup_then_back(sshd_factory, own_home, tmp_path):
    server = sshd_factory()
    home = own_home(server)
    where = server.root / "repo"
    url = f"sftp:lbktest:{where}"
    small = tmp_path / "small"
    make_torture_tree(str(small))
    big = tmp_path / "big"
    _random_tree(big, 32, 4 << 20)  # 128 MiB that does not compress: eight 16 MiB packs

    ok(run(home, "-r", url, "init"))
    before = summary(run(home, "-r", url, "--json", "backup", small))

    p = _backup_until_first_pack(home, url, where, big)
    server.kill()
    rc, err, took = _exit_of(p, 20)
    msg = one_line_error((rc, err))
    assert "lost" in msg or "cannot connect" in msg, msg
    assert took < 6, f"the dead server was noticed after {took:.1f} s"

    server.start()  # the same port, host key and authorized key
    after = summary(run(home, "-r", url, "--json", "backup", big))
    assert after["files_new"] == 32
    chk = ok(run(home, "-r", url, "check", "--read-data"))
    assert "no errors" in chk.stdout
    snaps = {f.name for f in files_in(where / "snapshots")}
    assert snaps == {before["snapshot_id"], after["snapshot_id"]}  # the killed backup wrote none
    target = tmp_path / "restored"
    ok(run(home, "-r", url, "restore", before["snapshot_id"][:12], "--target", target))
    assert_same_tree(str(small), str(target / str(small).lstrip("/")))


@pytest.mark.slow
def test_server_frozen_mid_backup_fails_within_the_keepalive(sshd_factory, own_home, tmp_path):
    """A server that stops answering (TCP still up) is given up after ServerAlive*, with
    one line; the lock release that follows must not wait out ConnectTimeout (10 s) on
    the frozen listener, and asyncssh's orphaned transfer tasks print no tracebacks."""
    server = sshd_factory()
    home = own_home(server, extra="    ServerAliveInterval 1\n    ServerAliveCountMax 2\n")
    where = server.root / "repo"
    url = f"sftp:lbktest:{where}"
    big = tmp_path / "big"
    _random_tree(big, 12, 4 << 20)  # 48 MiB: still uploading when the first pack lands
    ok(run(home, "-r", url, "init"))
    p = _backup_until_first_pack(home, url, where, big)
    server.freeze()
    try:
        rc, err, took = _exit_of(p, 30)
    finally:
        server.thaw()
    msg = one_line_error((rc, err))
    assert "not responding to keepalive" in msg, msg
    assert took < 8, f"a frozen server with a 1 s x 2 keepalive was given up after {took:.1f} s"


def test_watch_spools_while_server_is_down_and_syncs_when_back(sshd_factory, own_home, tmp_path):
    server = sshd_factory()
    home = own_home(server)
    url = f"sftp:lbktest:{server.root / 'repo'}"
    ok(run(home, "-r", url, "init"))
    tree = tmp_path / "tree"
    tree.mkdir()
    doc = tree / "doc.txt"
    doc.write_text("online\n")
    w = WatchProc(url, tree, "--debounce", "0.2", "--commit-interval", "0.1", env={"HOME": str(home.path)})
    try:
        assert not w.of("committed")[0]["spooled"]  # the baseline went straight to the server

        server.stop()
        offline = ["offline one\n", "offline two, longer\n"]
        spooled = []
        for text in offline:
            doc.write_text(text)
            ev = w.committed(doc)
            assert ev["spooled"], ev
            spooled.append(ev["snapshot_id"])
        st = json.loads(ok(run(home, "status", "--json")).stdout)["daemons"][0]
        assert st["running"] and not st["online"], st
        assert st["spool_files"] > 0 and st["spool_bytes"] > 0, st

        server.start()
        synced = w.wait_for(lambda ev: ev["message_type"] == "synced", timeout=30)
        assert synced["files"] >= 2 * 3  # pack, index and snapshot per offline commit
        st = json.loads(ok(run(home, "status", "--json")).stdout)["daemons"][0]
        assert st["spool_files"] == 0 and st["online"], st
    finally:
        code = w.stop()
    assert code == 0, w.p.stderr.read()

    log = json.loads(ok(run(home, "-r", url, "--json", "log", doc)).stdout)
    assert [(v["snapshot"], v["size"]) for v in log[:2]] == [
        (spooled[1], len(offline[1])),
        (spooled[0], len(offline[0])),
    ], log
    assert log[-1]["change"] == "added" and log[-1]["size"] == len("online\n"), log
    assert ok(run(home, "-r", url, "check", "--read-data")).returncode == 0
