"""Disk images: layout encoding, chunking, and create/restore/verify on real file systems
built without mounting (mkfs.ext4 -d, sfdisk on a file) and on loop devices."""

from __future__ import annotations

import os
import random
import shutil
import struct

import pyfastcdc
import pytest

from lbk.errors import FormatError, ImageError, RefError
from lbk.events import Collector, Warning_
from lbk.model import DIR, FILE
from lbk.ops.backup import BackupOptions, backup
from lbk.ops.check import check
from lbk.ops.image import ImageOptions, create_image, find_image, image_info
from lbk.ops.image_format import DATA_EXTENT, GROUP, ZERO_EXTENT, Layout, load_image
from lbk.ops.image_restore import restore_image, verify_image
from lbk.ops.image_stream import CdcStream, ExtentBuilder
from lbk.ops.listing import walk_snapshot
from tests.diskimages import (
    MiB, fsck_clean, loop_device, loop_usable, make_gpt_disk, make_tree, mkfs, mounted, need_tools,
    normalized_table, partitions, same_bytes,
)
from tests.helpers import need


def create(repo, path, **kw):
    ev = Collector()
    return create_image(repo, ImageOptions(os.fsencode(str(path)), **kw), ev), ev


def restore(repo, snap, target, **kw):
    ev = Collector()
    return restore_image(repo, snap, os.fsencode(str(target)), ev, **kw), ev


# -- the layout format ----------------------------------------------------------------------------


def sample_layout() -> Layout:
    lay = Layout(10 * MiB + 100, 512, {"source": "/dev/x"})
    for kind, n in [(DATA_EXTENT, MiB), (ZERO_EXTENT, 4 * MiB), (ZERO_EXTENT, MiB), (DATA_EXTENT, 4 * MiB + 100)]:
        lay.add(kind, n)
    return lay


def test_layout_round_trips_and_merges_zero_runs():
    lay = sample_layout()
    back = Layout.decode(lay.encode())
    assert (back.size, back.sector_size, back.meta) == (lay.size, 512, {"source": "/dev/x"})
    assert list(back.kinds) == [DATA_EXTENT, ZERO_EXTENT, DATA_EXTENT]
    assert list(back.extents()) == [(0, MiB, 0, 0), (MiB, 5 * MiB, 1, -1), (6 * MiB, 4 * MiB + 100, 0, 1)]
    assert back.data_count == 2 and back.zero_bytes() == 5 * MiB


def _patch(raw: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(raw)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


@pytest.mark.parametrize("damage, message", [
    (lambda r: b"NOTIMAGE" + r[8:], "not an lbk image layout"),
    (lambda r: _patch(r, 8, "<I", 2), "unknown image layout version 2"),
    (lambda r: _patch(r, 12, "<Q", 1 << 60), "implausible image size"),
    (lambda r: _patch(r, 20, "<I", 1000), "implausible sector size"),
    (lambda r: _patch(r, 28, "<Q", 1 << 40), "implausible header"),
    (lambda r: r[:-1], "length does not match"),
    (lambda r: r + b"\0" * 9, "length does not match"),
    (lambda r: _patch(r, 12, "<Q", 10 * MiB + 101), "do not add up"),
], ids=["magic", "version", "size", "sector", "count", "short", "long", "sum"])
def test_layout_decoding_refuses_unknown_versions_and_absurd_sizes(damage, message):
    with pytest.raises(FormatError, match=message):
        Layout.decode(damage(sample_layout().encode()))


def test_layout_decoding_refuses_bad_extents():
    lay = Layout(200 << 20, 512)
    lay.add(DATA_EXTENT, 200 << 20)  # one "chunk" larger than any blob can be
    with pytest.raises(FormatError, match="implausible extent length"):
        Layout.decode(lay.encode())
    raw = bytearray(sample_layout().encode())
    raw[36 + len(b'{"source":"/dev/x"}')] = 7  # first kind byte
    with pytest.raises(FormatError, match="unknown extent kind"):
        Layout.decode(bytes(raw))


@pytest.mark.parametrize("meta", [
    {"filesystems": {"blkid": {}}},  # found by fuzzing (tests/fuzz, target image_layout)
    {"filesystems": [{"offset": 0, "partition": None, "blkid": {"TYPE": 5}}]},
    {"filesystems": [{"offset": "0", "partition": None, "blkid": {}}]},
    {"filesystems": [7]},
    {"partition_table": {"dump": ["x"]}},
    {"partition_table": "gpt"},
    {"source": 5},
])
def test_layout_decoding_refuses_meta_that_image_info_cannot_show(meta):
    """A layout whose meta authenticates but has the wrong shape crashed ``lbk image info``."""
    lay = sample_layout()
    lay.meta = meta
    with pytest.raises(FormatError, match="^image x: malformed metadata"):
        Layout.decode(lay.encode(), "image x")


def test_layout_meta_with_unknown_keys_is_accepted():
    lay = sample_layout()
    lay.meta = {"future": [1, {"x": None}], "filesystems": [], "partition_table": None, "source": "/dev/x"}
    assert Layout.decode(lay.encode()).meta == lay.meta


# -- chunking ----------------------------------------------------------------------------------------


def test_cdc_stream_cuts_like_one_buffer():
    rng = random.Random(3)
    data = rng.randbytes(40 * MiB)
    whole = [c.length for c in pyfastcdc.FastCDC(1 << 20, min_size=1 << 18, max_size=8 << 20, seed=99).cut_buf(data)]
    stream = CdcStream(1 << 20, 1 << 18, 8 << 20, 99)
    got, pos = [], 0
    while pos < len(data):
        n = rng.choice([1, 4096, MiB, 5 * MiB, 16 * MiB])
        got += [len(c) for c in stream.feed(memoryview(data)[pos : pos + n], pos)]
        pos += n
    got += [len(c) for c in stream.end()]
    assert got == whole


def _build(data: bytes, zero_min: int = 64 << 10) -> tuple[Layout, list[bytes]]:
    lay, chunks = Layout(len(data), 512), []
    b = ExtentBuilder(lay, CdcStream(1 << 16, 1 << 14, 1 << 19, 5), lambda v: chunks.append(bytes(v)), zero_min)
    for pos in range(0, len(data), 3 * MiB):
        b.block(data[pos : pos + 3 * MiB], pos)
    b.finish()
    return lay, chunks


def test_extents_rebuild_the_bytes_and_zero_runs_do_not_depend_on_alignment():
    rng = random.Random(4)
    parts = [rng.randbytes(700_000), bytes(300_000), rng.randbytes(90_000), bytes(1000), rng.randbytes(2_000_000),
             bytes(5 * MiB + 3), rng.randbytes(10)]
    data = b"".join(parts)
    lay, chunks = _build(data)
    out = b"".join(chunks[di] if k == DATA_EXTENT else bytes(n) for _o, n, k, di in lay.extents())
    assert out == data
    assert lay.zero_bytes() == 300_000 + 5 * MiB + 3  # the 1000-byte run stays inside a chunk
    # content after a longer zero run (moved by 4 KiB, or by 1 byte) is cut into the same chunks
    for shift in (4096, 1):
        lay2, chunks2 = _build(parts[0] + bytes(300_000 + shift) + b"".join(parts[2:]))
        assert chunks2 == chunks and lay2.zero_bytes() == lay.zero_bytes() + shift


# -- ext4 round trip ----------------------------------------------------------------------------------


@pytest.fixture
def ext4(tmp_path):
    need_tools("mkfs.ext4", "e2fsck")
    src = make_tree(tmp_path / "src")
    return mkfs(src, tmp_path / "fs.img"), src


def test_ext4_image_destroyed_and_restored_is_identical_and_clean(local_repo, ext4, tmp_path):
    img, _src = ext4
    golden = tmp_path / "golden.img"
    shutil.copyfile(img, golden)
    res, ev = create(local_repo, img, tags=["t1"])
    snap = res.snapshot
    assert snap.kind == "image" and snap.name == "fs.img" and snap.tags == ["t1"]
    assert res.size == 64 * MiB and res.sector_size == 512
    assert 30 * MiB <= res.data_bytes < 40 * MiB and res.zero_bytes + res.data_bytes == res.size
    assert res.stored_bytes >= 30 * MiB  # random content: stored, not lost
    with open(img, "r+b") as f:  # destroy it
        f.write(random.randbytes(64 * MiB))
    assert not same_bytes(img, golden)
    with pytest.raises(ImageError, match="not empty; add --yes"):
        restore(local_repo, snap, img)
    rres, rev = restore(local_repo, snap, img, yes=True)
    assert rres.verify is not None and rres.verify.identical
    assert same_bytes(img, golden)
    assert fsck_clean(img)


def test_second_image_after_a_few_changes_adds_little(local_repo, ext4, tmp_path):
    """Three files changed (two in place, one grown by 5000 bytes, which moves every file
    after it by a block): each change costs about one chunk (1.25 MiB on average) plus
    the metadata regions, so well under a fifth of the first image; an image that
    did not deduplicate (or cut at fixed offsets, which a move defeats) stores ~100 %.
    The chunker seed is fixed: with a random one, a change can cost a chunk of up to
    8 MiB and the fraction varies from run to run (it failed about one run in ten)."""
    from lbk.backend.base import FileKind, Handle
    from lbk.repo.repository import Repository
    from tests.helpers import PASSWORD

    local_repo.config.chunker.seed = 12345
    local_repo.save_sealed(Handle(FileKind.CONFIG), local_repo.config.encode(), overwrite=True)
    local_repo = Repository.open(local_repo.backend, lambda: PASSWORD.encode())
    img, src = ext4
    first, _ = create(local_repo, img)
    files = sorted(p for p in src.rglob("*.bin"))
    for p in files[1:3]:
        with open(p, "r+b") as f:
            f.seek(p.stat().st_size // 2)
            f.write(b"changed!" * 2)
    with open(files[0], "ab") as f:
        f.write(b"x" * 5000)
    second_img = mkfs(src, tmp_path / "fs2.img")
    second, _ = create(local_repo, second_img)
    assert first.stored_added > 30 * MiB
    assert second.stored_added < 0.2 * first.stored_added, (second.stored_added, first.stored_added)
    # and the same image again stores (almost) nothing new: only the layout and trees
    third, _ = create(local_repo, second_img)
    assert third.data_added - 0 < 64 * 1024 and third.stored_added < 64 * 1024


def test_image_dedups_against_a_file_backup_of_the_same_files(local_repo, tmp_path):
    """A big file lies contiguously in the file system after a zero run, so content-defined
    chunks with the repository's parameters and seed are the chunks of its file backup."""
    need_tools("mkfs.ext4")
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(random.randbytes(16 * MiB))
    (src / "small.txt").write_text("x" * 3000)
    img = mkfs(src, tmp_path / "fs.img")
    files = backup(local_repo, None, BackupOptions(paths=[os.fsencode(str(src))]), Collector())
    res, _ = create(local_repo, img)
    assert res.data_bytes > 16 * MiB
    # the image's chunking meets the file's at one of the file's first cut points (the second
    # when the first lies within the minimum chunk size of the image's previous cut): what
    # precedes it (up to 8 MiB a chunk with a random seed) is new, the rest is shared
    from lbk.ops.restore import tree_nodes

    tree = files.snapshot.tree
    for part in [p for p in os.fsencode(str(src / "big.bin")).split(b"/") if p]:
        node = next(n for n in tree_nodes(local_repo, tree) if n.name == part)
        tree = node.subtree
    head = sum(local_repo.index.get(c).raw_length for c in node.content[:2])
    assert len(node.content) >= 3
    assert res.stored_added < head + 1 * MiB, (res.stored_added, head, res.data_bytes)
    assert res.stored_added < 0.6 * res.data_bytes


def test_every_blob_of_an_image_is_reachable_through_plain_trees(local_repo, ext4):
    """check, stats and prune walk dir subtrees and file contents; an image must need
    nothing they cannot see, or prune would delete its chunks."""
    img, _ = ext4
    res, _ = create(local_repo, img)
    stored = load_image(local_repo, res.snapshot)
    reachable = set()
    for e in walk_snapshot(local_repo, res.snapshot):
        assert e.node.type in (DIR, FILE)
        reachable.update(e.node.content)
    assert set(stored.ids) | set(stored.layout_ids) == reachable
    assert check(local_repo, Collector(), read_data=True).ok


def test_large_images_split_chunk_ids_into_groups(local_repo, tmp_path, monkeypatch):
    """Chunk ids are grouped (GROUP per tree) so no tree blob grows without bound."""
    import lbk.ops.image_format as fmt

    monkeypatch.setattr(fmt, "GROUP", 3)
    f = tmp_path / "many.bin"
    f.write_bytes(random.Random(9).randbytes(12 * MiB))
    res, _ = create(local_repo, f)
    assert res.chunks >= 7
    paths = [os.fsdecode(e.path) for e in walk_snapshot(local_repo, res.snapshot)]
    assert "/many.bin/data/000002/chunks" in paths
    out = tmp_path / "out.bin"
    restore(local_repo, res.snapshot, out)
    assert same_bytes(f, out)
    assert GROUP == 16384


# -- GPT disk -------------------------------------------------------------------------------------


def test_gpt_disk_keeps_its_partition_table_and_records_it(local_repo, tmp_path):
    need_tools("sfdisk", "mkfs.ext4", "e2fsck", "blkid")
    disk = make_gpt_disk(tmp_path / "disk.img", make_tree(tmp_path / "src", big=8))
    table = normalized_table(disk)
    res, _ = create(local_repo, disk)
    info = image_info(local_repo, res.snapshot)
    recorded = info["partition_table"]["json"]["partitiontable"]
    assert recorded["id"] == table["id"] and [p["uuid"] for p in recorded["partitions"]] == [
        p["uuid"] for p in table["partitions"]]
    assert "label: gpt" in info["partition_table"]["dump"]
    root = partitions(disk)[1]
    fs = [x for x in info["filesystems"] if x["offset"] == root["start"] * 512]
    assert fs and fs[0]["blkid"]["TYPE"] == "ext4" and fs[0]["blkid"]["UUID"] == "0b5e6f0e-1a2b-4c3d-8e9f-001122334455"
    out = tmp_path / "restored.img"
    restore(local_repo, res.snapshot, out)
    assert normalized_table(out) == table
    assert same_bytes(disk, out)
    assert fsck_clean(f"{out}?offset={root['start'] * 512}")


# -- sparse files -----------------------------------------------------------------------------------


def test_sparse_gib_stores_little_and_restores_sparse(local_repo, tmp_path):
    f = tmp_path / "sparse.img"
    with open(f, "wb") as fh:
        fh.truncate(1 << 30)
        for off in (0, 300 * MiB + 7, (1 << 30) - 5000):
            fh.seek(off)
            fh.write(b"lbk!" * 1000)
    res, _ = create(local_repo, f)
    assert res.size == 1 << 30 and res.bytes_read < 1 * MiB  # holes are not read
    assert res.stored_bytes < 64 * 1024 and res.stored_added < 256 * 1024
    out = tmp_path / "out.img"
    rres, _ = restore(local_repo, res.snapshot, out)
    st = os.stat(out)
    assert st.st_size == 1 << 30 and st.st_blocks * 512 < 1 * MiB
    assert same_bytes(f, out)
    assert rres.verify.identical


# -- verify -------------------------------------------------------------------------------------------


def test_verify_passes_on_identical_and_reports_offsets_on_a_modified_target(local_repo, ext4, tmp_path):
    img, _ = ext4
    res, _ = create(local_repo, img)
    copy = tmp_path / "copy.img"
    shutil.copyfile(img, copy)
    ok = verify_image(local_repo, res.snapshot, os.fsencode(str(copy)), Collector())
    assert ok.identical and ok.differences == 0 and ok.regions > 2
    stored = load_image(local_repo, res.snapshot)
    zero_at = next(o for o, n, k, _ in stored.layout.extents() if k == ZERO_EXTENT and n > MiB) + 12345
    data_at = next(o for o, n, k, _ in stored.layout.extents() if k == DATA_EXTENT and n > MiB) + 777
    with open(copy, "r+b") as f:
        f.seek(data_at)
        old = f.read(1)
        f.seek(data_at)
        f.write(bytes([old[0] ^ 0xFF]))
        f.seek(zero_at)
        f.write(b"\x01")
    bad = verify_image(local_repo, res.snapshot, os.fsencode(str(copy)), Collector())
    assert not bad.identical and bad.differences == 2
    assert sorted((d.offset, d.kind) for d in bad.first) == sorted([(data_at, "data"), (zero_at, "zero")])
    shutil.copyfile(img, copy)
    with open(copy, "ab") as f:  # longer than the image
        f.write(b"tail")
    extra = verify_image(local_repo, res.snapshot, os.fsencode(str(copy)), Collector())
    assert [(d.offset, d.kind) for d in extra.first] == [(64 * MiB, "extra")]
    os.truncate(copy, 10 * MiB)  # shorter than the image
    short = verify_image(local_repo, res.snapshot, os.fsencode(str(copy)), Collector())
    assert (short.first[0].offset, short.first[0].kind) == (10 * MiB, "missing")


# -- refusals and references ---------------------------------------------------------------------------


def test_restore_refusals(local_repo, tmp_path):
    f = tmp_path / "small.img"
    f.write_bytes(b"abc" * 1000)
    res, _ = create(local_repo, f)
    target = tmp_path / "t.img"
    target.write_bytes(b"x")
    with pytest.raises(ImageError, match="exists and is not empty; add --yes"):
        restore(local_repo, res.snapshot, target)
    assert target.read_bytes() == b"x"  # untouched
    (tmp_path / "adir").mkdir()
    with pytest.raises(ImageError, match="not a block device or a regular file"):
        restore(local_repo, res.snapshot, tmp_path / "adir")
    with pytest.raises(ImageError, match="cannot create"):
        restore(local_repo, res.snapshot, tmp_path / "missing-dir" / "x.img")
    empty = tmp_path / "empty.img"
    empty.touch()
    restore(local_repo, res.snapshot, empty)  # an empty file needs no --yes
    assert empty.read_bytes() == f.read_bytes()


def test_interrupted_create_writes_no_image_and_keeps_what_it_stored(local_repo, tmp_path, monkeypatch):
    import lbk.ops.image as image_mod
    from lbk.errors import Interrupted
    from lbk.events import ByteProgress
    from lbk.repo.snapshots import load_all

    monkeypatch.setattr(image_mod, "PROGRESS_EVERY", 0.0)
    f = tmp_path / "big.img"
    f.write_bytes(random.randbytes(40 * MiB))

    def emit(ev):
        if isinstance(ev, ByteProgress) and ev.bytes_done >= 24 * MiB:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        create_image(local_repo, ImageOptions(os.fsencode(str(f))), emit)
    assert load_all(local_repo) == []
    idx = local_repo.load_index()  # what was stored is indexed: the next run reuses all of it
    kept = sum(loc.raw_length for _bid, loc in idx.blobs())
    assert kept >= 1 * MiB
    res, _ = create(local_repo, f)
    assert 40 * MiB - kept <= res.data_added <= 40 * MiB - kept + 64 * 1024  # + the layout
    out = tmp_path / "out.img"
    restore(local_repo, res.snapshot, out)
    assert same_bytes(f, out)


def test_target_file_on_a_full_file_system_is_refused_before_it_is_touched(local_repo, tmp_path):
    from tests.helpers import IS_ROOT

    need(IS_ROOT, "mounting a small tmpfs needs root")
    f = tmp_path / "data.img"
    f.write_bytes(random.randbytes(3 * MiB))
    res, _ = create(local_repo, f)
    mnt = tmp_path / "small"
    mnt.mkdir()
    import subprocess

    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    need(p.returncode == 0, f"cannot mount a tmpfs: {p.stderr.strip()}")
    try:
        with pytest.raises(ImageError, match="not enough space"):
            restore(local_repo, res.snapshot, mnt / "new.img")
        assert not (mnt / "new.img").exists()
        (mnt / "old.img").write_bytes(b"keep me" * 1000)
        with pytest.raises(ImageError, match="not enough space"):
            restore(local_repo, res.snapshot, mnt / "old.img", yes=True)
        assert (mnt / "old.img").read_bytes() == b"keep me" * 1000
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_find_image_refs(local_repo, tmp_path):
    with pytest.raises(RefError, match="no image found"):
        find_image(local_repo, "latest")
    src = tmp_path / "s"
    src.mkdir()
    (src / "a").write_text("a")
    b = backup(local_repo, None, BackupOptions(paths=[os.fsencode(str(src))]), Collector()).snapshot
    f = tmp_path / "one.img"
    f.write_bytes(b"1" * 5000)
    one, _ = create(local_repo, f)
    two, _ = create(local_repo, f, name="other")
    assert find_image(local_repo, "latest").id == two.snapshot.id
    assert find_image(local_repo, "latest", name="one.img").id == one.snapshot.id
    assert find_image(local_repo, one.snapshot.id[:8]).id == one.snapshot.id
    with pytest.raises(ImageError, match="is a backup snapshot, not an image"):
        find_image(local_repo, b.id[:8])


def test_invalid_name_and_unreadable_source(local_repo, tmp_path):
    f = tmp_path / "x.img"
    f.write_bytes(b"1")
    with pytest.raises(Exception, match="invalid image name"):
        create(local_repo, f, name="a/b")
    with pytest.raises(ImageError, match="cannot open"):
        create(local_repo, tmp_path / "nope")
    with pytest.raises(ImageError, match="not a block device or a regular file"):
        create(local_repo, tmp_path)


# -- block devices (loop) ---------------------------------------------------------------------------------


@pytest.fixture
def loops():
    need(loop_usable(), "loop devices need root and a working 'losetup -f'")


def test_loop_device_source_and_target(local_repo, ext4, tmp_path, loops):
    img, _ = ext4
    with loop_device(img, read_only=True) as dev:
        res, ev = create(local_repo, dev, name="loopdisk")
    assert res.size == 64 * MiB and res.sector_size == 512 and res.snapshot.paths == [os.fsencode(dev)]
    assert ev.of(Warning_) == []
    backing = tmp_path / "target.img"
    with open(backing, "wb") as f:
        f.write(random.randbytes(1 * MiB))  # old content everywhere must be overwritten
        f.truncate(80 * MiB)
    with loop_device(backing) as dev:
        with pytest.raises(ImageError, match="block device and will be overwritten completely; add --yes"):
            restore(local_repo, res.snapshot, dev)
        rres, _ = restore(local_repo, res.snapshot, dev, yes=True)
        assert rres.device and rres.verify.identical
    with open(backing, "rb") as a, open(img, "rb") as b:
        assert a.read(64 * MiB) == b.read()


def test_target_device_smaller_than_the_image_is_refused(local_repo, ext4, tmp_path, loops):
    img, _ = ext4
    res, _ = create(local_repo, img)
    small = tmp_path / "small.img"
    small.write_bytes(b"\1" * (8 * MiB))
    with loop_device(small) as dev:
        with pytest.raises(ImageError, match=f"smaller than the image \\({8 * MiB} < {64 * MiB} bytes\\)"):
            restore(local_repo, res.snapshot, dev, yes=True)
    assert small.read_bytes() == b"\1" * (8 * MiB)


def test_mounted_source_warns_and_mounted_target_is_refused(local_repo, ext4, tmp_path, loops):
    img, _ = ext4
    with loop_device(img) as dev, mounted(dev, tmp_path / "mnt", read_only=False):
        res, ev = create(local_repo, dev)
        warnings = [w.message for w in ev.of(Warning_)]
        assert len(warnings) == 1 and "mounted read-write" in warnings[0] and "snapshot" in warnings[0]
        # the file behind the mounted loop device counts as mounted too
        res2, ev2 = create(local_repo, img)
        assert len(ev2.of(Warning_)) == 1
        with pytest.raises(ImageError, match="is in use: .* is mounted on"):
            restore(local_repo, res.snapshot, dev, yes=True)
        with pytest.raises(ImageError, match="is in use"):
            restore(local_repo, res.snapshot, img, yes=True)
    with loop_device(img, read_only=True) as dev, mounted(dev, tmp_path / "mnt", read_only=True):
        _, ev3 = create(local_repo, dev)
        assert ev3.of(Warning_) == []  # read-only mounts are consistent
