"""The on-disk description of a disk image (docs/FORMAT-image.md): the layout and the trees.

An image snapshot is an ordinary snapshot of kind ``image`` whose trees are built so that
every generic walker (check, prune, stats, restore) sees every blob the image needs:

    /                          root tree
    └── <name>/                dir
        ├── layout             file: content = layout pieces (data blobs), size = layout length
        └── data/              dir
            ├── 000000/        dir, one per group of GROUP data chunks
            │   └── chunks     file: content = data chunk ids g*GROUP .. (g+1)*GROUP-1
            └── 000001/ ...

The layout says where the bytes go: a run of extents that tile ``[0, size)``, each either
zero (nothing stored) or data (the next chunk id in order). Chunk ids live only in the
trees (as file content), placements only in the layout, so neither is stored twice.

    layout  = header || meta || kinds || lengths
    header  = magic:8 "LBKIMAGE" || version:4 || size:8 || sector_size:4 || meta_len:4 || n:8
    meta    = meta_len bytes of UTF-8 JSON (an object: source, partition table, file systems)
    kinds   = n bytes, 0 = data, 1 = zero
    lengths = n * uint64                                  (all integers little-endian)
"""

from __future__ import annotations

import json
import os
import struct
import sys
from array import array
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator

from lbk.errors import FormatError
from lbk.model import DIR, FILE, Node, Snapshot, encode_tree
from lbk.ops.restore import tree_nodes
from lbk.repo.pack import DATA, MAX_BLOB, TREE

MAGIC = b"LBKIMAGE"
VERSION = 1
_HEADER = struct.Struct("<8sIQIIQ")
DATA_EXTENT, ZERO_EXTENT = 0, 1
MAX_IMAGE = 1 << 53  # 8 PiB: anything larger is a damaged or hostile layout
MAX_META = 16 << 20
MAX_EXTENTS = 1 << 32
MAX_CHUNK = MAX_BLOB  # a data extent is one blob
GROUP = 16384  # chunk ids per group tree: about 1.1 MB of JSON, far below MAX_BLOB
LAYOUT_PIECE = 4 << 20  # the layout is stored in pieces of this size
MAX_LAYOUT = _HEADER.size + MAX_META + 9 * (1 << 28)  # bound before loading a layout
LAYOUT_NAME, DATA_NAME, CHUNKS_NAME = b"layout", b"data", b"chunks"


@dataclass
class Layout:
    size: int
    sector_size: int
    meta: dict = field(default_factory=dict)
    kinds: bytearray = field(default_factory=bytearray)
    lengths: array = field(default_factory=lambda: array("Q"))

    def add(self, kind: int, length: int) -> None:
        """Append an extent; adjacent zero extents are merged."""
        if length <= 0:
            return
        if kind == ZERO_EXTENT and self.kinds and self.kinds[-1] == ZERO_EXTENT:
            self.lengths[-1] += length
            return
        self.kinds.append(kind)
        self.lengths.append(length)

    @property
    def data_count(self) -> int:
        return len(self.kinds) - self.kinds.count(ZERO_EXTENT)

    def zero_bytes(self) -> int:
        return sum(n for k, n in zip(self.kinds, self.lengths) if k == ZERO_EXTENT)

    def extents(self) -> Iterator[tuple[int, int, int, int]]:
        """(offset, length, kind, data index or -1) in order."""
        off = 0
        di = 0
        for k, n in zip(self.kinds, self.lengths):
            if k == DATA_EXTENT:
                yield off, n, k, di
                di += 1
            else:
                yield off, n, k, -1
            off += n

    def encode(self) -> bytes:
        meta = json.dumps(self.meta, sort_keys=True, separators=(",", ":")).encode()
        lengths = array("Q", self.lengths)
        if sys.byteorder != "little":  # pragma: no cover
            lengths.byteswap()
        head = _HEADER.pack(MAGIC, VERSION, self.size, self.sector_size, len(meta), len(self.kinds))
        return head + meta + bytes(self.kinds) + lengths.tobytes()

    @classmethod
    def decode(cls, data: bytes, what: str = "image layout") -> "Layout":
        if len(data) < _HEADER.size or data[:8] != MAGIC:
            raise FormatError(f"{what}: not an lbk image layout")
        magic, version, size, sector, meta_len, n = _HEADER.unpack_from(data)
        if version != VERSION:
            raise FormatError(f"{what}: unknown image layout version {version}")
        if size > MAX_IMAGE:
            raise FormatError(f"{what}: implausible image size {size}")
        if sector < 512 or sector > 65536 or sector & (sector - 1):
            raise FormatError(f"{what}: implausible sector size {sector}")
        if meta_len > MAX_META or n > MAX_EXTENTS:
            raise FormatError(f"{what}: implausible header (meta {meta_len} bytes, {n} extents)")
        if len(data) != _HEADER.size + meta_len + 9 * n:
            raise FormatError(f"{what}: length does not match its header")
        pos = _HEADER.size
        try:
            meta = json.loads(data[pos : pos + meta_len])
        except (ValueError, RecursionError):
            raise FormatError(f"{what}: malformed metadata") from None
        if not isinstance(meta, dict) or not _meta_shaped(meta):
            raise FormatError(f"{what}: malformed metadata")
        pos += meta_len
        kinds = bytearray(data[pos : pos + n])
        lengths = array("Q")
        lengths.frombytes(data[pos + n :])
        if sys.byteorder != "little":  # pragma: no cover
            lengths.byteswap()
        if kinds.translate(None, bytes((DATA_EXTENT, ZERO_EXTENT))):
            raise FormatError(f"{what}: unknown extent kind")
        total = 0
        for k, length in zip(kinds, lengths):
            if length == 0 or (k == DATA_EXTENT and length > MAX_CHUNK):
                raise FormatError(f"{what}: implausible extent length {length}")
            total += length
            if total > size:
                break
        if total != size:
            raise FormatError(f"{what}: extents do not add up to the image size {size}")
        return cls(size, sector, meta, kinds, lengths)


def _meta_shaped(m: dict) -> bool:
    """The meta keys that ``lbk image info`` shows have the types it formats (docs/FORMAT.md,
    "meta"); unknown keys are ignored."""
    def text(v) -> bool:
        return isinstance(v, str)

    table = m.get("partition_table")
    fss = m.get("filesystems", [])
    return (
        text(m.get("source", "")) and text(m.get("source_type", ""))
        and (table is None or (isinstance(table, dict) and text(table.get("dump", ""))))
        and isinstance(fss, list)
        and all(
            isinstance(fs, dict) and type(fs.get("offset")) is int
            and (fs.get("partition") is None or text(fs["partition"]))
            and isinstance(fs.get("blkid"), dict) and all(text(v) for v in fs["blkid"].values())
            for fs in fss
        )
    )


# -- trees ----------------------------------------------------------------------------------


def _node(name: bytes, type_: str, now_ns: int, **kw) -> Node:
    return Node(name=name, type=type_, mode=0o700 if type_ == DIR else 0o600, uid=os.getuid(), gid=os.getgid(),
                mtime_ns=now_ns, ctime_ns=now_ns, **kw)


def save_image_tree(repo, name: bytes, layout: Layout, ids: list[bytes], lengths: list[int], when: datetime) -> tuple[bytes, int]:
    """Store the layout and the trees; returns (root tree id, bytes newly stored for them).

    ``ids``/``lengths`` are the data chunks in order (one per data extent)."""
    now_ns = int(when.timestamp() * 1e9)
    added = 0
    raw = layout.encode()
    pieces = []
    for i in range(0, len(raw), LAYOUT_PIECE):
        bid, new = repo.save_blob(DATA, raw[i : i + LAYOUT_PIECE])
        pieces.append(bid)
        added += len(raw[i : i + LAYOUT_PIECE]) if new else 0
    groups = []
    for g in range(0, len(ids), GROUP):
        chunks = _node(CHUNKS_NAME, FILE, now_ns, size=sum(lengths[g : g + GROUP]), content=ids[g : g + GROUP])
        sub, _ = repo.save_blob(TREE, encode_tree([chunks]))
        groups.append(_node(b"%06d" % (g // GROUP), DIR, now_ns, subtree=sub))
    data_tree, _ = repo.save_blob(TREE, encode_tree(groups))
    nodes = [
        _node(LAYOUT_NAME, FILE, now_ns, size=len(raw), content=pieces),
        _node(DATA_NAME, DIR, now_ns, subtree=data_tree),
    ]
    image_tree, _ = repo.save_blob(TREE, encode_tree(nodes))
    root, _ = repo.save_blob(TREE, encode_tree([_node(name, DIR, now_ns, subtree=image_tree)]))
    return root, added


@dataclass
class StoredImage:
    """An image as read back from a snapshot: its layout and its data chunk ids in order."""

    snapshot: Snapshot
    name: bytes
    layout: Layout
    ids: list[bytes]
    layout_ids: list[bytes]


def _only(nodes: list[Node], name: bytes, type_: str, what: str) -> Node:
    for n in nodes:
        if n.name == name and n.type == type_:
            return n
    raise FormatError(f"{what}: not an lbk image (no {os.fsdecode(name)} {type_})")


def load_image(repo, snap: Snapshot) -> StoredImage:
    what = f"image {snap.short_id}"
    root = tree_nodes(repo, snap.tree)
    if len(root) != 1 or root[0].type != DIR or root[0].subtree is None:
        raise FormatError(f"{what}: not an lbk image (its root must hold one directory)")
    top = tree_nodes(repo, root[0].subtree)
    lnode = _only(top, LAYOUT_NAME, FILE, what)
    dnode = _only(top, DATA_NAME, DIR, what)
    if lnode.size > MAX_LAYOUT or dnode.subtree is None:
        raise FormatError(f"{what}: implausible layout size {lnode.size}")
    raw = b"".join(repo.load_blob(DATA, b) for b in lnode.content)
    if len(raw) != lnode.size:
        raise FormatError(f"{what}: layout length {len(raw)} does not match its node ({lnode.size})")
    layout = Layout.decode(raw, f"{what}: layout")
    ids: list[bytes] = []
    groups = tree_nodes(repo, dnode.subtree)
    for i, g in enumerate(groups):
        if g.name != b"%06d" % i or g.type != DIR or g.subtree is None:
            raise FormatError(f"{what}: malformed data group {os.fsdecode(g.name)!r}")
        chunks = _only(tree_nodes(repo, g.subtree), CHUNKS_NAME, FILE, what)
        if len(chunks.content) > GROUP or (len(chunks.content) < GROUP and i != len(groups) - 1):
            raise FormatError(f"{what}: data group {i} has {len(chunks.content)} chunks")
        ids.extend(chunks.content)
    if len(ids) != layout.data_count:
        raise FormatError(f"{what}: {len(ids)} chunks for {layout.data_count} data extents")
    return StoredImage(snap, root[0].name, layout, ids, list(lnode.content))


def valid_image_name(name: str) -> bool:
    b = os.fsencode(name)
    return bool(b) and b not in (b".", b"..") and b"/" not in b and b"\0" not in b and len(b) <= 255
