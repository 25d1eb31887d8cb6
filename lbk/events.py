"""Typed events that operations emit and the CLI renders (rich text or JSON Lines).

Operations take an ``emit`` callable and never print; the CLI decides how an event
looks. Every event has a ``message_type`` as in SPEC.md's JSON Lines output.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Callable


@dataclass
class Event:
    message_type = "status"

    def to_json(self) -> dict:
        d = {"message_type": self.message_type}
        d.update({k: _plain(v) for k, v in asdict(self).items()})
        return d


def _plain(v):
    if isinstance(v, bytes):
        return os.fsdecode(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


@dataclass
class Progress(Event):
    """Periodic status of a long operation."""

    message_type = "status"
    action: str = ""
    files_done: int = 0
    bytes_done: int = 0
    files_total: int | None = None
    bytes_total: int | None = None
    current: str = ""


@dataclass
class ByteProgress(Progress):
    """Progress of one long byte stream (disk images): bytes done of bytes_total, and the rate."""

    bytes_per_second: float = 0.0


@dataclass
class FileError(Event):
    """A source or target file could not be processed; the operation goes on."""

    message_type = "error"
    path: bytes = b""
    message: str = ""
    during: str = ""


@dataclass
class Warning_(Event):
    """Something the user should know that is not an error."""

    message_type = "warning"
    message: str = ""
    path: bytes = b""


@dataclass
class Verbose(Event):
    """One item processed (printed with -v)."""

    message_type = "verbose_status"
    action: str = ""
    path: bytes = b""
    size: int = 0


@dataclass
class Captured(Event):
    """watch: a new version of a path was read and stored (not yet committed)."""

    message_type = "captured"
    path: bytes = b""
    type: str = ""
    size: int = 0
    content_id: str = ""
    saved_at: str = ""
    deleted: bool = False


@dataclass
class Committed(Event):
    """watch: captures were committed as a live snapshot."""

    message_type = "committed"
    snapshot_id: str = ""
    paths: list = field(default_factory=list)
    count: int = 0
    latency: float = 0.0  # save-to-commit time of the oldest capture in this commit, seconds
    spooled: bool = False


@dataclass
class Spooled(Event):
    """watch: the repository is unreachable; a file went to the local spool."""

    message_type = "spooled"
    object: str = ""
    size: int = 0


@dataclass
class Synced(Event):
    """watch: the spool was uploaded to the repository."""

    message_type = "synced"
    files: int = 0
    bytes: int = 0


@dataclass
class Collector:
    """An ``emit`` that records events; used by tests and by ops that summarise."""

    events: list = field(default_factory=list)

    def __call__(self, ev: Event) -> None:
        self.events.append(ev)

    def of(self, cls) -> list:
        return [e for e in self.events if isinstance(e, cls)]


Emit = Callable[[Event], None]


def discard(_ev: Event) -> None:
    pass
