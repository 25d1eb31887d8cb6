"""lbk diff: what changed between two snapshots, or a snapshot and the disk."""

from __future__ import annotations

import os

import click
from click.shell_completion import CompletionItem

from lbk.cli.cmd_log import document_events
from lbk.cli.main import command, settings
from lbk.cli.output import human_size
from lbk.cli.params import REF, complete_refs, snapshot_filter
from lbk.errors import UsageError


def _complete_args(ctx: click.Context, param: click.Parameter, incomplete: str):
    """REF, then REF2 or PATH (a path once it starts like one), then PATH."""
    given = len(ctx.params.get("args") or ())
    if given == 0:
        return complete_refs(ctx, incomplete)
    refs = complete_refs(ctx, incomplete) if given == 1 and not incomplete.startswith(("/", ".", "~")) else []
    return refs or [CompletionItem(incomplete, type="file")]


@command("diff")
@click.argument("args", nargs=-1, metavar="REF [REF2] [PATH]", shell_complete=_complete_args)
@click.option("--content", "content", metavar="PATH", help="Show a unified diff of the file PATH (needs --at).")
@click.option("--at", metavar="REF", type=REF, help="The older side (same as the first REF).")
@click.option("--against", metavar="REF2", type=REF, help="The newer side (default: the file system).")
@click.option("--exclude", "excludes", multiple=True, metavar="PAT", help="Leave matching paths out (repeatable).")
@click.option("--host", metavar="HOST", help="With latest or a time: only snapshots of this host.")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="With latest or a time: only snapshots with this tag.")
def diff_cmd(args, content, at, against, excludes, host, tags) -> None:
    """Show what changed from snapshot REF to REF2 (default: the files on disk).

    Markers: + added, - removed, M content changed, U metadata only, T type changed.
    A second argument that starts with / or . or exists on disk is PATH, else REF2
    (--at REF and --against REF2 say it without guessing). With --content PATH, a
    unified diff of one text file (a size and changed-bytes summary for binary files).

    \b
    Example:
      lbk diff latest                       # snapshot vs disk
      lbk diff 1a2b3c4d latest ~/Documents  # two snapshots, one directory
      lbk diff --content ~/notes.txt --at yesterday
    """
    from lbk.model import DIR
    from lbk.ops.diff import content_diff, diff, split_args

    s = settings()
    flt = snapshot_filter(host, tags, None)
    repo = s.open_repo()
    if content is not None:
        extra = list(args)
        if at is None and extra:
            at = extra.pop(0)
        if extra:
            raise UsageError(f"unexpected argument {extra[0]!r} with --content")
        if at is None:
            raise UsageError("--content PATH needs --at REF")
        res = content_diff(repo, os.fsencode(content), at, against, flt)
        s.out.doc(res.to_json())
        if res.diff is not None:
            if res.diff:
                s.out.print(res.diff.rstrip("\n"))
            else:
                s.out.info("no differences")
            return
        if res.identical:
            s.out.print(f"{os.fsdecode(res.path)}: identical ({human_size(res.old_size)})")
            return
        new = "absent" if res.new_size is None else f"{res.new_size} bytes"
        what = "large file" if res.too_large else "binary file"
        where = f", first at offset {res.first_difference}" if res.first_difference is not None else ""
        s.out.print(f"{what} {os.fsdecode(res.path)}: {res.old_size} bytes -> {new}; "
                    f"{res.changed_bytes} bytes differ{where}")
        return
    ref, ref2, path = split_args(args, at, against)
    cache = s.cache(repo)
    skip = [os.fsencode(p) for p in (repo.backend.location, cache.root if cache else None) if p and os.path.isabs(p)]
    res = diff(repo, ref, ref2, os.fsencode(path) if path else None, flt, list(excludes), skip, document_events(s.out))
    s.out.doc([c.to_json() for c in res.changes])
    for c in res.changes:
        s.out.print(f"{c.change:<5}{os.fsdecode(c.path)}{'/' if c.type == DIR else ''}")
    n = res.counts()
    against_what = res.new.short_id if res.new else "the file system"
    s.out.info(f"{res.old.short_id} -> {against_what}: {n['+']} added, {n['-']} removed, {n['M']} modified, "
               f"{n['U']} metadata, {n['T']} type changed")
    if res.errors:
        s.out.warn(f"{res.errors} paths could not be read (listed above) and were left out")
