"""Test-only fault injection, switched on by the environment variable ``LBK_TEST_FAULTS``.

Crash safety and error handling are proved by making things fail at every point that
matters: a process killed (SIGKILL, as ``kill -9``) right after its N-th write to the
repository, a disk that fills up or fails, a backend that stores less than it was given.
Tests set ``LBK_TEST_FAULTS`` to a comma-separated list of rules and run the real
``lbk`` command; with the variable unset, nothing here does anything.

Rules (N counts from 1; ``N+`` means "the N-th and every later one"):

    kill@N            SIGKILL this process right after its N-th backend write
                      (a save or a remove) returned
    kill:POINT@N      SIGKILL at the N-th pass through the fault point POINT
                      (``rollback-fs``: one change to the file system by rollback;
                      ``wipe``: a key file overwritten, not yet unlinked)
    enospc@N[+]       the N-th save fails: no space left on device (nothing stored)
    eio@N[+]          the N-th save fails with an I/O error (transient: it is retried)
    eio-read@N[+]     the same for the N-th load
    short@N[+]        the N-th save stores only the first half and reports success
    trace=PATH        append one line per backend write to PATH ("save data/<id> <size>",
                      "remove locks/<id>"), so a test learns how many points to sweep

Counters are per process and thread-safe.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from dataclasses import dataclass

ENV = "LBK_TEST_FAULTS"
ACTIONS = ("kill", "enospc", "eio", "eio-read", "short")
_RULE = re.compile(r"(?P<action>[a-z-]+)(?::(?P<point>[a-z-]+))?@(?P<n>[1-9][0-9]*)(?P<plus>\+)?\Z")


@dataclass(frozen=True)
class Rule:
    action: str
    counter: str  # which count it watches: "write", "save", "load" or a fault point
    n: int
    and_later: bool = False

    def fires(self, count: int) -> bool:
        return count == self.n or (self.and_later and count > self.n)


@dataclass(frozen=True)
class Plan:
    rules: tuple[Rule, ...] = ()
    trace: str | None = None


def parse(spec: str) -> Plan:
    """Parse an ``LBK_TEST_FAULTS`` value; a malformed rule raises ValueError."""
    rules: list[Rule] = []
    trace = None
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if part.startswith("trace="):
            trace = part[len("trace="):]
            continue
        m = _RULE.match(part)
        if not m or m.group("action") not in ACTIONS or (m.group("point") and m.group("action") != "kill"):
            raise ValueError(f"{ENV}: invalid rule {part!r}")
        action = m.group("action")
        counter = m.group("point") or {"kill": "write", "eio-read": "load"}.get(action, "save")
        rules.append(Rule(action, counter, int(m.group("n")), bool(m.group("plus"))))
    return Plan(tuple(rules), trace)


class Faults:
    """Counts events and says which rules fire; one instance per process."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def count(self, counter: str) -> list[str]:
        """Count one event; return the actions of the rules that fire on it."""
        with self._lock:
            n = self._counts[counter] = self._counts.get(counter, 0) + 1
        return [r.action for r in self.plan.rules if r.counter == counter and r.fires(n)]

    def counted(self, counter: str) -> int:
        with self._lock:
            return self._counts.get(counter, 0)

    def trace(self, line: str) -> None:
        if self.plan.trace:
            with self._lock, open(self.plan.trace, "a") as f:
                f.write(line + "\n")
                f.flush()


_active: Faults | None = None
_loaded = False


def active() -> Faults | None:
    """The process's fault plan, or None when ``LBK_TEST_FAULTS`` is unset (always, for users)."""
    global _active, _loaded
    if not _loaded:
        spec = os.environ.get(ENV)
        _active = Faults(parse(spec)) if spec else None
        _loaded = True
    return _active


def die() -> None:
    """Die like ``kill -9``: no clean-up, no lock release, no flush."""
    os.kill(os.getpid(), signal.SIGKILL)


def point(name: str) -> None:
    """A place where a test may kill the process (``kill:NAME@N``); a no-op otherwise."""
    f = active()
    if f is not None and "kill" in f.count(name):
        die()
