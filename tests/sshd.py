"""A real OpenSSH sshd on 127.0.0.1 for the SFTP tests, and a test HOME that points at it.

``SshServer`` owns one sshd: generated ed25519 host and client keys, its own config, pid
file and log, ``Subsystem sftp internal-sftp``, a free port on loopback. It is started
with an absolute path (sshd re-execs itself) in the foreground (``-D``) so that its pid
is ours to stop; per-connection children are found through /proc and killed by pid too,
which is how a test simulates the server dying in the middle of a transfer.

Fixtures (exposed through tests/conftest.py):

- ``sshd``: one server for the whole session (~0.1 s to start).
- ``sshd_factory``: more servers for tests that kill or freeze theirs.
- ``ssh_home``: a HOME whose ``~/.ssh/config`` has ``Host lbktest`` (HostName, Port,
  User, IdentityFile, UserKnownHostsFile) for the session server; ``SSH_AUTH_SOCK`` is
  removed so a developer's agent cannot change the outcome.

sshd missing: the tests skip with the reason, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["SshServer", "SshHome", "sshd", "sshd_factory", "ssh_home", "write_ssh_home"]

SSHD = "/usr/sbin/sshd"
ALIAS = "lbktest"


def _require_sshd() -> None:
    reason = None
    if not os.access(SSHD, os.X_OK) or not shutil.which("ssh-keygen"):
        reason = f"OpenSSH server not installed ({SSHD} or ssh-keygen missing): apt-get install openssh-server"
    else:
        try:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        except OSError as e:
            reason = f"cannot create /run/sshd (sshd's privilege separation directory): {e.strerror}"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    """Generate an unencrypted ed25519 key pair at ``path`` (+ ``.pub``)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(pid: int) -> list[int]:
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


class SshServer:
    """One sshd on 127.0.0.1:``port``, configured and keyed under ``base``."""

    def __init__(self, base: Path, port: int | None = None):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.port = port or _free_port()
        self.host_key = keygen(base / "host_ed25519")
        self.client_key = keygen(base / "client_ed25519")
        (base / "authorized_keys").write_bytes(Path(f"{self.client_key}.pub").read_bytes())
        self.known_hosts = base / "known_hosts"
        host_pub = " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub}\n")
        self.config = base / "sshd_config"
        self.pid_file = base / "sshd.pid"
        self.log = base / "sshd.log"
        self.root = base / "srv"
        self.root.mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self._write_config()

    def _write_config(self) -> None:
        lines = [
            "ListenAddress 127.0.0.1",
            f"Port {self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.base / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "AllowTcpForwarding yes",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
        ]
        # OpenSSH >= 9.8 penalises sources that fail to log in; the wrong-key test would
        # then lock 127.0.0.1 out for the rest of the session.
        self.config.write_text("\n".join(lines + ["PerSourcePenalties no"]) + "\n")
        if subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True).returncode:
            self.config.write_text("\n".join(lines) + "\n")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def start(self, timeout: float = 5.0) -> None:
        if self.pid:
            return
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-f", str(self.config), "-E", str(self.log)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log.read_text() if self.log.exists() else ""
                self.stop()
                raise RuntimeError(f"sshd did not start on port {self.port}:\n{log}")
            time.sleep(0.02)

    def _signal_all(self, sig: int) -> list[int]:
        pids = []
        if self.pid:
            pids = [self.pid] + descendants(self.pid)
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        return pids

    def kill_sessions(self, sig: int = signal.SIGKILL) -> list[int]:
        """Signal every per-connection sshd (not the listener); returns their pids."""
        pids = descendants(self.pid) if self.pid else []
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        return pids

    def kill(self) -> None:
        """Die like a crashed or powered-off server: SIGKILL the listener and sessions."""
        self._signal_all(signal.SIGKILL)
        if self.proc:
            self.proc.wait(5)

    def freeze(self) -> None:
        """SIGSTOP everything: the TCP connection stays up but nothing answers."""
        self._signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_all(signal.SIGCONT)

    def stop(self) -> None:
        if not self.proc:
            return
        if self.proc.poll() is None:
            self._signal_all(signal.SIGCONT)
            self._signal_all(signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self._signal_all(signal.SIGKILL)
                self.proc.wait(3)
        self.proc = None


@dataclass
class SshHome:
    """A HOME directory whose ``.ssh/config`` names the test server."""

    path: Path
    alias: str
    server: SshServer

    @property
    def ssh_dir(self) -> Path:
        return self.path / ".ssh"

    def url(self, path: str | os.PathLike) -> str:
        return f"sftp:{self.alias}:{path}"


def write_ssh_home(
    home: Path,
    server: SshServer,
    *,
    alias: str = ALIAS,
    identity: Path | None = None,
    known_hosts: Path | None = None,
    extra: str = "",
) -> SshHome:
    """Create ``home/.ssh/config`` with ``Host alias`` pointing at ``server``."""
    ssh = home / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True, mode=0o700)
    (ssh / "config").write_text(
        f"Host {alias}\n"
        f"    HostName 127.0.0.1\n"
        f"    Port {server.port}\n"
        f"    User {server.user}\n"
        f"    IdentityFile {identity or server.client_key}\n"
        f"    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {known_hosts or server.known_hosts}\n"
        f"{extra}"
    )
    return SshHome(home, alias, server)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    _require_sshd()
    server = SshServer(tmp_path_factory.mktemp("sshd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sshd_factory(tmp_path_factory):
    """Call it to get another started ``SshServer``; all are stopped after the test."""
    _require_sshd()
    servers: list[SshServer] = []

    def make(port: int | None = None) -> SshServer:
        s = SshServer(tmp_path_factory.mktemp("sshd"), port)
        s.start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def ssh_home(sshd, tmp_path, monkeypatch) -> SshHome:
    home = write_ssh_home(tmp_path / "home", sshd)
    monkeypatch.setenv("HOME", str(home.path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home
