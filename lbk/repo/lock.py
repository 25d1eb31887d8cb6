"""Repository locks: shared for writers that only add, exclusive for anything that deletes.

A lock is a sealed file ``locks/<random 64 hex>`` whose plaintext is JSON
``{"version": 1, "host", "pid", "user", "time", "exclusive"}``. A holder refreshes its
lock every ``REFRESH`` seconds; a lock is stale when its time is older than ``STALE``, or
when it names this host and a pid that no longer runs. Acquisition writes the lock, waits
briefly and lists again, so two racing exclusive lockers both back off rather than both
proceed (as restic does).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from lbk.backend.base import BackendError, FileKind, Handle, NotFound
from lbk.errors import FormatError, IntegrityError, LockFailed
from lbk.model import MAX_DATE

REFRESH = 300.0
STALE = 1800.0
RECHECK_DELAY = 0.1
MIN_TIME, MAX_TIME = 0, MAX_DATE  # seconds since the epoch that a lock's time may hold (a date `describe` can show)


@dataclass
class LockInfo:
    name: str
    host: str
    pid: int
    user: str
    time: float
    exclusive: bool

    def is_stale(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if now - self.time > STALE:
            return True
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return True
        return False

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        when = datetime.fromtimestamp(self.time, timezone.utc).astimezone().isoformat(timespec="seconds")
        return f"{kind} lock by {self.user}@{self.host} pid {self.pid}, refreshed {when}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """A held lock. Use as a context manager; released on exit, refreshed meanwhile."""

    def __init__(self, repo, exclusive: bool):
        self.repo = repo
        self.exclusive = exclusive
        self.name = secrets.token_hex(32)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writing = threading.Lock()  # the refresh thread and ensure() both write it
        # set when our lock file was found removed (stale after a long suspend, or 'lbk
        # unlock --all'): a prune may have run since, so it is never written again
        self.lost = False

    def _payload(self) -> bytes:
        from lbk.repo.keys import current_user

        return json.dumps(
            {
                "version": 1,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "user": current_user(),
                "time": time.time(),
                "exclusive": self.exclusive,
            }
        ).encode()

    def _write(self) -> None:
        with self._writing:
            self.repo.save_sealed(Handle(FileKind.LOCK, self.name), self._payload(), overwrite=True)

    def acquire(self) -> "Lock":
        self._check_conflicts()
        self._write()
        time.sleep(RECHECK_DELAY)
        try:
            self._check_conflicts()
        except LockFailed:
            self._remove()
            raise
        self._thread = threading.Thread(target=self._refresh_loop, name="lbk-lock-refresh", daemon=True)
        self._thread.start()
        return self

    def _check_conflicts(self) -> None:
        for info in list_locks(self.repo):
            if info.name == self.name or info.is_stale():
                continue
            if self.exclusive or info.exclusive:
                raise LockFailed(
                    f"repository is locked: {info.describe()} "
                    f"(if that process is gone, run 'lbk unlock')"
                )

    def held(self) -> bool:
        """Whether our lock file is still there (one stat); False for good once it was not.
        A BackendError (repository unreachable) is the caller's to judge."""
        if self.lost:
            return False
        try:
            self.repo.backend.stat(Handle(FileKind.LOCK, self.name))
        except NotFound:
            self.lost = True
        return not self.lost

    def refresh(self) -> bool:
        """Rewrite our lock file with the current time, unless it was removed meanwhile:
        then it is lost and not recreated (data we deduplicated against may be gone)."""
        with self._writing:
            if not self.held():
                return False
            self.repo.save_sealed(Handle(FileKind.LOCK, self.name), self._payload(), overwrite=True)
            return True

    def ensure(self) -> None:
        """Before committing (a snapshot), prove the lock was held all along: our lock
        file must still exist. If it was removed (a suspended laptop's lock went stale
        and another host pruned), data we deduplicated against may be gone: refuse."""
        if not self.refresh():
            raise LockFailed(
                "the repository lock was removed while this operation ran (stale after a long "
                "suspend?); nothing was committed: run it again"
            )

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH):
            try:
                if not self.refresh():
                    return  # lost: the holder finds out before it commits
            except BackendError:
                pass  # a transient failure; the next refresh retries, staleness takes 30 min

    def _remove(self) -> None:
        try:
            self.repo.backend.remove(Handle(FileKind.LOCK, self.name))
        except (NotFound, BackendError):
            pass

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._remove()

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def decode_lock(payload: bytes, name: str) -> LockInfo:
    """A lock file's plaintext; FormatError naming the lock when a field has the wrong type
    or a value the staleness check cannot use (a pid ``os.kill`` refuses, a time that is
    not a date)."""
    what = f"locks/{name}"
    try:
        doc = json.loads(payload)
        info = LockInfo(name, doc["host"], doc["pid"], doc.get("user", ""), doc["time"], doc["exclusive"])
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise FormatError(f"{what}: malformed lock") from None
    if not (isinstance(info.host, str) and isinstance(info.user, str) and type(info.exclusive) is bool
            and type(info.pid) is int and 0 < info.pid < 2**31 and type(info.time) in (int, float)
            and MIN_TIME <= info.time < MAX_TIME):
        raise FormatError(f"{what}: malformed lock")
    return info


def list_locks(repo) -> list[LockInfo]:
    out = []
    for fi in repo.backend.list(FileKind.LOCK):
        h = Handle(FileKind.LOCK, fi.name)
        try:
            out.append(decode_lock(repo.load_sealed(h), fi.name))
        except NotFound:
            continue  # released meanwhile
        except (IntegrityError, FormatError):
            # damaged lock: it can protect nothing, so it is reported as stale
            out.append(LockInfo(fi.name, "?", 0, "?", 0.0, True))
    return out


def remove_stale(repo, all_locks: bool = False) -> list[LockInfo]:
    removed = []
    for info in list_locks(repo):
        if all_locks or info.is_stale():
            try:
                repo.backend.remove(Handle(FileKind.LOCK, info.name))
                removed.append(info)
            except NotFound:
                pass
    return removed
