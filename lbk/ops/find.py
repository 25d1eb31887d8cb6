"""Find: which snapshots hold paths matching a pattern, from the catalog.

PATTERN is an fnmatch pattern (``*``, ``?``, ``[...]``; ``*`` also matches ``/``). It is
matched against each entry's name, or against its full absolute path when it contains
a ``/`` (a trailing ``/`` is ignored; a relative one, like ``Documents/*.txt``, matches
the end of the path, as if it began with ``*/``). Directories are matched too.

A name pattern is answered from the catalog's tables: the distinct names are matched
once, a recursive query finds every tree that holds a matching name at any depth, and
each snapshot is walked only through those trees; what lies beneath one tree is
computed once per query however many snapshots share it. A path pattern walks the
trees whose path can still lead to a match (by the pattern's literal prefix), again
once per (tree, path).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from datetime import datetime
from fnmatch import translate

from lbk.catalog import Catalog, Entry
from lbk.errors import UsageError
from lbk.events import Emit, discard
from lbk.model import DIR, Snapshot
from lbk.ops.refs import Filter, resolve
from lbk.repo.repository import Repository


@dataclass
class Match:
    path: bytes
    entry: Entry

    def to_json(self) -> dict:
        e = self.entry
        return {
            "path": os.fsdecode(self.path),
            "type": e.type,
            "size": e.size,
            "content": e.short_content,
            "mode": e.mode,
            "mtime": datetime.fromtimestamp(e.mtime_ns / 1e9).astimezone().isoformat(),
        }


@dataclass
class FindHit:
    snapshot: Snapshot
    matches: list[Match]

    def to_json(self) -> dict:
        s = self.snapshot
        return {
            "snapshot": s.id,
            "short_id": s.short_id,
            "time": s.time.isoformat(),
            "kind": s.kind,
            "name": s.name or None,
            "host": s.host,
            "matches": [m.to_json() for m in self.matches],
        }


def _literal_prefix(pattern: str) -> bytes:
    cut = min((i for i, c in enumerate(pattern) if c in "*?["), default=len(pattern))
    return os.fsencode(pattern[:cut])


def normalize_pattern(pattern: str) -> str:
    p = pattern.rstrip("/") or "/"
    if "/" in p and not p.startswith(("/", "*")):
        p = "*/" + p
    return p


class _Finder:
    def __init__(self, catalog: Catalog, pattern: str, ignore_case: bool):
        self.cat = catalog
        pattern = normalize_pattern(pattern)
        self.by_path = "/" in pattern
        rx = re.compile(translate(pattern), re.DOTALL | (re.IGNORECASE if ignore_case else 0))
        self.match = lambda b: rx.match(os.fsdecode(b)) is not None
        self.memo: dict[tuple[int, bytes], list[tuple[bytes, Entry]]] = {}
        if self.by_path:
            self.prefix = _literal_prefix(pattern)
        else:
            ids = catalog.name_ids(self.match)
            self.names = set(ids.values())
            self.hot = catalog.trees_containing(ids) if ids else set()

    def _may_hold(self, tree: int, base: bytes) -> bool:
        if not self.by_path:
            return tree in self.hot
        d = base + b"/"
        return d.startswith(self.prefix) or self.prefix.startswith(d)

    def under(self, tree: int, base: bytes) -> list[tuple[bytes, Entry]]:
        """Matches beneath tree ``tree`` at path ``base`` (paths relative to ``base``
        for name patterns, so that one result serves the tree wherever it appears)."""
        key = (tree, b"" if not self.by_path else base)
        got = self.memo.get(key)
        if got is not None:
            return got
        out: list[tuple[bytes, Entry]] = []
        for e in self.cat.entries(tree):
            p = base + b"/" + e.name
            if (self.match(p) if self.by_path else e.name in self.names):
                out.append((b"/" + e.name if not self.by_path else p, e))
            if e.type == DIR and e.subtree is not None and self._may_hold(e.subtree, p):
                rel = b"/" + e.name if not self.by_path else b""
                out.extend((rel + q, x) for q, x in self.under(e.subtree, p))
        self.memo[key] = out
        return out

    def snapshot(self, root: int) -> list[Match]:
        if not self._may_hold(root, b""):
            return []
        return [Match(p, e) for p, e in self.under(root, b"")]


def find(
    repo: Repository,
    catalog: Catalog,
    pattern: str,
    since: str | None = None,
    until: str | None = None,
    flt: Filter = Filter(),
    ignore_case: bool = False,
    emit: Emit = discard,
) -> list[FindHit]:
    """Snapshots (newest first) that hold a path matching ``pattern``, with the matches.

    ``since``/``until`` are REFs; snapshots between the two, both included, are searched.
    """
    if not pattern:
        raise UsageError("empty pattern")
    catalog.update(repo, emit)
    snaps = [s for s in catalog.snapshots() if flt.matches(s)]
    all_snaps = catalog.snapshots()
    ref_flt = replace(flt, path=None)
    lo = resolve(since, all_snaps, ref_flt) if since else None
    hi = resolve(until, all_snaps, ref_flt) if until else None
    if lo is not None and hi is not None and (lo.time, lo.id) > (hi.time, hi.id):
        raise UsageError(f"--since {since} ({lo.short_id}) is after --until {until} ({hi.short_id})")
    if lo is not None:
        snaps = [s for s in snaps if (s.time, s.id) >= (lo.time, lo.id)]
    if hi is not None:
        snaps = [s for s in snaps if (s.time, s.id) <= (hi.time, hi.id)]
    finder = _Finder(catalog, pattern, ignore_case)
    hits = []
    for s in reversed(snaps):
        matches = finder.snapshot(catalog.root(s))
        if matches:
            hits.append(FindHit(s, matches))
    return hits
