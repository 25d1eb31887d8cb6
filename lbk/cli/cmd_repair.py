"""lbk repair: rebuild the index from the packs, and rewrite snapshots that reference
missing data (docs/repair.md)."""

from __future__ import annotations

import os

import click

from lbk.cli.main import CONTEXT_SETTINGS, cli, global_options, settings
from lbk.cli.output import human_size
from lbk.ops.repair_index import repair_index
from lbk.ops.repair_snapshots import repair_snapshots


@cli.group("repair", context_settings=CONTEXT_SETTINGS)
@global_options
def repair_group() -> None:
    """Repair a damaged repository: first the index, then the snapshots.

    \b
    Example:
      lbk check --read-data
      lbk repair index --read-data
      lbk repair snapshots --dry-run
      lbk repair snapshots --forget
    """


@repair_group.command("index", context_settings=CONTEXT_SETTINGS)
@click.option("--read-data", is_flag=True,
              help="Read every pack whole and verify every blob; damaged blobs are dropped, good ones salvaged.")
@global_options
def repair_index_cmd(read_data) -> None:
    """Rebuild the index from the packs' own headers (exclusive lock).

    Packs that no index names are indexed again; blobs of packs that are gone are no
    longer indexed. One new index replaces every index file. Only index files are
    deleted: damaged packs are left, unindexed, for 'lbk prune'.

    \b
    Example:
      lbk repair index
      lbk repair index --read-data --json | jq '.blobs_dropped'
    """
    s = settings()
    repo = s.open_repo()
    try:
        res = repair_index(repo, read_data=read_data, emit=s.out.event if not s.json else (lambda ev: None))
    finally:
        s.out.stop_progress()
    s.out.doc(res.to_json())
    for p in res.packs_unreadable:
        s.out.warn(f"pack {p.pack[:16]}: {p.message}")
    for p in res.packs_damaged:
        s.out.warn(f"pack {p.pack[:16]} damaged: {p.message}; left unindexed for 'lbk prune'")
    for b in res.blobs_dropped:
        s.out.warn(f"{b.type} blob {b.id[:16]} dropped: {b.message}")
    s.out.print(
        f"read {res.packs_read} of {res.packs} packs" + (f" ({human_size(res.bytes_read)})" if read_data else "")
        + f"; indexed {res.blobs_indexed} blobs in {res.packs_indexed} packs"
    )
    if res.packs_written:
        s.out.print(f"salvaged {res.blobs_salvaged} blobs from {len(res.packs_damaged)} damaged packs into {res.packs_written} new packs")
    s.out.print(
        f"{res.blobs_newly_indexed} blobs newly indexed, {res.blobs_unindexed} no longer indexed"
        + (f" ({res.packs_missing} packs named by the old index are missing)" if res.packs_missing else "")
        + f", {len(res.blobs_dropped)} dropped as damaged"
    )
    s.out.print(f"replaced {res.index_files_replaced} index files by index {res.index_file[:16]}")
    if res.blobs_unindexed or res.blobs_dropped:
        s.out.print("next: 'lbk repair snapshots' marks the files that used the lost data")


@repair_group.command("snapshots", context_settings=CONTEXT_SETTINGS)
@click.option("--dry-run", "-n", is_flag=True, help="Show what would change; write nothing.")
@click.option("--forget", is_flag=True, help="Remove the damaged originals once their repaired copies are written.")
@global_options
def repair_snapshots_cmd(dry_run, forget) -> None:
    """Rewrite snapshots whose trees reference missing data (exclusive lock).

    A damaged file keeps what remains and is marked with an error (see 'lbk ls
    --long'); a lost directory becomes an empty one, marked. Each affected snapshot is
    written again with the tag 'repaired'; without --forget the originals stay. Run
    'lbk repair index' first.

    \b
    Example:
      lbk repair snapshots --dry-run
      lbk repair snapshots --forget
    """
    s = settings()
    repo = s.open_repo()
    try:
        res = repair_snapshots(repo, dry_run=dry_run, forget=forget, emit=s.out.event if not s.json else (lambda ev: None))
    finally:
        s.out.stop_progress()
    s.out.doc(res.to_json())
    for d in res.damage:
        s.out.print(f"{d.snapshot[:8]}  {os.fsdecode(d.path)}{'/' if d.type == 'dir' else ''}: {d.message}")
    for r in res.repairs:
        new = f" -> {r.repaired[:8]}" if r.repaired else ""
        gone = ", original removed" if r.forgotten else ""
        why = f": {r.message}" if r.message else ""
        s.out.print(f"snapshot {r.original[:8]}: {r.status}{new}{gone}{why}")
    wrote, removed = ("would write", "would remove") if dry_run else ("wrote", "removed")
    s.out.print(
        f"{res.snapshots} snapshots, {res.intact} intact, {len(res.repairs)} damaged: {res.files_damaged} files "
        f"marked, {res.dirs_replaced} directories replaced; {wrote} {res.trees_written} trees and "
        f"{res.snapshots_written} snapshots" + (f", {removed} {res.snapshots_removed} snapshots" if forget else "")
    )
