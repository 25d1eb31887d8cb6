"""Shared click parameter types and helpers."""

from __future__ import annotations

import os

import click

from lbk.ops.refs import Filter


class PathBytes(click.ParamType):
    """A path argument kept as file-system bytes (names need not be UTF-8)."""

    name = "path"

    def convert(self, value, param, ctx):
        return value if isinstance(value, bytes) else os.fsencode(value)


PATH_BYTES = PathBytes()


def snapshot_filter(host: str | None, tags: tuple[str, ...], path: str | None, kind: str | None = None) -> Filter:
    tag_list: list[str] = []
    for t in tags:
        tag_list += [x for x in t.split(",") if x]
    return Filter(
        host=host or None,
        tags=tuple(tag_list),
        path=os.path.abspath(os.fsencode(path)) if path else None,
        kind=kind,
    )


filter_options = [
    click.option("--host", "host", metavar="HOST", help="Only snapshots of this host."),
    click.option("--tag", "tags", multiple=True, metavar="TAG", help="Only snapshots with this tag (repeatable, or a,b)."),
    click.option("--path", "path", metavar="PATH", help="Only snapshots that cover PATH."),
]


def with_filters(f):
    for opt in reversed(filter_options):
        f = opt(f)
    return f
