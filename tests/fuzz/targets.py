"""Fuzz harnesses: one function per decoder of a structure lbk reads back, each taking bytes.

Every harness runs the real decoder (through the code path lbk itself uses, where that
is cheap) and checks the same contract (issue 7, "Hardening"):

1. **Value or a named error.** On any input the decoder returns a value or raises an
   ``LbkError`` subclass (``FormatError`` / ``IntegrityError``; ``UsageError`` for the
   user's own config file) whose one-line message names the object. Nothing else may
   escape: a KeyError, ValueError, struct.error, RecursionError, MemoryError,
   UnicodeError or OverflowError leaving a harness is a finding.
2. **Bounded memory and time.** ``tests/fuzz/run.py`` runs every input under an
   address-space limit and a per-input timeout, so a length field that makes lbk
   allocate gigabytes, or a frame that inflates without bound, is a crash too.
3. **Nothing nonsensical gets through.** Where the decoded value feeds further code,
   the harness asserts what that code relies on: restore calls ``os.symlink``,
   ``os.mknod``, ``os.chown``, ``os.setxattr`` and ``os.utime`` with node fields; backup
   unpacks cache entries; ``lbk status`` formats state times; the chunker and the
   compressor take config values; cache directories are named by the repository id.
   "A valid MAC but nonsense structure" must be stopped at the decoder, with the
   object named, not three calls later with a traceback.

Sealed structures (config, index, snapshot, tree, lock, pack header) are fuzzed as the
plaintext a valid MAC would let through; opening and decompression have their own
targets (``sealed``, ``payload``). ``TARGETS`` maps each target name to its harness.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
from datetime import datetime
from typing import Callable

import pyfastcdc

from lbk.backend.base import FileKind, Handle
from lbk.backend.mem import MemoryBackend
from lbk.cache import Cache
from lbk.cli.context import parse_user_config
from lbk.errors import FormatError, IntegrityError, LbkError, UsageError
from lbk.model import KINDS, NODE_TYPES, SUMMARY_NUMBERS, Node, Snapshot, decode_tree, encode_tree, valid_name
from lbk.ops.checkpoint import watch_paths_from_config
from lbk.ops.image import image_json
from lbk.ops.image_format import DATA_EXTENT, MAX_CHUNK, ZERO_EXTENT, Layout
from lbk.ops.listing import snapshot_json
from lbk.ops.prune import tree_references
from lbk.repo import compress, crypto, index as index_mod, keys, pack as pack_mod
from lbk.repo.config import Config
from lbk.repo.crypto import MasterKey
from lbk.repo.index import Index
from lbk.repo.lock import list_locks
from lbk.repo.repository import MAX_FILE, Repository
from lbk.watch.spool import SpoolingBackend
from lbk.watch.state import WatchState, is_running, load_states

# Fixed keys: a harness needs no randomness, and a seed sealed by run.py opens here.
MASTER = MasterKey(bytes(range(32)), bytes(range(32, 64)))
PASSWORD = b"fuzz"
HEX = "0123456789abcdef" * 4  # a file name in the repository (64 hex)
# Bounds the consumers need (see each harness): os.chown takes 0 .. 2**32-2 (2**32-1 is
# "leave unchanged"), os.mknod a 64-bit dev_t, os.ftruncate a signed 64-bit size.
U32, U64, I64 = 2**32, 2**64, 2**63
# Timestamps the log and status output can format (datetime.fromtimestamp must work).
TIME_MIN, TIME_MAX = -(2**35), 2**37  # seconds: about the years 900 to 6300
BLOB_LENGTH_MAX = pack_mod.MAX_BLOB + crypto.OVERHEAD + 1  # a sealed payload (flag byte + data) of the largest blob


def _refused(e: LbkError, what: str, classes: tuple = (FormatError, IntegrityError)) -> None:
    """An error is acceptable when it is of the decoder's classes and names the object."""
    assert isinstance(e, classes), f"{type(e).__name__} where {[c.__name__ for c in classes]} is expected: {e.message}"
    assert what in e.message, f"the error does not name {what!r}: {e.message!r}"
    assert "\n" not in e.message, f"the error is not one line: {e.message!r}"


def _is_int(v, lo: int, hi: int) -> bool:
    """A JSON integer (not a bool, not a float) with lo <= v < hi."""
    return type(v) is int and lo <= v < hi


def _is_time(t) -> bool:
    """A finite number of seconds that ``datetime.fromtimestamp`` turns into a date."""
    return type(t) in (int, float) and math.isfinite(t) and TIME_MIN <= t < TIME_MAX


_tmp: str | None = None


def _scratch() -> str:
    """A private directory for the harnesses that read files (removed at exit)."""
    global _tmp
    if _tmp is None:
        _tmp = tempfile.mkdtemp(prefix="lbk-fuzz-")
        atexit.register(shutil.rmtree, _tmp, True)
    return _tmp


# -- repository files -------------------------------------------------------------------


def config(data: bytes) -> None:
    """``config`` plaintext -> ``Config.decode`` (every writer takes its parameters from it)."""
    try:
        cfg = Config.decode(data)
    except LbkError as e:
        return _refused(e, "config")
    # the id names the cache directory: <cache>/<id>, so it must be a plain 64-hex name
    Handle(FileKind.SNAPSHOT, cfg.id)
    ch = cfg.chunker
    assert all(type(v) is int for v in (ch.min, ch.avg, ch.max, ch.seed, cfg.compression_level, cfg.pack_size))
    assert 64 <= ch.min <= ch.avg <= ch.max <= 64 << 20 and 0 <= ch.seed < U64
    assert 64 << 10 <= cfg.pack_size <= 1 << 30, "a pack is held in memory until it reaches pack_size"
    cdc = pyfastcdc.FastCDC(avg_size=ch.avg, min_size=ch.min, max_size=ch.max, seed=ch.seed)
    assert sum(c.length for c in cdc.cut_buf(bytes(range(256)) * 8)) == 2048
    compress.compress(b"abc" * 100, cfg.compression_level)
    assert Config.decode(cfg.encode()) == cfg


def key_file(data: bytes) -> None:
    """``keys/<id>`` (plaintext JSON) -> ``keys.parse_key_file``; ``try_open`` when the KDF is cheap."""
    what = f"keys/{HEX}"
    try:
        kf = keys.parse_key_file(data, what)
    except LbkError as e:
        return _refused(e, what)
    assert len(kf.salt) == crypto.SALT, "libsodium's Argon2id takes a 16-byte salt"
    assert crypto.KDF_OPS_FAST <= kf.ops <= 10 and crypto.KDF_MEM_FAST <= kf.mem <= 1 << 30
    assert len(kf.sealed) >= crypto.OVERHEAD
    if (kf.ops, kf.mem) == (crypto.KDF_OPS_FAST, crypto.KDF_MEM_FAST):  # the whole open, when it is cheap
        try:
            master = keys.try_open(data, PASSWORD, what)
        except LbkError as e:
            return _refused(e, what)
        assert master is None or isinstance(master, MasterKey)


def key_meta(data: bytes) -> None:
    """A key file's ``meta`` plaintext, sealed under the master key -> ``keys.describe`` (lbk key list)."""
    import base64
    import json

    sealed = crypto.seal(MASTER.encrypt, data, b"lbk:keymeta")
    raw = json.dumps({
        "version": 1, "kdf": {"alg": "argon2id", "ops": 1, "mem": 8192, "salt": base64.b64encode(bytes(16)).decode()},
        "data": base64.b64encode(bytes(crypto.OVERHEAD + 64)).decode(), "meta": base64.b64encode(sealed).decode(),
    }).encode()
    what = f"keys/{HEX}"
    try:
        info = keys.describe(HEX, raw, MASTER)
    except LbkError as e:
        return _refused(e, what)
    assert all(type(v) is str for v in (info.id, info.created, info.host, info.user))


def index(data: bytes) -> None:
    """``index/<id>`` plaintext -> ``index.decode`` (every blob's pack, offset and length)."""
    what = f"index/{HEX}"
    try:
        sup, packs = index_mod.decode(data, what)
    except LbkError as e:
        return _refused(e, what)
    for s in sup:
        Handle(FileKind.INDEX, s)
    idx = Index()
    for pack_id, entries in packs.items():
        Handle(FileKind.DATA, pack_id)
        for e in entries:
            assert e.type in pack_mod.BLOB_TYPES and len(e.id) == 32
            assert 0 <= e.raw_length <= pack_mod.MAX_BLOB
            # restore loads `length` bytes from the pack for one blob: bounded like the blob
            assert crypto.OVERHEAD <= e.length <= BLOB_LENGTH_MAX, f"blob length {e.length}"
            assert 0 <= e.offset < U32
        idx.add_pack(pack_id, entries)
    assert index_mod.decode(index_mod.encode(packs, [bytes.fromhex(s) for s in sup]), what) == (sup, packs)


def pack(data: bytes) -> None:
    """A pack's trailer (``header_length``) and its opened header (``parse_header_plain``).

    Input: ``header_offset:4 (LE) || header plaintext``; the trailer check reads the last
    four bytes as if the input were a whole pack."""
    what = f"pack {HEX[:16]}"
    try:
        n = pack_mod.header_length(data[-4:], len(data), what)
        assert crypto.OVERHEAD < n <= len(data) - 4
    except LbkError as e:
        _refused(e, what)
    offset = int.from_bytes(data[:4], "little")
    try:
        entries = pack_mod.parse_header_plain(data[4:], offset, what)
    except LbkError as e:
        return _refused(e, what)
    pos = 0
    for e in entries:
        assert e.type in pack_mod.BLOB_TYPES and len(e.id) == 32 and e.offset == pos
        assert 0 <= e.raw_length <= pack_mod.MAX_BLOB
        assert crypto.OVERHEAD <= e.length <= BLOB_LENGTH_MAX, f"blob length {e.length}"
        pos += e.length
    assert pos == offset


def payload(data: bytes) -> None:
    """``compress.decompress``: ``max_size:4 (LE, capped at MAX_FILE) || flag:1 || body``."""
    what = f"blob {HEX[:16]} in pack {HEX[16:32]}"
    max_size = min(int.from_bytes(data[:4], "little"), MAX_FILE)
    try:
        out = compress.decompress(data[4:], max_size, what)
    except LbkError as e:
        return _refused(e, what)
    assert len(out) <= max_size, f"{len(out)} bytes out of a payload bounded by {max_size}"


def sealed(data: bytes) -> None:
    """``crypto.open_sealed`` of a snapshot file: only the key's own seals may open."""
    what = f"snapshots/{HEX}"
    try:
        plain = crypto.open_sealed(MASTER.encrypt, data, b"lbk:snapshots", what)
    except LbkError as e:
        return _refused(e, what)
    assert len(plain) == len(data) - crypto.OVERHEAD


def _check_node(n: Node) -> None:
    assert type(n.name) is bytes and valid_name(n.name)
    assert n.type in NODE_TYPES
    assert _is_int(n.mode, 0, 0o10000)
    assert _is_int(n.uid, 0, U32 - 1) and _is_int(n.gid, 0, U32 - 1), "os.chown"
    assert type(n.user) is str and type(n.group) is str and "\0" not in n.user + n.group, "pwd.getpwnam"
    for t in (n.mtime_ns, n.ctime_ns):
        assert type(t) is int and _is_time(t // 10**9), f"timestamp {t}"
    assert _is_int(n.size, 0, I64), "os.ftruncate"
    assert all(_is_int(v, 0, U64) for v in (n.inode, n.dev, n.nlink, n.rdev)), "os.mknod"
    assert all(type(c) is bytes and len(c) == 32 for c in n.content)
    assert n.subtree is None or (type(n.subtree) is bytes and len(n.subtree) == 32)
    assert type(n.target) is bytes and b"\0" not in n.target, "os.symlink"
    for k, v in n.xattrs:
        assert type(k) is bytes and type(v) is bytes and k and b"\0" not in k, "os.setxattr"
    assert type(n.error) is str


def tree(data: bytes) -> None:
    """A tree blob -> ``model.decode_tree`` (restore, ls, diff) and prune's ``tree_references``."""
    what = f"tree {HEX[:16]}"
    try:
        refs = tree_references(data, what)
    except LbkError as e:
        _refused(e, what)
        refs = None
    if refs is not None:
        assert all(len(b) == 32 for b in refs[0] + refs[1]), "prune compares these ids with the index"
    try:
        nodes = decode_tree(data, what)
    except LbkError as e:
        return _refused(e, what)
    for n in nodes:
        _check_node(n)
    assert len({n.name for n in nodes}) == len(nodes)
    subtrees = [n.subtree for n in nodes if n.type == "dir" and n.subtree]
    content = [c for n in nodes if n.type == "file" for c in n.content]
    assert refs == (subtrees, content), "prune must see exactly what restore sees"
    assert decode_tree(encode_tree(nodes), what) == sorted(nodes, key=lambda n: n.name)


def snapshot(data: bytes) -> None:
    """``snapshots/<id>`` plaintext -> ``Snapshot.decode`` (snapshots, log, restore, image list)."""
    what = f"snapshot {HEX[:8]}"
    try:
        s = Snapshot.decode(data, HEX)
    except LbkError as e:
        return _refused(e, what)
    assert type(s.tree) is bytes and len(s.tree) == 32
    assert s.time.tzinfo is not None
    s.time.astimezone(), s.time.timestamp()  # what `lbk snapshots` and the catalog do with it
    assert all(type(p) is bytes and p.startswith(b"/") and b"\0" not in p for p in s.paths)
    assert all(type(v) is str for v in (s.host, s.user, s.name, s.parent, *s.tags))
    assert s.kind in KINDS
    assert s.parent == "" or Handle(FileKind.SNAPSHOT, s.parent)
    assert _is_int(s.uid, 0, U32) and _is_int(s.gid, 0, U32)
    assert type(s.summary) is dict and all(type(k) is str for k in s.summary)
    for k in SUMMARY_NUMBERS:
        v = s.summary.get(k, 0)
        assert type(v) in (int, float) and math.isfinite(v), f"summary {k} = {v!r} (formatted as a size)"
    snapshot_json(s), image_json(s)
    assert Snapshot.decode(s.encode(), HEX) == s


_lock_repo: Repository | None = None


def lock(data: bytes) -> None:
    """A lock file's plaintext, sealed into a repository -> ``lock.list_locks`` (every locker, unlock)."""
    global _lock_repo
    if _lock_repo is None:
        cfg = Config.decode(Config.new().encode())
        _lock_repo = Repository(MemoryBackend(), MASTER, cfg)
    repo = _lock_repo
    repo.backend.files.clear()
    repo.save_sealed(Handle(FileKind.LOCK, HEX), data)
    infos = list_locks(repo)
    assert [i.name for i in infos] == [HEX]
    info = infos[0]
    assert type(info.host) is str and type(info.user) is str and type(info.exclusive) is bool
    assert _is_int(info.pid, 0, 2**31), "os.kill"
    assert _is_time(info.time)
    info.is_stale(), info.describe()


def image_layout(data: bytes) -> None:
    """An image's ``layout`` file -> ``Layout.decode`` (image info, restore, verify)."""
    what = f"image {HEX[:8]}: layout"
    try:
        lay = Layout.decode(data, what)
    except LbkError as e:
        return _refused(e, what)
    assert len(lay.kinds) == len(lay.lengths)
    assert set(lay.kinds) <= {DATA_EXTENT, ZERO_EXTENT}
    assert all(0 < n and (k == ZERO_EXTENT or n <= MAX_CHUNK) for k, n in zip(lay.kinds, lay.lengths))
    assert sum(lay.lengths) == lay.size
    assert 512 <= lay.sector_size <= 65536 and lay.sector_size & (lay.sector_size - 1) == 0
    m = lay.meta
    assert type(m) is dict
    # what `lbk image info` prints from the meta (readers ignore unknown keys)
    assert type(m.get("source", "")) is str and type(m.get("source_type", "")) is str
    table = m.get("partition_table")
    assert table is None or (type(table) is dict and type(table.get("dump", "")) is str)
    fss = m.get("filesystems", [])
    assert type(fss) is list
    for fs in fss:
        assert type(fs) is dict and type(fs.get("blkid")) is dict
        assert all(type(k) is str and type(v) is str for k, v in fs["blkid"].items())
        assert type(fs.get("offset")) is int and (fs.get("partition") is None or type(fs["partition"]) is str)
    again = Layout.decode(lay.encode(), what)
    assert (again.size, again.sector_size, again.meta, again.kinds, again.lengths) == (
        lay.size, lay.sector_size, lay.meta, lay.kinds, lay.lengths)


# -- local files (cache dir) -------------------------------------------------------------


def _name_from(data: bytes) -> str:
    """A valid file name made of the input's bytes (no '/' or NUL, at most 255 bytes)."""
    b = data.replace(b"/", b"_").replace(b"\0", b"_")[:255]
    return os.fsdecode(b if b not in (b"", b".", b"..") else b"_")


def spool_name(data: bytes) -> None:
    """A file name in the watch spool -> ``SpoolingBackend`` start-up and ``spooled()``."""
    state = os.path.join(_scratch(), "spool-state")
    spool = os.path.join(state, "spool")
    os.makedirs(spool, exist_ok=True)
    for f in os.listdir(spool):
        os.unlink(os.path.join(spool, f))
    name = _name_from(data)
    with open(os.path.join(spool, name), "wb") as f:
        f.write(b"x")
    sb = SpoolingBackend(MemoryBackend(), state)
    for seq, h, path in sb.spooled():
        assert _is_int(seq, 0, 10**12) and isinstance(h, Handle) and os.path.exists(path)
    sb.spool_usage()


def watch_state(data: bytes) -> None:
    """``<cache>/watch-*/state.json`` -> ``state.load_states`` (lbk status, without a password)."""
    d = os.path.join(_scratch(), "states", "watch-0123456789abcdef")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "state.json"), "wb") as f:
        f.write(data)
    for st in load_states(os.path.dirname(d)):
        assert isinstance(st, WatchState)
        assert _is_int(st.pid, 0, 2**31), "os.kill"
        assert type(st.repository) is str and type(st.phase) is str and type(st.online) is bool
        assert type(st.paths) is list and all(type(p) is str for p in st.paths)
        for t in (st.started, st.updated, st.last_commit, st.oldest_unsynced, st.last_error_time):
            assert t is None or _is_time(t), f"time {t!r}"
        for n in (st.commits, st.captures, st.pending, st.spool_files, st.spool_bytes):
            assert _is_int(n, 0, I64)
        assert st.last_snapshot is None or type(st.last_snapshot) is str
        assert st.last_error is None or type(st.last_error) is str
        is_running(st)
        for t in (st.started, st.last_commit, st.last_error_time):
            if t:
                datetime.fromtimestamp(t).astimezone()


def files_cache(data: bytes) -> None:
    """``<cache>/<repo id>/files`` -> ``Cache.load`` (backup skips unchanged files by it)."""
    cache = Cache(os.path.join(_scratch(), "cache"), HEX)
    with open(cache.path("files"), "wb") as f:
        f.write(data)
    files, dirs = cache.load()
    assert type(files) is dict and type(dirs) is dict
    for path, entry in files.items():
        assert type(path) is bytes and type(entry) is tuple and len(entry) == 5
        assert all(type(v) is int for v in entry[:4])
        assert type(entry[4]) is bytes and len(entry[4]) % 32 == 0
    for path, entry in dirs.items():
        assert type(path) is bytes and type(entry) is tuple and len(entry) == 2
        assert all(type(v) is bytes and len(v) == 32 for v in entry)


def user_config(data: bytes) -> None:
    """``config.toml`` (the user's) -> ``parse_user_config`` and the keys lbk reads from it."""
    path = "/home/ann/.config/lbk/config.toml"
    try:
        cfg = parse_user_config(data, path)
    except LbkError as e:
        return _refused(e, path, (UsageError,))
    assert type(cfg) is dict
    url = cfg.get("repository")
    assert url is None or type(url) is str, "lbk opens it as a repository URL"
    try:
        watch_paths_from_config(cfg)
    except UsageError as e:
        _refused(e, "watch_paths", (UsageError,))


TARGETS: dict[str, Callable[[bytes], None]] = {
    f.__name__: f
    for f in (config, key_file, key_meta, index, pack, payload, sealed, tree, snapshot, lock, image_layout,
              spool_name, watch_state, files_cache, user_config)
}

__all__ = ["TARGETS", "MASTER", "PASSWORD"]

