"""lbk check: verify the repository's structure and, optionally, its data."""

from __future__ import annotations

import click

from lbk.cli.main import command, settings
from lbk.cli.output import human_size
from lbk.errors import ExitCode
from lbk.ops.check import check


@command("check")
@click.option("--read-data", is_flag=True, help="Read, authenticate and re-hash every blob.")
@click.option("--read-data-subset", metavar="N%|n/m", help="Read only a subset of packs: a percentage or part n of m.")
def check_cmd(read_data, read_data_subset) -> int:
    """Check the repository: indexes, packs, snapshots and tree references.

    Damaged objects are reported with the snapshots and files they affect; the exit
    status is 1 if anything is wrong.

    \b
    Example:
      lbk check --read-data-subset 10%
    """
    s = settings()
    repo = s.open_repo()
    try:
        res = check(repo, s.out.event, read_data=read_data, subset=read_data_subset)
    finally:
        s.out.stop_progress()
    for p in res.problems:
        s.out.line({"message_type": "error", **p.to_json()})
        if not s.json:
            where = f" (snapshot {p.snapshot}{', ' + p.path if p.path else ''})" if p.snapshot else (f" ({p.path})" if p.path else "")
            named = p.message.startswith((f"{p.kind} {p.object[:8]}", f"{p.kind}/{p.object[:8]}"))
            head = "" if named else f"{p.kind} {p.object[:16]}: "
            s.out.warn(f"{head}{p.message}{where}")
    summary = {
        "message_type": "summary", "ok": res.ok, "snapshots": res.snapshots, "trees": res.trees,
        "packs": res.packs, "blobs": res.blobs, "packs_read": res.packs_read, "bytes_read": res.bytes_read,
        "unindexed_packs": res.unindexed_packs, "marked_damaged": res.marked_damaged, "problems": len(res.problems),
        "damaged_snapshots": sorted({p.snapshot for p in res.problems if p.snapshot}),
    }
    s.out.line(summary)
    s.out.print(
        f"checked {res.snapshots} snapshots, {res.trees} trees, {res.packs} packs, {res.blobs} blobs"
        + (f"; read {res.packs_read} packs ({human_size(res.bytes_read)})" if res.packs_read else "")
    )
    if res.unindexed_packs and res.ok:
        s.out.print(f"{res.unindexed_packs} packs are not indexed (left by an interrupted run, or set aside as damaged "
                    "by 'lbk repair index'; 'lbk prune' removes them)")
    elif res.unindexed_packs:
        s.out.print(f"{res.unindexed_packs} packs are not indexed: 'lbk repair index' indexes the sound ones again")
    if res.marked_damaged:
        s.out.print(f"{res.marked_damaged} files or directories are marked damaged by 'lbk repair snapshots' "
                    "(see 'lbk ls --long'; not errors)")
    if res.ok:
        s.out.print("no errors found")
        return ExitCode.OK
    s.out.print(f"{len(res.problems)} problems found; affected snapshots: {', '.join(summary['damaged_snapshots']) or 'none'}")
    return ExitCode.FATAL
