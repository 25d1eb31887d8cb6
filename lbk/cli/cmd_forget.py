"""lbk forget: remove snapshots by a retention policy (restic semantics) or by id."""

from __future__ import annotations

import os

import click

from lbk.cli.cmd_prune import max_unused_option, show_prune
from lbk.cli.main import command, settings
from lbk.cli.output import fmt_time
from lbk.cli.params import REF, snapshot_filter, with_filters
from lbk.errors import UsageError
from lbk.ops.listing import snapshot_json
from lbk.ops.policy import Decision, Duration, Policy, forget, parse_duration


class DurationType(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, Duration):
            return value
        try:
            return parse_duration(str(value))
        except UsageError as e:
            self.fail(e.message, param, ctx)


DURATION = DurationType()
COUNT = click.IntRange(min=-1)


def _table(out, title: str, decisions) -> None:
    out.print(f"{title}:")
    for d in decisions:
        s = d.snapshot
        out.print(f"  {s.short_id:<10}{fmt_time(s.time):<21}{s.kind:<14}{s.name[:13]:<14}{', '.join(d.reasons)}")


@command("forget")
@click.argument("ids", nargs=-1, metavar="[ID]...", type=REF)
@click.option("--keep-last", "last", type=COUNT, default=0, metavar="N", help="Keep the newest N snapshots.")
@click.option("--keep-within", "within", type=DURATION, metavar="DURATION",
              help="Keep every snapshot within DURATION (e.g. 2y5m7d3h) of the newest one.")
@click.option("--keep-hourly", "hourly", type=COUNT, default=0, metavar="N", help="Keep the newest of each of the last N hours.")
@click.option("--keep-daily", "daily", type=COUNT, default=0, metavar="N", help="Keep the newest of each of the last N days.")
@click.option("--keep-weekly", "weekly", type=COUNT, default=0, metavar="N", help="Keep the newest of each of the last N weeks.")
@click.option("--keep-monthly", "monthly", type=COUNT, default=0, metavar="N", help="Keep the newest of each of the last N months.")
@click.option("--keep-yearly", "yearly", type=COUNT, default=0, metavar="N", help="Keep the newest of each of the last N years.")
@click.option("--keep-tag", "keep_tags", multiple=True, metavar="T[,T...]", help="Keep snapshots with all these tags (repeatable).")
@click.option("--keep-checkpoints", "checkpoints", type=COUNT, default=None, metavar="N",
              help="Keep the newest N checkpoints of each name (without it, checkpoints are not touched).")
@click.option("--keep-pre-rollback", "pre_rollback", type=DURATION, default="7d", show_default=True, metavar="DURATION",
              help="Never remove pre-rollback snapshots younger than DURATION.")
@with_filters
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be removed; change nothing.")
@click.option("--prune", "do_prune", is_flag=True, help="Run prune afterwards (same lock).")
@max_unused_option
def forget_cmd(ids, last, within, hourly, daily, weekly, monthly, yearly, keep_tags, checkpoints, pre_rollback,
               host, tags, path, dry_run, do_prune, max_unused) -> None:
    """Remove snapshots that the keep rules do not keep, or the snapshots ID... .

    Snapshots are grouped by host and paths; each rule keeps its own set and a snapshot
    is kept when any rule keeps it (restic semantics; -1 means "no limit"). Checkpoints
    are kept by --keep-checkpoints only: the newest N of each name (default timestamp
    names count as one name); without it they are not touched. pre-rollback snapshots
    younger than --keep-pre-rollback (7d) are always kept. With no rule at all, forget
    refuses to run. Data is only freed by prune (or --prune). A snapshot whose file is
    damaged (listings skip it with a warning) is never removed by a rule, only by its ID;
    prune refuses to run until it is gone.

    \b
    Example:
      lbk forget --keep-daily 7 --keep-weekly 5 --keep-checkpoints 3 --prune
      lbk forget 1a2b3c4d --dry-run
    """
    s = settings()
    policy = Policy(
        last=last, hourly=hourly, daily=daily, weekly=weekly, monthly=monthly, yearly=yearly, within=within,
        tags=[tuple(x for x in t.split(",") if x) for t in keep_tags], checkpoints=checkpoints,
        pre_rollback_within=pre_rollback,
    )
    if ids and not policy.empty():
        raise UsageError("give either snapshot ids or --keep-* rules, not both")
    if not ids and policy.empty():
        raise UsageError("no keep rule given: refusing to remove every snapshot (use --keep-last N or another --keep-* option)")
    repo = s.open_repo()
    try:
        res = forget(repo, None if ids else policy, snapshot_filter(host, tags, path), list(ids), dry_run=dry_run,
                     prune=do_prune, max_unused=max_unused, emit=s.out.event if not s.json else (lambda ev: None))
    finally:
        s.out.stop_progress()
    s.out.doc({
        "dry_run": dry_run,
        "policy": None if ids else policy.describe(),
        "groups": [
            {"host": g.host, "paths": [os.fsdecode(p) for p in g.paths],
             "keep": [{**snapshot_json(d.snapshot), "reasons": d.reasons} for d in g.decisions if d.keep],
             "remove": [snapshot_json(d.snapshot) for d in g.decisions if not d.keep]}
            for g in res.groups
        ],
        "kept": [x.id for x in res.kept],
        "removed": [x.id for x in res.removed] + res.removed_damaged,
        "prune": res.prune.to_json() if res.prune is not None else None,
    })
    verb = "would remove" if dry_run else "removed"
    if res.explicit:
        _table(s.out, f"{verb} {len(res.removed)} snapshots", [Decision(x, False, []) for x in res.removed])
        for name in res.removed_damaged:
            s.out.print(f"{verb} damaged snapshot {name[:8]}")
    else:
        s.out.print(f"policy: {policy.describe()}")
        for g in res.groups:
            s.out.print(f"snapshots of host {g.host}, paths {', '.join(os.fsdecode(p) for p in g.paths)}:")
            _table(s.out, f"keep {len(g.kept)} snapshots", [d for d in g.decisions if d.keep])
            if g.removed:
                _table(s.out, f"{verb} {len(g.removed)} snapshots", [d for d in g.decisions if not d.keep])
        s.out.print(f"{verb} {len(res.removed)} snapshots, kept {len(res.kept)}")
    if res.prune is not None:
        show_prune(s.out, res.prune)
