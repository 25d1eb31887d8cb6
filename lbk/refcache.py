"""What the local cache knows about a repository's snapshots, so that a shell can
complete REFs (ids, ``latest``, ``@name``) without the password and without the network.

The cache dir is keyed by repository id, which is only known once the repository is
opened. Two small files bridge that gap (docs/FORMAT.md, "Local cache"):

    <cache>/locations/<32 hex>     the repository id, for the repository URL whose
                                   location key hashes to that name (SHA-256)
    <cache>/<repo id>/snapshots    the repository's snapshots as the last command saw
                                   them: JSON Lines, one header, then "+"/"-" records

Every command that opens a repository records its location (``remember_location``)
and attaches a ``SnapshotList`` as the repository's snapshot observer
(``lbk.repo.snapshots.observe``): a full listing rewrites the list, a saved snapshot
is appended, a removed one is appended as a tombstone. Completion reads them back
with ``known_snapshots``. Like the rest of the cache it is an accelerator only: a
stale or missing list makes completion offer old ids or nothing, never a wrong
result from a command. It holds nothing the catalog beside it does not (ids, times,
kinds, checkpoint names), in the same 0700 directory, 0600 files.

This module is imported on every completion: besides the standard library it needs only
lbk.cache and lbk.fsutil, never the repository's modules.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Iterable

from lbk.cache import CACHEDIR_TAG, private_dir
from lbk.fsutil import write_atomic

if TYPE_CHECKING:
    from lbk.model import Snapshot

LIST_VERSION = 1
LIST_NAME = "snapshots"
LOCATIONS = "locations"
COMPACT_AT = 256 * 1024  # appended records are folded into a rewrite past this size (or twice the base)
SHORT = 8  # hex digits of a short snapshot id


class Known:
    """A snapshot as the cache remembers it (a plain class: a dataclass or NamedTuple
    costs milliseconds to create, on every completion)."""

    __slots__ = ("id", "time", "kind", "name")

    def __init__(self, id: str, time: str, kind: str, name: str):
        self.id, self.time, self.kind, self.name = id, time, kind, name  # time: RFC 3339

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Known) and (self.id, self.time, self.kind, self.name) == (
            other.id, other.time, other.kind, other.name)

    def __repr__(self) -> str:
        return f"Known({self.id[:8]}, {self.time}, {self.kind}, {self.name!r})"


# -- where a repository's cache is ------------------------------------------------------------


def location_key(url: str) -> str:
    """The repository URL in a form that two spellings of one local path share.

    Local paths (and ``file://``) become absolute, as the local backend makes them;
    other URLs are kept as written. Computed without importing any backend, so that
    completion stays cheap.
    """
    if url.startswith("file://"):
        url = url[len("file://"):]
    elif url.startswith(("sftp:", "s3:", "rest:")) or "://" in url:
        return url
    return os.path.abspath(os.path.expanduser(url))


def _location_file(cache_root: str, url: str) -> str:
    name = hashlib.sha256(location_key(url).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return os.path.join(cache_root, LOCATIONS, name)


def remember_location(cache_root: str, url: str, repo_id: str) -> None:
    """Record that ``url`` names the repository ``repo_id`` (written only when it changed)."""
    path = _location_file(cache_root, url)
    if lookup_location(cache_root, url) == repo_id:
        return
    root = private_dir(os.path.abspath(cache_root))
    tag = os.path.join(root, "CACHEDIR.TAG")
    if not os.path.exists(tag):
        write_atomic(tag, CACHEDIR_TAG, durable=False)
    private_dir(os.path.dirname(path))
    write_atomic(path, repo_id.encode() + b"\n", durable=False)


def lookup_location(cache_root: str, url: str) -> str | None:
    """The repository id last seen at ``url``, or None."""
    try:
        with open(_location_file(cache_root, url), "rb") as f:
            rid = f.read(200).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return rid if rid and all(c in "0123456789abcdef" for c in rid) else None


# -- the snapshot list --------------------------------------------------------------------------


def _record(s: "Snapshot") -> str:
    return json.dumps(["+", s.id, s.time.isoformat(), s.kind, s.name or ""]) + "\n"


class SnapshotList:
    """``<cache>/<repo id>/snapshots``; also the repository's snapshot observer.

    Format (JSON Lines, UTF-8): a header ``{"version": 1, "base": N}`` where N is the
    byte size of the records as last rewritten, then one record per line:
    ``["+", id, time, kind, name]`` (a snapshot exists) or ``["-", id]`` (it was
    removed). Readers replay the records in order and skip a line they cannot parse
    (a torn append).
    """

    def __init__(self, cache_root: str, repo_id: str):
        self.dir = os.path.join(os.path.abspath(cache_root), repo_id)
        self.path = os.path.join(self.dir, LIST_NAME)

    # -- observer (write errors are ignored: completion is only a convenience) -------
    def listed(self, snaps: Iterable["Snapshot"]) -> None:
        """A full listing: the list becomes exactly these snapshots."""
        body = "".join(_record(s) for s in sorted(snaps, key=lambda s: (s.time, s.id)))
        _quietly(self._rewrite, body)

    def saved(self, snap: "Snapshot") -> None:
        _quietly(self._append, _record(snap))

    def removed(self, snap_id: str) -> None:
        _quietly(self._append, json.dumps(["-", snap_id]) + "\n")

    # -- reading ----------------------------------------------------------------------
    def read(self) -> list[Known]:
        """The snapshots the cache knows, oldest first; [] when there is no usable list."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError:
            return []
        lines = data.decode("utf-8", "replace").split("\n")
        try:
            if json.loads(lines[0]).get("version") != LIST_VERSION:
                return []
        except (ValueError, AttributeError):
            return []
        known: dict[str, Known] = {}
        for line in lines[1:]:
            if not line:
                continue
            try:
                rec = json.loads(line)
                if rec[0] == "+":
                    known[rec[1]] = Known(str(rec[1]), str(rec[2]), str(rec[3]), str(rec[4]))
                elif rec[0] == "-":
                    known.pop(rec[1], None)
            except (ValueError, IndexError, TypeError, KeyError):
                continue
        return sorted(known.values(), key=lambda k: (k.time, k.id))

    # -- writing ----------------------------------------------------------------------
    def _rewrite(self, body: str) -> None:
        data = body.encode()
        new = json.dumps({"version": LIST_VERSION, "base": len(data)}).encode() + b"\n" + data
        try:
            with open(self.path, "rb") as f:
                if f.read(len(new) + 1) == new:
                    return  # nothing changed: spare the disk a write
        except OSError:
            pass
        private_dir(self.dir)
        write_atomic(self.path, new, durable=False)

    def _append(self, line: str) -> None:
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return  # no full listing yet: a list of only the new ones would hide the rest
        if size > COMPACT_AT and size > 2 * self._base():
            self._rewrite_known(line)
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line.encode())  # one write() per record: appends do not interleave
        finally:
            os.close(fd)

    def _base(self) -> int:
        try:
            with open(self.path, "rb") as f:
                return int(json.loads(f.readline()).get("base", 0))
        except (OSError, ValueError, AttributeError, TypeError):
            return 0

    def _rewrite_known(self, line: str) -> None:
        """Fold the appended records and ``line`` into a fresh file."""
        known = {k.id: k for k in self.read()}
        rec = json.loads(line)
        if rec[0] == "+":
            known[rec[1]] = Known(*rec[1:])
        else:
            known.pop(rec[1], None)
        body = sorted(known.values(), key=lambda k: (k.time, k.id))
        self._rewrite("".join(json.dumps(["+", k.id, k.time, k.kind, k.name]) + "\n" for k in body))


def _quietly(fn, arg) -> None:
    try:
        fn(arg)
    except OSError:  # a read-only or full cache disk: the command goes on without it
        pass


def known_snapshots(cache_root: str, url: str) -> list[Known]:
    """The snapshots cached for the repository at ``url``; [] when none are."""
    rid = lookup_location(cache_root, url)
    return SnapshotList(cache_root, rid).read() if rid else []


# -- completion candidates ------------------------------------------------------------------------


def _when(t: str) -> str:
    """``2026-11-25 14:03`` from an RFC 3339 time: the clock time where the snapshot was
    taken (string slicing: parsing a thousand times costs more than the rest)."""
    return t[:16].replace("T", " ")


def short_ids(ids: list[str]) -> dict[str, str]:
    """Each id's shortest prefix of at least 8 hex digits that no other id shares."""
    order = sorted(ids)
    out = {}
    for i, sid in enumerate(order):
        n = SHORT
        for other in (order[i - 1] if i else "", order[i + 1] if i + 1 < len(order) else ""):
            common = len(os.path.commonprefix([sid, other])) if other else 0
            n = max(n, common + 1)
        out[sid] = sid[:n]
    return out


def ref_candidates(known: list[Known], incomplete: str, kind: str | None = None) -> list[tuple[str, str]]:
    """(value, description) pairs that complete ``incomplete`` as a REF, best first:
    ``latest``, then ``@name`` of checkpoints, then snapshot ids, newest first.

    ``kind`` limits them to snapshots of one kind (``image`` for ``lbk image restore``);
    ``@name`` is only offered where checkpoints count. An id is offered as its short
    form (8 hex, longer where two ids share it) until more digits than that are typed.
    """
    snaps = [k for k in known if kind is None or k.kind == kind]
    if not snaps:
        return []
    newest = snaps[::-1]
    out: list[tuple[str, str]] = []
    if "latest".startswith(incomplete):
        top = newest[0]
        out.append(("latest", f"newest {kind or 'snapshot'}: {top.id[:SHORT]}, {_when(top.time)}"))
    if incomplete.startswith("@") or not incomplete:
        seen = set()
        for k in newest:
            if k.kind == "checkpoint" and k.name and k.name not in seen and kind in (None, "checkpoint"):
                seen.add(k.name)
                value = "@" + k.name
                if value.startswith(incomplete):
                    out.append((value, f"checkpoint {k.id[:SHORT]}, {_when(k.time)}"))
    if incomplete.startswith("@"):
        return out
    shorts = short_ids([k.id for k in known])
    for k in newest:
        value = k.id if len(incomplete) > len(shorts[k.id]) else shorts[k.id]
        if value.startswith(incomplete):
            what = f"{k.kind} {k.name}" if k.name else k.kind
            out.append((value, f"{_when(k.time)} {what}"))
    return out
