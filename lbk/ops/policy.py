"""Retention: which snapshots a policy keeps (restic semantics), and ``forget``.

Snapshots are grouped by host and paths. Within a group, the general rules
(``--keep-last/-hourly/-daily/-weekly/-monthly/-yearly/-within/-tag``) look at every
snapshot that is not a checkpoint, newest first, exactly as restic does: each rule is
independent, a bucket rule keeps the newest snapshot of each of its last N distinct
buckets (hour, day, ISO week, month, year, in local time), ``-1`` means "no limit", and a
snapshot is kept when any rule keeps it. ``--keep-within`` is measured back from the
newest snapshot of the group, not from now (as in restic).

Two kinds get special treatment:

- **checkpoints** are decided only by ``--keep-checkpoints N``: the newest N of each
  checkpoint name (per group). Checkpoints whose name is a default timestamp name
  (``2026-11-25T14:00``) count as one name, so periodic unnamed checkpoints age out
  while ``@before-upgrade`` is kept apart. Without ``--keep-checkpoints`` no checkpoint
  is removed.
- **pre-rollback** snapshots take part in the general rules and are in addition never
  removed while younger than ``pre_rollback_within`` (7 days by default), measured from
  now, so every recent rollback stays undoable.

Snapshots that no rule covers are left alone: a class of snapshots is only thinned when a
rule for it is given, and a policy with no rule at all is refused (it would remove
everything). ``forget`` applies a policy (or removes explicit snapshots) under the
exclusive lock and can run prune afterwards in the same lock.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from lbk.errors import RefError, UsageError
from lbk.events import Emit, discard
from lbk.model import Snapshot
from lbk.ops import prune as prune_mod
from lbk.ops.refs import Filter, resolve
from lbk.repo.repository import Repository
from lbk.repo.snapshots import damaged_named, load_all, remove_snapshot

_DURATION_PART = re.compile(r"(\d+)([ymdh])")
_TIMESTAMP_NAME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?\Z")
TIMESTAMP_SERIES = "(timestamp names)"


@dataclass(frozen=True)
class Duration:
    """A calendar duration like restic's: ``2y5m7d3h`` (years, months, days, hours)."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def __str__(self) -> str:
        parts = [f"{v}{u}" for v, u in ((self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")) if v]
        return "".join(parts) or "0h"

    def is_zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def before(self, t: datetime) -> datetime:
        """``t`` minus this duration; a day that does not exist in the target month is
        clamped to the month's last day (Mar 31 - 1m = Feb 28/29)."""
        total = t.year * 12 + (t.month - 1) - (self.years * 12 + self.months)
        year, month = divmod(total, 12)
        month += 1
        day = min(t.day, calendar.monthrange(year, month)[1])
        return t.replace(year=year, month=month, day=day) - timedelta(days=self.days, hours=self.hours)


def parse_duration(text: str) -> Duration:
    """Parse ``2y5m7d3h`` (any subset, in any order; a repeated unit adds up)."""
    t = text.strip().lower()
    pos, acc = 0, {"y": 0, "m": 0, "d": 0, "h": 0}
    for m in _DURATION_PART.finditer(t):
        if m.start() != pos:
            break
        acc[m.group(2)] += int(m.group(1))
        pos = m.end()
    if not t or pos != len(t):
        raise UsageError(f"invalid duration {text!r}: use a combination like 2y5m7d3h (years, months, days, hours)")
    return Duration(acc["y"], acc["m"], acc["d"], acc["h"])


@dataclass
class Policy:
    """Keep rules. Counts are 0 for "not given" and -1 for "no limit"."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None
    tags: list[tuple[str, ...]] = field(default_factory=list)
    checkpoints: int | None = None  # None: checkpoints are not touched
    pre_rollback_within: Duration = Duration(days=7)

    BUCKETS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")

    def has_general_rule(self) -> bool:
        return any(getattr(self, b) for b in self.BUCKETS) or bool(self.within and not self.within.is_zero()) or bool(self.tags)

    def empty(self) -> bool:
        return not self.has_general_rule() and self.checkpoints is None

    def describe(self) -> str:
        parts = []
        for b in self.BUCKETS:
            n = getattr(self, b)
            if n:
                what = "latest" if b == "last" else b
                parts.append(f"keep {'all' if n == -1 else n} {what}")
        if self.within and not self.within.is_zero():
            parts.append(f"keep everything within {self.within} of the newest")
        for t in self.tags:
            parts.append(f"keep tagged {','.join(t)}")
        if not parts:
            parts.append("backups untouched (no rule)")
        if self.checkpoints is None or self.checkpoints == -1:
            parts.append("checkpoints untouched")
        else:
            parts.append(f"checkpoints: newest {self.checkpoints} per name")
        parts.append(f"pre-rollback snapshots kept at least {self.pre_rollback_within}")
        return "; ".join(parts)


@dataclass
class Decision:
    snapshot: Snapshot
    keep: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class Group:
    host: str
    paths: list[bytes]
    decisions: list[Decision]  # newest first

    @property
    def kept(self) -> list[Snapshot]:
        return [d.snapshot for d in self.decisions if d.keep]

    @property
    def removed(self) -> list[Snapshot]:
        return [d.snapshot for d in self.decisions if not d.keep]


def _newest_first(snaps: list[Snapshot]) -> list[Snapshot]:
    return sorted(snaps, key=lambda s: (s.time, s.id), reverse=True)


def _bucket(rule: str, t: datetime, nr: int):
    if rule == "last":
        return nr
    if rule == "hourly":
        return (t.year, t.month, t.day, t.hour)
    if rule == "daily":
        return (t.year, t.month, t.day)
    if rule == "weekly":
        return tuple(t.isocalendar()[:2])
    if rule == "monthly":
        return (t.year, t.month)
    return t.year


def _apply_general(snaps: list[Snapshot], p: Policy, now: datetime) -> list[Decision]:
    """Restic's algorithm over one group's non-checkpoint snapshots (newest first)."""
    ordered = _newest_first(snaps)
    if not ordered:
        return []
    if not p.has_general_rule():
        return [Decision(s, True, ["no keep rule for this kind"]) for s in ordered]
    latest = ordered[0].time
    within_limit = p.within.before(latest) if p.within and not p.within.is_zero() else None
    floor = p.pre_rollback_within.before(now) if not p.pre_rollback_within.is_zero() else None
    counts = {b: getattr(p, b) for b in Policy.BUCKETS}
    last_val: dict[str, object] = {b: None for b in Policy.BUCKETS}
    out = []
    for nr, s in enumerate(ordered):
        reasons = []
        for tl in p.tags:
            if set(tl) <= set(s.tags):
                reasons.append(f"tagged {','.join(tl)}")
        if within_limit is not None and s.time > within_limit:
            reasons.append(f"within {p.within}")
        lt = s.time.astimezone()
        for b in Policy.BUCKETS:
            if counts[b] > 0 or counts[b] == -1:
                val = _bucket(b, lt, nr)
                if val != last_val[b]:
                    last_val[b] = val
                    if counts[b] > 0:
                        counts[b] -= 1
                    reasons.append("last snapshot" if b == "last" else f"{b} snapshot")
        if s.kind == "pre-rollback" and floor is not None and s.time > floor:
            reasons.append(f"pre-rollback, younger than {p.pre_rollback_within}")
        out.append(Decision(s, bool(reasons), reasons))
    return out


def checkpoint_series(s: Snapshot) -> str:
    return TIMESTAMP_SERIES if _TIMESTAMP_NAME.match(s.name or "") else s.name


def _apply_checkpoints(snaps: list[Snapshot], p: Policy) -> list[Decision]:
    ordered = _newest_first(snaps)
    if p.checkpoints is None or p.checkpoints == -1:
        return [Decision(s, True, ["checkpoint (no checkpoint rule)" if p.checkpoints is None else "checkpoint"]) for s in ordered]
    seen: dict[str, int] = {}
    out = []
    for s in ordered:
        series = checkpoint_series(s)
        seen[series] = seen.get(series, 0) + 1
        keep = seen[series] <= p.checkpoints
        out.append(Decision(s, keep, [f"newest {p.checkpoints} checkpoints named {series}"] if keep else []))
    return out


def apply_policy(snaps: list[Snapshot], policy: Policy, now: datetime | None = None) -> list[Group]:
    """Decide for every snapshot; groups (host, paths) in order of their newest snapshot."""
    if policy.empty():
        raise UsageError("no keep rule given: refusing to remove every snapshot (use --keep-last N or another --keep-* option)")
    now = now or datetime.now(timezone.utc)
    groups: dict[tuple, list[Snapshot]] = {}
    for s in snaps:
        groups.setdefault((s.host, tuple(sorted(s.paths))), []).append(s)
    out = []
    for (host, paths), members in groups.items():
        decisions = _apply_general([s for s in members if s.kind != "checkpoint"], policy, now)
        decisions += _apply_checkpoints([s for s in members if s.kind == "checkpoint"], policy)
        decisions.sort(key=lambda d: (d.snapshot.time, d.snapshot.id), reverse=True)
        out.append(Group(host, list(paths), decisions))
    out.sort(key=lambda g: (g.host, g.paths))
    return out


# -- forget --------------------------------------------------------------------------------


def _damaged_by_id(repo: Repository, ref: str, snaps: list[Snapshot]) -> str | None:
    """The damaged snapshot file ``ref`` (an id prefix) names, when no readable one matches:
    the way to remove a snapshot that cannot be read (prune refuses while one is there)."""
    hits = damaged_named(repo, ref, snaps)
    if len(hits) > 1:
        raise RefError(f"snapshot id prefix {ref!r} is ambiguous ({len(hits)} snapshots match)")
    return hits[0] if hits else None


@dataclass
class ForgetResult:
    groups: list[Group]
    kept: list[Snapshot]
    removed: list[Snapshot]
    dry_run: bool
    explicit: bool = False
    prune: object | None = None  # a PruneResult when --prune was given
    removed_damaged: list[str] = field(default_factory=list)  # unreadable snapshot files named by id


def forget(
    repo: Repository,
    policy: Policy | None,
    flt: Filter = Filter(),
    ids: list[str] = (),  # type: ignore[assignment]
    dry_run: bool = False,
    prune: bool = False,
    max_unused: float | None = 5.0,
    emit: Emit = discard,
    now: datetime | None = None,
) -> ForgetResult:
    """Remove the snapshots a policy does not keep (or the ones named by ``ids``).

    With ``prune``, run prune afterwards under the same exclusive lock (``max_unused``: a
    percentage, None for unlimited). A dry run changes nothing and takes a shared lock.
    """
    if ids and policy is not None and not policy.empty():
        raise UsageError("give either snapshot ids or --keep-* rules, not both")
    if not ids and (policy is None or policy.empty()):
        raise UsageError("no keep rule given: refusing to remove every snapshot (use --keep-last N or another --keep-* option)")
    with repo.lock(exclusive=not dry_run):
        snaps = load_all(repo)
        if ids:
            chosen: dict[str, Snapshot] = {}
            damaged: set[str] = set()
            for ref in ids:
                name = _damaged_by_id(repo, ref, snaps)
                if name:
                    damaged.add(name)
                    continue
                s = resolve(ref, snaps, flt)
                chosen[s.id] = s
            removed = sorted(chosen.values(), key=lambda s: (s.time, s.id))
            kept = [s for s in snaps if s.id not in chosen]
            res = ForgetResult([], kept, removed, dry_run, explicit=True, removed_damaged=sorted(damaged))
        else:
            considered = [s for s in snaps if flt.matches(s)]
            groups = apply_policy(considered, policy, now)
            gone = {s.id for g in groups for s in g.removed}
            res = ForgetResult(
                groups,
                [s for s in snaps if s.id not in gone],
                [s for s in snaps if s.id in gone],
                dry_run,
            )
        if not dry_run:
            for s in res.removed:
                remove_snapshot(repo, s.id)
            for name in res.removed_damaged:
                remove_snapshot(repo, name)
        if prune:
            if dry_run:
                res.prune = prune_mod.plan_result(repo, res.kept, max_unused, emit)
            else:
                res.prune = prune_mod.prune_locked(repo, max_unused, emit)
    return res
