"""Shared click parameter types and helpers: REF (with shell completion from the
local cache), path bytes, the snapshot filter options.

Completing a REF imports the command's module (click needs its parameters) but must
not import the repository's modules, which cost more than the completion itself: this
module imports no ops, and the commands that take a REF import theirs when they run
(tests/cli/test_completion_refs.py checks)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click
from click.shell_completion import CompletionItem

if TYPE_CHECKING:
    from lbk.ops.refs import Filter


def complete_refs(ctx: click.Context, incomplete: str, kind: str | None = None) -> list[CompletionItem]:
    """REF candidates from the local cache only: no password, no network, no error.

    The repository is the one in effect for the words typed so far (--repo,
    LBK_REPOSITORY or config.toml), the cache dir likewise; the global options'
    callbacks have filled the root ``Settings`` while click parsed them.
    """
    from lbk.cache import default_cache_dir
    from lbk.errors import LbkError
    from lbk.refcache import known_snapshots, ref_candidates

    settings = ctx.find_root().obj
    if settings is None or getattr(settings, "no_cache", False):
        return []
    try:
        url = settings.repository_url()
    except LbkError:
        return []
    known = known_snapshots(settings.cache_dir or default_cache_dir(), url)
    return [CompletionItem(value, help=desc) for value, desc in ref_candidates(known, incomplete, kind)]


class RefType(click.ParamType):
    """A REF (SPEC.md): kept as text and resolved by the command once the repository is
    open; at the shell it completes to ``latest``, ``@name`` and snapshot ids, from the
    cache. ``kind`` limits the completion to snapshots of one kind (``image``)."""

    name = "ref"

    def __init__(self, kind: str | None = None):
        self.kind = kind

    def convert(self, value, param, ctx):
        return value

    def shell_complete(self, ctx, param, incomplete):
        return complete_refs(ctx, incomplete, self.kind)


REF = RefType()
IMAGE_REF = RefType("image")


class PathBytes(click.ParamType):
    """A path argument kept as file-system bytes (names need not be UTF-8)."""

    name = "path"

    def convert(self, value, param, ctx):
        return value if isinstance(value, bytes) else os.fsencode(value)


PATH_BYTES = PathBytes()


def snapshot_filter(host: str | None, tags: tuple[str, ...], path: str | None, kind: str | None = None) -> "Filter":
    from lbk.ops.refs import Filter

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
