"""Snapshots, trees and nodes, and their versioned encoding (docs/FORMAT.md).

A tree is one directory listing, stored as a blob of type tree and named by its keyed
hash, so an unchanged directory yields the same tree id in every snapshot and is stored
once. Names and symlink targets are file-system bytes; in JSON they are carried as
``os.fsdecode`` strings (UTF-8 with surrogateescape, PEP 383), which round-trips any
byte string: bytes that are not UTF-8 appear as lone surrogates ``\\udc80``-``\\udcff``.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

from lbk.errors import FormatError

TREE_VERSION = 1
SNAPSHOT_VERSION = 1

FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET = (
    "file", "dir", "symlink", "fifo", "chardev", "blockdev", "socket",
)
NODE_TYPES = {FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET}
KINDS = ("backup", "live", "checkpoint", "pre-rollback", "image")
MAX_NODES = 10_000_000
# summary keys that docs/FORMAT.md defines as numbers (backups and images)
SUMMARY_NUMBERS = ("files_new", "files_changed", "files_unchanged", "dirs", "total_files", "total_bytes",
                   "bytes_read", "data_added", "data_added_stored", "errors", "duration", "image_size",
                   "sector_size", "data_bytes", "zero_bytes", "chunks", "stored_bytes")
_EARLIEST = datetime(1, 1, 2, tzinfo=timezone.utc)
_LATEST = datetime(9999, 12, 30, tzinfo=timezone.utc)


@dataclass(slots=True)
class Node:
    name: bytes
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0
    inode: int = 0
    dev: int = 0
    nlink: int = 1
    rdev: int = 0
    content: list[bytes] = field(default_factory=list)
    subtree: bytes | None = None
    target: bytes = b""
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    error: str = ""

    def to_dict(self) -> dict:
        d: dict = {
            "name": os.fsdecode(self.name),
            "type": self.type,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "mtime_ns": self.mtime_ns,
            "ctime_ns": self.ctime_ns,
        }
        if self.user:
            d["user"] = self.user
        if self.group:
            d["group"] = self.group
        if self.type == FILE:
            d["size"] = self.size
            d["content"] = [c.hex() for c in self.content]
        if self.type != DIR:
            d["inode"], d["dev"], d["nlink"] = self.inode, self.dev, self.nlink
        if self.type == DIR and self.subtree is not None:
            d["subtree"] = self.subtree.hex()
        if self.type == SYMLINK:
            d["target"] = os.fsdecode(self.target)
        if self.type in (CHARDEV, BLOCKDEV):
            d["rdev"] = self.rdev
        if self.xattrs:
            d["xattrs"] = [[base64.b64encode(k).decode(), base64.b64encode(v).decode()] for k, v in self.xattrs]
        if self.error:
            d["error"] = self.error
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Node":
        name = os.fsencode(d["name"])
        if not valid_name(name):
            raise FormatError(f"tree contains an invalid file name {name!r}")
        t = d["type"]
        if t not in NODE_TYPES:
            raise FormatError(f"tree contains an unknown node type {t!r}")
        size = int(d.get("size", 0))
        if size < 0:
            raise FormatError(f"tree node {name!r} has a negative size")
        sub = d.get("subtree")
        return _plausible(cls(
            name=name,
            type=t,
            mode=int(d.get("mode", 0)) & 0o7777,
            uid=int(d.get("uid", 0)),
            gid=int(d.get("gid", 0)),
            user=str(d.get("user", "")),
            group=str(d.get("group", "")),
            mtime_ns=int(d.get("mtime_ns", 0)),
            ctime_ns=int(d.get("ctime_ns", 0)),
            size=size,
            inode=int(d.get("inode", 0)),
            dev=int(d.get("dev", 0)),
            nlink=int(d.get("nlink", 1)),
            rdev=int(d.get("rdev", 0)),
            content=[bytes.fromhex(c) for c in d.get("content", ())],
            subtree=bytes.fromhex(sub) if sub else None,
            target=os.fsencode(d.get("target", "")),
            xattrs=[(base64.b64decode(k), base64.b64decode(v)) for k, v in d.get("xattrs", ())],
            error=str(d.get("error", "")),
        ))


_U32, _I64, _U64 = (0, 2**32 - 1), (-(2**63), 2**63 - 1), (0, 2**64 - 1)
_RANGES = {"uid": _U32, "gid": _U32, "mtime_ns": _I64, "ctime_ns": _I64, "size": (0, 2**63 - 1),
           "inode": _U64, "dev": _U64, "nlink": _U64, "rdev": _U64}


def _plausible(n: Node) -> Node:
    """Refuse what no file system holds: numbers that overflow the system calls of a
    restore, NUL bytes (which no path, user name or xattr name can contain), bad ids."""
    for f, (lo, hi) in _RANGES.items():
        if not lo <= getattr(n, f) <= hi:
            raise FormatError(f"tree node {n.name!r} has an implausible {f}")
    if b"\0" in n.target or "\0" in n.user + n.group or any(not k or b"\0" in k for k, _ in n.xattrs):
        raise FormatError(f"tree node {n.name!r} has a NUL byte in its link target, owner or an xattr name")
    if any(len(c) != 32 for c in n.content) or (n.subtree is not None and len(n.subtree) != 32):
        raise FormatError(f"tree node {n.name!r} has an invalid blob id")
    return n


def valid_name(name: bytes) -> bool:
    """A single path component: never empty, '.', '..', or containing '/' or NUL."""
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


def encode_tree(nodes: list[Node]) -> bytes:
    nodes = sorted(nodes, key=lambda n: n.name)
    doc = {"version": TREE_VERSION, "nodes": [n.to_dict() for n in nodes]}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode_tree(data: bytes, what: str = "tree") -> list[Node]:
    try:
        doc = json.loads(data)
        if doc.get("version") != TREE_VERSION:
            raise FormatError(f"{what}: unknown tree version {doc.get('version')!r}")
        raw_nodes = doc["nodes"]
        if not isinstance(raw_nodes, list) or len(raw_nodes) > MAX_NODES:
            raise FormatError(f"{what}: malformed")
        nodes = [Node.from_dict(d) for d in raw_nodes]
    except FormatError as e:
        raise FormatError(f"{what}: {e.message}" if not e.message.startswith(what) else e.message) from None
    except RecursionError:  # JSON nested absurdly deep, or this tree is deep below the root
        raise FormatError(f"{what}: nested too deeply (in its JSON or in the directories above it)") from None
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        raise FormatError(f"{what}: malformed tree") from None
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise FormatError(f"{what}: duplicate names in tree")
    return nodes


@dataclass
class Snapshot:
    time: datetime
    tree: bytes
    paths: list[bytes]
    host: str
    user: str
    kind: str = "backup"
    name: str = ""
    tags: list[str] = field(default_factory=list)
    parent: str = ""
    uid: int = 0
    gid: int = 0
    summary: dict = field(default_factory=dict)
    id: str = ""  # the file name; not part of the encoding

    def encode(self) -> bytes:
        doc = {
            "version": SNAPSHOT_VERSION,
            "time": self.time.isoformat(),
            "tree": self.tree.hex(),
            "paths": [os.fsdecode(p) for p in self.paths],
            "host": self.host,
            "user": self.user,
            "uid": self.uid,
            "gid": self.gid,
            "kind": self.kind,
            "name": self.name,
            "tags": list(self.tags),
            "parent": self.parent,
            "summary": self.summary,
        }
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes, snap_id: str) -> "Snapshot":
        what = f"snapshot {snap_id[:8]}"
        try:
            doc = json.loads(data)
            if doc.get("version") != SNAPSHOT_VERSION:
                raise FormatError(f"{what}: unknown snapshot version {doc.get('version')!r}")
            t = datetime.fromisoformat(doc["time"])
            if t.tzinfo is None:
                raise FormatError(f"{what}: time without offset")
            if not _EARLIEST <= t <= _LATEST:  # any time zone can still show it
                raise FormatError(f"{what}: implausible time {doc['time']!r}")
            if not isinstance(doc["paths"], list) or not isinstance(doc.get("tags", []), list):
                raise FormatError(f"{what}: malformed snapshot (paths and tags must be lists)")
            summary = dict(doc.get("summary", {}))
            if any(k in summary and (type(summary[k]) not in (int, float)) for k in SUMMARY_NUMBERS):
                raise FormatError(f"{what}: malformed snapshot summary")
            return cls(
                time=t,
                tree=bytes.fromhex(doc["tree"]),
                paths=[os.fsencode(p) for p in doc["paths"]],
                host=str(doc["host"]),
                user=str(doc["user"]),
                uid=int(doc.get("uid", 0)),
                gid=int(doc.get("gid", 0)),
                kind=str(doc.get("kind", "backup")),
                name=str(doc.get("name", "")),
                tags=[str(t) for t in doc.get("tags", [])],
                parent=str(doc.get("parent", "")),
                summary=summary,
                id=snap_id,
            )
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
            raise FormatError(f"{what}: malformed snapshot") from None

    @property
    def short_id(self) -> str:
        return self.id[:8]
