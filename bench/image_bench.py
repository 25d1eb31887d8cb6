#!/usr/bin/env python3
"""Throughput and deduplication of ``lbk image`` on an ext4 image full of real files.

Builds (deterministically, given --seed) a --size MiB ext4 image whose file system holds
about --fill of real files copied from /usr/lib, /usr/share and /usr/bin (mkfs.ext4 -d,
no mount needed), then measures, each step timed around the real ``lbk`` process (wall
time, CPU time and peak RSS from wait4):

- read ceilings: ``cat IMG > /dev/null`` (warm: page cache) and ``dd iflag=direct`` (the
  disk); write ceilings: ``dd bs=16M conv=fsync`` of the whole image and
  ``dd conv=sparse,fsync`` (skips zero blocks, as lbk does on a file);
- ``lbk image create IMG`` into an empty repository (MB/s over the image size);
- ``lbk image restore latest OUT --no-verify``, the same with verification, and
  ``lbk image verify``, then a byte comparison of OUT with IMG;
- the bytes stored by a second image after --change (1 %) of the data changed, each
  into a copy of the repository holding the first. Files are picked ``by size`` (with
  probability proportional to their size, so a few big files) or ``uniform`` (mostly
  small files) until they hold 1 % of the data; each gets 16 bytes overwritten in the
  middle or 1-4096 bytes appended (half each). Two ways to make the second image:
  ``rebuilt``: the edited tree gets a new file system (mkfs.ext4 -d): files after a
  grown one move, and so do their inodes' block numbers (the whole inode table changes);
  ``live``: the files are edited inside a copy of the image mounted read-write (root,
  loop device), so the kernel changes only what a running system changes;
- with --compare-chunking, the first image and each second one in-process for four
  chunkings (content-defined with the repository's parameters, content-defined with a
  256 KiB average, fixed aligned 1 MiB and 256 KiB blocks): how the default was chosen
  (docs/FORMAT-image.md).

Page cache: the image was just written, so reads are warm (``cat`` runs at memory
speed; ``dd iflag=direct`` shows the disk); ``sync`` runs before each timed step. On a
shared machine the figures move from run to run: the load average is printed with them,
and the CPU seconds say what lbk needed regardless of the load.

    /work/venv/bin/python bench/image_bench.py [--size 2048] [--fill 0.6] [--compare-chunking]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MiB = 1 << 20
UUID = "11111111-2222-3333-4444-555555555555"


def lbk_bin() -> list[str]:
    exe = Path(sys.executable).with_name("lbk")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lbk"]


class Step:
    """A finished command: wall seconds, CPU seconds (user+sys) and peak RSS of the process."""

    def __init__(self, seconds: float, cpu: float, rss: int, code: int, out: bytes, err: bytes):
        self.seconds, self.cpu, self.rss, self.code, self.out, self.err = seconds, cpu, rss, code, out, err


def run(argv: list[str], env: dict | None = None, check: bool = True) -> Step:
    subprocess.run(["sync"], check=False)
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        t = time.monotonic()
        p = subprocess.Popen(argv, stdout=fo, stderr=fe, env={**os.environ, **(env or {})})
        _pid, status, ru = os.wait4(p.pid, 0)
        dt = time.monotonic() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        step = Step(dt, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, p.returncode, fo.read(), fe.read())
    if check and step.code != 0:
        raise SystemExit(f"command failed ({step.code}): {' '.join(argv)}\n{step.err.decode(errors='replace')}")
    return step


def mkfs(src: Path, img: Path, size_mib: int) -> None:
    if img.exists():
        img.unlink()
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-U", UUID, "-E", f"hash_seed={UUID},root_owner=0:0",
         "-d", str(src), str(img), f"{size_mib}M"],
        check=True, env={**os.environ, "E2FSPROGS_FAKE_TIME": "1577836800"}, stdout=subprocess.DEVNULL,
    )


def build_corpus(dst: Path, target_bytes: int, seed: int) -> int:
    """Real files, shuffled by seed, up to 64 MiB each, copied into 64 directories."""
    marker = dst.with_name(dst.name + ".complete")
    if marker.exists():
        return int(marker.read_text())
    shutil.rmtree(dst, ignore_errors=True)
    files = []
    for root in ("/usr/lib", "/usr/share", "/usr/bin"):
        for dp, _dn, fn in os.walk(root):
            for n in fn:
                p = os.path.join(dp, n)
                try:
                    if not os.path.islink(p) and 0 < os.path.getsize(p) <= 64 * MiB:
                        files.append(p)
                except OSError:
                    pass
    files.sort()
    random.Random(seed).shuffle(files)
    total = 0
    for i, f in enumerate(files):
        if total >= target_bytes:
            break
        d = dst / f"{i % 64:02d}"
        d.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(f, d / f"{i}-{os.path.basename(f)}")
        except OSError:
            continue
        total += os.path.getsize(f)
    marker.write_text(str(total))
    return total


def edit(root: Path, fraction: float, mode: str, seed: int) -> tuple[int, int]:
    """Edit files under ``root`` holding ``fraction`` of the data; returns (files, bytes).

    ``bytes``: a file is picked with probability proportional to its size; ``files``:
    uniformly. Each picked file gets 16 bytes overwritten in the middle, or 1-4096 bytes
    appended (half each)."""
    files = sorted(p for p in root.glob("*/*") if p.is_file())
    sizes = [p.stat().st_size for p in files]
    total = sum(sizes)
    rng = random.Random(seed)
    picked: set[int] = set()
    covered = 0
    while covered < total * fraction and len(picked) < len(files):
        i = rng.choices(range(len(files)), weights=sizes)[0] if mode == "bytes" else rng.randrange(len(files))
        if i in picked:
            continue
        picked.add(i)
        covered += sizes[i]
        with open(files[i], "r+b") as f:
            if rng.random() < 0.5:
                f.seek(sizes[i] // 2)
                f.write(rng.randbytes(16))
            else:
                f.seek(0, 2)
                f.write(rng.randbytes(rng.randrange(1, 4097)))
    return len(picked), covered


def rebuilt(work: Path, size_mib: int, fraction: float, mode: str, seed: int, img: Path) -> tuple[int, int]:
    """Edit a copy of the corpus and build a new file system from it (mkfs.ext4 -d)."""
    dst = work / f"src-{mode}"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(work / "src", dst)
    n = edit(dst, fraction, mode, seed)
    mkfs(dst, img, size_mib)
    shutil.rmtree(dst)
    return n


def edited_live(work: Path, base: Path, fraction: float, mode: str, seed: int, img: Path) -> tuple[int, int] | None:
    """Edit the files inside a copy of the image, mounted read-write (needs root and a loop
    device): the kernel's ext4 changes only what a running system would."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        return None
    subprocess.run(["cp", "--sparse=always", str(base), str(img)], check=True)
    p = subprocess.run(["losetup", "--find", "--show", str(img)], capture_output=True, text=True)
    if p.returncode != 0:
        return None
    dev, mnt = p.stdout.strip(), work / "mnt"
    mnt.mkdir(exist_ok=True)
    try:
        if subprocess.run(["mount", dev, str(mnt)], capture_output=True).returncode != 0:
            return None
        try:
            return edit(mnt, fraction, mode, seed)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def mbps(n: int, s: float) -> float:
    return n / s / 1e6 if s > 0 else 0.0


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cli_image(repo: Path, env: dict, img: Path) -> tuple[Step, dict]:
    step = run([*lbk_bin(), "-r", str(repo), "--json", "image", "create", str(img)], env)
    summary = [json.loads(x) for x in step.out.decode().splitlines() if '"summary"' in x][-1]
    return step, summary


def compare_chunking(work: Path, a: Path, seconds: dict[str, Path]) -> list[dict]:
    os.environ["LBK_INSECURE_FAST_KDF"] = "1"
    from lbk.backend.local import LocalBackend
    from lbk.events import discard
    from lbk.ops.image import ImageOptions, create_image
    from lbk.repo.repository import Repository

    rows = []
    for label, chunking, avg, fixed in [
        ("cdc, repository parameters (avg 1 MiB)", "cdc", None, 0),
        ("cdc, avg 256 KiB", "cdc", 256 << 10, 0),
        ("fixed 1 MiB aligned", "fixed", None, 1 << 20),
        ("fixed 256 KiB aligned", "fixed", None, 256 << 10),
    ]:
        row: dict = {"chunking": label}
        rp, rc = work / "repo-compare", work / "repo-compare-2"

        def tune(repo):
            if avg:  # in memory only: the stored config keeps the repository's parameters
                ch = repo.config.chunker
                ch.avg, ch.min, ch.max = avg, avg // 4, avg * 8
            return repo

        shutil.rmtree(rp, ignore_errors=True)
        repo = tune(Repository.create(LocalBackend(str(rp)), b"bench"))
        opts = {"chunking": chunking, "fixed_size": fixed or (1 << 20)}
        t = time.monotonic()
        r1 = create_image(repo, ImageOptions(str(a).encode(), **opts), discard)
        dt = time.monotonic() - t
        repo.close()
        row["first"] = {"stored_added": r1.stored_added, "chunks": r1.chunks, "MBps": round(mbps(r1.size, dt), 1)}
        for key, img in seconds.items():  # each second image into a copy of the repository holding the first
            shutil.rmtree(rc, ignore_errors=True)
            shutil.copytree(rp, rc)
            repo = tune(Repository.open(LocalBackend(str(rc)), lambda: b"bench"))
            r2 = create_image(repo, ImageOptions(str(img).encode(), **opts), discard)
            row[key] = r2.stored_added / r1.stored_added
            repo.close()
        shutil.rmtree(rp, ignore_errors=True)
        shutil.rmtree(rc, ignore_errors=True)
        rows.append(row)
        f = row["first"]
        cells = " | ".join(f"{k}: {100 * row[k]:5.1f} %" for k in seconds)
        print(f"  {label:<40} first: {f['stored_added'] / MiB:7.1f} MiB, {f['chunks']:5d} chunks | {cells}", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=2048, help="image size in MiB (default 2048)")
    ap.add_argument("--fill", type=float, default=0.6, help="fraction of the image filled with real files")
    ap.add_argument("--change", type=float, default=0.01, help="fraction of the data changed for the second image")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", default="/tmp/lbk-image-bench")
    ap.add_argument("--compare-chunking", action="store_true", help="also compare chunking choices in-process")
    ap.add_argument("--out", help="write the figures as JSON to this file")
    args = ap.parse_args()
    for tool in ("mkfs.ext4", "dd", "cat", "cmp"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required")
    work = Path(args.workdir) / f"s{args.size}-f{args.fill}-seed{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    env = {"LBK_PASSWORD": "bench", "LBK_INSECURE_FAST_KDF": "1", "LBK_CACHE_DIR": str(work / "cache")}
    size = args.size * MiB
    res: dict = {"size": size, "cpus": os.cpu_count(), "load_before": load()}

    print(f"corpus: real files for {args.fill:.0%} of {args.size} MiB ...", flush=True)
    data = build_corpus(work / "src", int(size * args.fill), args.seed)
    a = work / "a.img"
    mkfs(work / "src", a, args.size)
    print(f"  {data / 1e6:.0f} MB of files; second images, {args.change:.0%} of the data changed:", flush=True)
    scenarios: dict[str, tuple[Path, tuple[int, int]]] = {}
    for key, mode, how in [("rebuilt, by size", "bytes", "rebuilt"), ("rebuilt, uniform", "files", "rebuilt"),
                           ("live, by size", "bytes", "live"), ("live, uniform", "files", "live")]:
        img = work / f"{key.replace(', ', '-').replace(' ', '_')}.img"
        seed = args.seed + (1 if mode == "bytes" else 2)
        if how == "rebuilt":
            n = rebuilt(work, args.size, args.change, mode, seed, img)
        else:
            n = edited_live(work, a, args.change, mode, seed, img)
            if n is None:
                print(f"  {key}: skipped (needs root, losetup and mount)")
                continue
        scenarios[key] = (img, n)
        print(f"  {key:<18} {n[0]:5d} files ({n[1] / 1e6:6.1f} MB) edited", flush=True)
    res.update(data_bytes=data, scenarios={k: {"files": v[1][0], "bytes": v[1][1]} for k, v in scenarios.items()})

    out = work / "out.img"
    run(["sh", "-c", f"cat '{a}' > /dev/null"])
    cat = run(["sh", "-c", f"cat '{a}' > /dev/null"])  # second run: the warm (page cache) figure
    direct = run(["dd", f"if={a}", "of=/dev/null", "bs=16M", "iflag=direct"], check=False)
    dd = run(["dd", f"if={a}", f"of={out}", "bs=16M", "conv=fsync"])
    out.unlink()
    dds = run(["dd", f"if={a}", f"of={out}", "bs=16M", "conv=sparse,fsync"])
    out.unlink()
    res["ceilings"] = {"cat_read_MBps": mbps(size, cat.seconds),
                       "dd_direct_read_MBps": mbps(size, direct.seconds) if direct.code == 0 else None,
                       "dd_write_MBps": mbps(size, dd.seconds), "dd_sparse_write_MBps": mbps(size, dds.seconds)}

    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    run([*lbk_bin(), "-r", str(repo), "init"], env)
    create, s1 = cli_image(repo, env, a)
    rest = run([*lbk_bin(), "-r", str(repo), "-q", "image", "restore", "latest", str(out), "--no-verify"], env)
    ok = subprocess.run(["cmp", str(a), str(out)], capture_output=True).returncode == 0
    rest_v = run([*lbk_bin(), "-r", str(repo), "-q", "image", "restore", "latest", str(out), "--yes"], env)
    verify = run([*lbk_bin(), "-r", str(repo), "-q", "image", "verify", "latest", str(out)], env)
    ok = ok and subprocess.run(["cmp", str(a), str(out)], capture_output=True).returncode == 0
    out.unlink()
    seconds = {}
    for key, (img, _n) in scenarios.items():  # each second image after the first, in a fresh copy of the repository
        copy = work / "repo-second"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(repo, copy)
        step, summ = cli_image(copy, env, img)
        seconds[key] = {"stored": summ["data_added_stored"], "MBps": mbps(size, step.seconds)}
    shutil.rmtree(work / "repo-second", ignore_errors=True)
    res["lbk"] = {
        "create_MBps": mbps(size, create.seconds), "create_seconds": round(create.seconds, 2),
        "create_cpu_seconds": round(create.cpu, 2), "create_peak_rss": create.rss,
        "restore_MBps": mbps(size, rest.seconds), "restore_seconds": round(rest.seconds, 2),
        "restore_cpu_seconds": round(rest.cpu, 2), "restore_peak_rss": rest.rss,
        "restore_verify_MBps": mbps(size, rest_v.seconds), "verify_MBps": mbps(size, verify.seconds),
        "restored_identical": ok,
        "first_stored": s1["data_added_stored"], "first_data_bytes": s1["data_bytes"], "first_chunks": s1["chunks"],
        "second": seconds,
    }
    res["load_after"] = load()
    L, C = res["lbk"], res["ceilings"]
    print(f"\n{args.size} MiB image, {data / 1e6:.0f} MB of real files, {os.cpu_count()} CPUs, load {res['load_before']} -> {res['load_after']}")
    print(f"  read ceiling   cat > /dev/null (warm)   {C['cat_read_MBps']:8.1f} MB/s")
    if C["dd_direct_read_MBps"]:
        print(f"                 dd iflag=direct (disk)   {C['dd_direct_read_MBps']:8.1f} MB/s")
    print(f"  write ceiling  dd bs=16M conv=fsync      {C['dd_write_MBps']:8.1f} MB/s")
    print(f"                 dd conv=sparse,fsync      {C['dd_sparse_write_MBps']:8.1f} MB/s")
    direct_txt = f", {L['create_MBps'] / C['dd_direct_read_MBps']:.0%} of direct dd" if C["dd_direct_read_MBps"] else ""
    print(f"  lbk image create                        {L['create_MBps']:8.1f} MB/s  ({L['create_MBps'] / C['cat_read_MBps']:.0%} of cat"
          f"{direct_txt}); {L['create_cpu_seconds']:.1f} CPU s, peak RSS {L['create_peak_rss'] / MiB:.0f} MiB")
    print(f"  lbk image restore --no-verify           {L['restore_MBps']:8.1f} MB/s  ({L['restore_MBps'] / C['dd_write_MBps']:.0%} of dd, "
          f"{L['restore_MBps'] / C['dd_sparse_write_MBps']:.0%} of sparse dd); {L['restore_cpu_seconds']:.1f} CPU s, "
          f"peak RSS {L['restore_peak_rss'] / MiB:.0f} MiB")
    print(f"  lbk image restore (with verify)         {L['restore_verify_MBps']:8.1f} MB/s")
    print(f"  lbk image verify                        {L['verify_MBps']:8.1f} MB/s")
    print(f"  restored image identical                {L['restored_identical']}")
    print(f"  first image stored                      {L['first_stored'] / MiB:8.1f} MiB ({L['first_chunks']} chunks)")
    for key, v in seconds.items():
        print(f"  second image, {key:<18}      {v['stored'] / MiB:8.2f} MiB = {100 * v['stored'] / L['first_stored']:.2f} % of the first")
    if args.compare_chunking:
        print("\nchunking comparison (in-process; stored bytes of the second image relative to the first):", flush=True)
        res["chunking"] = compare_chunking(work, a, {k: v[0] for k, v in scenarios.items()})
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0 if L["restored_identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
