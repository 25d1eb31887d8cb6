"""A repository on another machine over SFTP (``sftp:`` URLs), through OpenSSH's rules.

Layout on the server is the local backend's: ``config``, ``keys/``, ``data/<2 hex>/``,
``index/``, ``snapshots/``, ``locks/``. A save writes ``<dir>/.tmp-<hex>`` (mode 0600),
fsyncs it when the server offers ``fsync@openssh.com``, and renames it into place:

- ``overwrite=False`` uses the SFTP v3 ``rename``, which refuses an existing target.
  OpenSSH implements it as ``link()`` + ``unlink()``, so "refuse if it exists" is atomic
  (two writers of the same lock cannot both win), with no extra stat round trip.
- ``overwrite=True`` uses ``posix-rename@openssh.com`` (an atomic replace).

A failed save removes its temporary file when the connection still allows it; when it
does not, the file is never listed and ``sweep_temporary`` (run by prune) removes it.
SFTP cannot fsync a directory, so a rename is as durable as the server's filesystem
makes it (ext4/xfs/zfs journal renames).

URLs (restic's forms)::

    sftp:[user@]host:/abs/path        sftp:[user@]host:rel/path   (relative to login dir)
    sftp://[user@]host[:port]//abs/path   sftp://[user@]host[:port]/rel/path
    sftp:[user@][::1]:/path           (IPv6 in brackets)

``host`` may be a ``Host`` alias of ``~/.ssh/config``; HostName, User, Port,
IdentityFile, IdentitiesOnly, ProxyJump, ProxyCommand, UserKnownHostsFile, Ciphers,
ConnectTimeout and ServerAlive* from it are honoured, keys in the SSH agent are used,
and the host key must be in known_hosts: an unknown or changed key is refused with one
line that says how to accept it. Nothing here ever asks a question on a terminal.

Why asyncssh, not paramiko: measured with 256 MiB over loopback to OpenSSH 9.2 on a
busy 2-core machine, aes128-gcm for all, range over 5 runs in two sessions (median of
the last three):

    =================================================  ================  ================
    client                                             put MiB/s         get MiB/s
    =================================================  ================  ================
    ``sftp`` binary (the ceiling)                      117-170 (155)     129-260 (152)
    asyncssh ``write``/``read`` (parallel requests)    95-143 (116)      92-140 (109)
    paramiko, own socket with TCP_NODELAY, pipelined   78-157 (96)       36-86 (65) readv,
    1 MiB writes                                                         34-58 (44) prefetch
    =================================================  ================  ================

asyncssh keeps up to 128 read/write requests in flight per call and sets TCP_NODELAY
itself; paramiko needs its socket built by hand for TCP_NODELAY, and its prefetching
``read(n)`` is quadratic in ``n`` (bytes concatenation: a single 256 MiB read ran for
minutes). asyncssh also reads ``~/.ssh/config`` the way OpenSSH does (Match,
ProxyJump, hashed known_hosts) where paramiko leaves most of that to the caller.
``bench/sftp_throughput.py`` measures this backend against the ``sftp`` binary.

Concurrency: each backend owns one asyncio loop in a daemon thread. The public methods
are ordinary blocking calls, safe from any number of threads: they submit a coroutine
to that loop and wait, so saves and loads from several engine threads become
interleaved, pipelined SFTP requests. Calls go to an idle SSH connection; when all are
busy a second one is opened in the background (``connections``, default 2), because
OpenSSH's sftp-server answers one request at a time and a second connection keeps data
flowing while the first waits for an fsync. One caller never costs a second handshake.

Failure: the TCP+SSH handshake must finish within ``connect_timeout`` (10 s) and the
server must answer an SSH keepalive every ``keepalive_interval`` (5 s) with at most
``keepalive_count_max`` (3) misses (given up at the next tick, as OpenSSH does), so a
dead or frozen server is noticed within about 20 s and a killed one at once. Every
failure is a ``BackendError`` with one line; the operation that met a lost connection
fails (retries belong in a retry wrapper), and the next call reconnects, except after a
keepalive timeout: then no handshake is tried for two keepalive intervals, so what a
failing command still does (release its lock) fails at once instead of waiting out
``connect_timeout`` on a frozen listener. Failed connection attempts back off (0.5 s
doubling to 30 s): inside that window calls fail at once instead of hammering a server
that is down. asyncssh's own transfer tasks that die with the connection are not
reported: their error is the one the caller gets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import posixpath
import re
import secrets
import stat as statmod
import threading
import time
from dataclasses import dataclass
import warnings
from typing import Any, Awaitable, Callable, Iterator, TypeVar

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():
    # newer cryptography releases deprecate DSA, which asyncssh names at import time; the
    # warning is about asyncssh's internals, nothing a user can act on, and it would
    # break lbk's one-line error output
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    import asyncssh

from lbk.backend.base import AlreadyExists, BackendError, FileInfo, FileKind, Handle, NotFound, check_range
from lbk import faults
from lbk.errors import UsageError

__all__ = ["SftpTarget", "SftpBackend", "parse_sftp_url", "open_sftp"]

CONNECT_TIMEOUT = 10.0
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_COUNT_MAX = 3
# Two: while OpenSSH's sftp-server fsyncs one pack, a second connection keeps the next
# one flowing (+17% for 4 threads saving 16 MiB packs here, median of 8 runs: 97 -> 114
# MiB/s; more where fsync is slower). Loads gain nothing measurable.
CONNECTIONS = 2
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
# AES-GCM runs on AES-NI and roughly doubles throughput over the default chacha20.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
_PARALLEL_DIRS = 32  # directory requests in flight at once (create, list, sweep)

_DIRS = [k for k in FileKind if k is not FileKind.CONFIG]
_T = TypeVar("_T")


def _not_send_after_loss(record: logging.LogRecord) -> bool:
    """asyncio warns "socket.send() raised exception." for each packet asyncssh's orphaned
    transfer tasks still write after the connection died: noise (often a dozen lines)
    around the one-line error the caller gets."""
    return record.getMessage() != "socket.send() raised exception."


logging.getLogger("asyncio").addFilter(_not_send_after_loss)


# -- URLs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SftpTarget:
    """Where a repository lives: ``host`` may be an ssh_config alias; ``None`` = from config."""

    host: str
    path: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port is not None:
            return f"sftp://{user}{host}:{self.port}/{self.path}"
        return f"sftp:{user}{host}:{self.path}"


_USER = r"(?:(?P<user>[^@/]+(?:@[^@/]+)*)@)?"  # may hold '@' (user@domain@host)
_HOST = r"(?:\[(?P<ip6>[^\]]+)\]|(?P<host>[^:/@\[\]]+))"
_URL_FORM = re.compile(rf"sftp://{_USER}{_HOST}(?::(?P<port>[^/]*))?(?P<path>/.*)?\Z", re.S)
_SCP_FORM = re.compile(rf"sftp:{_USER}{_HOST}:(?P<path>.*)\Z", re.S)


def parse_sftp_url(url: str) -> SftpTarget:
    """Parse ``sftp:[user@]host:path`` or ``sftp://[user@]host[:port]/path``.

    As in restic, the URL form's path starts after the first slash: ``//srv/repo`` is
    absolute, ``/repo`` is relative to the login directory. A leading ``~/`` means the
    login directory too (SFTP servers do not expand ``~``).
    """
    if url.startswith("sftp://"):
        m = _URL_FORM.match(url)
        if not m or not m.group("path") or m.group("path") == "/":
            raise UsageError(f"invalid sftp URL {url!r}: expected sftp://[user@]host[:port]/path")
        path = m.group("path")[1:]
        port_s = m.group("port")
        port = None
        if port_s:
            if not port_s.isdigit() or not 0 < int(port_s) < 65536:
                raise UsageError(f"invalid port {port_s!r} in sftp URL {url!r}")
            port = int(port_s)
    else:
        m = _SCP_FORM.match(url)
        if not m or not m.group("path"):
            raise UsageError(f"invalid sftp URL {url!r}: expected sftp:[user@]host:/path")
        path, port = m.group("path"), None
    if path == "~" or path.startswith("~/"):
        path = path[2:] or "."
    path = path.rstrip("/") or "/"
    user = m.group("user")
    if user and ":" in user:
        raise UsageError(f"a password in the sftp URL is not supported: {url!r}; use a key or ssh-agent")
    return SftpTarget(host=m.group("ip6") or m.group("host"), path=path, user=user, port=port)


def open_sftp(url: str) -> "SftpBackend":
    """The backend for an ``sftp:`` URL; it connects on first use."""
    return SftpBackend(parse_sftp_url(url))


# -- the backend --------------------------------------------------------------------


def _line(x: object) -> str:
    return " ".join(str(x).split()) or type(x).__name__


@dataclass(eq=False)
class _Link:
    """One SSH connection with its SFTP channel, and how many calls are using it."""

    conn: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient
    busy: int = 0


class _Client(asyncssh.SSHClient):
    """Remembers why the connection ended ("Server not responding to keepalive")."""

    lost_reason: str | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.lost_reason = _line(exc)


def _oserror(e: OSError) -> str:
    if e.errno and e.errno > 0:
        return os.strerror(e.errno)
    return _line(e.strerror or e)


_LOST = (
    asyncssh.SFTPConnectionLost,
    asyncssh.DisconnectError,
    ConnectionError,
    EOFError,
    asyncio.IncompleteReadError,
    BrokenPipeError,
    TimeoutError,
)


class SftpBackend:
    def __init__(
        self,
        target: SftpTarget | str,
        *,
        connect_timeout: float | None = None,
        keepalive_interval: float | None = None,
        keepalive_count_max: int | None = None,
        config: tuple | list | None = (),
        connections: int = CONNECTIONS,
    ):
        """``None`` for a timing means: from ``~/.ssh/config``, else the module default.

        ``connections`` caps the SSH connections to the server; the second one is only
        opened when calls overlap.

        ``config`` is asyncssh's: ``()`` reads ``~/.ssh/config``, ``None`` reads nothing,
        a list names the files.
        """
        self.target = parse_sftp_url(target) if isinstance(target, str) else target
        self.location = str(self.target)
        self.root = self.target.path
        self._connect_timeout = connect_timeout
        self._keepalive_interval = keepalive_interval
        self._keepalive_count_max = keepalive_count_max
        self._config = config
        self._thread_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._max_links = max(1, connections)
        # Owned by the loop thread:
        self._links: list[_Link] = []
        self._opening_extra = False
        self._connect_lock: asyncio.Lock | None = None
        self._backoff = 0.0
        self._retry_at = 0.0
        self._last_error: BackendError | None = None
        self._fsync = True
        self._background: set[asyncio.Future[None]] = set()
        self._dest = self.target.host  # "host:port" once connected, for messages
        self._keepalive = KEEPALIVE_INTERVAL  # in effect, once connected

    # -- the loop thread ----------------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._thread_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                loop.set_exception_handler(_quiet_orphans)
                t = threading.Thread(target=loop.run_forever, name=f"lbk-sftp {self.target.host}", daemon=True)
                t.start()
                self._loop, self._thread = loop, t
            return self._loop

    def _call(self, fn: Callable[[asyncssh.SFTPClient], Awaitable[_T]], what: str) -> _T:
        """Run ``fn(sftp)`` on the loop thread; translate every failure to one line."""
        fut = asyncio.run_coroutine_threadsafe(self._guarded(fn, what), self._ensure_loop())
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            raise BackendError(f"{what}: the backend was closed") from None
        except BaseException:
            fut.cancel()
            raise

    async def _guarded(self, fn: Callable[[asyncssh.SFTPClient], Awaitable[_T]], what: str) -> _T:
        link = await self._link()
        link.busy += 1
        try:
            return await fn(link.sftp)
        except (BackendError, UsageError):
            raise
        except asyncssh.SFTPNoSuchFile as e:
            raise NotFound(f"{what}: not found") from e
        except asyncssh.SFTPPermissionDenied as e:
            raise BackendError(f"{what}: permission denied on {self._dest}") from e
        except _LOST as e:
            reason = getattr(link.conn.get_owner(), "lost_reason", None) or _line(e)
            self._drop(link)
            err = BackendError(f"{what}: connection to {self._dest} lost: {reason}")
            if "keepalive" in reason and not self._retry_at:
                # The other connections, frozen too, give up within one more interval;
                # no new handshake before then.
                self._backoff = BACKOFF_START
                self._retry_at = time.monotonic() + 2 * self._keepalive
                self._last_error = BackendError(f"sftp {self._dest}: connection lost: {reason}")
            raise err from e
        except asyncssh.SFTPError as e:
            raise BackendError(f"{what}: server error: {_line(e.reason)}") from e
        except OSError as e:
            raise BackendError(f"{what}: {_oserror(e)}") from e
        finally:
            link.busy -= 1

    # -- connecting ---------------------------------------------------------------
    async def _link(self) -> _Link:
        """An idle connection; else open one more in the background and share the least busy."""
        self._links = [x for x in self._links if not x.conn.is_closed()]
        if self._links:
            best = min(self._links, key=lambda x: x.busy)
            if best.busy and len(self._links) < self._max_links and not self._opening_extra:
                self._opening_extra = True
                self._spawn(self._open_extra())
            return best
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            self._links = [x for x in self._links if not x.conn.is_closed()]
            if self._links:
                return self._links[0]
            now = time.monotonic()
            if now < self._retry_at and self._last_error is not None:
                wait = self._retry_at - now
                raise BackendError(f"{self._last_error.message} (next attempt in {wait:.1f} s)")
            try:
                link = _Link(*await self._connect())
            except BackendError as e:
                self._backoff = min(max(self._backoff * 2, BACKOFF_START), BACKOFF_MAX)
                self._retry_at = time.monotonic() + self._backoff
                self._last_error = e
                raise
            self._backoff, self._retry_at, self._last_error = 0.0, 0.0, None
            self._links.append(link)
            return link

    async def _open_extra(self) -> None:
        try:
            link = _Link(*await self._connect())
        except BackendError:
            return  # the first connection carries on alone
        finally:
            self._opening_extra = False
        self._links.append(link)  # not before the await: _link() replaces the list

    def _drop(self, link: _Link) -> None:
        if link in self._links:
            self._links.remove(link)
        link.conn.abort()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _connect(self) -> tuple[asyncssh.SSHClientConnection, asyncssh.SFTPClient]:
        t = self.target
        kw: dict[str, Any] = {"host": t.host, "config": self._config}
        if t.port is not None:
            kw["port"] = t.port
        if t.user is not None:
            kw["username"] = t.user
        try:
            # First without keys: asyncssh fails on an IdentityFile that does not exist,
            # OpenSSH skips it (think of a stale ``Host *`` entry). Read the config, then
            # load only the keys that are there.
            opts = await asyncssh.SSHClientConnectionOptions.construct(**kw, client_keys=None)
        except (asyncssh.Error, ValueError, OSError) as e:
            raise BackendError(f"sftp {t.host}: bad ssh configuration: {_line(e)}") from e
        cfg = opts.config
        over: dict[str, Any] = {"client_keys": ()}
        if cfg.get("IdentityFile"):
            over["client_keys"] = [p for p in cfg.get("IdentityFile") if os.path.exists(os.path.expanduser(p))]
            over["ignore_encrypted"] = True  # a key with a passphrase can still come from the agent
        if self._connect_timeout is not None or cfg.get("ConnectTimeout") is None:
            over["connect_timeout"] = self._connect_timeout or CONNECT_TIMEOUT
        if self._keepalive_interval is not None or cfg.get("ServerAliveInterval") is None:
            over["keepalive_interval"] = self._keepalive_interval or KEEPALIVE_INTERVAL
        if self._keepalive_count_max is not None or cfg.get("ServerAliveCountMax") is None:
            over["keepalive_count_max"] = self._keepalive_count_max or KEEPALIVE_COUNT_MAX
        if cfg.get("Ciphers") is None:
            have = [a.decode() for a in asyncssh.encryption.get_default_encryption_algs()]
            over["encryption_algs"] = [c for c in PREFERRED_CIPHERS if c in have] + [
                c for c in have if c not in PREFERRED_CIPHERS
            ]
        over["compression_algs"] = None  # repository files are compressed and encrypted
        try:
            opts = await asyncssh.SSHClientConnectionOptions.construct(opts, **over)
        except (asyncssh.Error, ValueError, OSError) as e:
            raise BackendError(f"sftp {t.host}: cannot load ssh keys: {_line(e)}") from e
        host, port, user = opts.host, opts.port, opts.username
        self._dest = f"{host}:{port}" if port != 22 else host
        self._keepalive = float(opts.keepalive_interval or KEEPALIVE_INTERVAL)
        try:
            conn = await asyncssh.connect(
                t.host, t.port or (), config=self._config, options=opts, client_factory=_Client
            )
        except asyncssh.HostKeyNotVerifiable as e:
            raise self._host_key_error(opts, host, port) from e
        except asyncssh.PermissionDenied as e:
            who = f"{user}@{host}" if user else host
            raise BackendError(
                f"sftp {self._dest}: the server refused every key for {who}; "
                f"check IdentityFile in ~/.ssh/config or add the key to ssh-agent (ssh-add)"
            ) from e
        except (asyncio.TimeoutError, TimeoutError) as e:
            raise BackendError(f"sftp {self._dest}: no answer within {opts.connect_timeout:g} s (connect timeout)") from e
        except OSError as e:
            raise BackendError(f"sftp {self._dest}: cannot connect: {_oserror(e)}") from e
        except (asyncssh.Error, ValueError) as e:
            raise BackendError(f"sftp {self._dest}: ssh connection failed: {_line(e)}") from e
        try:
            sftp = await conn.start_sftp_client()
        except (asyncssh.Error, OSError) as e:
            conn.abort()
            raise BackendError(f"sftp {self._dest}: the server offers no SFTP subsystem: {_line(e)}") from e
        return conn, sftp

    def _host_key_error(self, opts: Any, host: str, port: int) -> BackendError:
        files = opts.known_hosts if isinstance(opts.known_hosts, (list, tuple)) and opts.known_hosts else None
        shown = files[0] if files else "~/.ssh/known_hosts"
        changed = False
        try:
            paths = [os.path.expanduser(f) for f in files] if files else [os.path.expanduser("~/.ssh/known_hosts")]
            kh = asyncssh.read_known_hosts([p for p in paths if os.path.exists(p)])
            trusted = kh.match(opts.host_key_alias or host, "", port)[0]
            changed = bool(trusted)
        except (asyncssh.Error, ValueError, OSError):
            pass
        name = f"[{host}]:{port}" if port != 22 else host
        p = f"-p {port} " if port != 22 else ""
        t = self.target  # `ssh` reads ~/.ssh/config as we do; ssh-keyscan needs the real host
        ssh = f"ssh {f'-p {t.port} ' if t.port else ''}{f'{t.user}@' if t.user else ''}{t.host}"
        if changed:
            return BackendError(
                f"sftp {self._dest}: the host key has CHANGED since it was accepted (possible "
                f"man-in-the-middle attack); if the server was reinstalled, remove the old key with "
                f"`ssh-keygen -R '{name}' -f {shown}` and accept the new one"
            )
        return BackendError(
            f"sftp {self._dest}: host key is unknown; check the fingerprint and accept it by "
            f"connecting once with `{ssh}`, or run `ssh-keyscan {p}{host} >> {shown}`"
        )

    # -- layout -------------------------------------------------------------------
    def _dir(self, h: Handle) -> str:
        if h.kind is FileKind.CONFIG:
            return self.root
        if h.kind is FileKind.DATA:
            return posixpath.join(self.root, "data", h.name[:2])
        return posixpath.join(self.root, h.kind.value)

    def _path(self, h: Handle) -> str:
        return posixpath.join(self._dir(h), h.name)

    # -- the contract -------------------------------------------------------------
    def exists(self) -> bool:
        async def op(sftp: asyncssh.SFTPClient) -> bool:
            try:
                attrs = await sftp.stat(posixpath.join(self.root, "config"))
            except asyncssh.SFTPNoSuchFile:
                return False
            return attrs.permissions is None or statmod.S_ISREG(attrs.permissions)

        return self._call(op, f"cannot read {self.location}")

    def create(self) -> None:
        async def op(sftp: asyncssh.SFTPClient) -> None:
            try:
                attrs = await sftp.stat(self.root)
            except asyncssh.SFTPNoSuchFile:
                attrs = None
            if attrs is not None:
                if attrs.permissions is not None and not statmod.S_ISDIR(attrs.permissions):
                    raise BackendError(f"{self.location} exists and is not a directory")
                if [n for n in await sftp.listdir(self.root) if n not in (".", "..")]:
                    raise BackendError(f"{self.location} is not empty")
            mode = asyncssh.SFTPAttrs(permissions=0o700)
            await sftp.makedirs(self.root, attrs=mode, exist_ok=True)
            await _gather_limited(sftp.mkdir(posixpath.join(self.root, k.value), mode) for k in _DIRS)
            data = posixpath.join(self.root, "data")
            await _gather_limited(sftp.mkdir(posixpath.join(data, f"{i:02x}"), mode) for i in range(256))

        self._call(op, f"cannot create repository at {self.location}")

    def save(self, h: Handle, data: bytes, *, overwrite: bool = False) -> None:
        data = data if isinstance(data, bytes) else bytes(data)

        async def op(sftp: asyncssh.SFTPClient) -> None:
            d = self._dir(h)
            final = posixpath.join(d, h.name)
            tmp = posixpath.join(d, f".tmp-{secrets.token_hex(8)}")
            mode = asyncssh.SFTPAttrs(permissions=0o600)
            try:
                f = await sftp.open(tmp, "wb", mode)
            except asyncssh.SFTPNoSuchFile:
                await sftp.makedirs(d, attrs=asyncssh.SFTPAttrs(permissions=0o700), exist_ok=True)
                f = await sftp.open(tmp, "wb", mode)
            try:
                try:
                    await f.write(data)
                    if self._fsync:
                        try:
                            await f.fsync()
                        except asyncssh.SFTPOpUnsupported:
                            self._fsync = False
                except asyncssh.SFTPFailure as e:
                    # OpenSSH reports ENOSPC and EDQUOT as a bare "Failure".
                    raise BackendError(
                        f"cannot write {h}: the server failed to store it ({_line(e.reason)}): disk full or over quota?"
                    ) from e
                finally:
                    await f.close()
                if overwrite:
                    await sftp.posix_rename(tmp, final)
                else:
                    try:
                        await sftp.rename(tmp, final)
                    except asyncssh.SFTPError:
                        if await _lexists(sftp, final):
                            raise AlreadyExists(f"{h} already exists") from None
                        raise
            except BaseException:
                try:  # fails at once when the connection is gone; sweep_temporary remains
                    await asyncio.wait_for(sftp.remove(tmp), 5)
                except (asyncssh.Error, OSError, asyncio.TimeoutError):
                    pass
                raise

        self._call(op, f"cannot write {h}")

    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            check_range(h, 0, offset, length)  # raises

        async def op(sftp: asyncssh.SFTPClient) -> bytes:
            f = await sftp.open(self._path(h), "rb")
            try:
                if length:
                    # A range read (the engine's blob fetch): no fstat round trip; a range
                    # past the end comes back short and is refused below.
                    n = length
                else:
                    n = check_range(h, (await f.stat()).size or 0, offset, length)
                buf = await f.read(n, offset) if n else b""
            except BaseException:
                self._close_later(f)
                raise
            self._close_later(f)
            if len(buf) != n:
                raise BackendError(f"{h}: short read: want {offset}+{n} bytes, got {len(buf)}")
            return buf

        try:
            return self._call(op, f"cannot read {h}")
        except NotFound:
            raise NotFound(f"{h} not found") from None

    def _close_later(self, f: asyncssh.SFTPClientFile) -> None:
        """Close a read handle without waiting for the reply (saves a round trip)."""

        async def close() -> None:
            try:
                await f.close()
            except (asyncssh.Error, OSError):
                pass

        self._spawn(close())

    def stat(self, h: Handle) -> int:
        async def op(sftp: asyncssh.SFTPClient) -> int:
            return (await sftp.stat(self._path(h))).size or 0

        try:
            return self._call(op, f"cannot stat {h}")
        except NotFound:
            raise NotFound(f"{h} not found") from None

    def list(self, kind: FileKind) -> Iterator[FileInfo]:
        async def op(sftp: asyncssh.SFTPClient) -> list[FileInfo]:
            if kind is FileKind.CONFIG:
                try:
                    attrs = await sftp.stat(posixpath.join(self.root, "config"))
                except asyncssh.SFTPNoSuchFile:
                    return []
                return [FileInfo("config", attrs.size or 0)]
            top = posixpath.join(self.root, kind.value)
            dirs = [top]
            if kind is FileKind.DATA:
                dirs = [posixpath.join(top, e.filename) for e in await _readdir(sftp, top) if _is_dir(e)]
            found = await _gather_limited(_readdir(sftp, d) for d in dirs)
            return [FileInfo(e.filename, e.attrs.size or 0) for es in found for e in es if _is_file(e)]

        yield from self._call(op, f"cannot list {kind.value}")

    def remove(self, h: Handle) -> None:
        async def op(sftp: asyncssh.SFTPClient) -> None:
            await sftp.remove(self._path(h))

        try:
            self._call(op, f"cannot remove {h}")
        except NotFound:
            raise NotFound(f"{h} not found") from None

    def wipe(self, h: Handle) -> None:
        """Overwrite a file in place (same inode: opened for writing without truncation)
        with random bytes, fsync it when the server can, then remove it - as the local
        backend does, for key files (``Repository.remove_wiped``)."""

        async def op(sftp: asyncssh.SFTPClient) -> None:
            path = self._path(h)
            f = await sftp.open(path, "r+b")  # FXF_READ|FXF_WRITE: no O_TRUNC, no new inode
            try:
                size = (await f.stat()).size or 0
                done = 0
                while done < size:
                    n = min(size - done, 1 << 20)
                    await f.write(os.urandom(n), done)
                    done += n
                if self._fsync:
                    try:
                        await f.fsync()
                    except asyncssh.SFTPOpUnsupported:
                        self._fsync = False
            finally:
                await f.close()
            faults.point("wipe")  # tests kill between the overwrite and the removal
            await sftp.remove(path)

        try:
            self._call(op, f"cannot wipe {h}")
        except NotFound:
            raise NotFound(f"{h} not found") from None

    def sweep_temporary(self) -> int:
        """Remove leftover ``.tmp-*`` files of interrupted writes; returns the count."""

        async def op(sftp: asyncssh.SFTPClient) -> int:
            data = posixpath.join(self.root, "data")
            dirs = [self.root] + [posixpath.join(self.root, k.value) for k in _DIRS]
            dirs += [posixpath.join(data, e.filename) for e in await _readdir(sftp, data) if _is_dir(e)]
            listings = await _gather_limited(_readdir(sftp, d) for d in dirs)
            tmps = [
                posixpath.join(d, e.filename)
                for d, es in zip(dirs, listings)
                for e in es
                if e.filename.startswith(".tmp-") and not _is_dir(e)
            ]
            done = await _gather_limited((_remove_quietly(sftp, p) for p in tmps))
            return sum(done)

        return self._call(op, f"cannot clean up {self.location}")

    def close(self) -> None:
        with self._thread_lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None:
            return

        async def shutdown() -> None:
            links, self._links = self._links, []
            for link in links:
                link.conn.close()
            for link in links:
                try:
                    await asyncio.wait_for(link.conn.wait_closed(), 2)
                except (asyncio.TimeoutError, asyncssh.Error, OSError):
                    link.conn.abort()
            # Calls still running in other threads must not wait forever on a dead loop.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            if others:
                await asyncio.wait(others, timeout=2)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        except Exception:
            pass
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        if not loop.is_running():
            loop.close()
        self._connect_lock = None

    def __enter__(self) -> "SftpBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SftpBackend({self.location!r})"


# -- helpers ------------------------------------------------------------------------


def _quiet_orphans(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Drop "Task exception was never retrieved" for connection errors.

    asyncssh runs a large read or write as many parallel request tasks; when the
    connection dies, the first failure reaches the caller and the rest are orphans that
    asyncio would print as tracebacks (hundreds of lines under a one-line error).
    """
    exc = context.get("exception")
    if isinstance(exc, (asyncssh.Error, OSError, EOFError, asyncio.IncompleteReadError)):
        return
    loop.default_exception_handler(context)


async def _gather_limited(coros: Any, limit: int = _PARALLEL_DIRS) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Awaitable[Any]) -> Any:
        async with sem:
            return await c

    return list(await asyncio.gather(*(one(c) for c in coros)))


async def _readdir(sftp: asyncssh.SFTPClient, path: str) -> list[asyncssh.SFTPName]:
    try:
        return [e for e in await sftp.readdir(path) if e.filename not in (".", "..")]
    except asyncssh.SFTPNoSuchFile:
        return []


def _is_dir(e: asyncssh.SFTPName) -> bool:
    p = e.attrs.permissions
    return p is not None and statmod.S_ISDIR(p)


def _is_file(e: asyncssh.SFTPName) -> bool:
    p = e.attrs.permissions
    return not e.filename.startswith(".") and (p is None or statmod.S_ISREG(p))


async def _lexists(sftp: asyncssh.SFTPClient, path: str) -> bool:
    try:
        await sftp.lstat(path)
        return True
    except asyncssh.SFTPNoSuchFile:
        return False


async def _remove_quietly(sftp: asyncssh.SFTPClient, path: str) -> int:
    try:
        await sftp.remove(path)
        return 1
    except asyncssh.SFTPError:
        return 0
