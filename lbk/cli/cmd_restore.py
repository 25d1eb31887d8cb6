"""lbk restore: restore a snapshot (or part of it) into a directory.

The ops are imported when the command runs: shell completion imports this module to
complete a REF, and must not pay for the repository's modules (see lbk/cli/params.py).
"""

from __future__ import annotations

import os

import click

from lbk.cli.main import command, settings
from lbk.cli.output import human_size
from lbk.cli.params import PATH_BYTES, REF, snapshot_filter
from lbk.errors import ExitCode

OVERWRITE_MODES = ("always", "if-changed", "never")  # lbk.ops.restore.OVERWRITE_MODES (a test keeps them equal)


@command("restore")
@click.argument("ref", type=REF)
@click.argument("paths", nargs=-1, type=PATH_BYTES)
@click.option("--target", "-t", required=True, type=PATH_BYTES, metavar="DIR", help="Directory to restore into.")
@click.option("--include", "includes", multiple=True, metavar="PAT", help="Restore only matching files.")
@click.option("--exclude", "excludes", multiple=True, metavar="PAT", help="Do not restore matching paths.")
@click.option("--overwrite", type=click.Choice(OVERWRITE_MODES), default="always", show_default=True,
              help="What to do with files that exist in the target.")
@click.option("--verify", is_flag=True, help="Re-read restored files and check their content ids.")
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be restored; write nothing.")
@click.option("--host", metavar="HOST", help="With latest or a time: only snapshots of this host.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="With latest or a time: only snapshots with this tag.")
def restore_cmd(ref, paths, target, includes, excludes, overwrite, verify, dry_run, host, tags) -> int:
    """Restore snapshot REF into DIR, each file at its original absolute path beneath DIR.

    PATHS (absolute, as backed up) restrict the restore to those paths and what is
    beneath them. Nothing is ever written outside DIR.

    \b
    Example:
      lbk restore latest --target /tmp/r
      lbk restore 1a2b3c4d /home/ann/Documents --target /tmp/r --verify
    """
    from lbk.ops.listing import find_snapshot
    from lbk.ops.restore import RestoreOptions, restore

    s = settings()
    repo = s.open_repo()
    path_filter = paths[0] if len(paths) == 1 else None
    snap = find_snapshot(repo, ref, snapshot_filter(host, tags, os.fsdecode(path_filter) if path_filter else None))
    opts = RestoreOptions(
        target=target, paths=[os.path.abspath(p) for p in paths], includes=list(includes), excludes=list(excludes),
        overwrite=overwrite, verify=verify, dry_run=dry_run,
    )
    try:
        res = restore(repo, snap, opts, s.out.event)
    finally:
        s.out.stop_progress()
    s.out.line({"message_type": "summary", "snapshot_id": snap.id, "dry_run": dry_run, **res.summary()})
    verb = "would restore" if dry_run else "restored"
    s.out.print(
        f"{verb} snapshot {snap.short_id}: {res.files} files ({human_size(res.bytes)}), {res.dirs} directories, "
        f"{res.other} other, {res.skipped} skipped in {res.duration:.2f}s"
        + (f", {res.verified} verified" if verify else "")
    )
    if res.errors:
        s.out.warn(f"{res.errors} errors during restore (listed above)")
        return ExitCode.FATAL
    return ExitCode.OK
