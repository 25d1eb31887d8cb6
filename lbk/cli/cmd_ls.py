"""lbk ls: list a snapshot's contents."""

from __future__ import annotations

import os
import stat as stat_mod
from datetime import datetime

import click

from lbk.cli.main import command, settings
from lbk.cli.params import PATH_BYTES, REF, snapshot_filter

_TYPE_CHAR = {"dir": "d", "symlink": "l", "fifo": "p", "chardev": "c", "blockdev": "b", "socket": "s", "file": "-"}


@command("ls")
@click.argument("ref", type=REF)
@click.argument("path", required=False, type=PATH_BYTES)
@click.option("--long", "-l", "long_", is_flag=True, help="Show mode, owner, size and mtime.")
@click.option("--recursive", "-R", is_flag=True, help="List everything beneath PATH.")
@click.option("--host", metavar="HOST", help="With latest or a time: only snapshots of this host.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="With latest or a time: only snapshots with this tag.")
def ls_cmd(ref, path, long_, recursive, host, tags) -> None:
    """List the contents of snapshot REF (beneath PATH, default /).

    \b
    Example:
      lbk ls latest /home/ann/Documents --long
      lbk ls 1a2b3c4d --recursive --json | jq -r '.path'
    """
    from lbk.model import DIR, SYMLINK
    from lbk.ops.listing import find_snapshot, walk_snapshot

    s = settings()
    repo = s.open_repo()
    snap = find_snapshot(repo, ref, snapshot_filter(host, tags, None))
    start = path or b"/"
    for e in walk_snapshot(repo, snap, start, recursive):
        n = e.node
        if s.json:
            s.out.line({
                "message_type": "node", "path": os.fsdecode(e.path), "name": os.fsdecode(n.name), "type": n.type,
                "mode": n.mode, "uid": n.uid, "gid": n.gid, "user": n.user, "group": n.group, "size": n.size,
                "mtime": datetime.fromtimestamp(n.mtime_ns / 1e9).astimezone().isoformat(),
                "target": os.fsdecode(n.target) if n.type == SYMLINK else None,
                "error": n.error or None,
            })
            continue
        name = os.fsdecode(e.path) + ("/" if n.type == DIR else "")
        if long_:
            mode = _TYPE_CHAR.get(n.type, "?") + stat_mod.filemode(n.mode)[1:]
            when = datetime.fromtimestamp(n.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")
            owner = f"{n.user or n.uid}/{n.group or n.gid}"
            line = f"{mode} {owner:<16} {n.size:>12} {when} {name}"
            if n.type == SYMLINK:
                line += f" -> {os.fsdecode(n.target)}"
            if n.error:
                line += f"  [{n.error}]"
            s.out.print(line)
        else:
            s.out.print(name)
