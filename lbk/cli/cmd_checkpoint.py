"""lbk checkpoint: a named snapshot of a known-good state."""

from __future__ import annotations

import os

import click

from lbk.cli.context import read_user_config
from lbk.cli.main import command, settings
from lbk.cli.output import human_size
from lbk.cli.params import PATH_BYTES
from lbk.errors import ExitCode
from lbk.ops.checkpoint import CheckpointOptions, checkpoint, resolve_options, watch_paths_from_config


@command("checkpoint")
@click.argument("paths", nargs=-1, type=PATH_BYTES)
@click.option("--name", default="", metavar="NAME", help="Name it (default: the local time, e.g. 2026-11-25T14:00).")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Tag the checkpoint (repeatable, or a,b).")
@click.option("--boot", is_flag=True, help="A boot-time checkpoint: named 'boot' and tagged 'boot'.")
def checkpoint_cmd(paths, name, tags, boot) -> int:
    """Take a checkpoint of PATHS: a named snapshot of a known-good state.

    Without PATHS, the paths under watch (watch_paths in config.toml) are used. Refer to
    the newest checkpoint of a name as @NAME, e.g. in 'lbk rollback PATH --to @NAME'.
    Checkpoints are listed by 'lbk snapshots --checkpoints' and kept by
    'lbk forget --keep-checkpoints N' only.

    \b
    Example:
      lbk checkpoint ~/project --name before-upgrade
      lbk rollback ~/project --to @before-upgrade
    """
    s = settings()
    targets = list(paths) or watch_paths_from_config(read_user_config())
    opts = CheckpointOptions(paths=targets, name=name, tags=[x for t in tags for x in t.split(",") if x], boot=boot)
    opts.name = resolve_options(opts).name  # usage errors before asking for a password
    repo = s.open_repo()
    cache = s.cache(repo)
    opts.exclude_paths = [os.fsencode(p) for p in (repo.backend.location, cache.root if cache else None)
                          if p and os.path.isabs(p)]
    try:
        res = checkpoint(repo, cache, opts, s.out.event)
    finally:
        s.out.stop_progress()
    snap = res.snapshot
    s.out.line({"message_type": "summary", "snapshot_id": snap.id, "kind": snap.kind, "name": snap.name,
                "tags": snap.tags, "paths": [os.fsdecode(p) for p in snap.paths], **res.summary()})
    s.out.print(f"checkpoint '{snap.name}' saved as snapshot {snap.short_id}")
    if not s.quiet:
        s.out.print(
            f"Files: {res.files_new} new, {res.files_changed} changed, {res.files_unchanged} unchanged; "
            f"added {human_size(res.bytes_added)} in {res.duration:.2f}s"
        )
    if res.errors:
        s.out.warn(f"{res.errors} source files could not be read (listed above); the checkpoint was written")
        return ExitCode.PARTIAL
    return ExitCode.OK
