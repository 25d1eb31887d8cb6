"""lbk rollback: put a file or a tree back, in place, to its state at REF."""

from __future__ import annotations

import os
import sys

import click

from lbk.cli.main import command, settings
from lbk.cli.output import fmt_time, human_size
from lbk.cli.params import PATH_BYTES, REF
from lbk.errors import ExitCode
from lbk.events import FileError, Warning_


def _show_plan(out, plan, verb: str) -> None:
    snap = plan.snapshot
    label = f"{snap.kind} '{snap.name}'" if snap.name else snap.kind
    out.print(f"{verb} {os.fsdecode(plan.path)} to snapshot {snap.short_id} ({fmt_time(snap.time)}, {label}):")
    for a in plan.actions:
        extra = f" -> {os.fsdecode(a.link_to)}" if a.link_to else ""
        out.print(f"  {a.action:<9} {os.fsdecode(a.path)}{extra}  ({a.type}: {a.reason})")
    c = plan.counts()
    out.print(
        f"{len(plan.actions)} changes: {c['rewrite']} rewrite, {c['create']} create, {c['remove']} remove, "
        f"{c['metadata']} metadata; {human_size(plan.bytes_to_write)} to write "
        f"({plan.entries} entries compared, {plan.files_hashed} files read to compare)"
    )


@command("rollback")
@click.argument("path", type=PATH_BYTES)
@click.option("--to", "ref", required=True, metavar="REF", type=REF,
              help="Snapshot id, latest, @checkpoint, a date/time or '2h ago' (newest snapshot covering PATH).")
@click.option("--dry-run", "-n", is_flag=True, help="Show the plan; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--exclude", "excludes", multiple=True, metavar="PAT", help="Never touch matching paths (repeatable).")
@click.option("--host", metavar="HOST", help="With latest, @name or a time: only snapshots of this host.")
def rollback_cmd(path, ref, dry_run, yes, excludes, host) -> int:
    """Put PATH (a file or a whole tree) back, in place, to its state at REF.

    Changed files are rewritten (beside, then renamed into place), deleted ones
    recreated, files created since REF removed, metadata restored; only what differs is
    touched. First the current state of PATH is saved as a 'pre-rollback' snapshot, so
    the rollback can itself be undone with 'lbk rollback PATH --to <its id>'.
    Without --yes the plan is shown and confirmed on a terminal; without a terminal
    (or with --json), --yes is required.

    \b
    Example:
      lbk rollback ~/project --to @before-upgrade --dry-run
      lbk rollback ~/project/notes.txt --to '2h ago' --yes
    """
    from lbk.ops.listing import find_snapshot
    from lbk.ops.refs import Filter
    from lbk.ops.rollback import ConfirmationRequired, RollbackOptions, normalize_path, plan_rollback, rollback

    s = settings()
    if not (dry_run or yes) and (s.json or not sys.stdin.isatty()):
        raise ConfirmationRequired()  # scripts (no terminal, or --json) must say --yes
    target = normalize_path(path)
    repo = s.open_repo()
    cache = s.cache(repo)
    snap = find_snapshot(repo, ref, Filter(host=host or None, path=target))
    skip = [os.fsencode(p) for p in (repo.backend.location, cache.root if cache else None) if p and os.path.isabs(p)]
    opts = RollbackOptions(excludes=list(excludes), exclude_paths=skip)
    problems: list[dict] = []

    def emit(ev) -> None:
        if s.json:  # one JSON document: problems go into it, progress is dropped
            if isinstance(ev, (FileError, Warning_)):
                problems.append(ev.to_json())
        else:
            s.out.event(ev)

    try:
        if dry_run or not yes:
            plan = plan_rollback(repo, snap, target, opts, emit)
            if dry_run:
                s.out.stop_progress()
                s.out.doc({**plan.to_json(), "dry_run": True, "problems": problems})
                _show_plan(s.out, plan, "would roll back")
                return ExitCode.FATAL if plan.errors else ExitCode.OK
            s.out.stop_progress()
            if not plan.actions:
                s.out.print(f"{os.fsdecode(target)} is already as in snapshot {snap.short_id}: nothing to do")
                return ExitCode.OK
            _show_plan(s.out, plan, "roll back")
            if not click.confirm("Save the current state and apply these changes?", default=False, err=True):
                s.out.print("cancelled; nothing was changed")
                return ExitCode.FATAL
        res = rollback(repo, cache, snap, target, opts, emit)
    finally:
        s.out.stop_progress()
    s.out.doc({**res.to_json(), "problems": problems})
    if not res.plan.actions:
        s.out.print(f"{os.fsdecode(target)} is already as in snapshot {snap.short_id}: nothing to do")
        return ExitCode.OK
    d = res.done
    s.out.print(
        f"rolled back {os.fsdecode(target)} to snapshot {snap.short_id}: {d['rewrite']} rewritten, "
        f"{d['create']} created, {d['remove']} removed, {d['metadata']} metadata fixed "
        f"({human_size(res.bytes_written)} written in {res.duration:.2f}s)"
    )
    pre = res.pre_rollback.short_id
    s.out.print(f"the previous state is saved as snapshot {pre}; undo with: lbk rollback {os.fsdecode(target)} --to {pre}")
    if res.errors:
        s.out.warn(f"{res.errors} errors during rollback (listed above); undo with: lbk rollback {os.fsdecode(target)} --to {pre}")
        return ExitCode.FATAL
    return ExitCode.OK
