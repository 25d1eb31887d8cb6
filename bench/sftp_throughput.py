#!/usr/bin/env python3
"""Throughput of lbk's SFTP backend against the OpenSSH ``sftp`` binary, same server.

Starts its own OpenSSH sshd on 127.0.0.1 (tests/sshd.py: generated keys, a free port,
internal-sftp), then, per run:

- ``sftp`` binary: ``put`` and ``get`` of one file of --size MiB (the ceiling), with
  OpenSSH's default cipher and with aes128-gcm (what lbk prefers);
- lbk ``save``/``load`` of the same bytes as one object (temp name, fsync, rename),
  and the save once more without the fsync (``sftp put`` does not fsync; on this
  machine's disk an fsync of 256 MiB alone takes 0.35-0.4 s);
- lbk with packs: --size MiB as --pack MiB objects, --threads threads saving and then
  loading them through one backend, as the engine does.

Prints MiB/s for each (best and median of --runs) and lbk ÷ sftp. Needs the test
extras (asyncssh) and openssh-server; run it with the project's Python:

    /work/venv/bin/python bench/sftp_throughput.py [--size 256] [--runs 3]

Random data (incompressible, like encrypted packs). Files live in a temporary
directory on the same disk; the server and client share the CPU, as on any loopback
benchmark, so the figures are for comparison within one run, not absolutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lbk.backend.base import FileKind, Handle  # noqa: E402
from lbk.backend.sftp import SftpBackend  # noqa: E402
from tests.sshd import SshServer, write_ssh_home  # noqa: E402

MiB = 1 << 20


def sftp_binary(server: SshServer, batch: str, cipher: str | None) -> float:
    cmd = ["sftp", "-q", "-b", "-", "-F", "/dev/null", "-P", str(server.port), "-i", str(server.client_key)]
    cmd += ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes"]
    cmd += ["-o", f"UserKnownHostsFile={server.known_hosts}"]
    if cipher:
        cmd += ["-c", cipher]
    cmd.append(f"{server.user}@127.0.0.1")
    t = time.perf_counter()
    subprocess.run(cmd, input=batch.encode(), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="MiB moved per measurement (256)")
    ap.add_argument("--pack", type=int, default=16, help="object size in MiB for the packs rows (16)")
    ap.add_argument("--threads", type=int, default=4, help="threads for the packs rows (4)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not os.access("/usr/sbin/sshd", os.X_OK) or not shutil.which("sftp"):
        print("needs /usr/sbin/sshd and sftp: apt-get install openssh-server openssh-client", file=sys.stderr)
        return 1
    os.makedirs("/run/sshd", exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="lbk-sftp-bench-"))
    server = SshServer(work / "sshd")
    server.start()
    home = write_ssh_home(work / "home", server)
    os.environ["HOME"] = str(home.path)
    os.environ.pop("SSH_AUTH_SOCK", None)
    size = args.size * MiB
    data = os.urandom(size)
    src = work / "big.bin"
    src.write_bytes(data)
    got = work / "got.bin"
    remote = server.root / "big.bin"
    rates: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        rates.setdefault(name, []).append(size / MiB / seconds)

    try:
        for run in range(args.runs):
            for cipher in (None, "aes128-gcm@openssh.com"):
                label = "sftp binary, " + ("default cipher" if cipher is None else "aes128-gcm")
                add(f"{label}: put", sftp_binary(server, f"put {src} {remote}\n", cipher))
                add(f"{label}: get", sftp_binary(server, f"get {remote} {got}\n", cipher))
                remote.unlink()
                got.unlink()

            b = SftpBackend(home.url(server.root / f"repo{run}"))
            b.create()
            one = Handle(FileKind.DATA, "ab" * 32)
            t = time.perf_counter()
            b.save(one, data)
            add("lbk, one object: save", time.perf_counter() - t)
            t = time.perf_counter()
            back = b.load(one)
            add("lbk, one object: load", time.perf_counter() - t)
            assert back == data
            del back
            b.remove(one)
            # The same without the server's fsync: the transport alone, comparable with
            # `sftp put`, which does not fsync. (lbk always fsyncs; this is a bench knob.)
            b._fsync = False
            t = time.perf_counter()
            b.save(one, data)
            add("lbk, one object, no fsync: save", time.perf_counter() - t)
            b._fsync = True
            b.remove(one)

            n = max(1, args.size // args.pack)
            packs = [(Handle(FileKind.DATA, f"{i:064x}"), i * args.pack * MiB) for i in range(n)]
            view = memoryview(data)
            label = f"lbk, {n} x {args.pack} MiB, {args.threads} threads"
            with ThreadPoolExecutor(args.threads) as pool:
                t = time.perf_counter()
                list(pool.map(lambda p: b.save(p[0], bytes(view[p[1] : p[1] + args.pack * MiB])), packs))
                add(f"{label}: save", time.perf_counter() - t)
                t = time.perf_counter()
                loaded = list(pool.map(lambda p: b.load(p[0]), packs))
                add(f"{label}: load", time.perf_counter() - t)
            assert b"".join(loaded) == data[: n * args.pack * MiB]
            del loaded
            b.close()
            shutil.rmtree(server.root / f"repo{run}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.size} MiB over loopback, {args.runs} runs, {os.cpu_count()} CPUs (MiB/s)\n")
    print(f"{'':52} {'best':>7} {'median':>7}")
    for name, r in rates.items():
        print(f"{name:52} {max(r):7.0f} {statistics.median(r):7.0f}")
    ceil = {op: statistics.median(rates[f"sftp binary, aes128-gcm: {op}"]) for op in ("put", "get")}
    print("\nlbk ÷ sftp binary (aes128-gcm), medians:")
    for name, r in rates.items():
        if name.startswith("lbk"):
            op = "put" if name.endswith("save") else "get"
            print(f"  {name:50} {statistics.median(r) / ceil[op]:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
