"""lbk snapshots: list snapshots of every kind."""

from __future__ import annotations

import os

import click

from lbk.cli.main import command, settings
from lbk.cli.output import fmt_time, human_size
from lbk.cli.params import snapshot_filter, with_filters
from lbk.model import KINDS
from lbk.ops.listing import list_snapshots, snapshot_json


@command("snapshots")
@click.option("--kind", type=click.Choice(KINDS), help="Only snapshots of this kind.")
@click.option("--checkpoints", is_flag=True, help="Short for --kind checkpoint.")
@click.option("--latest", type=click.IntRange(min=1), metavar="N", help="Only the newest N (per host and paths).")
@with_filters
def snapshots_cmd(kind, checkpoints, latest, host, tags, path) -> None:
    """List snapshots, oldest first.

    \b
    Example:
      lbk snapshots --tag daily --latest 3
      lbk snapshots --json | jq -r '.[].id'
    """
    s = settings()
    repo = s.open_repo()
    flt = snapshot_filter(host, tags, path, "checkpoint" if checkpoints else kind)
    snaps = list_snapshots(repo, flt, latest)
    s.out.doc([snapshot_json(x) for x in snaps])
    if s.json:
        return
    s.out.print(f"{'ID':<10}{'Time':<21}{'Kind':<14}{'Name':<14}{'Host':<16}{'Tags':<14}{'Size':>10}  Paths")
    for x in snaps:
        size = human_size(x.summary["total_bytes"]) if "total_bytes" in x.summary else ""
        s.out.print(
            f"{x.short_id:<10}{fmt_time(x.time):<21}{x.kind:<14}{x.name[:13]:<14}{x.host[:15]:<16}"
            f"{','.join(x.tags)[:13]:<14}{size:>10}  {', '.join(os.fsdecode(p) for p in x.paths)}"
        )
    s.out.print(f"{len(snaps)} snapshots")
