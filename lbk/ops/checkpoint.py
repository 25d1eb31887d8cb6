"""Checkpoints: named snapshots of a known-good state (kind ``checkpoint``).

A checkpoint is an ordinary backup with a kind and a name, so it dedupes against every
other snapshot and reads only changed files. ``@name`` refers to the newest checkpoint of
that name (lbk.ops.refs). Without a name a checkpoint is named after the local time to
the minute (``2026-11-25T14:00``); a boot checkpoint is named ``boot`` and tagged
``boot``. Retention treats checkpoints apart (lbk.ops.policy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime

from lbk.cache import Cache
from lbk.errors import UsageError
from lbk.events import Emit
from lbk.ops.backup import BackupOptions, BackupResult, backup
from lbk.repo.repository import Repository

BOOT = "boot"


def default_name(now: datetime | None = None) -> str:
    return (now or datetime.now().astimezone()).strftime("%Y-%m-%dT%H:%M")


def validate_name(name: str) -> str:
    if not name or name != name.strip() or any(ord(c) < 32 or c == "\x7f" for c in name):
        raise UsageError(f"invalid checkpoint name {name!r}: use a non-empty name without control characters or surrounding spaces")
    if name.startswith("@"):
        raise UsageError(f"invalid checkpoint name {name!r}: the '@' is only used when referring to it (@{name.lstrip('@')})")
    return name


def watch_paths_from_config(cfg: dict) -> list[bytes]:
    """The ``watch_paths`` list of config.toml, as absolute byte paths."""
    raw = cfg.get("watch_paths", [])
    if not isinstance(raw, list) or not all(isinstance(p, str) and p for p in raw):
        raise UsageError('watch_paths in config.toml must be a list of paths, e.g. watch_paths = ["/home/ann"]')
    return [os.path.abspath(os.fsencode(os.path.expanduser(p))) for p in raw]


@dataclass
class CheckpointOptions:
    paths: list[bytes]
    name: str = ""
    tags: list[str] = field(default_factory=list)
    boot: bool = False
    host: str = ""
    excludes: list[str] = field(default_factory=list)
    exclude_paths: list[bytes] = field(default_factory=list)


def resolve_options(opts: CheckpointOptions) -> BackupOptions:
    """The backup a checkpoint is: kind, name and tags decided here."""
    if not opts.paths:
        raise UsageError('no paths: give PATH... or set watch_paths in config.toml (watch_paths = ["/home/ann"])')
    name = opts.name or (BOOT if opts.boot else default_name())
    validate_name(name)
    tags = list(opts.tags)
    if opts.boot and BOOT not in tags:
        tags.append(BOOT)
    return BackupOptions(
        paths=list(opts.paths), tags=tags, host=opts.host, excludes=list(opts.excludes),
        exclude_paths=list(opts.exclude_paths), kind="checkpoint", name=name,
    )


def checkpoint(repo: Repository, cache: Cache | None, opts: CheckpointOptions, emit: Emit) -> BackupResult:
    """Take one checkpoint; returns the backup result (its snapshot has kind ``checkpoint``)."""
    return backup(repo, cache, resolve_options(opts), emit)
