"""REF: the one module that parses and resolves references to a point in time.

Forms (SPEC.md): a snapshot id or unique prefix (>= 4 hex), ``latest``, ``@name`` (newest
checkpoint of that name), an RFC 3339 / ISO 8601 date-time or date (a date alone is the
end of that day, local time; a time without offset is local), a relative time
(``90s ago``, ``15m ago``, ``2h ago``, ``3d ago``, ``1w ago``) and ``yesterday`` (the end
of yesterday). A time resolves to the newest snapshot at or before it, among those that
cover ``path`` when one is given.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from lbk.errors import RefError
from lbk.model import Snapshot

_HEX = re.compile(r"[0-9a-f]{4,64}\Z")
_RELATIVE = re.compile(r"(\d+)\s*(s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hour|hours|d|day|days|w|week|weeks)\s+ago\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Filter:
    host: str | None = None
    tags: tuple[str, ...] = ()
    path: bytes | None = None
    kind: str | None = None

    def matches(self, s: Snapshot) -> bool:
        if self.host and s.host != self.host:
            return False
        if self.tags and not set(self.tags) <= set(s.tags):
            return False
        if self.kind and s.kind != self.kind:
            return False
        if self.path is not None and not covers(s, self.path):
            return False
        return True


def covers(s: Snapshot, path: bytes) -> bool:
    """Whether snapshot ``s`` backed up ``path`` (or a directory above it)."""
    p = os.path.normpath(path)
    for root in s.paths:
        r = root.rstrip(b"/") or b"/"
        if p == r or r == b"/" or p.startswith(r + b"/"):
            return True
    return False


def now() -> datetime:
    return datetime.now(timezone.utc).astimezone()


def parse_time(text: str, reference: datetime | None = None) -> datetime | None:
    """A REF's time, or None when ``text`` is not a time form. Raises on a bad time."""
    t = text.strip().lower()
    ref = reference or now()
    if t == "yesterday":
        d = (ref - timedelta(days=1)).date()
        return _end_of_day(d)
    if t == "now":
        return ref
    m = _RELATIVE.match(t)
    if m:
        n, unit = int(m.group(1)), m.group(2)[0]
        return ref - timedelta(seconds=n * _UNITS[unit])
    if not re.match(r"\d{4}-\d{2}-\d{2}", t):
        return None
    try:
        if len(t) == 10:
            return _end_of_day(date.fromisoformat(t))
        dt = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise RefError(f"invalid time {text!r}: use RFC 3339 (2026-11-25T14:00:00+01:00), a date, or '2h ago'") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return dt


def _end_of_day(d: date) -> datetime:
    return datetime.combine(d, time(23, 59, 59, 999999)).astimezone()


def resolve(ref: str, snapshots: list[Snapshot], flt: Filter = Filter()) -> Snapshot:
    """The snapshot ``ref`` names among ``snapshots`` (oldest first). Raises ``RefError``."""
    if not ref:
        raise RefError("empty snapshot reference")
    candidates = [s for s in snapshots if flt.matches(s)]
    if ref == "latest":
        if not candidates:
            raise RefError("no snapshot found" + _describe(flt))
        return max(candidates, key=lambda s: (s.time, s.id))
    if ref.startswith("@"):
        name = ref[1:]
        named = [s for s in candidates if s.name == name and s.kind == "checkpoint"]
        if not named:
            raise RefError(f"no checkpoint named {name!r}" + _describe(flt))
        return max(named, key=lambda s: (s.time, s.id))
    if _HEX.match(ref):
        hits = [s for s in snapshots if s.id.startswith(ref)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise RefError(f"snapshot id prefix {ref!r} is ambiguous ({len(hits)} snapshots match)")
        if not re.match(r"\d{4}-", ref):
            raise RefError(f"no snapshot with id {ref!r}")
    when = parse_time(ref)
    if when is None:
        raise RefError(
            f"invalid snapshot reference {ref!r}: expected an id prefix (>= 4 hex), latest, "
            "@checkpoint, a date or time, or a relative time like '2h ago'"
        )
    before = [s for s in candidates if s.time <= when]
    if not before:
        raise RefError(f"no snapshot at or before {when.isoformat(timespec='seconds')}" + _describe(flt))
    return max(before, key=lambda s: (s.time, s.id))


def _describe(flt: Filter) -> str:
    parts = []
    if flt.path is not None:
        parts.append(f"covering {os.fsdecode(flt.path)}")
    if flt.host:
        parts.append(f"for host {flt.host}")
    if flt.tags:
        parts.append(f"with tags {','.join(flt.tags)}")
    return (" " + " ".join(parts)) if parts else ""
