"""What every command needs from the global options: the repository, the password,
the cache and the output. Built once per invocation from options, env and config file.

The repository and backend modules are imported when a repository is opened, not
here: this module is loaded by every run, including ``--version``, ``status`` and
each shell completion, which must stay fast.
"""

from __future__ import annotations

import getpass
import os
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import platformdirs

from lbk.cache import Cache, default_cache_dir
from lbk.cli.output import Output
from lbk.errors import NoRepositoryConfigured, PasswordError, UsageError
from lbk.refcache import SnapshotList, remember_location

if TYPE_CHECKING:
    from lbk.repo.repository import Repository


def config_path() -> str:
    return os.path.join(platformdirs.user_config_dir("lbk"), "config.toml")


def default_repository_path() -> str:
    return os.path.join(platformdirs.user_data_dir("lbk"), "repository")


def read_user_config() -> dict:
    path = config_path()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    return parse_user_config(raw, path)


def parse_user_config(raw: bytes, path: str) -> dict:
    """The user config file's TOML; errors name ``path``."""
    try:
        cfg = tomllib.loads(raw.decode())
    except UnicodeDecodeError as e:
        raise UsageError(f"cannot read {path}: not UTF-8 (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    except RecursionError:
        raise UsageError(f"cannot read {path}: nested too deeply") from None
    if not isinstance(cfg.get("repository", ""), str):
        raise UsageError(f"cannot read {path}: repository must be a string (a path or URL)")
    return cfg


def write_user_config_value(key: str, value: str) -> None:
    """Set one top-level string key in config.toml, keeping the other lines."""
    path = config_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln for ln in f.read().splitlines() if not ln.strip().startswith(f"{key} ") and not ln.strip().startswith(f"{key}=")]
    except FileNotFoundError:
        pass
    esc = value.replace("\\", "\\\\").replace('"', '\\"')
    lines.insert(0, f'{key} = "{esc}"')
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


@dataclass
class Settings:
    repo: str | None = None
    password_file: str | None = None
    password_command: str | None = None
    cache_dir: str | None = None
    no_cache: bool = False
    json: bool = False
    quiet: bool = False
    verbose: int = 0
    limit_upload: int | None = None
    limit_download: int | None = None
    _password: bytes | None = field(default=None, repr=False)
    from_command_line: set[str] = field(default_factory=set, repr=False)  # attrs given as options

    @property
    def out(self) -> Output:
        o = getattr(self, "_out", None)
        if o is None or (o.json, o.quiet, o.verbose) != (self.json, self.quiet, self.verbose):
            o = Output(self.json, self.quiet, self.verbose)
            self._out = o
        return o

    # -- repository ----------------------------------------------------------
    def repository_url(self) -> str:
        if self.repo:
            return self.repo
        cfg = read_user_config()
        url = cfg.get("repository")
        if not url:
            raise NoRepositoryConfigured(
                "no repository given: use --repo URL, set LBK_REPOSITORY, "
                f"or run 'lbk init' to create the default one (recorded in {config_path()})"
            )
        return str(url)

    def backend(self):
        from lbk.backend.registry import open_backend

        backend = open_backend(self.repository_url(), on_retry=self.out.warn)
        if self.limit_upload or self.limit_download:
            from lbk.backend.limit import LimitedBackend

            backend = LimitedBackend(backend, self.limit_upload, self.limit_download)
        return backend

    def open_repo(self) -> "Repository":
        from lbk.repo.repository import Repository

        from lbk.repo.snapshots import on_damaged

        repo = Repository.open(self.backend(), self.password)
        on_damaged(repo, self._warn_damaged)
        self.track(repo)
        return repo

    def _warn_damaged(self, name: str, message: str) -> None:
        self.out.warn(f"skipped a damaged snapshot: {message}; remove it with 'lbk forget {name[:8]}'")

    def track(self, repo: "Repository", created: bool = False) -> None:
        """Remember which repository the URL in effect names, and keep the cache's list
        of its snapshots current, so that shell completion can offer snapshot ids and
        checkpoint names without the password (lbk/refcache.py). ``created``: the
        repository was just made, so its list is known to be empty."""
        if self.no_cache:
            return
        root = self.cache_dir or default_cache_dir()
        try:
            remember_location(root, self.repository_url(), repo.id)
        except OSError:
            return  # no usable cache dir: the commands that need one say so
        from lbk.repo.snapshots import observe

        snapshot_list = SnapshotList(root, repo.id)
        if created:
            snapshot_list.listed([])
        observe(repo, snapshot_list)

    def cache(self, repo: "Repository") -> Cache | None:
        if self.no_cache:
            return None
        try:
            return Cache(self.cache_dir or default_cache_dir(), repo.id)
        except OSError as e:
            self.out.warn(f"cache disabled: {e.strerror}")
            return None

    # -- passwords -------------------------------------------------------------
    def password(self) -> bytes:
        if self._password is None:
            self._password = self._read_password()
        return self._password

    def _read_password(self) -> bytes:
        if self.password_file:
            try:
                with open(os.path.expanduser(self.password_file), "rb") as f:
                    return f.read().rstrip(b"\r\n")
            except OSError as e:
                raise PasswordError(f"cannot read password file {self.password_file}: {e.strerror}") from None
        if self.password_command:
            return run_password_command(self.password_command)
        env = os.environ.get("LBK_PASSWORD")
        if env is not None:
            return os.fsencode(env)
        if sys.stdin.isatty():
            return os.fsencode(getpass.getpass("enter password for repository: "))
        raise PasswordError("no password: use --password-file, --password-command or LBK_PASSWORD (or run on a terminal)")

    def new_password(self, new_password_file: str | None = None, what: str = "new password") -> bytes:
        """A password for a new key: from a file, else asked twice on a TTY, else the repo password source."""
        if new_password_file:
            try:
                with open(os.path.expanduser(new_password_file), "rb") as f:
                    pw = f.read().rstrip(b"\r\n")
            except OSError as e:
                raise PasswordError(f"cannot read {new_password_file}: {e.strerror}") from None
        elif sys.stdin.isatty() and not (self.password_file or self.password_command or "LBK_PASSWORD" in os.environ):
            a = getpass.getpass(f"enter {what}: ")
            b = getpass.getpass(f"enter {what} again: ")
            if a != b:
                raise PasswordError("passwords do not match")
            pw = os.fsencode(a)
        else:
            return self.password()
        if not pw:
            raise PasswordError("empty password refused")
        return pw


def run_password_command(cmd: str) -> bytes:
    """The password: what ``cmd`` prints on stdout, without the trailing newline. That output
    is never shown, not even when the command fails (it may hold the password); the
    command's stderr goes to the user's terminal, as with ssh-askpass or git credential
    helpers, so its prompts and the reason it failed are seen."""
    try:
        p = subprocess.run(shlex.split(cmd), stdout=subprocess.PIPE, timeout=120)
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        raise PasswordError(f"password command failed: {e}") from None
    if p.returncode != 0:
        raise PasswordError(f"password command exited with status {p.returncode}")
    return p.stdout.rstrip(b"\r\n")
