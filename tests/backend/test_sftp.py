"""SFTP specifics beyond the contract, against a real sshd (tests/sshd.py).

How a host is reached (URLs, ~/.ssh/config, agent, ProxyJump), how it is refused
(unknown or changed host key, wrong key, dead port, silent port), and what happens when
the server dies or freezes mid-transfer and comes back.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lbk.backend.base import BackendError, FileKind, Handle
from lbk.backend.registry import open_backend
from lbk.backend.sftp import SftpBackend, SftpTarget, open_sftp, parse_sftp_url
from lbk.errors import UsageError
from tests.sshd import keygen, write_ssh_home


def h(kind: FileKind, n: int = 0) -> Handle:
    return Handle(kind, f"{n:064x}")


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.fixture
def use_home(tmp_path, monkeypatch):
    """Point HOME at a fresh directory; returns a function writing its ~/.ssh/config."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)

    def make(server, **kw):
        home = write_ssh_home(tmp_path / "home", server, **kw)
        monkeypatch.setenv("HOME", str(home.path))
        return home

    return make


# -- URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url,expect",
    [
        ("sftp:host:/srv/repo", SftpTarget("host", "/srv/repo")),
        ("sftp:ann@host:/srv/repo", SftpTarget("host", "/srv/repo", user="ann")),
        ("sftp:ann@host:repo", SftpTarget("host", "repo", user="ann")),
        ("sftp:ann@host:~/backups/", SftpTarget("host", "backups", user="ann")),
        ("sftp:host:/", SftpTarget("host", "/")),
        ("sftp:host:~", SftpTarget("host", ".")),
        ("sftp:host:~/", SftpTarget("host", ".")),
        ("sftp:host:/srv/repo//", SftpTarget("host", "/srv/repo")),
        ("sftp:ann@example.org@host:/r", SftpTarget("host", "/r", user="ann@example.org")),
        ("sftp:[::1]:/srv/repo", SftpTarget("::1", "/srv/repo")),
        ("sftp:ann@[fe80::1]:/r", SftpTarget("fe80::1", "/r", user="ann")),
        ("sftp://ann@host:2222//srv/repo", SftpTarget("host", "/srv/repo", user="ann", port=2222)),
        ("sftp://ann@host:2222/repo", SftpTarget("host", "repo", user="ann", port=2222)),
        ("sftp://host//srv/repo", SftpTarget("host", "/srv/repo")),
        ("sftp://host:/repo", SftpTarget("host", "repo")),
        ("sftp://ann@[::1]:22//srv/repo", SftpTarget("::1", "/srv/repo", user="ann", port=22)),
    ],
)
def test_url_parsing(url, expect):
    assert parse_sftp_url(url) == expect
    assert parse_sftp_url(str(expect)) == expect  # location round-trips


@pytest.mark.parametrize(
    "url",
    [
        "sftp:",
        "sftp:host",
        "sftp:host:",
        "sftp:@host:/x",
        "sftp:[::1:/x",
        "sftp://",
        "sftp://host",
        "sftp://host/",
        "sftp://host:abc//x",
        "sftp://host:0//x",
        "sftp://host:70000//x",
        "sftp://ann:secret@host//x",
        "sftp:ann:secret@host:/x",
    ],
)
def test_bad_urls_are_usage_errors(url):
    with pytest.raises(UsageError) as e:
        parse_sftp_url(url)
    assert url in one_line(e)


def test_registry_opens_sftp_without_connecting():
    b = open_backend("sftp:nowhere.invalid:/r")
    assert isinstance(b.inner, SftpBackend) and b.location == "sftp:nowhere.invalid:/r"
    b.close()


# -- reaching the server ----------------------------------------------------------------


def test_host_alias_from_ssh_config(ssh_home, tmp_path):
    where = ssh_home.server.root / tmp_path.name
    with open_sftp(f"sftp:lbktest:{where}") as b:
        b.create()
        b.save(h(FileKind.DATA, 0xAB), b"pack")
        b.save(h(FileKind.LOCK, 1), b"lock")
    data = where / "data" / "00" / f"{0xAB:064x}"
    assert data.read_bytes() == b"pack"
    assert stat.S_IMODE(data.stat().st_mode) == 0o600
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    assert (where / "locks" / f"{1:064x}").read_bytes() == b"lock"
    assert sorted(os.listdir(where)) == ["data", "index", "keys", "locks", "snapshots"]


def test_url_form_with_defaults_of_home(sshd, use_home, tmp_path):
    """No Host entry: port and user from the URL, ~/.ssh/id_ed25519 and ~/.ssh/known_hosts."""
    home = use_home(sshd)
    (home.ssh_dir / "config").write_text("")
    (home.ssh_dir / "id_ed25519").write_bytes(sshd.client_key.read_bytes())
    (home.ssh_dir / "id_ed25519").chmod(0o600)
    (home.ssh_dir / "known_hosts").write_bytes(sshd.known_hosts.read_bytes())
    where = sshd.root / tmp_path.name
    with open_sftp(f"sftp://{sshd.user}@127.0.0.1:{sshd.port}/{where}") as b:
        b.create()
        b.save(Handle(FileKind.CONFIG), b"cfg")
        assert b.exists()
    assert (where / "config").read_bytes() == b"cfg"


def test_keys_from_ssh_agent(sshd, use_home, tmp_path, monkeypatch):
    """The only usable key is in ssh-agent; a missing IdentityFile is skipped, as ssh does."""
    home = use_home(sshd, identity=tmp_path / "no-such-key")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        env = dict(os.environ, SSH_AUTH_SOCK=str(sock))
        subprocess.run(["ssh-add", "-q", str(sshd.client_key)], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        (home.ssh_dir / "config").write_text(
            (home.ssh_dir / "config").read_text().replace("IdentitiesOnly yes", "IdentitiesOnly no")
        )
        with open_sftp(home.url(sshd.root / tmp_path.name)) as b:
            assert not b.exists()
    finally:
        agent.terminate()
        agent.wait(5)


def test_proxy_jump(sshd, sshd_factory, use_home, tmp_path):
    """ProxyJump from ~/.ssh/config: the jump server's log shows the hop."""
    jump = sshd_factory()
    home = use_home(
        sshd,
        extra=(
            f"Host lbkjump\n    HostName 127.0.0.1\n    Port {jump.port}\n    User {jump.user}\n"
            f"    IdentityFile {jump.client_key}\n    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {jump.known_hosts}\n"
        ),
    )
    cfg = home.ssh_dir / "config"
    cfg.write_text(cfg.read_text().replace("    IdentitiesOnly yes\n", "    IdentitiesOnly yes\n    ProxyJump lbkjump\n", 1))
    before = jump.log.read_text().count("Accepted publickey")
    with open_sftp(home.url(sshd.root / tmp_path.name)) as b:
        b.create()
    assert jump.log.read_text().count("Accepted publickey") == before + 1


# -- being refused ----------------------------------------------------------------------


def test_unknown_host_key_is_refused(sshd, use_home, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    use_home(sshd, known_hosts=empty)
    where = sshd.root / tmp_path.name
    with open_sftp(f"sftp:lbktest:{where}") as b, pytest.raises(BackendError) as e:
        b.create()
    msg = one_line(e)
    assert "unknown" in msg and "`ssh lbktest`" in msg
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}" in msg
    assert not where.exists()


def test_changed_host_key_is_refused(sshd, use_home, tmp_path):
    other = keygen(tmp_path / "impostor")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} " + " ".join(Path(f"{other}.pub").read_text().split()[:2]) + "\n")
    use_home(sshd, known_hosts=kh)
    with open_sftp(f"sftp:lbktest:{sshd.root / tmp_path.name}") as b, pytest.raises(BackendError) as e:
        b.exists()
    msg = one_line(e)
    assert "CHANGED" in msg and f"ssh-keygen -R '[127.0.0.1]:{sshd.port}'" in msg


def test_wrong_client_key_is_refused(sshd, use_home, tmp_path):
    use_home(sshd, identity=keygen(tmp_path / "stranger"))
    with open_sftp(f"sftp:lbktest:{sshd.root / tmp_path.name}") as b, pytest.raises(BackendError) as e:
        b.exists()
    msg = one_line(e)
    assert "refused every key" in msg and f"{sshd.user}@127.0.0.1" in msg


def test_nothing_listening():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = SftpBackend(f"sftp://127.0.0.1:{port}//r", config=None)
    with b, pytest.raises(BackendError) as e:
        b.exists()
    assert "cannot connect" in one_line(e) and "refused" in one_line(e).lower()


def test_silent_server_hits_connect_timeout(tmp_path):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)  # the kernel completes the handshake; no SSH banner ever comes
        b = SftpBackend(f"sftp://127.0.0.1:{srv.getsockname()[1]}//r", connect_timeout=0.5, config=None)
        t = time.monotonic()
        with b, pytest.raises(BackendError) as e:
            b.exists()
        assert time.monotonic() - t < 3
    assert "no answer within 0.5 s" in one_line(e)


# -- behaviour of a working connection --------------------------------------------------


def test_temporary_files_are_not_listed_and_are_swept(sftp_backend, ssh_home):
    sftp_backend.create()
    root = Path(sftp_backend.root)
    for leftover in (root / "snapshots" / ".tmp-deadbeef", root / "data" / "7f" / ".tmp-0123"):
        leftover.write_bytes(b"partial")
    assert list(sftp_backend.list(FileKind.SNAPSHOT)) == []
    assert list(sftp_backend.list(FileKind.DATA)) == []
    assert sftp_backend.sweep_temporary() == 2
    assert not any(p.name.startswith(".tmp-") for p in root.rglob("*"))
    sftp_backend.close()


def test_create_refuses_a_file(ssh_home, tmp_path):
    target = ssh_home.server.root / f"{tmp_path.name}-file"
    target.write_bytes(b"x")
    with open_sftp(ssh_home.url(target)) as b, pytest.raises(BackendError) as e:
        b.create()
    assert "not a directory" in one_line(e)


def test_threads_share_one_backend(sftp_backend):
    sftp_backend.create()
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(12):
                n = t * 100 + i
                data = os.urandom(1000 + n) * (1 + i % 3)
                sftp_backend.save(h(FileKind.DATA, n), data)
                assert sftp_backend.load(h(FileKind.DATA, n)) == data
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(list(sftp_backend.list(FileKind.DATA))) == 96
    sftp_backend.close()


def logins(server) -> int:
    return server.log.read_text().count("Accepted publickey")


def test_connections_are_pooled_up_to_the_cap(ssh_home, tmp_path):
    """One connection for one caller; overlapping calls open a second, never a third."""
    server = ssh_home.server
    b = open_sftp(ssh_home.url(server.root / tmp_path.name))
    before = logins(server)
    b.create()
    for i in range(5):
        b.save(h(FileKind.INDEX, i), b"x")
    assert logins(server) == before + 1
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: b.save(h(FileKind.DATA, i), os.urandom(1 << 20)), range(36)))
    assert logins(server) == before + 2
    b.close()


def test_exclusive_save_has_one_winner(sftp_backend):
    """overwrite=False is decided by the server's no-clobber rename, not a racy stat."""
    sftp_backend.create()
    won: list[int] = []
    lost: list[str] = []

    def grab(i: int) -> None:
        try:
            sftp_backend.save(h(FileKind.LOCK, 1), b"%d" % i)
            won.append(i)
        except BackendError as e:
            lost.append(str(e))

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1 and len(lost) == 11
    assert all("already exists" in m for m in lost)
    assert sftp_backend.load(h(FileKind.LOCK, 1)) == b"%d" % won[0]
    assert list(Path(sftp_backend.root, "locks").iterdir()) == [Path(sftp_backend.root, "locks", f"{1:064x}")]
    sftp_backend.close()


@pytest.fixture
def tiny_disk(sshd, tmp_path):
    """A 2 MiB tmpfs inside the server's tree (needs root: mount)."""
    where = sshd.root / f"{tmp_path.name}-tiny"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


def test_full_disk_is_a_clear_error(ssh_home, tiny_disk):
    with open_sftp(ssh_home.url(tiny_disk / "repo")) as b:
        b.create()
        with pytest.raises(BackendError) as e:
            b.save(h(FileKind.DATA, 1), os.urandom(3 << 20))
        assert "disk full" in one_line(e) and "data/" in one_line(e)
        assert not [p for p in (tiny_disk / "repo").rglob(".tmp-*")]
        b.save(h(FileKind.SNAPSHOT, 1), b"small")  # the space was given back
        assert b.load(h(FileKind.SNAPSHOT, 1)) == b"small"


# -- the server goes away ---------------------------------------------------------------


@pytest.fixture
def own_server(sshd_factory, use_home):
    """A server this test may kill, freeze and restart, with HOME pointing at it."""
    server = sshd_factory()
    use_home(server)
    return server


def test_server_killed_during_save_then_back(own_server, tmp_path):
    where = own_server.root / "repo"
    b = open_sftp(f"sftp:lbktest:{where}")
    b.create()
    data = os.urandom(128 << 20)
    result: list[BaseException | None] = []

    def save() -> None:
        try:
            b.save(h(FileKind.DATA, 0x42), data)
            result.append(None)
        except BaseException as e:  # noqa: BLE001 - examined below
            result.append(e)

    t = threading.Thread(target=save)
    t.start()
    tmpdir = where / "data" / "00"
    deadline = time.monotonic() + 20
    while not any(p.name.startswith(".tmp-") and p.stat().st_size for p in tmpdir.iterdir()):
        assert time.monotonic() < deadline and t.is_alive(), "save never started"
        time.sleep(0.002)
    own_server.kill()
    t.join(10)
    assert not t.is_alive(), "save hung after the server died"
    err = result[0]
    assert isinstance(err, BackendError), err
    assert "\n" not in str(err) and "lost" in str(err), str(err)
    assert not (tmpdir / f"{0x42:064x}").exists()

    with pytest.raises(BackendError) as e:  # still down: fails at once, then backs off
        b.stat(h(FileKind.DATA, 0x42))
    assert "cannot connect" in one_line(e)
    with pytest.raises(BackendError) as e:
        b.stat(h(FileKind.DATA, 0x42))
    assert "next attempt in" in one_line(e)

    own_server.start()
    time.sleep(0.6)  # first backoff step
    assert list(b.list(FileKind.DATA)) == []  # the partial upload is invisible
    assert b.sweep_temporary() == 1
    b.save(h(FileKind.DATA, 0x42), data[:1000])
    assert b.load(h(FileKind.DATA, 0x42)) == data[:1000]
    b.close()


def test_idle_connection_lost_reconnects_transparently(own_server):
    b = open_sftp(f"sftp:lbktest:{own_server.root / 'repo'}")
    b.create()
    assert own_server.kill_sessions()
    time.sleep(0.2)  # the client sees the EOF and forgets the connection
    b.save(h(FileKind.INDEX, 1), b"after")
    assert b.load(h(FileKind.INDEX, 1)) == b"after"
    b.close()


def test_frozen_server_detected_by_keepalive(own_server):
    b = SftpBackend(f"sftp:lbktest:{own_server.root / 'repo'}", keepalive_interval=0.5, keepalive_count_max=2)
    b.create()
    own_server.freeze()
    result: list[BaseException | None] = []

    def save() -> None:
        try:
            b.save(h(FileKind.SNAPSHOT, 1), b"x" * 100_000)
            result.append(None)
        except BaseException as e:  # noqa: BLE001 - examined below
            result.append(e)

    try:
        t = threading.Thread(target=save, daemon=True)
        t.start()
        t.join(5)
        assert not t.is_alive(), "a frozen server was not noticed within 5 s"
    finally:
        own_server.thaw()
    assert isinstance(result[0], BackendError), result[0]
    assert "keepalive" in str(result[0]) and "\n" not in str(result[0])
    b.close()
