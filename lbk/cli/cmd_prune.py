"""lbk prune: remove unreferenced data, repacking partly used packs."""

from __future__ import annotations

import click

from lbk.cli.main import command, settings
from lbk.cli.output import human_size
from lbk.errors import UsageError
from lbk.ops.prune import DEFAULT_MAX_UNUSED, PruneResult, parse_max_unused, prune


class MaxUnused(click.ParamType):
    name = "PCT"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, float):
            return value
        try:
            return parse_max_unused(str(value))
        except UsageError as e:
            self.fail(e.message, param, ctx)


MAX_UNUSED = MaxUnused()
max_unused_option = click.option(
    "--max-unused", type=MAX_UNUSED, default=f"{DEFAULT_MAX_UNUSED:g}%", show_default=True, metavar="PCT",
    help="Unused space tolerated in kept packs, in percent of the repository ('unlimited': never repack).",
)


def show_prune(out, res: PruneResult) -> None:
    verb = "would " if res.dry_run else ""
    out.print(
        f"{res.snapshots} snapshots use {res.blobs_used} blobs; unused before: {human_size(res.bytes_unused_before)}"
    )
    out.print(
        f"packs: {verb}delete {res.packs_deleted} ({res.packs_unused} unused, {res.packs_repacked} repacked, "
        f"{res.packs_unindexed} unindexed), {verb}write {res.packs_written} new"
        f" ({res.blobs_repacked} blobs, {human_size(res.bytes_repacked)} repacked)"
    )
    out.print(
        f"index files: {res.index_files_before} -> {res.index_files_before - res.index_files_removed + res.index_files_written}; "
        f"unused after: {human_size(res.bytes_unused_after)}"
    )
    freed = "would free about" if res.dry_run else "freed"
    out.print(f"repository: {human_size(res.bytes_before)} -> {human_size(res.bytes_after)}, {freed} {human_size(res.bytes_freed)}"
              + ("" if res.dry_run else f" in {res.duration:.2f}s"))


@command("prune")
@max_unused_option
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be removed; change nothing.")
def prune_cmd(max_unused, dry_run) -> None:
    """Remove data that no snapshot references.

    Packs with no used data are deleted; packs whose unused share makes the repository
    waste more than --max-unused are repacked (their used blobs copied into new packs).
    Takes an exclusive lock. Interrupted at any point, the repository stays valid: new
    packs and the new index are written before anything is deleted.

    \b
    Example:
      lbk forget --keep-daily 7 --keep-weekly 4
      lbk prune --max-unused 10%
    """
    s = settings()
    repo = s.open_repo()
    try:
        res = prune(repo, max_unused, dry_run=dry_run, emit=s.out.event if not s.json else (lambda ev: None))
    finally:
        s.out.stop_progress()
    s.out.doc(res.to_json())
    show_prune(s.out, res)
