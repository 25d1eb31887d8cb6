"""lbk log: every distinct version of a file (or of everything beneath a directory)."""

from __future__ import annotations

import os

import click

from lbk.cli.main import command, settings
from lbk.cli.output import fmt_time, human_size
from lbk.cli.params import PATH_BYTES, REF, snapshot_filter
from lbk.cli.output import Output
from lbk.events import Event, FileError, Progress


def document_events(out: Output):
    """An ``emit`` for commands that print one JSON document: progress only on a TTY,
    file errors as warnings on stderr, so that stdout carries the document alone."""

    def emit(ev: Event) -> None:
        if not out.json:
            out.event(ev)
        elif isinstance(ev, FileError):
            out.warn(f"{os.fsdecode(ev.path)}: {ev.message}")
        elif not isinstance(ev, Progress):
            out.event(ev)

    return emit


@command("log")
@click.argument("path", type=PATH_BYTES)
@click.option("--since", metavar="REF", type=REF, help="Only versions from snapshot REF on (a time, id, latest or @name).")
@click.option("--until", metavar="REF", type=REF, help="Only versions up to snapshot REF.")
@click.option("--deleted", is_flag=True, help="List files beneath PATH that existed once and are gone now.")
@click.option("--host", metavar="HOST", help="Only snapshots of this host.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Only snapshots with this tag (repeatable, or a,b).")
def log_cmd(path, since, until, deleted, host, tags) -> None:
    """Show every version of PATH, newest first: added, modified, metadata, deleted.

    For a directory, the changes beneath it. Answered from a local catalog (in the
    cache dir) that is brought up to date from the repository first.

    \b
    Example:
      lbk log ~/Documents/report.odt
      lbk log ~/Documents --since '3d ago'
      lbk log ~/Documents --deleted --json | jq -r '.[].path'
    """
    from lbk.catalog import open_catalog
    from lbk.ops.log import DELETED, log

    s = settings()
    repo = s.open_repo()
    catalog = open_catalog(s.cache(repo))
    if catalog.warning:
        s.out.warn(catalog.warning)
    with catalog:
        res = log(repo, catalog, path, since, until, deleted, snapshot_filter(host, tags, None),
                  document_events(s.out))
    s.out.stop_progress()
    if deleted:
        gone = res.deleted or []
        s.out.doc([d.to_json() for d in gone])
        for d in gone:
            last = f"last in {d.last_in.short_id}" if d.last_in else "never held"
            size = human_size(d.entry.size) if d.entry.type == "file" else d.entry.type
            s.out.print(f"{fmt_time(d.deleted_in.time)}  {d.deleted_in.short_id}  deleted  {last:<16} {size:>10}  "
                        f"{os.fsdecode(d.path)}")
        if not gone:
            s.out.info(f"nothing beneath {os.fsdecode(res.path)} was deleted ({res.snapshots} snapshots)")
        return
    s.out.doc([r.to_json() for r in res.rows])
    if not res.rows:
        s.out.info(f"no versions of {os.fsdecode(res.path)} ({res.snapshots} snapshots)")
        return
    with_path = any(r.path != res.path for r in res.rows)
    s.out.print((f"{'Time':<21}{'Snapshot':<10}{'Kind':<14}{'Change':<10}{'Size':>10}  {'Content':<9}"
                 + ("  Path" if with_path else "")).rstrip())
    for r in res.rows:
        e = r.entry
        gone = r.change == DELETED
        size = "" if gone or e.type != "file" else human_size(e.size)
        content = "" if gone else (e.short_content if e.type == "file" else e.type)
        s.out.print((f"{fmt_time(r.snapshot.time):<21}{r.snapshot.short_id:<10}{r.snapshot.kind:<14}{r.change:<10}"
                     f"{size:>10}  {content or '':<9}" + (f"  {os.fsdecode(r.path)}" if with_path else "")).rstrip())
