"""Seed inputs for every fuzz target: real encodings produced by lbk itself.

``generate(workdir)`` makes a repository in ``workdir`` with the CLI (init, two backups of
a small tree with every node type, a checkpoint, a disk image of a file with zero runs),
then reads every structure back and returns, per target, the bytes its harness takes:
plaintexts of config, key meta, index files, pack headers, trees, snapshots and locks
(the harnesses fuzz what a valid MAC lets through), payloads with their bound, the
layout, the files cache, a watch state file, spool names and a user config. The
repository is created with the harnesses' password, and sealed seeds are sealed under
their key, so the seeds reach the deep end of every harness.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

from lbk.backend.base import FileKind, Handle
from lbk.backend.local import LocalBackend
from lbk.repo import crypto, pack as pack_mod
from lbk.repo.lock import Lock
from lbk.repo.repository import MAX_FILE, Repository
from tests.fuzz.targets import MASTER, PASSWORD

SMALL = 16 << 10  # payload seeds above this size are kept out of the committed corpus


def _tree(root: bytes) -> None:
    j = lambda *p: os.path.join(root, *p)  # noqa: E731
    os.makedirs(j(b"dir", b"sub"))
    os.makedirs(j(b"empty"))
    with open(j(b"dir", b"text.txt"), "wb") as f:
        f.write(b"the quick brown fox jumps over the lazy dog\n" * 200)
    with open(j(b"dir", b"sub", b"random.bin"), "wb") as f:
        f.write(os.urandom(3000))
    open(j(b"empty-file"), "wb").close()
    with open(j(b"latin1-\xe9\xff"), "wb") as f:
        f.write(b"not utf-8")
    os.symlink(b"dir/text.txt", j(b"link"))
    os.link(j(b"dir", b"text.txt"), j(b"hardlink"))
    os.mkfifo(j(b"fifo"))
    try:
        os.setxattr(j(b"dir", b"text.txt"), b"user.fuzz", b"\x00\xff value")
    except OSError:
        pass


def _image_source(path: str) -> None:
    """A small file with zero runs (so the layout has data and zero extents)."""
    with open(path, "wb") as f:
        f.write(os.urandom(100_000))
        f.write(bytes(200_000))
        f.write(b"tail" * 5000)
        f.truncate(1 << 20)


def generate(workdir: str) -> dict[str, list[bytes]]:
    os.environ.update(
        LBK_INSECURE_FAST_KDF="1", LBK_PASSWORD=PASSWORD.decode(), LBK_CACHE_DIR=os.path.join(workdir, "cache"),
        XDG_CONFIG_HOME=os.path.join(workdir, "config"), XDG_DATA_HOME=os.path.join(workdir, "data"),
    )
    from lbk.cli.context import config_path, write_user_config_value
    from lbk.cli.main import _register, run

    _register()
    repo_path = os.path.join(workdir, "repo")
    src = os.path.join(workdir, "src")
    _tree(os.fsencode(src))
    img = os.path.join(workdir, "disk.img")
    _image_source(img)
    for args in (["init"], ["backup", src], ["checkpoint", src, "--name", "good"],
                 ["image", "create", img, "--name", "disk"]):
        assert run(["-q", "-r", repo_path, *args]) == 0, args
    with open(os.path.join(src, "dir", "text.txt"), "ab") as f:
        f.write(b"changed\n")
    assert run(["-q", "-r", repo_path, "backup", src, "--tag", "second"]) == 0

    repo = Repository.open(LocalBackend(repo_path), lambda: PASSWORD)
    out: dict[str, list[bytes]] = {k: [] for k in (
        "config", "key_file", "key_meta", "index", "pack", "payload", "sealed", "tree", "snapshot", "lock",
        "image_layout", "spool_name", "watch_state", "files_cache", "user_config")}
    be = repo.backend
    out["config"].append(repo.load_sealed(Handle(FileKind.CONFIG)))
    for fi in be.list(FileKind.KEY):
        raw = be.load(Handle(FileKind.KEY, fi.name))
        out["key_file"].append(raw)
        import base64

        meta = base64.b64decode(json.loads(raw)["meta"])
        out["key_meta"].append(crypto.open_sealed(repo.master.encrypt, meta, b"lbk:keymeta", "meta"))
    for fi in be.list(FileKind.INDEX):
        plain = repo.load_sealed(Handle(FileKind.INDEX, fi.name))
        out["index"].append(plain)
        out["payload"].append(MAX_FILE.to_bytes(4, "little") + _payload(repo, Handle(FileKind.INDEX, fi.name)))
    for fi in be.list(FileKind.SNAPSHOT):
        plain = repo.load_sealed(Handle(FileKind.SNAPSHOT, fi.name))
        out["snapshot"].append(plain)
        out["sealed"].append(crypto.seal(MASTER.encrypt, _payload(repo, Handle(FileKind.SNAPSHOT, fi.name)),
                                         b"lbk:snapshots"))
    for fi in be.list(FileKind.DATA):
        h = Handle(FileKind.DATA, fi.name)
        data = be.load(h)
        n = pack_mod.header_length(data[-4:], len(data), "pack")
        plain = crypto.open_sealed(repo.master.encrypt, data[-4 - n : -4], b"lbk:packheader", "pack")
        out["pack"].append((len(data) - 4 - n).to_bytes(4, "little") + plain)
    repo.ensure_index()
    for bid, loc in repo.index.blobs():
        raw = be.load(Handle(FileKind.DATA, loc.pack), loc.offset, loc.length)
        opened = crypto.open_sealed(repo.master.encrypt, raw, pack_mod.blob_ad(loc.type, bid), "blob")
        out["payload"].append(loc.raw_length.to_bytes(4, "little") + opened)
        if loc.type == pack_mod.TREE:
            out["tree"].append(repo.load_blob(loc.type, bid))
    for exclusive in (False, True):
        out["lock"].append(Lock(repo, exclusive)._payload())

    from lbk.ops.image import find_image
    from lbk.ops.image_format import load_image

    out["image_layout"].append(load_image(repo, find_image(repo, "latest", "disk")).layout.encode())
    h64 = "0123456789abcdef" * 4
    out["spool_name"] += [f"{1:012d}.data.{h64}".encode(), b"000000000002.index." + h64.encode(),
                          b"000000000003.config.config", b"000000000004.snapshots." + h64.encode(), b".tmp-1234"]
    from lbk.watch.state import WatchState

    for st in (WatchState(pid=os.getpid(), repository=repo_path, paths=[src], started=1.7e9, phase="watching"),
               WatchState(pid=1, repository="sftp:ann@host:/srv/lbk", paths=["/home/ann"], online=False,
                          last_commit=1.7e9, last_snapshot=h64, commits=3, captures=9, pending=1, spool_files=2,
                          spool_bytes=4096, oldest_unsynced=1.7e9, last_error="connection refused",
                          last_error_time=1.7e9, phase="stopped")):
        out["watch_state"].append(json.dumps(asdict(st)).encode())
    with open(os.path.join(workdir, "cache", repo.id, "files"), "rb") as f:
        out["files_cache"].append(f.read())
    write_user_config_value("repository", repo_path)
    with open(config_path(), "rb") as f:
        out["user_config"].append(f.read())
    out["user_config"].append(b'repository = "sftp:ann@nas:/srv/lbk"\nwatch_paths = ["/home/ann/Documents", "~/src"]\n')
    repo.close()
    return out


def _payload(repo: Repository, h: Handle) -> bytes:
    """The opened (not yet decompressed) payload of a sealed file."""
    return crypto.open_sealed(repo.master.encrypt, repo.backend.load(h), b"lbk:" + h.kind.value.encode(), str(h))
