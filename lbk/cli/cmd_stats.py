"""lbk stats: sizes and ratios."""

from __future__ import annotations

import click

from lbk.cli.main import command, settings
from lbk.cli.output import human_size
from lbk.cli.params import REF, snapshot_filter, with_filters


@command("stats")
@click.argument("ref", required=False, type=REF)
@with_filters
def stats_cmd(ref, host, tags, path) -> None:
    """Show stored bytes, original bytes, and deduplication and compression ratios.

    With REF, for that snapshot; otherwise for every snapshot (matching the filters).

    \b
    Example:
      lbk stats latest --json | jq .dedup_ratio
    """
    from lbk.ops.listing import find_snapshot, list_snapshots
    from lbk.ops.stats import stats

    s = settings()
    repo = s.open_repo()
    flt = snapshot_filter(host, tags, path)
    snaps = [find_snapshot(repo, ref, flt)] if ref else list_snapshots(repo, flt)
    st = stats(repo, snaps)
    s.out.doc(st.to_json())
    s.out.print(f"Snapshots:           {st.snapshots}")
    s.out.print(f"Files:               {st.files}")
    s.out.print(f"Original size:       {human_size(st.original_bytes)}")
    s.out.print(f"Unique data:         {human_size(st.unique_bytes)}")
    s.out.print(f"Stored (referenced): {human_size(st.stored_bytes)}")
    s.out.print(f"Repository size:     {human_size(st.repository_bytes)}")
    s.out.print(f"Dedup ratio:         {st.dedup_ratio:.2f}x")
    s.out.print(f"Compression ratio:   {st.compression_ratio:.2f}x")
