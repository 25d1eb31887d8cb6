"""Forge hostile repository objects for tests.

Two kinds of forgery:

- **with the real key**: the repository is opened with its password and objects are
  sealed by the repository's own functions, so every MAC is valid and only the
  structure is hostile (what a holder of the key, or a bug in a writer, could produce);
- **raw**: bytes written straight into the repository directory without the key
  (what a damaged disk or an attacker with write access but no password produces).

Nothing here knows what a command should do with the result; the tests decide that.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from lbk.backend.base import FileKind, Handle
from lbk.backend.local import LocalBackend
from lbk.repo import compress, crypto, index as index_mod, pack as pack_mod
from lbk.repo.pack import TREE
from lbk.repo.repository import Repository
from tests.helpers import PASSWORD

ZSTD_MAGIC = 0xFD2FB528


def open_repo(path: str) -> Repository:
    return Repository.open(LocalBackend(path), lambda: PASSWORD.encode())


def path_of(repo_path: str, h: Handle) -> str:
    """Where the local backend keeps ``h``."""
    backend = LocalBackend(repo_path)
    return backend._path(h)


def files_of(repo_path: str, kind: FileKind) -> list[str]:
    return sorted(f.name for f in LocalBackend(repo_path).list(kind))


# -- payloads -------------------------------------------------------------------------

def zstd_bomb(claimed: int, body: bytes = b"abc") -> bytes:
    """A zstd frame whose header claims ``claimed`` bytes of content but holds ``body``.

    Frame header descriptor 0xE0: 8-byte content size field, single segment, no
    checksum, no dictionary; then one raw, last block.
    """
    block = 1 | (len(body) << 3)  # last block, type raw, size
    return struct.pack("<IB", ZSTD_MAGIC, 0xE0) + struct.pack("<Q", claimed) + block.to_bytes(3, "little") + body


def zstd_payload(frame: bytes) -> bytes:
    """A payload (docs/FORMAT.md "Payload") carrying ``frame`` as its zstd body."""
    return bytes([compress.ZSTD]) + frame


def raw_payload(plain: bytes) -> bytes:
    return bytes([compress.RAW]) + plain


# -- sealed files with the real key ----------------------------------------------------

def seal_payload(repo: Repository, kind: FileKind, payload: bytes) -> bytes:
    """Seal an already built payload (flag byte included) for a file of ``kind``."""
    return crypto.seal(repo.master.encrypt, payload, b"lbk:" + kind.value.encode())


def put_file(repo: Repository, kind: FileKind, plain: bytes | None = None, *, payload: bytes | None = None) -> str:
    """Store a content-named sealed file (index, snapshot) with a valid MAC; returns its name."""
    sealed = seal_payload(repo, kind, payload if payload is not None else raw_payload(plain or b""))
    name = crypto.content_hash(sealed)
    repo.backend.save(Handle(kind, name), sealed)
    return name


def put_config(repo: Repository, plain: bytes | None = None, *, payload: bytes | None = None) -> None:
    sealed = seal_payload(repo, FileKind.CONFIG, payload if payload is not None else raw_payload(plain or b""))
    repo.backend.save(Handle(FileKind.CONFIG), sealed, overwrite=True)


def put_raw(repo_path: str, kind: FileKind, raw: bytes, name: str | None = None) -> str:
    """Store bytes without the key, under their hash (or ``name``)."""
    name = name or ("config" if kind is FileKind.CONFIG else crypto.content_hash(raw))
    LocalBackend(repo_path).save(Handle(kind, name), raw, overwrite=True)
    return name


# -- blobs --------------------------------------------------------------------------------

def put_blob(repo: Repository, blob_type: int, data: bytes, blob_id: bytes | None = None) -> bytes:
    """Store a blob (in its own pack, indexed) with a valid MAC. With ``blob_id`` the blob is
    sealed for that id whatever its content (an id that does not match the content)."""
    bid, _ = repo.save_blob(blob_type, data, blob_id)
    repo.flush()
    return bid


def put_blob_payload(repo: Repository, blob_type: int, payload: bytes, blob_id: bytes, raw_length: int) -> str:
    """A one-blob pack whose sealed payload is ``payload`` as given (e.g. a zstd bomb), indexed."""
    sealed = crypto.seal(repo.master.encrypt, payload, pack_mod.blob_ad(blob_type, blob_id))
    w = pack_mod.PackWriter()
    w.add(blob_type, blob_id, sealed, raw_length)
    name, data, entries = w.finish(repo.master.encrypt)
    repo.backend.save(Handle(FileKind.DATA, name), bytes(data))
    put_file(repo, FileKind.INDEX, index_mod.encode({name: entries}))
    return name


def put_pack(repo: Repository, blobs: bytes, header_plain: bytes, *, trailer: int | None = None) -> str:
    """A pack from sealed ``blobs`` and a hostile header (sealed with the real key)."""
    sealed = crypto.seal(repo.master.encrypt, header_plain, b"lbk:packheader")
    data = blobs + sealed + struct.pack("<I", len(sealed) if trailer is None else trailer)
    name = crypto.content_hash(data)
    repo.backend.save(Handle(FileKind.DATA, name), data)
    return name


def header(entries: list[tuple[int, bytes, int, int]], *, version: int = 1, count: int | None = None) -> bytes:
    """A pack header plaintext: (type, id, length, raw_length) per entry."""
    out = bytearray(struct.pack("<BI", version, len(entries) if count is None else count))
    for t, bid, length, raw in entries:
        out += struct.pack("<B32sII", t, bid, length, raw)
    return bytes(out)


def sealed_blob(repo: Repository, blob_type: int, data: bytes, blob_id: bytes | None = None) -> tuple[bytes, bytes]:
    """(id, sealed bytes) of a blob as a writer would put it in a pack."""
    bid = blob_id or repo.master.blob_id(data)
    return bid, crypto.seal(repo.master.encrypt, compress.compress(data, 0), pack_mod.blob_ad(blob_type, bid))


def index_plain(packs: list[tuple[bytes, list[tuple[int, bytes, int, int, int]]]], *, version: int = 1,
                supersedes: list[bytes] = (), n_packs: int | None = None) -> bytes:
    """An index plaintext; each pack is (pack id, [(type, id, offset, length, raw_length)])."""
    out = bytearray([version])
    out += struct.pack("<I", len(supersedes))
    for s in supersedes:
        out += s
    out += struct.pack("<I", len(packs) if n_packs is None else n_packs)
    for pid, entries in packs:
        out += pid + struct.pack("<I", len(entries))
        for t, bid, off, length, raw in entries:
            out += struct.pack("<B32sIII", t, bid, off, length, raw)
    return bytes(out)


def replace_index(repo: Repository, packs: dict[str, list[pack_mod.PackEntry]]) -> str:
    """Remove every index file and write one naming exactly ``packs`` (valid MAC)."""
    for name in files_of_repo(repo, FileKind.INDEX):
        repo.backend.remove(Handle(FileKind.INDEX, name))
    return put_file(repo, FileKind.INDEX, index_mod.encode(packs))


def files_of_repo(repo: Repository, kind: FileKind) -> list[str]:
    return sorted(f.name for f in repo.backend.list(kind))


def all_packs(repo: Repository) -> dict[str, list[pack_mod.PackEntry]]:
    """Every indexed pack with its entries, from a fresh load of the index."""
    repo.index_loaded = False
    return dict(repo.load_index().packs)


# -- trees and snapshots --------------------------------------------------------------------

def node(name: str = "f", type: str = "file", **kw) -> dict:
    """A tree node as JSON (docs/FORMAT.md "Trees"), with harmless defaults."""
    d = {"name": name, "type": type, "mode": 0o644 if type != "dir" else 0o755, "uid": os.getuid(),
         "gid": os.getgid(), "mtime_ns": 1_600_000_000_000_000_000, "ctime_ns": 1_600_000_000_000_000_000}
    if type == "file":
        d.update(size=0, content=[], inode=1, dev=1, nlink=1)
    d.update(kw)
    return d


def tree_json(*nodes: dict, version: int = 1) -> bytes:
    return json.dumps({"version": version, "nodes": list(nodes)}, separators=(",", ":")).encode()


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def snapshot_doc(tree: bytes | str, **kw) -> dict:
    doc = {"version": 1, "time": datetime(2030, 1, 1, tzinfo=timezone.utc).isoformat(),
           "tree": tree.hex() if isinstance(tree, bytes) else tree, "paths": ["/x"], "host": "h", "user": "u",
           "uid": 0, "gid": 0, "kind": "backup", "name": "", "tags": [], "parent": "", "summary": {}}
    doc.update(kw)
    return doc


def put_snapshot(repo: Repository, tree: bytes | str, **kw) -> str:
    """A snapshot (newest of all: dated 2030) whose root tree is ``tree``."""
    return put_file(repo, FileKind.SNAPSHOT, json.dumps(snapshot_doc(tree, **kw)).encode())


def wrap(repo: Repository, path: str, tree: bytes) -> bytes:
    """A root tree holding ``tree`` at directory ``path`` (each component a one-node tree)."""
    for part in reversed([c for c in path.split("/") if c]):
        tree, _ = repo.save_blob(TREE, tree_json(node(part, "dir", subtree=tree.hex())))
    repo.flush()
    return tree


def put_tree_snapshot(repo: Repository, tree: bytes, blob_id: bytes | None = None, path: str = "/x",
                      **kw) -> tuple[bytes, str]:
    """Store tree JSON as a tree blob, at ``path`` in a new snapshot (the newest of all,
    dated 2030) that backed up ``path``: (tree id, snapshot id)."""
    tid = put_blob(repo, TREE, tree, blob_id)
    return tid, put_snapshot(repo, wrap(repo, path, tid), paths=[path], **kw)


# -- a prepared repository ----------------------------------------------------------------------

@dataclass
class Prepared:
    repo: str  # repository path
    src: str  # the backed-up directory (absolute)
    snapshot: str  # the first backup's id
    snapshot2: str  # the second backup's id (b.txt changed)
    src_tree: bytes  # the tree of src in the first backup
    sub_tree: bytes  # the tree of src/sub in the first backup
    file_blob: bytes  # the data blob of src/a.txt
    other_blob: bytes  # the data blob of src/sub/b.txt (first backup)


def copy(prep: Prepared, dest: str) -> Prepared:
    """A private copy of the prepared repository (a case may damage it freely)."""
    shutil.copytree(prep.repo, dest, symlinks=True)
    return replace(prep, repo=dest)


def pack_path(repo_path: str, pack: str) -> str:
    return path_of(repo_path, Handle(FileKind.DATA, pack))


def blob_loc(repo: Repository, blob_id: bytes):
    repo.index_loaded = False
    return repo.blob_location(blob_id)
