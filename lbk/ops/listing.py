"""Listing: snapshots (filtered), and a snapshot's contents."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

from lbk.errors import FormatError, LbkError, RefError
from lbk.model import DIR, Node, Snapshot
from lbk.ops.refs import Filter, resolve
from lbk.ops.restore import tree_nodes
from lbk.repo.repository import Repository
from lbk.repo.snapshots import damaged_named, load_all


def list_snapshots(repo: Repository, flt: Filter = Filter(), latest: int | None = None) -> list[Snapshot]:
    snaps = [x for x in load_all(repo) if flt.matches(x)]
    if latest:
        groups: dict[tuple, list[Snapshot]] = {}
        for x in snaps:
            groups.setdefault((x.host, tuple(x.paths)), []).append(x)
        keep = {x.id for g in groups.values() for x in g[-latest:]}
        snaps = [x for x in snaps if x.id in keep]
    return snaps


def find_snapshot(repo: Repository, ref: str, flt: Filter = Filter()) -> Snapshot:
    snaps = load_all(repo)
    try:
        return resolve(ref, snaps, flt)
    except RefError:
        hits = damaged_named(repo, ref, snaps)
        if len(hits) == 1:  # say why it is not there
            raise FormatError(f"snapshot {hits[0][:8]} is damaged and cannot be read ('lbk check' names the damage)") from None
        raise


def snapshot_json(x: Snapshot) -> dict:
    return {
        "id": x.id,
        "short_id": x.short_id,
        "time": x.time.isoformat(),
        "kind": x.kind,
        "name": x.name or None,
        "host": x.host,
        "user": x.user,
        "uid": x.uid,
        "gid": x.gid,
        "paths": [os.fsdecode(p) for p in x.paths],
        "tags": x.tags,
        "parent": x.parent or None,
        "tree": x.tree.hex(),
        "summary": x.summary,
    }


@dataclass
class Entry:
    path: bytes
    node: Node


def walk_snapshot(repo: Repository, snap: Snapshot, start: bytes = b"/", recursive: bool = True) -> Iterator[Entry]:
    """Entries under ``start`` (an absolute path inside the snapshot), depth first."""
    parts = [p for p in os.path.normpath(start).split(b"/") if p]
    tree = snap.tree
    base = b""
    for i, part in enumerate(parts):
        match = next((n for n in tree_nodes(repo, tree) if n.name == part), None)
        if match is None:
            raise LbkError(f"{os.fsdecode(start)} is not in snapshot {snap.short_id}")
        base = base + b"/" + part
        if i == len(parts) - 1 and match.type != DIR:
            yield Entry(base, match)
            return
        if match.type != DIR or match.subtree is None:
            raise LbkError(f"{os.fsdecode(base)} is not a directory in snapshot {snap.short_id}")
        tree = match.subtree
    yield from _walk(repo, tree, base, recursive)


def _walk(repo: Repository, tree: bytes, base: bytes, recursive: bool) -> Iterator[Entry]:
    for n in tree_nodes(repo, tree):
        p = base + b"/" + n.name
        yield Entry(p, n)
        if recursive and n.type == DIR and n.subtree:
            yield from _walk(repo, n.subtree, p, recursive)
