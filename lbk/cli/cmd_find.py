"""lbk find: which snapshots hold paths matching a pattern."""

from __future__ import annotations

import os

import click

from lbk.cli.cmd_log import document_events
from lbk.cli.main import command, settings
from lbk.cli.output import fmt_time
from lbk.cli.params import REF, snapshot_filter, with_filters


@command("find")
@click.argument("pattern")
@click.option("--since", metavar="REF", type=REF, help="Only snapshots from REF on.")
@click.option("--until", metavar="REF", type=REF, help="Only snapshots up to REF.")
@click.option("--ignore-case", "-i", is_flag=True, help="Match without regard to case.")
@with_filters
def find_cmd(pattern, since, until, ignore_case, host, tags, path) -> None:
    """Find which snapshots hold paths matching PATTERN.

    PATTERN is matched (fnmatch: *, ?, [...]) against each name, or against the full
    path when it contains a /. Text output lists each matching path once with the
    snapshots that hold it; --json lists every snapshot with its matches, newest first.

    \b
    Example:
      lbk find 'report*.odt'
      lbk find '/home/ann/Documents/*.txt' --since '1w ago'
    """
    from lbk.catalog import open_catalog
    from lbk.ops.find import find

    s = settings()
    repo = s.open_repo()
    catalog = open_catalog(s.cache(repo))
    if catalog.warning:
        s.out.warn(catalog.warning)
    with catalog:
        flt = snapshot_filter(host, tags, path)
        hits = find(repo, catalog, pattern, since, until, flt, ignore_case, document_events(s.out))
    s.out.stop_progress()
    s.out.doc([h.to_json() for h in hits])
    if s.json:
        return
    if not hits:
        s.out.info(f"no snapshot holds a path matching {pattern!r}")
        return
    by_path: dict[bytes, list] = {}
    for h in hits:  # newest first
        for m in h.matches:
            by_path.setdefault(m.path, []).append((h.snapshot, m.entry))
    for p in sorted(by_path):
        held = by_path[p]
        newest, oldest = held[0][0], held[-1][0]
        kind = "/" if held[0][1].type == "dir" else ""
        s.out.print(f"{os.fsdecode(p)}{kind}")
        s.out.print(f"  in {len(held)} snapshot{'s' if len(held) != 1 else ''}: newest {newest.short_id} "
                    f"{fmt_time(newest.time)}, oldest {oldest.short_id} {fmt_time(oldest.time)}")
    s.out.print(f"{len(by_path)} matching paths in {len(hits)} snapshots")
