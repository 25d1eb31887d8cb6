"""lbk backup: one snapshot of the given paths."""

from __future__ import annotations

import os

import click

from lbk.cli.main import command, settings
from lbk.cli.output import human_size
from lbk.cli.params import PATH_BYTES
from lbk.errors import ExitCode
from lbk.ops.backup import BackupOptions, backup
from lbk.ops.excludes import read_exclude_file


@command("backup")
@click.argument("paths", nargs=-1, required=True, type=PATH_BYTES)
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Tag the snapshot (repeatable, or a,b).")
@click.option("--host", metavar="HOST", help="Record this host name instead of the machine's.")
@click.option("--exclude", "excludes", multiple=True, metavar="PAT", help="Exclude matching paths (repeatable).")
@click.option("--exclude-file", "exclude_files", multiple=True, metavar="FILE", help="Read exclude patterns from FILE.")
@click.option("--one-file-system", "-x", is_flag=True, help="Do not cross file system boundaries.")
@click.option("--exclude-caches", is_flag=True, help="Skip directories containing a CACHEDIR.TAG.")
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be stored; write nothing.")
def backup_cmd(paths, tags, host, excludes, exclude_files, one_file_system, exclude_caches, dry_run) -> int:
    """Back up PATHS into one snapshot.

    Unchanged files (same size, mtime, ctime and inode) are not read again. Temporary
    files (*.tmp, *.swp, *~, .~lock.*, ~$*, .#*, __pycache__), the cache and the
    repository itself are always excluded.

    \b
    Example:
      lbk backup ~/Documents --exclude '*.iso' --tag daily
    """
    s = settings()
    patterns = list(excludes)
    for f in exclude_files:
        patterns += read_exclude_file(f)
    repo = s.open_repo()
    cache = s.cache(repo)
    skip = [os.fsencode(p) for p in (repo.backend.location, cache.root if cache else None) if p and os.path.isabs(p)]
    tag_list = [x for t in tags for x in t.split(",") if x]
    opts = BackupOptions(
        paths=list(paths), tags=tag_list, host=host or "", excludes=patterns, exclude_paths=skip,
        one_file_system=one_file_system, exclude_caches=exclude_caches, dry_run=dry_run,
    )
    try:
        res = backup(repo, cache, opts, s.out.event)
    finally:
        s.out.stop_progress()
    summary = res.summary()
    snap = res.snapshot
    s.out.line({"message_type": "summary", "snapshot_id": snap.id if snap else None, "dry_run": dry_run, **summary})
    if snap:
        s.out.print(f"snapshot {snap.short_id} saved")
    else:
        s.out.print("dry run: nothing was written")
    if not s.quiet:
        s.out.print(
            f"Files: {res.files_new} new, {res.files_changed} changed, {res.files_unchanged} unchanged; "
            f"{res.dirs} directories"
        )
        s.out.print(
            f"Added: {human_size(res.bytes_added)} of new data ({human_size(res.stored_added)} stored), "
            f"processed {res.total_files} files, {human_size(res.total_bytes)} in {res.duration:.2f}s"
        )
    if res.errors:
        s.out.warn(f"{res.errors} source files could not be read (listed above); the snapshot was written")
        return ExitCode.PARTIAL
    return ExitCode.OK
