"""The watch state file that ``lbk status`` reads without a password.

One directory per watched repository, keyed by a hash of its location (the repository
id is not known before it is opened, and offline it may never be):

    <cache>/watch-<blake3(location)[:16]>/state.json     0600, rewritten atomically

It holds no secret beyond what ``ps`` shows (paths under watch, the repository location).
"""

from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import asdict, dataclass, field

import blake3

from lbk.cache import private_dir, write_private
from lbk.model import MAX_DATE

STATE_VERSION = 1


def state_dir(cache_root: str, location: str) -> str:
    return private_dir(os.path.join(cache_root, "watch-" + blake3.blake3(location.encode()).hexdigest()[:16]))


@dataclass
class WatchState:
    version: int = STATE_VERSION
    pid: int = 0
    repository: str = ""
    paths: list[str] = field(default_factory=list)
    started: float = 0.0
    updated: float = 0.0
    phase: str = "starting"  # starting, scanning, watching, stopping, stopped
    online: bool = True
    last_commit: float | None = None
    last_snapshot: str | None = None
    commits: int = 0
    captures: int = 0
    pending: int = 0
    spool_files: int = 0
    spool_bytes: int = 0
    oldest_unsynced: float | None = None  # capture time of the oldest version not in the repository
    last_error: str | None = None
    last_error_time: float | None = None

    def save(self, directory: str) -> None:
        self.updated = time.time()
        write_private(os.path.join(directory, "state.json"), json.dumps(asdict(self)).encode(), durable=False)


def load_states(cache_root: str) -> list[WatchState]:
    out = []
    for p in sorted(glob.glob(os.path.join(cache_root, "watch-*", "state.json"))):
        try:
            with open(p, "rb") as f:
                st = decode_state(f.read())
        except OSError:
            continue
        if st is not None:
            out.append(st)
    return out


_TYPES = {"pid": int, "repository": str, "paths": list, "started": float, "updated": float, "phase": str,
          "online": bool, "last_commit": float, "last_snapshot": str, "commits": int, "captures": int,
          "pending": int, "spool_files": int, "spool_bytes": int, "oldest_unsynced": float,
          "last_error": str, "last_error_time": float}
_OPTIONAL = {"last_commit", "last_snapshot", "oldest_unsynced", "last_error", "last_error_time"}
MAX_TIME = MAX_DATE  # seconds: a date `lbk status` can show


def decode_state(raw: bytes) -> WatchState | None:
    """A state file's contents, or None when it is damaged or of another version (a state
    file is a hint for ``lbk status``; a damaged one is skipped like a missing one)."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        return None
    fields = {k: v for k, v in doc.items() if k in _TYPES}
    for k, v in fields.items():
        t = _TYPES[k]
        if v is None and k in _OPTIONAL:
            continue
        if t is float:
            ok = type(v) in (int, float) and 0 <= v < MAX_TIME
        elif t is int:
            ok = type(v) is int and 0 <= v < 2**63 and (k != "pid" or v < 2**31)
        elif t is list:
            ok = type(v) is list and all(type(p) is str for p in v)
        else:
            ok = type(v) is t
        if not ok:
            return None
    return WatchState(**fields)


def is_running(st: WatchState) -> bool:
    if st.phase == "stopped" or st.pid <= 0:
        return False
    try:
        os.kill(st.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
