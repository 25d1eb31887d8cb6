"""lbk cat: print a decrypted repository object (low-level inspection)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from lbk.cli.main import command, settings
from lbk.cli.params import complete_refs
from lbk.errors import LbkError

if TYPE_CHECKING:
    from lbk.backend.base import FileKind, Handle


def _complete_id(ctx: click.Context, param: click.Parameter, incomplete: str):
    return complete_refs(ctx, incomplete) if ctx.params.get("kind") == "snapshot" else []


@command("cat")
@click.argument("kind", type=click.Choice(["config", "snapshot", "tree", "blob", "index", "key"]))
@click.argument("object_id", required=False, shell_complete=_complete_id)
def cat_cmd(kind, object_id) -> None:
    """Print the decrypted content of an object: config, snapshot REF, tree ID, blob ID, index ID, key ID.

    \b
    Example:
      lbk cat snapshot latest | jq .tree
      lbk cat tree $(lbk cat snapshot latest | jq -r .tree)
    """
    from lbk.backend.base import FileKind, Handle
    from lbk.ops.listing import find_snapshot
    from lbk.repo.pack import DATA, TREE

    s = settings()
    repo = s.open_repo()
    if kind != "config" and not object_id:
        raise click.UsageError(f"cat {kind} needs an ID")
    if kind == "config":
        data = repo.load_sealed(Handle(FileKind.CONFIG))
    elif kind == "snapshot":
        snap = find_snapshot(repo, object_id)
        data = repo.load_sealed(Handle(FileKind.SNAPSHOT, snap.id))
    elif kind in ("tree", "blob"):
        try:
            bid = bytes.fromhex(object_id)
            if len(bid) != 32:
                raise ValueError
        except ValueError:
            raise LbkError(f"invalid {kind} id {object_id!r}: expected 64 hex characters") from None
        data = repo.load_blob(TREE if kind == "tree" else DATA, bid)
    elif kind == "index":
        from lbk.repo import index as index_mod

        sup, packs = index_mod.decode(repo.load_sealed(_handle(repo, FileKind.INDEX, object_id)), "index")
        data = json.dumps({
            "supersedes": sup,
            "packs": {p: [{"type": e.type, "id": e.id.hex(), "offset": e.offset, "length": e.length,
                           "raw_length": e.raw_length} for e in es] for p, es in packs.items()},
        }).encode()
    else:
        data = repo.backend.load(_handle(repo, FileKind.KEY, object_id))
    sys.stdout.buffer.write(data if data.endswith(b"\n") or kind == "blob" else data + b"\n")
    sys.stdout.flush()


def _handle(repo, kind: FileKind, prefix: str) -> Handle:
    from lbk.backend.base import Handle

    names = [f.name for f in repo.backend.list(kind) if f.name.startswith(prefix)]
    if len(names) != 1:
        raise LbkError(f"{'no' if not names else 'ambiguous'} {kind.value} id {prefix!r}")
    return Handle(kind, names[0])
