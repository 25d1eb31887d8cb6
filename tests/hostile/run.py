"""Run lbk on a hostile repository the way a user would, and judge how it failed.

Each command is a real process with an address-space limit (``RLIMIT_AS``) and a
timeout, so a memory blow-up or a hang is a failure of the test, not of the machine.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess

from tests.helpers import lbk_proc

MEMORY_LIMIT = 1536 << 20  # 1.5 GiB of address space: every honest command fits easily
TIMEOUT = 60

COMMANDS = {
    "snapshots": ["snapshots"],
    "ls": ["ls", "-l", "-R", "latest"],
    "restore": ["restore", "latest", "--target", "{target}"],
    "restore-it": ["restore", "{snap}", "--target", "{target}"],
    "check": ["check"],
    "read-data": ["check", "--read-data"],
    "stats": ["stats"],
    "log": ["log", "{live}"],
    "find": ["find", "*"],
    "diff": ["diff", "{good}", "latest"],
    "cat-tree": ["cat", "tree", "{tree_id}"],
    "cat-blob": ["cat", "blob", "{blob_id}"],
    "rollback": ["rollback", "{live}", "--to", "latest", "--dry-run"],
    "backup": ["backup", "{live}"],
    "prune": ["prune"],
    "key-list": ["key", "list"],
}


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_limited(repo: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return lbk_proc("-r", repo, *args, preexec_fn=_limit, timeout=TIMEOUT, **kw)


def tree_listing(root: str, skip: tuple[str, ...]) -> set[str]:
    """Every path beneath ``root`` except beneath ``skip`` (the repository, the cache).
    Iterative: a hostile restore may leave directories nested deeper than os.walk recurses."""
    out: set[str] = set()
    stack = [root]
    while stack:
        for e in os.scandir(stack.pop()):
            if e.path in skip:
                continue
            out.add(e.path)
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
    return out




def assert_clean_failure(res: subprocess.CompletedProcess, command: str, code: int, names: str | None) -> None:
    """Exit ``code``; no traceback and no 'internal error'; when it failed, stderr is ONE
    line (after any warnings that a damaged snapshot was skipped) naming the object (``names``, a regex) - or, for restore and check, which go on
    past a damaged object, only error/warning lines, one of which names it."""
    err = res.stderr
    assert "Traceback" not in err and "internal error" not in err, err
    assert res.returncode == code, f"exit {res.returncode}, want {code}: {err}"
    if code == 0:  # it went on past the damage: a warning names what it skipped
        if names:
            assert re.search(names, err), f"{names!r} not named in: {err}"
        return
    lines = [ln for ln in err.splitlines() if ln.strip()]
    skipped = [ln for ln in lines if ln.startswith("warning: skipped a damaged snapshot")]
    one_line = len(lines) - len(skipped) == 1 and lines[-1].startswith("lbk: ")
    goes_on = command in ("restore", "check", "read-data") and all(
        ln.startswith(("error: ", "warning: ")) for ln in lines
    )
    assert one_line or goes_on, err
    assert not re.search(r"\b(\w+ [0-9a-f]{8,}): \1", err), f"object named twice: {err}"
    if names:
        assert re.search(names, err), f"{names!r} not named in: {err}"
