"""lbk status: what the local watch daemon is doing (reads its state file; no password)."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime

from lbk.cache import default_cache_dir
from lbk.cli.main import command, settings
from lbk.cli.output import human_size
from lbk.watch.state import is_running, load_states


def _when(t: float | None) -> str:
    if not t:
        return "never"
    return datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S") + f" ({_ago(time.time() - t)} ago)"


def _ago(sec: float) -> str:
    if sec < 90:
        return f"{sec:.0f}s"
    if sec < 5400:
        return f"{sec / 60:.0f}m"
    return f"{sec / 3600:.1f}h"


@command("status")
def status_cmd() -> None:
    """Show the watch daemon's state: paths, last commit, pending captures, spool, RPO.

    \b
    Example:
      lbk status
      lbk status --json | jq '.daemons[0].rpo_seconds'
    """
    s = settings()
    states = load_states(s.cache_dir or default_cache_dir())
    now = time.time()
    docs = []
    for st in states:
        d = asdict(st)
        d["running"] = is_running(st)
        d["rpo_seconds"] = round(now - st.oldest_unsynced, 3) if st.oldest_unsynced else 0.0
        docs.append(d)
    s.out.doc({"running": any(d["running"] for d in docs), "daemons": docs})
    if not docs or not any(d["running"] for d in docs):
        s.out.print("no watch daemon is running" + (" (last state below)" if docs else ""))
    for d in docs:
        s.out.print(f"{'running' if d['running'] else 'stopped'}: pid {d['pid']}, repository {d['repository']}")
        s.out.print(f"  watching:     {', '.join(d['paths'])} since {_when(d['started'])}")
        s.out.print(f"  phase:        {d['phase']}{'' if d['online'] else ' (repository unreachable: spooling)'}")
        s.out.print(f"  last commit:  {_when(d['last_commit'])}, snapshot {(d['last_snapshot'] or '-')[:8]}")
        s.out.print(f"  captures:     {d['captures']} total, {d['pending']} pending")
        s.out.print(f"  spool:        {d['spool_files']} files, {human_size(d['spool_bytes'])}")
        s.out.print(f"  recovery point: {_ago(d['rpo_seconds']) + ' behind' if d['rpo_seconds'] else 'up to date'}")
        if d["last_error"]:
            s.out.print(f"  last error:   {d['last_error']} at {_when(d['last_error_time'])}")
