"""lbk watch: continuous capture in the foreground (run it from a systemd user unit)."""

from __future__ import annotations

import os

import click

from lbk.cache import default_cache_dir
from lbk.cli.context import read_user_config
from lbk.cli.main import command, settings
from lbk.cli.params import PATH_BYTES
from lbk.errors import UsageError
from lbk.ops.checkpoint import watch_paths_from_config
from lbk.ops.excludes import read_exclude_file
from lbk.repo.repository import Repository
from lbk.watch.daemon import Watcher, WatchOptions, install_signal_handlers
from lbk.watch.spool import SpoolingBackend
from lbk.watch.state import state_dir


def _interval(value: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    v = value.strip().lower()
    try:
        if v and v[-1] in units:
            return float(v[:-1]) * units[v[-1]]
        return float(v)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an interval like 30s, 15m or 1h") from None


@command("watch")
@click.argument("paths", nargs=-1, type=PATH_BYTES)
@click.option("--debounce", type=click.FloatRange(min=0), default=0.5, show_default=True, metavar="SECONDS",
              help="Read a file once it has been quiet this long.")
@click.option("--max-delay", type=click.FloatRange(min=0.1), default=30.0, show_default=True, metavar="SECONDS",
              help="Read a file at least this often while it is written continuously.")
@click.option("--commit-interval", type=click.FloatRange(min=0), default=1.0, show_default=True, metavar="SECONDS",
              help="Under a stream of saves, commit at most this often.")
@click.option("--rescan", default="1h", show_default=True, metavar="INTERVAL", help="Full rescan interval (safety net).")
@click.option("--exclude", "excludes", multiple=True, metavar="PAT", help="Exclude matching paths (repeatable).")
@click.option("--exclude-file", "exclude_files", multiple=True, metavar="FILE", help="Read exclude patterns from FILE.")
@click.option("--host", metavar="HOST", help="Record this host name instead of the machine's.")
@click.option("--spool-cap", type=click.IntRange(min=1), default=10240, show_default=True, metavar="MIB",
              help="Largest offline spool before captures wait.")
@click.option("--no-nice", is_flag=True, help="Keep normal CPU and I/O priority.")
def watch_cmd(paths, debounce, max_delay, commit_interval, rescan, excludes, exclude_files, host, spool_cap, no_nice) -> int:
    """Protect PATHS continuously: every saved file becomes a version within seconds.

    Scans first (unchanged files are not read again), commits a baseline, then captures
    every create, modify, move and delete. When the repository is unreachable, captures
    go, encrypted, to a local spool and are uploaded when it returns. SIGTERM or Ctrl-C
    commits what is pending and exits 0. With no PATHS, the config file's watch_paths.

    \b
    Example:
      lbk watch ~/Documents ~/Projects --exclude node_modules
      lbk watch ~/Documents --json | jq -c 'select(.message_type=="committed")'
    """
    s = settings()
    if not paths:
        paths = tuple(watch_paths_from_config(read_user_config()))
        if not paths:
            raise UsageError("no paths to watch: give PATHS or set watch_paths in the config file")
    patterns = list(excludes)
    for f in exclude_files:
        patterns += read_exclude_file(f)
    cache_root = s.cache_dir or default_cache_dir()
    backend = s.backend()
    sdir = state_dir(cache_root, backend.location)
    spool = SpoolingBackend(backend, sdir, cap_bytes=spool_cap << 20)
    repo = Repository.open(spool, s.password)
    s.track(repo)
    cache = s.cache(repo)
    skip = [os.fsencode(p) for p in (backend.location, cache_root) if p and os.path.isabs(p)]
    opts = WatchOptions(
        paths=list(paths), debounce=debounce, max_delay=max_delay, commit_interval=commit_interval,
        rescan=_interval(rescan), excludes=patterns, exclude_paths=skip, host=host or "", low_priority=not no_nice,
    )
    w = Watcher(repo, spool, cache, opts, s.out.event, sdir)
    install_signal_handlers(w)
    s.out.info(f"watching {', '.join(os.fsdecode(p) for p in w.paths)} (Ctrl-C to stop)")
    try:
        return w.run()
    finally:
        s.out.stop_progress()
