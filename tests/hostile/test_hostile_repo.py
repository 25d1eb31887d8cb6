"""Hostile and damaged repositories: every object kind, forged with and without the key.

Each row forges one object in a copy of a prepared repository and runs one command a
user would run on it, as a real process under a memory limit and a timeout. Expected:
the documented exit code, ONE line naming the object (kind and short id; restore and
check may instead report it among per-file lines and go on), no traceback, no
'internal error', no hang, and nothing written outside the restore target.

The first row of a case runs in the fast set, unless the case is like another one
there (SLOW_CASES); the other rows are marked slow (each costs a process start).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Callable

import pytest

from lbk.backend.base import FileKind, Handle
from lbk.repo import pack as pack_mod
from tests.hostile import forge as F
from tests.helpers import remove_tree
from tests.hostile.run import COMMANDS, assert_clean_failure, run_limited, tree_listing

MiB = 1 << 20


@dataclass
class Case:
    id: str
    forge: Callable  # (repo, prep, live) -> dict of names for the patterns and commands
    rows: list  # (command, exit code, regex naming the object or None)


def _s(tid: bytes) -> str:
    return tid.hex()[:16]


# -- config -----------------------------------------------------------------------------------

def _config_doc(**kw) -> bytes:
    doc = {"version": 1, "id": "ab" * 32, "chunker": {"alg": "fastcdc2020", "min": 1024, "avg": 2048, "max": 4096,
                                                      "seed": 1},
           "compression": {"alg": "zstd", "level": 3}, "pack_size": MiB}
    doc.update(kw)
    return json.dumps(doc).encode()


def config_raw(data: Callable[[bytes], bytes]):
    def f(repo, prep, live):
        path = os.path.join(prep.repo, "config")
        old = open(path, "rb").read()
        with open(path, "wb") as fh:
            fh.write(data(old))
        return {}
    return f


def config_sealed(plain: bytes | None = None, payload: bytes | None = None):
    def f(repo, prep, live):
        F.put_config(repo, plain, payload=payload)
        return {}
    return f


CONFIG = [
    Case("config-garbage", config_raw(lambda old: os.urandom(len(old))),
         [("snapshots", 1, r"^lbk: config: authentication failed"), ("backup", 1, r"config: authentication")]),
    Case("config-truncated", config_raw(lambda old: old[:20]),
         [("snapshots", 1, r"^lbk: config: too short")]),
    Case("config-version-2", config_sealed(json.dumps({"version": 2}).encode()),
         [("snapshots", 1, r"config: unknown repository version 2"), ("cat-tree", 1, r"config: unknown")]),
    Case("config-wrong-shape", config_sealed(b"[1, 2]"), [("snapshots", 1, r"config: malformed")]),
    Case("config-deep-json", config_sealed(b"[" * 100_000 + b"]" * 100_000), [("snapshots", 1, r"config: malformed")]),
    Case("config-zstd-bomb", config_sealed(payload=F.zstd_payload(F.zstd_bomb(1 << 40))),
         [("snapshots", 1, r"config: compressed data claims 1099511627776 bytes"), ("backup", 1, r"config: compressed")]),
    Case("config-id-escapes-cache", config_sealed(_config_doc(id="../escaped")),
         [("backup", 1, r"config: malformed repository id"), ("log", 1, r"config: malformed repository id")]),
    Case("config-level-1000", config_sealed(_config_doc(compression={"alg": "zstd", "level": 1000})),
         [("backup", 1, r"config: unsupported compression level 1000")]),
    Case("config-pack-size-2^62", config_sealed(_config_doc(pack_size=2**62)),
         [("backup", 1, r"config: unsupported pack size 4611686018427387904")]),
    Case("config-seed-2^80", config_sealed(_config_doc(chunker={"alg": "fastcdc2020", "min": 1024, "avg": 2048,
                                                                "max": 4096, "seed": 2**80})),
         [("backup", 1, r"config: unsupported chunker parameters")]),
]


# -- key files (the one plaintext structure: no key is needed to forge them) --------------------

def key_file(change: Callable[[dict], bytes], keep_good: bool, name: str | None = None):
    def f(repo, prep, live):
        keys_dir = os.path.join(prep.repo, "keys")
        (good,) = os.listdir(keys_dir)
        doc = json.loads(open(os.path.join(keys_dir, good), "rb").read())
        if not keep_good:
            os.unlink(os.path.join(keys_dir, good))
        written = F.put_raw(prep.repo, FileKind.KEY, change(doc), name)
        return {"key": written[:16]}
    return f


def _kdf(**kw):
    return lambda d: json.dumps(dict(d, kdf=dict(d["kdf"], **kw))).encode()


KEYS = [
    Case("key-garbage-only", key_file(lambda d: b"\x00garbage", False),
         [("snapshots", 1, r"^lbk: keys/{key}\w*: malformed key file")]),
    # sorts before the good key: it used to stop opening there
    Case("key-garbage-beside-good", key_file(lambda d: b"\x00garbage", True, "00" * 32),
         [("snapshots", 0, None), ("key-list", 0, None)]),
    Case("key-truncated-only", key_file(lambda d: json.dumps(d).encode()[:40], False),
         [("snapshots", 1, r"keys/{key}\w*: malformed key file")]),
    Case("key-deep-json-only", key_file(lambda d: b"[" * 100_000, False),
         [("snapshots", 1, r"keys/{key}\w*: malformed key file")]),
    Case("key-wrong-shape-only", key_file(lambda d: b'{"version": 1, "kdf": []}', False),
         [("snapshots", 1, r"keys/{key}\w*: malformed key file")]),
    Case("key-kdf-4GiB-only", key_file(_kdf(mem=4 << 30), False),
         [("snapshots", 1, r"keys/{key}\w*: implausible KDF parameters \(ops=1, mem=4294967296\)")]),
    Case("key-kdf-11-passes-only", key_file(_kdf(ops=11), False),
         [("snapshots", 1, r"keys/{key}\w*: implausible KDF parameters \(ops=11, mem=\d+\)")]),
    Case("key-kdf-2^50-only", key_file(_kdf(mem=2**50), False),
         [("snapshots", 1, r"keys/{key}\w*: implausible KDF parameters \(ops=1, mem=1125899906842624\)")]),
    Case("key-sealed-master-short", key_file(lambda d: json.dumps(dict(d, data=F.b64(b"x" * 10))).encode(), False),
         [("snapshots", 1, r"keys/{key}\w*: malformed key file \(salt or key of the wrong length\)")]),
]


# -- index files ---------------------------------------------------------------------------------

def index_sealed(plain: bytes | None = None, payload: bytes | None = None):
    def f(repo, prep, live):
        return {"index": F.put_file(repo, FileKind.INDEX, plain, payload=payload)[:16]}
    return f


def index_raw(damage: Callable[[bytes], bytes]):
    def f(repo, prep, live):
        name = F.files_of(prep.repo, FileKind.INDEX)[0]
        path = F.path_of(prep.repo, Handle(FileKind.INDEX, name))
        data = damage(open(path, "rb").read())
        with open(path, "wb") as fh:
            fh.write(data)
        return {"index": name[:16]}
    return f


def index_entry(**change):
    """Rewrite (with the key) the index entry of a.txt's blob."""
    def f(repo, prep, live):
        loc = F.blob_loc(repo, prep.file_blob)
        packs = F.all_packs(repo)
        packs[loc.pack] = [pack_mod.PackEntry(e.type, e.id, change.get("offset", e.offset), change.get("length", e.length),
                                              change.get("raw_length", e.raw_length)) if e.id == prep.file_blob else e
                           for e in packs[loc.pack]]
        F.replace_index(repo, packs)
        return {"blob": _s(prep.file_blob), "pack": loc.pack[:16]}
    return f


U32 = struct.Struct("<I")
INDEX = [
    Case("index-garbage", lambda r, p, live: {"index": F.put_raw(p.repo, FileKind.INDEX, os.urandom(300))[:16]},
         [("ls", 1, r"^lbk: index/{index}\w*: authentication failed"), ("read-data", 1, r"index/{index}")]),
    Case("index-truncated", index_raw(lambda d: d[: len(d) // 2]),
         [("ls", 1, r"index/{index}\w*: content does not match its name"), ("restore", 1, r"index/{index}")]),
    Case("index-version-2", index_sealed(b"\x02" + bytes(8)), [("ls", 1, r"index/{index}\w*: unknown index version 2")]),
    Case("index-empty", index_sealed(b""), [("ls", 1, r"index/{index}\w*: truncated")]),
    Case("index-2^32-1-packs", index_sealed(F.index_plain([], n_packs=2**32 - 1)),
         [("ls", 1, r"index/{index}\w*: truncated"), ("cat-blob", 1, r"index/{index}")]),
    Case("index-2^32-1-blobs", index_sealed(b"\x01" + U32.pack(0) + U32.pack(1) + b"p" * 32 + U32.pack(2**32 - 1)),
         [("ls", 1, r"index/{index}\w*: truncated")]),
    Case("index-2^32-1-supersedes", index_sealed(b"\x01" + U32.pack(2**32 - 1)), [("ls", 1, r"index/{index}\w*: truncated")]),
    Case("index-raw-length-2^30", index_sealed(F.index_plain([(b"p" * 32, [(0, b"i" * 32, 0, 100, 1 << 30)])])),
         [("ls", 1, r"index/{index}\w*: invalid entry")]),
    Case("index-zstd-bomb", index_sealed(payload=F.zstd_payload(F.zstd_bomb(1 << 40))),
         [("ls", 1, r"index/{index}\w*: compressed data claims"), ("read-data", 1, r"index/{index}")]),
    Case("index-entry-length-2^32-1", index_entry(length=2**32 - 1),
         [("restore", 1, r"index/[0-9a-f]+: invalid entry"), ("cat-blob", 1, r"index/[0-9a-f]+: invalid entry"),
          ("read-data", 1, r"index/[0-9a-f]+: invalid entry")]),
    Case("index-entry-raw-length-0", index_entry(raw_length=0),
         [("cat-blob", 1, r"^lbk: blob {blob} in pack {pack}: compressed data claims 6000 bytes"),
          ("restore", 1, r"blob {blob} in pack {pack}"), ("read-data", 1, r"blob {blob}")]),
    Case("index-supersedes-everything",
         lambda r, p, live: {"index": F.put_file(r, FileKind.INDEX, F.index_plain(
             [], supersedes=[bytes.fromhex(n) for n in F.files_of(p.repo, FileKind.INDEX)]))[:16]},
         [("ls", 1, r"^lbk: blob [0-9a-f]{16} is not in any index"), ("check", 1, r"not in any index")]),
]


# -- packs ---------------------------------------------------------------------------------------

def pack_raw(damage: Callable[[bytes, object], bytes]):
    def f(repo, prep, live):
        loc = F.blob_loc(repo, prep.file_blob)
        path = F.pack_path(prep.repo, loc.pack)
        data = damage(open(path, "rb").read(), loc)
        with open(path, "wb") as fh:
            fh.write(data)
        return {"pack": loc.pack[:16], "blob": _s(prep.file_blob)}
    return f


def pack_header(entries_of: Callable[[bytes, bytes], bytes], trailer: int | None = None):
    """Move a.txt's blob into a new pack whose header (sealed with the key) is hostile."""
    def f(repo, prep, live):
        data = b"alpha\n" * 1000
        bid, sealed = F.sealed_blob(repo, pack_mod.DATA, data)
        name = F.put_pack(repo, sealed, entries_of(bid, sealed), trailer=trailer)
        packs = F.all_packs(repo)
        for pid in packs:
            packs[pid] = [e for e in packs[pid] if e.id != bid]
        packs[name] = [pack_mod.PackEntry(pack_mod.DATA, bid, 0, len(sealed), len(data))]
        F.replace_index(repo, packs)
        return {"pack": name[:16], "blob": _s(bid)}
    return f


def _flip(data: bytes, loc) -> bytes:
    b = bytearray(data)
    b[loc.offset + loc.length // 2] ^= 0x01
    return bytes(b)


PACK = [
    Case("pack-trailer-claims-4GiB-header", pack_raw(lambda d, loc: d[:-4] + U32.pack(2**32 - 1)),
         [("read-data", 1, r"pack {pack}\w*: invalid header length 4294967295"), ("ls", 0, None), ("check", 0, None)]),
    Case("pack-truncated-inside-a-blob", pack_raw(lambda d, loc: d[: loc.offset + 10]),
         [("restore", 1, r"blob {blob} in pack {pack}: the pack is shorter"), ("cat-blob", 1, r"blob {blob}"),
          ("check", 1, r"pack {pack}: pack is truncated"), ("read-data", 1, r"pack {pack}")]),
    Case("pack-truncated-to-2-bytes", pack_raw(lambda d, loc: d[:2]),
         [("check", 1, r"pack {pack}: pack is truncated \(2 bytes\)"), ("read-data", 1, r"truncated pack")]),
    Case("pack-blob-byte-flipped", pack_raw(_flip),
         [("restore", 1, r"blob {blob} in pack {pack}: authentication failed"),
          ("cat-blob", 1, r"^lbk: blob {blob} in pack {pack}: authentication failed"), ("read-data", 1, r"blob {blob}")]),
    Case("pack-header-count-2^32-1", pack_header(lambda bid, s: F.header([(0, bid, len(s), 6000)], count=2**32 - 1)),
         [("read-data", 1, r"pack {pack}\w*: header entry count does not match its size"), ("restore", 0, None)]),
    Case("pack-header-version-9", pack_header(lambda bid, s: F.header([(0, bid, len(s), 6000)], version=9)),
         [("read-data", 1, r"pack {pack}\w*: unknown pack header version 9")]),
    Case("pack-header-bad-type-and-size", pack_header(lambda bid, s: F.header([(7, bid, len(s), 2**32 - 1)])),
         [("read-data", 1, r"pack {pack}\w*: invalid header entry 0")]),
    Case("pack-header-lengths-do-not-add-up", pack_header(lambda bid, s: F.header([(0, bid, len(s) + 1, 6000)])),
         [("read-data", 1, r"pack {pack}\w*: blob lengths do not add up")]),
    Case("pack-header-shorter-than-possible", pack_header(lambda bid, s: b"\x01"),
         [("read-data", 1, r"pack {pack}\w*: invalid header length 41")]),
]


# -- snapshots -----------------------------------------------------------------------------------

def snapshot_sealed(plain: Callable | bytes | None = None, payload: bytes | None = None):
    def f(repo, prep, live):
        body = plain(prep) if callable(plain) else plain
        name = F.put_file(repo, FileKind.SNAPSHOT, body, payload=payload)
        return {"snap": name[:8]}
    return f


def snapshot_doc(**kw):
    return snapshot_sealed(lambda prep: json.dumps({**F.snapshot_doc(prep.src_tree), **kw}).encode())


def snapshot_raw(damage: Callable[[bytes], bytes]):
    def f(repo, prep, live):
        path = F.path_of(prep.repo, Handle(FileKind.SNAPSHOT, prep.snapshot2))
        data = damage(open(path, "rb").read())
        with open(path, "wb") as fh:
            fh.write(data)
        return {"snap": prep.snapshot2[:8]}
    return f


# A damaged snapshot file is skipped with a warning; only what needs it (or every
# snapshot, as prune does) fails.
SKIPPED = r"^warning: skipped a damaged snapshot: "
SNAPSHOT = [
    Case("snapshot-garbage-named-by-its-hash",
         lambda r, p, live: {"snap": F.put_raw(p.repo, FileKind.SNAPSHOT, os.urandom(200))[:8]},
         [("snapshots", 0, SKIPPED + r"snapshots/{snap}\w*: authentication failed"), ("check", 1, r"snapshot {snap}"),
          ("prune", 1, r"(?m)^lbk: snapshot {snap} is damaged; prune must read every snapshot")]),
    Case("snapshot-truncated", snapshot_raw(lambda d: d[:50]),
         [("snapshots", 0, SKIPPED + r"snapshots/{snap}\w*: content does not match its name"), ("restore", 0, r"{snap}"),
          ("restore-it", 1, r"(?m)^lbk: snapshot {snap} is damaged and cannot be read")]),
    Case("snapshot-version-2", snapshot_doc(version=2), [("snapshots", 0, SKIPPED + r"snapshot {snap}: unknown snapshot version 2")]),
    Case("snapshot-wrong-shape", snapshot_sealed(b"[]"), [("snapshots", 0, SKIPPED + r"snapshot {snap}: malformed snapshot")]),
    Case("snapshot-tree-is-an-int", snapshot_doc(tree=5), [("snapshots", 0, SKIPPED + r"snapshot {snap}: malformed snapshot")]),
    Case("snapshot-deep-json", snapshot_sealed(b"{" * 50_000), [("snapshots", 0, SKIPPED + r"snapshot {snap}: malformed snapshot")]),
    Case("snapshot-time-year-1", snapshot_doc(time="0001-01-01T00:00:00+14:00"),
         [("snapshots", 0, SKIPPED + r"snapshot {snap}: malformed snapshot"), ("find", 0, SKIPPED + r"snapshot {snap}")]),
    Case("snapshot-time-year-9999", snapshot_doc(time="9999-12-31T23:59:59-14:00"),
         [("snapshots", 0, SKIPPED + r"snapshot {snap}: malformed snapshot")]),
    Case("snapshot-paths-not-a-list", snapshot_doc(paths="/etc"), [("snapshots", 0, SKIPPED + r"snapshot {snap}: malformed")]),
    Case("snapshot-summary-not-numbers", snapshot_doc(summary={"total_bytes": "lots"}),
         [("snapshots", 0, SKIPPED + r"snapshot {snap}: summary total_bytes is not a number")]),
    Case("snapshot-zstd-bomb", snapshot_sealed(payload=F.zstd_payload(F.zstd_bomb(1 << 40))),
         [("snapshots", 0, SKIPPED + r"snapshots/{snap}\w*: compressed data claims")]),
    Case("snapshot-tree-is-a-data-blob",
         lambda r, p, live: {"tree": _s(p.file_blob), "snap": F.put_snapshot(r, p.file_blob)[:8]},
         [("ls", 1, r"^lbk: tree {tree}: malformed tree"), ("restore", 1, r"tree {tree}"),
          ("check", 1, r"tree {tree}: malformed tree \(snapshot {snap}")]),
    Case("snapshot-tree-missing", lambda r, p, live: {"snap": F.put_snapshot(r, "cd" * 32)[:8]},
         [("ls", 1, r"^lbk: blob cdcdcdcdcdcdcdcd is not in any index"), ("check", 1, r"tree cdcdcdcdcdcdcdcd")]),
]


# -- trees (valid MAC, hostile structure) ----------------------------------------------------------

def tree(*nodes: dict, raw: bytes | None = None, blob_id: bytes | None = None):
    """A tree blob at the ``live`` directory of a new snapshot."""
    def f(repo, prep, live):
        tid, sid = F.put_tree_snapshot(repo, raw if raw is not None else F.tree_json(*nodes), blob_id, path=live)
        return {"tree": _s(tid), "tree_id": tid.hex(), "snap": sid[:8]}
    return f


def _cycle(repo, prep, live):
    """A tree that names itself as a subdirectory: sealed (with the key) under an id that
    is not the hash of its content, the only way to build one."""
    bid = bytes.fromhex("ab" * 32)
    return tree(F.node("loop", "dir", subtree=bid.hex()), blob_id=bid)(repo, prep, live)


def _chain(depth: int):
    def f(repo, prep, live):
        t, _ = repo.save_blob(pack_mod.TREE, F.tree_json())
        for _ in range(depth):
            t, _ = repo.save_blob(pack_mod.TREE, F.tree_json(F.node("d", "dir", subtree=t.hex())))
        return tree(F.node("top", "dir", subtree=t.hex()))(repo, prep, live)
    return f


def _file_of(content_of: Callable, size: int | None = None):
    def f(repo, prep, live):
        ids = content_of(repo, prep)
        return tree(F.node("f", size=6000 if size is None else size, content=[i.hex() for i in ids]))(repo, prep, live)
    return f


def _dir_of(subtree_of: Callable):
    def f(repo, prep, live):
        return tree(F.node("d", "dir", subtree=subtree_of(prep).hex()))(repo, prep, live)
    return f


BAD_NAME = r"tree {tree}: tree contains an invalid file name"
IMPLAUSIBLE = r"tree {tree}: tree node b'a' has an invalid {field} -?\d+"
NUL = r"tree {tree}: tree node b'\w' has a NUL in its"
TREES = [
    Case(f"tree-name-{label}", tree(F.node(name)), [("ls", 1, BAD_NAME), ("restore", 1, BAD_NAME), ("find", 1, BAD_NAME)])
    for label, name in [("dotdot", ".."), ("slash", "a/b"), ("nul", "x\0y"), ("dot", "."), ("empty", ""),
                        ("absolute", "/etc"), ("dotdot-escape", "../../../escape")]
] + [
    Case("tree-duplicate-names", tree(F.node("a"), F.node("a", "dir")),
         [("ls", 1, r"tree {tree}: duplicate names"), ("restore", 1, r"tree {tree}: duplicate names")]),
    Case("tree-version-2", tree(raw=F.tree_json(version=2)), [("ls", 1, r"tree {tree}: unknown tree version 2")]),
    Case("tree-nodes-not-a-list", tree(raw=b'{"version":1,"nodes":{"a":1}}'), [("ls", 1, r"tree {tree}: malformed")]),
    Case("tree-node-wrong-types", tree({"name": 5, "type": "file"}), [("ls", 1, r"tree {tree}: tree node b'\?' has an invalid name 5")]),
    Case("tree-unknown-node-type", tree(F.node("a", "door")), [("ls", 1, r"tree {tree}: tree contains an unknown node type")]),
    Case("tree-deep-json", tree(raw=b'{"version":1,"nodes":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
         [("ls", 1, r"tree {tree}: nested too deeply"), ("stats", 1, r"tree {tree}")]),
    Case("tree-size-negative", tree(F.node("a", size=-1)), [("ls", 1, IMPLAUSIBLE.replace("{field}", "size"))]),
    Case("tree-size-2^64", tree(F.node("a", size=2**64)), [("ls", 1, IMPLAUSIBLE.replace("{field}", "size"))]),
    # plausible as a number, but the content does not add up to it: that file fails, the rest is restored
    Case("tree-size-2^62", tree(F.node("a", size=2**62), F.node("b")),
         [("restore", 1, r"error: \S*/a: content length 0 does not match the recorded size 4611686018427387904"),
          ("ls", 0, None), ("stats", 0, None)]),
    Case("tree-uid-2^40", tree(F.node("a", uid=2**40)),
         [("restore", 1, IMPLAUSIBLE.replace("{field}", "uid")), ("ls", 1, r"tree {tree}")]),
    Case("tree-gid-negative", tree(F.node("a", gid=-5)), [("restore", 1, IMPLAUSIBLE.replace("{field}", "gid"))]),
    Case("tree-mtime-2^70", tree(F.node("a", mtime_ns=2**70)),
         [("ls", 1, IMPLAUSIBLE.replace("{field}", "mtime_ns")), ("log", 1, r"tree {tree}"), ("diff", 1, r"tree {tree}")]),
    Case("tree-rdev-2^70", tree(F.node("a", "chardev", rdev=2**70)), [("restore", 1, IMPLAUSIBLE.replace("{field}", "rdev"))]),
    # no file system has such a mode: refused like every number out of range
    Case("tree-mode-2^70", tree(F.node("a", mode=2**70 + 0o640)),
         [("restore", 1, IMPLAUSIBLE.replace("{field}", "mode")), ("ls", 1, IMPLAUSIBLE.replace("{field}", "mode"))]),
    Case("tree-symlink-target-1MiB", tree(F.node("l", "symlink", target="x" * MiB)),
         [("restore", 1, r"error: \S*/l: File name too long"), ("ls", 0, None), ("log", 0, None)]),
    Case("tree-symlink-target-nul", tree(F.node("l", "symlink", target="x\0y")), [("restore", 1, NUL)]),
    Case("tree-xattr-name-nul", tree(F.node("a", xattrs=[[F.b64(b"user.a\0b"), F.b64(b"v")]])), [("restore", 1, NUL)]),
    Case("tree-user-name-nul", tree(F.node("a", user="ro\0ot")), [("restore", 1, NUL)]),
    Case("tree-xattr-40MiB", tree(F.node("a", xattrs=[[F.b64(b"user.big"), F.b64(b"v" * (40 * MiB))]])),
         [("restore", 1, r"error: \S*/a: Argument list too long"), ("ls", 0, None)]),
    Case("tree-content-id-short", tree(F.node("a", size=1, content=["abcd"])), [("ls", 1, r"tree {tree}: malformed tree")]),
    Case("tree-cycle", _cycle,
         [("ls", 1, r"^lbk: blob abababababababab in pack \w+: content does not match its id"),
          ("restore", 1, r"blob abababababababab"), ("check", 1, r"blob abababababababab"), ("stats", 1, r"abababab"),
          ("find", 1, r"abababab"), ("log", 1, r"abababab"), ("rollback", 1, r"abababab"), ("cat-tree", 1, r"abababab")]),
    # Deeper than lbk's recursion limit (lbk.cli.main.TREE_RECURSION_LIMIT frames) allows:
    # a clean error, never a crash of the C stack.
    # restore stops earlier, where the path outgrows PATH_MAX, naming that directory
    # (on a stack below 8 MiB lbk's recursion limit is lower, and it stops there).
    Case("tree-chain-20000-deep", _chain(20_000),
         [("ls", 1, r"nested too deeply"), ("restore", 1, r"error: \S*/top(/d)+: File name too long|nested too deeply"), ("check", 1, r"nested too deeply"),
          ("find", 1, r"nested too deeply")]),
    Case("tree-subtree-is-a-data-blob", _dir_of(lambda p: p.file_blob),
         [("ls", 1, r"tree " + "{data}" + r": malformed tree")]),
    Case("tree-file-content-is-a-tree-blob", _file_of(lambda r, p: [p.sub_tree], size=10),
         [("restore", 1, r"error: \S*/f: content length \d+ does not match the recorded size 10")]),
    Case("tree-file-content-missing", _file_of(lambda r, p: [bytes.fromhex("cd" * 32)]),
         [("restore", 1, r"error: \S*/f: blob cdcdcdcdcdcdcdcd is not in any index"),
          ("check", 1, r"file cdcdcdcdcdcdcdcd: content damaged: blob is missing")]),
]


# -- data blobs (valid MAC, hostile payload) --------------------------------------------------------

def data_blob(payload: bytes, raw_length: int = 6000):
    def f(repo, prep, live):
        bid = bytes.fromhex("ee" * 32)
        F.put_blob_payload(repo, pack_mod.DATA, payload, bid, raw_length)
        out = tree(F.node("f", size=raw_length, content=[bid.hex()]))(repo, prep, live)
        return {**out, "blob": _s(bid), "blob_id": bid.hex()}
    return f


DATA_BLOBS = [
    Case("data-zstd-bomb", data_blob(F.zstd_payload(F.zstd_bomb(1 << 40))),
         [("restore", 1, r"blob {blob} in pack \w+: compressed data claims 1099511627776 bytes"),
          ("cat-blob", 1, r"^lbk: blob {blob}"), ("read-data", 1, r"blob {blob}")]),
    Case("data-zstd-claims-what-the-index-says", data_blob(F.zstd_payload(F.zstd_bomb(6000))),
         [("cat-blob", 1, r"^lbk: blob {blob} in pack \w+: corrupt compressed data")]),
    Case("data-unknown-compression-flag", data_blob(b"\x07junk"),
         [("cat-blob", 1, r"^lbk: blob {blob} in pack \w+: unknown compression flag 7")]),
    Case("data-empty-payload", data_blob(b""), [("cat-blob", 1, r"^lbk: blob {blob} in pack \w+: empty payload")]),
    Case("data-content-not-its-id", data_blob(F.raw_payload(b"bravo\n" * 1000)),
         [("restore", 1, r"error: \S*/f: blob {blob} in pack \w+: content does not match its id"),
          ("cat-blob", 1, r"^lbk: blob {blob} in pack \w+: content does not match its id"),
          ("read-data", 1, r"blob {blob}"), ("diff", 0, None)]),
]

CASES = CONFIG + KEYS + INDEX + PACK + SNAPSHOT + TREES + DATA_BLOBS


# Cases like another one in the fast set (the same check on another field or kind): slow.
SLOW_CASES = {
    "config-truncated", "config-version-2", "config-wrong-shape", "config-deep-json", "config-pack-size-2^62",
    "config-seed-2^80", "key-truncated-only", "key-deep-json-only", "key-kdf-11-passes-only", "key-wrong-shape-only", "key-sealed-master-short",
    "index-truncated", "index-version-2", "index-empty", "index-2^32-1-blobs", "index-2^32-1-supersedes",
    "index-raw-length-2^30", "index-supersedes-everything", "pack-truncated-to-2-bytes", "pack-header-version-9",
    "pack-header-bad-type-and-size", "pack-header-lengths-do-not-add-up", "pack-header-shorter-than-possible",
    "snapshot-truncated", "snapshot-version-2", "snapshot-wrong-shape", "snapshot-tree-is-an-int",
    "snapshot-deep-json", "snapshot-time-year-9999", "snapshot-paths-not-a-list", "snapshot-tree-missing",
    "tree-name-dot", "tree-name-empty", "tree-name-absolute", "tree-version-2", "tree-nodes-not-a-list",
    "tree-node-wrong-types", "tree-unknown-node-type", "tree-size-negative", "tree-size-2^64", "tree-gid-negative",
    "tree-mode-2^70", "tree-symlink-target-1MiB", "tree-xattr-40MiB", "tree-content-id-short",
    "tree-chain-20000-deep", "data-zstd-claims-what-the-index-says", "data-unknown-compression-flag",
    "data-empty-payload",
}


def _rows():
    assert SLOW_CASES <= {c.id for c in CASES}
    for case in CASES:
        for i, (command, code, names) in enumerate(case.rows):
            marks = () if i == 0 and case.id not in SLOW_CASES else (pytest.mark.slow,)
            yield pytest.param(case, command, code, names, id=f"{case.id}:{command}", marks=marks)


def fill(template: str, subs: dict) -> str:
    """``{name}`` replaced from ``subs`` (str.format would trip over regex braces)."""
    for k, v in subs.items():
        template = template.replace("{" + k + "}", v)
    return template


@pytest.mark.parametrize("case,command,code,names", list(_rows()))
def test_hostile_repository(prepared, tmp_path, case, command, code, names):
    prep = F.copy(prepared, str(tmp_path / "repo"))
    live = tmp_path / "live"
    live.mkdir()
    (live / "file").write_bytes(b"live")
    repo = F.open_repo(prep.repo)
    subs = {"target": str(tmp_path / "out" / "target"), "live": str(live), "good": prep.snapshot,
            "tree_id": prep.sub_tree.hex(), "blob_id": prep.file_blob.hex(), "data": _s(prep.file_blob)}
    subs.update(case.forge(repo, prep, str(live)) or {})
    repo.close()
    (tmp_path / "out").mkdir()
    skip = (prep.repo, os.environ["LBK_CACHE_DIR"])
    before = tree_listing(str(tmp_path), skip)
    res = run_limited(prep.repo, *[fill(a, subs) for a in COMMANDS[command]])
    created = tree_listing(str(tmp_path), skip) - before
    remove_tree(subs["target"])
    assert_clean_failure(res, command, code, fill(names, subs) if names else None)
    outside = {p for p in created if p != subs["target"] and not p.startswith(subs["target"] + os.sep)}
    assert not outside, f"written outside the restore target: {sorted(outside)[:5]}"
