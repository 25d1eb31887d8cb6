"""The repository: the only code that talks to a backend.

It turns the backend's named bytes into authenticated objects: sealed files (config,
index, snapshots, locks) named by the hash of their ciphertext, and blobs (file chunks
and trees) stored in packs and found through the index. Writers call ``save_blob`` from
any number of threads and ``flush`` before they write a snapshot, which is the order
that makes a crash harmless: packs, then indexes, then the snapshot.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from lbk.backend.base import Backend, BackendError, FileKind, Handle, NotFound
from lbk.errors import FormatError, IntegrityError, RepositoryExists, RepositoryNotFound, WrongPassword
from lbk.repo import compress, crypto, index as index_mod, keys, pack as pack_mod
from lbk.repo.config import Config
from lbk.repo.crypto import MasterKey
from lbk.repo.index import BlobLocation, Index
from lbk.repo.lock import Lock

MAX_FILE = 256 * 1024 * 1024  # bound for decompressed sealed files (indexes, snapshots)
INDEX_EVERY = 4  # index this many new packs at once, so an interrupted run's packs are reused
UPLOADS_IN_FLIGHT = 2


class Repository:
    def __init__(self, backend: Backend, master: MasterKey, config: Config, key_name: str | None = None):
        self.backend = backend
        self.master = master
        self.config = config
        self.key_name = key_name
        self.index = Index()
        self.index_loaded = False
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        self._packers: dict[int, pack_mod.PackWriter] = {}
        self._unindexed: dict[str, list[pack_mod.PackEntry]] = {}
        self._session_packs: dict[str, list[pack_mod.PackEntry]] = {}
        self._session_indexes: list[str] = []
        self._tree_cache: OrderedDict[bytes, bytes] = OrderedDict()
        # full packs are written by uploader threads, so hashing/compressing/encrypting
        # goes on while a pack is written and fsynced; at most UPLOADS_IN_FLIGHT wait
        self._uploader: ThreadPoolExecutor | None = None
        self._upload_slots = threading.BoundedSemaphore(UPLOADS_IN_FLIGHT)
        self._uploads: list = []
        self._upload_error: BaseException | None = None
        self.stats_added = {"blobs": 0, "raw_bytes": 0, "stored_bytes": 0, "packs": 0}

    @property
    def id(self) -> str:
        return self.config.id

    # -- create / open ------------------------------------------------------
    @classmethod
    def create(cls, backend: Backend, password: bytes) -> "Repository":
        if backend.exists():
            raise RepositoryExists(f"repository at {backend.location} already exists")
        try:
            backend.create()
        except BackendError as e:
            raise RepositoryExists(f"cannot create repository: {e.message}") from None
        master = MasterKey.generate()
        config = Config.new()
        repo = cls(backend, master, config)
        name, raw = keys.make_key_file(master, password)
        backend.save(Handle(FileKind.KEY, name), raw)
        repo.key_name = name
        repo.save_sealed(Handle(FileKind.CONFIG), config.encode())  # last: marks the repo as existing
        return repo

    @classmethod
    def open(cls, backend: Backend, password: Callable[[], bytes]) -> "Repository":
        """Open with a password provider; it is only called once the repository is found."""
        if not backend.exists():
            raise RepositoryNotFound(f"repository {backend.location} does not exist")
        pw = password()
        key_files = sorted(backend.list(FileKind.KEY), key=lambda f: f.name)
        if not key_files:
            raise FormatError(f"repository {backend.location} has no key files")
        damaged: list[FormatError] = []
        for fi in key_files:
            try:
                raw = backend.load(Handle(FileKind.KEY, fi.name))
                master = keys.try_open(raw, pw, f"keys/{fi.name}")
            except NotFound:
                continue  # removed meanwhile (key remove / passwd elsewhere)
            except FormatError as e:  # e.g. wiped by a key removal that was interrupted
                damaged.append(e)
                continue
            if master is not None:
                break
        else:
            if len(damaged) == len(key_files):
                raise damaged[0]
            note = f" ({len(damaged)} key files unreadable, e.g. {damaged[0].message})" if damaged else ""
            raise WrongPassword("wrong password or no key found" + note)
        repo = cls(backend, master, None, fi.name)  # type: ignore[arg-type]  # config is read next
        repo.config = Config.decode(repo.load_sealed(Handle(FileKind.CONFIG)))
        return repo

    # -- sealed files -------------------------------------------------------
    def _ad(self, h: Handle) -> bytes:
        return b"lbk:" + h.kind.value.encode()

    def seal_file(self, kind: FileKind, payload: bytes, level: int | None = None) -> tuple[Handle, bytes]:
        lvl = self.config.compression_level if level is None else level
        sealed = crypto.seal(self.master.encrypt, compress.compress(payload, lvl), b"lbk:" + kind.value.encode())
        name = "config" if kind is FileKind.CONFIG else crypto.content_hash(sealed)
        return Handle(kind, name), sealed

    def save_sealed(self, h: Handle, payload: bytes, *, overwrite: bool = False) -> None:
        """Save a sealed file under a given handle (config and locks, whose names are fixed)."""
        sealed = crypto.seal(self.master.encrypt, compress.compress(payload, 3), self._ad(h))
        self.backend.save(h, sealed, overwrite=overwrite)

    def save_file(self, kind: FileKind, payload: bytes) -> str:
        """Save a content-named sealed file (index, snapshot); returns its name."""
        h, sealed = self.seal_file(kind, payload)
        self.backend.save(h, sealed)
        return h.name

    def load_sealed(self, h: Handle) -> bytes:
        raw = self.backend.load(h)
        if h.kind not in (FileKind.CONFIG, FileKind.LOCK) and crypto.content_hash(raw) != h.name:
            raise IntegrityError(f"{h}: content does not match its name (damaged or swapped)")
        plain = crypto.open_sealed(self.master.encrypt, raw, self._ad(h), str(h))
        return compress.decompress(plain, MAX_FILE, str(h))

    # -- keys ----------------------------------------------------------------
    def add_key(self, password: bytes) -> str:
        name, raw = keys.make_key_file(self.master, password)
        self.backend.save(Handle(FileKind.KEY, name), raw)
        return name

    def remove_wiped(self, h: Handle) -> None:
        """Remove a file so that its bytes do not linger (key files: an old key file and its
        old password would open the repository). A backend that can overwrite in place
        does (``wipe``: the local disk); on the others the object is first replaced by
        random bytes of its length, then removed. Limits: docs/FORMAT.md "Removing a key"."""
        wipe = getattr(self.backend, "wipe", None)
        if wipe is not None:
            wipe(h)
            return
        size = self.backend.stat(h)
        self.backend.save(h, os.urandom(size), overwrite=True)
        self.backend.remove(h)

    def list_keys(self) -> list[keys.KeyInfo]:
        out = []
        for fi in self.backend.list(FileKind.KEY):
            raw = self.backend.load(Handle(FileKind.KEY, fi.name))
            try:
                out.append(keys.describe(fi.name, raw, self.master))
            except FormatError:  # listed, so that it can be removed
                out.append(keys.KeyInfo(fi.name, "", "(damaged key file)", ""))
        return sorted(out, key=lambda k: k.created)

    # -- locks ---------------------------------------------------------------
    def lock(self, exclusive: bool = False) -> Lock:
        return Lock(self, exclusive).acquire()

    # -- index ---------------------------------------------------------------
    def load_index(self) -> Index:
        for attempt in range(3):
            names = [f.name for f in self.backend.list(FileKind.INDEX)]

            def load(name: str):
                return name, index_mod.decode_records(self.load_sealed(Handle(FileKind.INDEX, name)), f"index/{name}")

            try:
                with ThreadPoolExecutor(4) as ex:
                    loaded = list(ex.map(load, names))
                break
            except NotFound:
                if attempt == 2:  # an index vanished under us three times: a writer is consolidating
                    raise
        superseded = {s for _, (sup, _) in loaded for s in sup}
        idx = Index()
        for name, (_sup, packs) in loaded:
            if name in superseded:
                continue
            for pack_id, records in packs.items():
                idx.add_records(pack_id, records)
        self.index = idx
        self.index_files = [n for n, _ in loaded if n not in superseded]
        self.index_loaded = True
        return idx

    def replace_index(self, packs: dict[str, list[pack_mod.PackEntry]]) -> tuple[str, int]:
        """Make ``packs`` the whole index: write one index file naming them that supersedes
        every index file there is, then delete those. Returns (new index name, files removed).

        The caller holds the exclusive lock (no writer adds an index meanwhile). Crash
        safety: the new index is durable before anything is deleted, and readers ignore
        superseded files, so a crash at any point leaves either the old index files in
        force or the new one (plus superseded leftovers that the next prune removes).
        Prune's final step and ``lbk repair index`` both end here.
        """
        old = [f.name for f in self.backend.list(FileKind.INDEX)]
        name = self.save_file(FileKind.INDEX, index_mod.encode(packs, supersedes=[bytes.fromhex(n) for n in old]))
        removed = remove_files(self.backend, [Handle(FileKind.INDEX, n) for n in old])
        return name, removed

    def ensure_index(self) -> Index:
        if not self.index_loaded:
            self.load_index()
        return self.index

    # -- blobs: writing ----------------------------------------------------------
    def has_blob(self, blob_id: bytes) -> bool:
        return blob_id in self.index or blob_id in self._pending

    def save_blob(self, blob_type: int, data: bytes | memoryview, blob_id: bytes | None = None) -> tuple[bytes, bool]:
        """Store a blob unless it is known; returns (id, newly stored). Thread-safe."""
        if self._upload_error is not None:
            raise self._upload_error
        if blob_id is None:
            blob_id = self.master.blob_id(data)
        with self._lock:
            if blob_id in self.index or blob_id in self._pending:
                return blob_id, False
            self._pending.add(blob_id)
        payload = compress.compress(data, self.config.compression_level)
        sealed = crypto.seal(self.master.encrypt, payload, pack_mod.blob_ad(blob_type, blob_id))
        full = None
        with self._lock:
            packer = self._packers.get(blob_type)
            if packer is None:
                packer = self._packers[blob_type] = pack_mod.PackWriter()
            packer.add(blob_type, blob_id, sealed, len(data))
            self.stats_added["blobs"] += 1
            self.stats_added["raw_bytes"] += len(data)
            self.stats_added["stored_bytes"] += len(sealed)
            if packer.size >= self.config.pack_size:
                full = self._packers.pop(blob_type)
        if full is not None:
            self._queue_upload(full)
        return blob_id, True

    def _queue_upload(self, packer: pack_mod.PackWriter) -> None:
        self._upload_slots.acquire()
        with self._lock:
            if self._uploader is None:
                self._uploader = ThreadPoolExecutor(2, thread_name_prefix="lbk-upload")
            fut = self._uploader.submit(self._upload_and_release, packer)
            self._uploads.append(fut)

    def _upload_and_release(self, packer: pack_mod.PackWriter) -> None:
        try:
            if self._upload_error is not None:
                raise self._upload_error  # an earlier pack failed: the run is over
            self._upload(packer)
        except BaseException as e:
            with self._lock:
                for entry in packer.entries:  # not stored: a later save_blob stores them anew
                    self._pending.discard(entry.id)
                if self._upload_error is None:
                    self._upload_error = e
            abort = getattr(self.backend, "abort", None)
            if abort is not None:
                abort()  # no more retries elsewhere: the error is final
            raise
        finally:
            self._upload_slots.release()

    def wait_uploads(self) -> None:
        """Wait for the uploads in flight; raise the first failure (once: a long-lived
        writer such as the watch daemon may go on after it)."""
        with self._lock:
            futs, self._uploads = self._uploads, []
        for f in futs:
            try:
                f.result()
            except BaseException:
                pass
        with self._lock:
            err, self._upload_error = self._upload_error, None
        if err is not None:
            raise err

    def _upload(self, packer: pack_mod.PackWriter) -> None:
        name, data, entries = packer.finish(self.master.encrypt)
        self.backend.save(Handle(FileKind.DATA, name), data)
        write_index = False
        with self._lock:
            self.index.add_pack(name, entries)
            for e in entries:
                self._pending.discard(e.id)
            self._unindexed[name] = entries
            self.stats_added["packs"] += 1
            write_index = len(self._unindexed) >= INDEX_EVERY
        if write_index:
            self._write_index()

    def _write_index(self) -> None:
        with self._lock:
            packs, self._unindexed = self._unindexed, {}
        if packs:
            name = self.save_file(FileKind.INDEX, index_mod.encode(packs))
            with self._lock:
                self._session_packs.update(packs)
                self._session_indexes.append(name)

    def _consolidate_index(self) -> None:
        """Replace this session's partial indexes by one that supersedes them."""
        with self._lock:
            packs, names = self._session_packs, self._session_indexes
            self._session_packs, self._session_indexes = {}, []
        if len(names) < 2:
            return
        sup = [bytes.fromhex(n) for n in names]
        self.save_file(FileKind.INDEX, index_mod.encode(packs, supersedes=sup))
        for n in names:
            try:
                self.backend.remove(Handle(FileKind.INDEX, n))
            except (NotFound, BackendError):
                pass  # a superseded index is ignored by readers; prune removes it

    def flush(self, consolidate: bool = True) -> None:
        """Upload partial packs and index everything written; call before saving a snapshot.

        With ``consolidate`` the index files written since the last consolidation are
        replaced by one (the watch daemon consolidates every few dozen commits).
        """
        with self._lock:
            packers = list(self._packers.values())
            self._packers.clear()
        for p in packers:
            if len(p):
                self._queue_upload(p)
        self.wait_uploads()
        self._write_index()
        if consolidate:
            self._consolidate_index()

    # -- blobs: reading ------------------------------------------------------------
    def blob_location(self, blob_id: bytes) -> BlobLocation:
        loc = self.ensure_index().get(blob_id)
        if loc is None:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} is not in any index (missing data)")
        return loc

    def load_blob(self, blob_type: int, blob_id: bytes) -> bytes:
        if blob_type == pack_mod.TREE:
            cached = self._tree_cache.get(blob_id)
            if cached is not None:
                return cached
        loc = self.blob_location(blob_id)
        raw = self._load_range(loc, blob_id)
        data = self.decode_blob(loc, blob_id, raw)
        if blob_type == pack_mod.TREE:
            with self._lock:
                self._tree_cache[blob_id] = data
                if len(self._tree_cache) > 4096:
                    self._tree_cache.popitem(last=False)
        return data

    def _load_range(self, loc: BlobLocation, blob_id: bytes) -> bytes:
        """A blob's sealed bytes; a missing or truncated pack is damage, named by blob and pack."""
        return self.load_pack_range(loc.pack, loc.offset, loc.length, f"blob {blob_id.hex()[:16]} in pack {loc.pack[:16]}")

    def load_pack_range(self, pack_id: str, offset: int, length: int, what: str) -> bytes:
        """Bytes of a pack (one read for several blobs: restore reads packs by regions); a
        missing or truncated pack is damage, reported as ``what``."""
        h = Handle(FileKind.DATA, pack_id)
        try:
            return self.backend.load(h, offset, length)
        except NotFound:
            raise IntegrityError(f"{what}: the pack is missing") from None
        except BackendError:
            size = self.backend.stat(h)
            if size < offset + length:
                raise IntegrityError(f"{what}: the pack is shorter ({size} bytes) than the index says") from None
            raise

    def decode_blob(self, loc: BlobLocation, blob_id: bytes, raw: bytes) -> bytes:
        return self.open_blob(loc, blob_id, raw)[0]

    def open_blob(self, loc: BlobLocation, blob_id: bytes, raw: bytes) -> tuple[bytes, bytes]:
        """``decode_blob``'s work, returning (plaintext, its compressed payload): a caller
        that keeps verified blobs for later keeps the payload, a fraction of the size."""
        what = f"blob {blob_id.hex()[:16]} in pack {loc.pack[:16]}"
        plain = crypto.open_sealed(self.master.encrypt, raw, pack_mod.blob_ad(loc.type, blob_id), what)
        data = compress.decompress(plain, loc.raw_length, what)
        if len(data) != loc.raw_length:
            raise IntegrityError(f"{what}: length {len(data)} does not match the index ({loc.raw_length})")
        if self.master.blob_id(data) != blob_id:
            # the MAC binds the id, so only a holder of the key could seal wrong content under
            # an id; checking costs one keyed hash and makes a tree cycle impossible
            raise IntegrityError(f"{what}: content does not match its id")
        return data, plain

    def verify_blob(self, pack_id: str, entry: pack_mod.PackEntry, raw: bytes | memoryview,
                    payload: bool = False) -> bytes:
        """Open one blob read from a pack at the place its pack header says (authenticate,
        decompress, check its id); returns the plaintext, or with ``payload`` its verified
        compressed payload. Used by everything that reads packs whole: check --read-data,
        prune's repacking, repair index --read-data."""
        loc = BlobLocation(pack_id, entry.type, entry.offset, entry.length, entry.raw_length)
        data, compressed = self.open_blob(loc, entry.id, bytes(raw))
        return compressed if payload else data

    def pack_entries(self, pack_id: str) -> list[pack_mod.PackEntry]:
        """Read a pack's own header (for check and index repair)."""
        h = Handle(FileKind.DATA, pack_id)
        size = self.backend.stat(h)
        what = f"pack {pack_id[:16]}"
        if size < 4:
            raise FormatError(f"{what}: truncated pack")
        n = pack_mod.header_length(self.backend.load(h, size - 4, 4), size, what)
        sealed = self.backend.load(h, size - 4 - n, n)
        return pack_mod.parse_header(self.master.encrypt, sealed, size - 4 - n, what)

    # -- snapshots -----------------------------------------------------------------
    def list_snapshot_names(self) -> list[str]:
        return [f.name for f in self.backend.list(FileKind.SNAPSHOT)]

    def close(self) -> None:
        if self._uploader is not None:
            self._uploader.shutdown(wait=True)
        self.backend.close()


def remove_files(backend: Backend, handles: list[Handle]) -> int:
    """Remove files concurrently (a remote backend pays a round trip for each); returns
    how many were removed (a file already gone counts as removed by someone else)."""

    def remove(h: Handle) -> int:
        try:
            backend.remove(h)
            return 1
        except NotFound:
            return 0

    with ThreadPoolExecutor(8, thread_name_prefix="lbk-remove") as pool:
        return sum(pool.map(remove, handles))
