"""Block devices and image files as the kernel sees them: sizes, holes, mounts, partition
tables and file-system ids.

Everything here is Linux: ioctls on block devices, ``/proc/self/mountinfo`` and
``/sys/dev/block``. The external tools (``sfdisk``, ``blkid``) are optional: when one is
missing or fails, the information is simply not recorded.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import struct
import subprocess
from dataclasses import dataclass

BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268
BLKZEROOUT = 0x127F
BLKRRPART = 0x125F
TOOL_TIMEOUT = 30


@dataclass
class Target:
    """An open source or target: a block device or a regular file."""

    path: bytes
    fd: int
    st: os.stat_result
    is_block: bool
    size: int
    sector_size: int

    @property
    def devnum(self) -> int:
        return self.st.st_rdev if self.is_block else 0


def block_size(fd: int) -> int:
    buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
    return struct.unpack("<Q", buf)[0]


def logical_sector_size(fd: int) -> int:
    try:
        buf = fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4)
        n = struct.unpack("<i", buf)[0]
        return n if n >= 512 else 512
    except OSError:
        return 512


def describe(path: bytes, fd: int) -> Target:
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        try:
            size = block_size(fd)
        except OSError:
            size = os.lseek(fd, 0, os.SEEK_END)
        return Target(path, fd, st, True, size, logical_sector_size(fd))
    return Target(path, fd, st, False, st.st_size, 512)


def data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """The ranges of a file that hold data (SEEK_DATA/SEEK_HOLE); everything else is a hole.

    A file system without hole support reports one data range for the whole file."""
    out: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no data after pos
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end))
            pos = end
    except OSError:
        return [(0, size)] if size else []
    return out


def zero_out(fd: int, offset: int, length: int) -> bool:
    """Zero a range of a block device without sending zeros (BLKZEROOUT); False if unsupported."""
    if offset % 512 or length % 512:
        return False
    try:
        fcntl.ioctl(fd, BLKZEROOUT, struct.pack("<QQ", offset, length))
        return True
    except OSError:
        return False


def reread_partitions(fd: int) -> None:
    """Ask the kernel to re-read the partition table (best effort; busy devices refuse)."""
    try:
        fcntl.ioctl(fd, BLKRRPART)
    except OSError:
        pass


# -- which devices belong together, and which are mounted ---------------------------------


def _sysfs_dir(devnum: int) -> str | None:
    p = f"/sys/dev/block/{os.major(devnum)}:{os.minor(devnum)}"
    return os.path.realpath(p) if os.path.exists(p) else None


def _read_devnum(path: str) -> int | None:
    try:
        with open(path) as f:
            major, minor = f.read().strip().split(":")
        return os.makedev(int(major), int(minor))
    except (OSError, ValueError):
        return None


def related_devices(devnum: int, depth: int = 0) -> set[int]:
    """A block device, its partitions and the devices stacked on them (LVM, dm-crypt, md)."""
    out = {devnum}
    d = _sysfs_dir(devnum)
    if d is None or depth > 4:
        return out
    try:
        names = os.listdir(d)
    except OSError:
        return out
    for name in names:
        sub = os.path.join(d, name)
        if os.path.exists(os.path.join(sub, "partition")):
            n = _read_devnum(os.path.join(sub, "dev"))
            if n is not None:
                out |= related_devices(n, depth + 1)
    try:
        holders = os.listdir(os.path.join(d, "holders"))
    except OSError:
        holders = []
    for h in holders:
        n = _read_devnum(os.path.join(d, "holders", h, "dev"))
        if n is not None:
            out |= related_devices(n, depth + 1)
    return out


def loop_devices_of(st: os.stat_result, path: bytes) -> set[int]:
    """Loop devices whose backing file is this regular file."""
    out: set[int] = set()
    real = os.path.realpath(path)
    try:
        names = [n for n in os.listdir("/sys/block") if n.startswith("loop")]
    except OSError:
        return out
    for n in names:
        try:
            with open(f"/sys/block/{n}/loop/backing_file", "rb") as f:
                backing = f.read().rstrip(b"\n")
        except OSError:
            continue
        if backing.endswith(b" (deleted)"):
            continue
        try:
            same = backing == real or os.path.samestat(os.stat(backing), st)
        except OSError:
            same = False
        if same:
            dev = _read_devnum(f"/sys/block/{n}/dev")
            if dev is not None:
                out.add(dev)
    return out


def _unescape(field: str) -> str:
    """Mount table fields escape space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@dataclass
class Mount:
    source: str
    mountpoint: str
    read_write: bool


def _mount_entries() -> list[tuple[int | None, str, str, bool]]:
    """(devnum from the table or None, source, mount point, read-write) for every mount."""
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                a, b = left.split(), right.split()
                if len(a) < 6 or len(b) < 3:
                    continue
                major, _, minor = a[2].partition(":")
                dev = os.makedev(int(major), int(minor)) if major.isdigit() and minor.isdigit() else None
                rw = "rw" in a[5].split(",") and "ro" not in b[2].split(",")
                out.append((dev, _unescape(b[1]), _unescape(a[4]), rw))
        return out
    except OSError:
        pass
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                p = line.split()
                if len(p) >= 4:
                    out.append((None, _unescape(p[0]), _unescape(p[1]), "rw" in p[3].split(",")))
    except OSError:
        pass
    return out


def mounts_of(devices: set[int]) -> list[Mount]:
    """Mounts whose device is one of ``devices`` (by the table's device number or its source)."""
    found = []
    for dev, source, mountpoint, rw in _mount_entries():
        hit = dev in devices
        if not hit and source.startswith("/"):
            try:
                st = os.stat(source)
                hit = stat.S_ISBLK(st.st_mode) and st.st_rdev in devices
            except OSError:
                pass
        if hit:
            found.append(Mount(source, mountpoint, rw))
    return found


def mounts_using(t: Target) -> list[Mount]:
    """Mounts of a device (or its partitions and stacked devices), or of a loop device
    backed by a regular file."""
    if t.is_block:
        devs = related_devices(t.devnum)
    else:
        devs = set()
        for loop in loop_devices_of(t.st, t.path):
            devs |= related_devices(loop)
    return mounts_of(devs) if devs else []


def holders(devnum: int) -> list[str]:
    d = _sysfs_dir(devnum)
    if d is None:
        return []
    try:
        return sorted(os.listdir(os.path.join(d, "holders")))
    except OSError:
        return []


# -- partition table and file systems (optional tools) ---------------------------------------


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        p = subprocess.run(argv, capture_output=True, timeout=TOOL_TIMEOUT, env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    return p.stdout.decode("utf-8", "replace")


def partition_table(path: bytes) -> dict | None:
    """``sfdisk --dump`` (restorable text) and ``sfdisk -J`` (parsed) of a disk, or None."""
    p = os.fsdecode(path)
    dump = _run(["sfdisk", "--dump", p])
    parsed = _run(["sfdisk", "-J", p])
    if dump is None and parsed is None:
        return None
    out: dict = {"dump": dump}
    try:
        out["json"] = json.loads(parsed) if parsed else None
    except ValueError:
        out["json"] = None
    return out


def _blkid(path: str, offset: int | None = None, size: int | None = None) -> dict | None:
    argv = ["blkid", "-p", "-o", "export"]
    if offset is not None:
        argv += ["-O", str(offset)]
    if size is not None:
        argv += ["-S", str(size)]
    text = _run(argv + [path])
    if not text:
        return None
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k != "DEVNAME":
            out[k] = v
    return out or None


def filesystems(path: bytes, table: dict | None, sector_size: int) -> list[dict]:
    """``blkid -p`` of the whole source and of every partition in ``table``."""
    p = os.fsdecode(path)
    out = []
    whole = _blkid(p)
    if whole:
        out.append({"offset": 0, "size": None, "partition": None, "blkid": whole})
    parts = ((table or {}).get("json") or {}).get("partitiontable", {}).get("partitions", [])
    unit = ((table or {}).get("json") or {}).get("partitiontable", {}).get("sectorsize", sector_size)
    for part in parts:
        try:
            start, size = int(part["start"]) * int(unit), int(part["size"]) * int(unit)
        except (KeyError, TypeError, ValueError):
            continue
        info = _blkid(p, start, size)
        if info:
            out.append({"offset": start, "size": size, "partition": part.get("node"), "blkid": info})
    return out
