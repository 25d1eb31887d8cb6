"""Disk images for the image tests, built without mounting anything (docs: INFRA.md §4).

``mkfs.ext4 -d`` with a fixed UUID, hash seed and E2FSPROGS_FAKE_TIME builds
byte-identical file systems from the same tree; ``sfdisk`` writes GPT tables into plain
files. Loop devices (root, losetup) are attached and always detached again.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

from tests.helpers import IS_ROOT, need

UUID = "0b5e6f0e-1a2b-4c3d-8e9f-001122334455"
MiB = 1 << 20


def have(*tools: str) -> bool:
    return all(shutil.which(t) for t in tools)


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    pkgs = {"mkfs.ext4": "e2fsprogs", "e2fsck": "e2fsprogs", "debugfs": "e2fsprogs", "sfdisk": "fdisk",
            "blkid": "util-linux", "losetup": "mount", "mount": "mount"}
    need(not missing, f"needs {', '.join(missing)} (apt-get install {' '.join(sorted({pkgs.get(t, t) for t in missing}))})")


def make_tree(root: Path, seed: int = 1, big: int = 30) -> Path:
    """A deterministic tree: ``big`` MiB of random (incompressible) files of mixed sizes,
    some text, a subdirectory and a symlink."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    left = big * MiB
    i = 0
    while left > 0:
        n = min(left, rng.choice([40_000, 300_000, 1_200_000, 3_000_000, 5_500_000]))
        (root / ("sub" if i % 3 == 0 else ".") / f"file{i:02d}.bin").write_bytes(rng.randbytes(n))
        left -= n
        i += 1
    (root / "notes.txt").write_text("hello disk image\n" * 500)
    os.symlink("notes.txt", root / "link")
    return root


def mkfs(src: Path, img: Path, size: str = "64M", offset: int | None = None) -> Path:
    """A deterministic ext4 file system holding ``src``; with ``offset`` written into an
    existing file at that byte offset (a partition), ``size`` is then the fs size."""
    opts = f"hash_seed={UUID},root_owner=0:0" + (f",offset={offset}" if offset is not None else "")
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-U", UUID, "-E", opts, "-d", str(src), str(img), size],
        check=True, capture_output=True, env={**os.environ, "E2FSPROGS_FAKE_TIME": "1577836800"},
    )
    return img


def fsck_clean(img: Path | str) -> bool:
    return subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True).returncode == 0


GPT = """label: gpt
label-id: AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE
first-lba: 2048
start=2048, size=8MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp", uuid=11111111-0000-0000-0000-000000000001
start=, size=, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root", uuid=11111111-0000-0000-0000-000000000002
"""


def sfdisk_json(img: Path | str) -> dict:
    out = subprocess.run(["sfdisk", "-J", str(img)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def partitions(img: Path | str) -> list[dict]:
    return sfdisk_json(img)["partitiontable"]["partitions"]


def normalized_table(img: Path | str) -> dict:
    """sfdisk -J without the file and node names (they name the file, not the disk)."""
    t = sfdisk_json(img)["partitiontable"]
    t = {k: v for k, v in t.items() if k != "device"}
    t["partitions"] = [{k: v for k, v in p.items() if k != "node"} for p in t["partitions"]]
    return t


def make_gpt_disk(path: Path, src: Path, size: int = 48 * MiB) -> Path:
    """A GPT disk with an (empty) ESP and an ext4 root partition holding ``src``."""
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)], input=GPT, text=True,
                   check=True, capture_output=True)
    root = partitions(path)[1]
    mkfs(src, path, f"{root['size'] * 512 // 1024}k", offset=root["start"] * 512)
    return path


def same_bytes(a: Path | str, b: Path | str) -> bool:
    """Byte equality of two files, reading only where at least one of them has data."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        sa, sb = os.fstat(fa.fileno()).st_size, os.fstat(fb.fileno()).st_size
        if sa != sb:
            return False
        for start, end in merged_data_ranges([data_ranges(fa.fileno(), sa), data_ranges(fb.fileno(), sb)]):
            pos = start
            while pos < end:
                n = min(16 * MiB, end - pos)
                if os.pread(fa.fileno(), n, pos) != os.pread(fb.fileno(), n, pos):
                    return False
                pos += n
    return True


def data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    out, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, end))
        pos = end
    return out


def merged_data_ranges(lists: list[list[tuple[int, int]]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(r for lst in lists for r in lst):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def loop_usable() -> bool:
    if not IS_ROOT or not have("losetup"):
        return False
    return subprocess.run(["losetup", "-f"], capture_output=True).returncode == 0


@contextlib.contextmanager
def loop_device(backing: Path | str, read_only: bool = False):
    argv = ["losetup", "--find", "--show"] + (["--read-only"] if read_only else []) + [str(backing)]
    p = subprocess.run(argv, capture_output=True, text=True)
    need(p.returncode == 0, f"cannot attach a loop device: {p.stderr.strip()}")
    dev = p.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


@contextlib.contextmanager
def mounted(dev: str, where: Path, read_only: bool):
    where.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-o", "ro" if read_only else "rw", dev, str(where)], capture_output=True, text=True)
    need(p.returncode == 0, f"cannot mount {dev}: {p.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)
