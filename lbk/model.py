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
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime

from lbk.errors import FormatError

TREE_VERSION = 1
SNAPSHOT_VERSION = 1

FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET = (
    "file", "dir", "symlink", "fifo", "chardev", "blockdev", "socket",
)
NODE_TYPES = {FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET}
KINDS = ("backup", "live", "checkpoint", "pre-rollback", "image")
MAX_NODES = 10_000_000


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
        """Decode one node, refusing anything restore could not apply (docs/FORMAT.md,
        "Trees"): every field has its JSON type and a range the system calls accept."""
        if not isinstance(d, dict):
            raise FormatError("tree contains a node that is not an object")
        name = os.fsencode(_typed(d, "name", str, None, b"?"))
        if not valid_name(name):
            raise FormatError(f"tree contains an invalid file name {name!r}")
        t = d.get("type")
        if t not in NODE_TYPES:
            raise FormatError(f"tree contains an unknown node type {_short(t)}")
        # the fields of other node types are ignored, as to_dict never writes them
        is_file, is_dev = t == FILE, t in (CHARDEV, BLOCKDEV)
        sub = _typed(d, "subtree", (str, type(None)), None, name) if t == DIR else None
        target = _typed(d, "target", str, "", name) if t == SYMLINK else ""
        other = {} if t == DIR else d
        xattrs = [(_b64(x, name), _b64(v, name)) for x, v in _typed(d, "xattrs", list, [], name)]
        if "\0" in target or any(not k or b"\0" in k for k, _ in xattrs):
            raise FormatError(f"tree node {name!r} has a NUL in its target or an invalid xattr name")
        user, group = _typed(d, "user", str, "", name), _typed(d, "group", str, "", name)
        if "\0" in user + group:
            raise FormatError(f"tree node {name!r} has a NUL in its owner name")
        return cls(
            name=name,
            type=t,
            mode=_int(d, "mode", 0, 0, 2**32, name) & 0o7777,
            uid=_int(d, "uid", 0, 0, MAX_ID, name),
            gid=_int(d, "gid", 0, 0, MAX_ID, name),
            user=user,
            group=group,
            mtime_ns=_int(d, "mtime_ns", 0, *TIME_NS_RANGE, name),
            ctime_ns=_int(d, "ctime_ns", 0, *TIME_NS_RANGE, name),
            size=_int(d, "size", 0, 0, 2**63, name) if is_file else 0,
            inode=_int(other, "inode", 0, 0, 2**64, name),
            dev=_int(other, "dev", 0, 0, 2**64, name),
            nlink=_int(other, "nlink", 1, 0, 2**64, name),
            rdev=_int(d, "rdev", 0, 0, 2**64, name) if is_dev else 0,
            content=[decode_id(c) for c in _typed(d, "content", list, [], name)] if is_file else [],
            subtree=decode_id(sub) if sub is not None else None,
            target=os.fsencode(target),
            xattrs=xattrs,
            error=_typed(d, "error", str, "", name),
        )


# Ranges the system calls restore makes accept: os.chown takes ids up to 2**32 - 2
# (2**32 - 1 means "leave unchanged"); os.utime and the log's dates need a time that
# datetime can show: about the years 900 to 6300 (wider than any file system keeps).
MAX_ID = 2**32 - 1
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
MAX_DATE = 2**37  # seconds since the epoch: the latest time every listing and status can show
TIME_NS_RANGE = (-(2**35) * 10**9, MAX_DATE * 10**9)


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _typed(d: dict, key: str, types, default, name: bytes):
    v = d.get(key, default)
    if not isinstance(v, types):
        raise FormatError(f"tree node {name!r} has an invalid {key} {_short(v)}")
    return v


def _int(d: dict, key: str, default: int, lo: int, hi: int, name: bytes) -> int:
    """A JSON integer (not a bool or a float) with lo <= v < hi."""
    v = d.get(key, default)
    if type(v) is not int or not lo <= v < hi:
        raise FormatError(f"tree node {name!r} has an invalid {key} {_short(v)}")
    return v


def _b64(v, name: bytes) -> bytes:
    if not isinstance(v, str):
        raise FormatError(f"tree node {name!r} has an invalid xattr {_short(v)}")
    return base64.b64decode(v, validate=True)


def decode_id(h) -> bytes:
    """A blob id from its 64 lower-case hex digits (ValueError when it is not one: note
    that ``bytes.fromhex`` alone would skip spaces and give fewer than 32 bytes)."""
    if not isinstance(h, str) or not _HEX64.match(h):
        raise ValueError(f"not a blob id: {_short(h)}")
    return bytes.fromhex(h)


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
            t.astimezone(), t.timestamp()  # a date every listing can show
            snap = cls(
                time=t,
                tree=decode_id(doc["tree"]),
                paths=[os.fsencode(p) for p in _list_of(doc["paths"], str)],
                host=_of(doc["host"], str),
                user=_of(doc["user"], str),
                uid=_of(doc.get("uid", 0), int),
                gid=_of(doc.get("gid", 0), int),
                kind=_of(doc.get("kind", "backup"), str),
                name=_of(doc.get("name", ""), str),
                tags=_list_of(doc.get("tags", []), str),
                parent=_of(doc.get("parent", ""), str),
                summary=_of(doc.get("summary", {}), dict),
                id=snap_id,
            )
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError, OSError):
            raise FormatError(f"{what}: malformed snapshot") from None
        snap._check(what)
        return snap

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def _check(self, what: str) -> None:
        """What listings, the catalog and restore rely on (docs/FORMAT.md, "Snapshots")."""
        if self.kind not in KINDS:
            raise FormatError(f"{what}: unknown snapshot kind {_short(self.kind)}")
        if not all(p.startswith(b"/") and b"\0" not in p for p in self.paths):
            raise FormatError(f"{what}: a path is not absolute")
        if not (0 <= self.uid <= MAX_ID and 0 <= self.gid <= MAX_ID):
            raise FormatError(f"{what}: invalid uid or gid")
        if self.parent and not _HEX64.match(self.parent):
            raise FormatError(f"{what}: invalid parent {_short(self.parent)}")
        for k in SUMMARY_NUMBERS:
            v = self.summary.get(k, 0)
            if type(v) not in (int, float) or not math.isfinite(v):
                raise FormatError(f"{what}: summary {k} is not a number")


def _of(v, t: type):
    """``v`` when it has JSON type ``t`` (a bool is not an int), else TypeError."""
    if type(v) is not t:
        raise TypeError(f"expected {t.__name__}")
    return v


def _list_of(v, t: type) -> list:
    return [_of(x, t) for x in _of(v, list)]


# summary keys that listings format as numbers (backup, image and watch summaries)
SUMMARY_NUMBERS = (
    "files_new", "files_changed", "files_unchanged", "dirs", "total_files", "total_bytes", "bytes_read",
    "data_added", "data_added_stored", "errors", "duration", "image_size", "sector_size", "data_bytes",
    "zero_bytes", "chunks", "stored_bytes", "captures",
)

