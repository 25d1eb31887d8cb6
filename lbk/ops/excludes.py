"""Exclude patterns, restic-style.

A pattern without ``/`` matches any single path component (``*.tmp``, ``__pycache__``);
a pattern with ``/`` matches the absolute path or any of its parents (``/home/*/.cache``).
``*``, ``?`` and ``[...]`` follow fnmatch; ``**`` in a path pattern matches across ``/``.
Matching is on bytes, so names that are not UTF-8 work.
"""

from __future__ import annotations

import os
import re

from lbk.errors import UsageError

DEFAULT_EXCLUDES = ["*.tmp", "*.swp", "*~", ".~lock.*", "~$*", ".#*", "__pycache__"]


def _translate(pat: str) -> str:
    """Glob -> regex: ``*`` and ``?`` never cross ``/``; ``**`` crosses any number of
    directories, including none (``a/**/b`` matches ``a/b``), as in restic."""
    out, i, n = [], 0, len(pat)
    while i < n:
        c = pat[i]
        if pat.startswith("/**/", i):
            out.append("(?:/|/.*/)")
            i += 4
        elif pat.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pat.find("]", i + 2 if pat[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pat[i + 1 : j]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("(?!/)[" + body.replace("\\", "\\\\") + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out) + r"\Z"


def _compile(pat: str) -> re.Pattern[bytes]:
    return re.compile(os.fsencode(_translate(pat)), re.DOTALL)


class Excluder:
    def __init__(self, patterns: list[str], paths: list[bytes] = ()):
        self.name_patterns: list[re.Pattern[bytes]] = []
        self.path_patterns: list[re.Pattern[bytes]] = []
        self.exact_paths = {os.path.normpath(p) for p in paths}
        for p in patterns:
            p = p.strip()
            if not p or p.startswith("#"):
                continue
            if "/" in p.rstrip("/"):
                self.path_patterns.append(_compile(p.rstrip("/")))
            else:
                self.name_patterns.append(_compile(p.rstrip("/")))
        # One regex per kind, the patterns as alternatives (each ends in \Z): every entry
        # of a backup is tested, and one match call costs a seventh of seven.
        self._names = _any_of(self.name_patterns)
        self._paths = _any_of(self.path_patterns)

    def excluded(self, path: bytes, name: bytes) -> bool:
        if path in self.exact_paths:
            return True
        if self._names is not None and self._names.match(name):
            return True
        return self._paths is not None and self._paths.match(path) is not None


def _any_of(patterns: list[re.Pattern[bytes]]) -> re.Pattern[bytes] | None:
    if not patterns:
        return None
    return re.compile(b"|".join(b"(?:" + r.pattern + b")" for r in patterns), re.DOTALL)


def read_exclude_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return [line.rstrip("\n") for line in f]
    except OSError as e:
        raise UsageError(f"cannot read exclude file {path}: {e.strerror}") from None
