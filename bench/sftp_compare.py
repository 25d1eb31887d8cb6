#!/usr/bin/env python3
"""lbk against restic over SFTP, and both against the raw ``sftp`` binary (issue 5).

One run, one loopback OpenSSH sshd started here (tests/sshd.py's ``SshServer``:
generated keys, a free port, ``internal-sftp``), one corpus:

- **lbk** and **restic**, each into a fresh repository on that server: the first backup
  of the corpus, then a restore of it into an empty local directory (verified against
  the corpus, file by file, outside the timing). Both use their real KDF, a fresh cache
  for the backup and that same cache for the restore, quiet output.
- **the ceiling**: the ``sftp`` binary's ``put`` and ``get`` of one file of --raw-mib
  MiB of random bytes to the same server.

Every client reaches the server through the same ``Host lbktest`` entry of a generated
``~/.ssh/config`` (lbk reads it through HOME; restic and ``sftp`` get ``ssh -F`` /
``sftp -F``, since OpenSSH finds ``~`` through the password database, not HOME), with the
same cipher (--cipher; ``default`` leaves each client at its own default).

Prints seconds, corpus MiB/s, peak RSS and CPU seconds of the tool per step, the
repository sizes, and the ratios: lbk ÷ restic (time, lower is better, target <= 1.0)
and lbk ÷ ceiling (throughput, target >= 0.8). The load average is printed before each
timed step: the machine is shared, so compare figures within one run.

    /work/venv/bin/python bench/sftp_compare.py                      # ~500 MB corpus
    /work/venv/bin/python bench/sftp_compare.py --corpus ~/some/tree --runs 3

The default corpus is deterministic for (--size-mb, --seed) and reused when present:
regular files up to 4 MiB from /usr/share and /usr/lib, shuffled by the seed and taken
until --size-mb, copied with their relative paths and mtimes (names lbk excludes by
default are left out, so both tools store the same files). Throughput is corpus bytes
over wall time: the tools compress and deduplicate, so they may move fewer bytes than
the corpus holds, while the ceiling moves every byte of an incompressible file. Note
also that lbk fsyncs every pack on the server, where ``sftp put`` does not fsync.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sshd import SshServer, write_ssh_home  # noqa: E402

MiB = 1 << 20
PASSWORD = "bench password, not secret"
ALIAS = "lbktest"
CORPUS_SOURCES = ("/usr/share", "/usr/lib")
MAX_FILE = 4 * MiB
# lbk's default excludes (SPEC "backup"): left out of the corpus so both tools store
# exactly the same files.
EXCLUDED = ("*.tmp", "*.swp", "*~", ".~lock.*", "~$*", ".#*", "__pycache__")


# -- the corpus ----------------------------------------------------------------------------


def _excluded(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in EXCLUDED)


def build_corpus(dest: Path, size_mb: int, seed: int) -> dict:
    """Copy a seeded selection of /usr files into ``dest``; reuse it when already built."""
    manifest = dest / "manifest.json"
    if manifest.exists():
        return json.loads(manifest.read_text())
    candidates: list[tuple[str, int]] = []
    for top in CORPUS_SOURCES:
        for d, dirs, files in os.walk(top):
            dirs[:] = sorted(x for x in dirs if not _excluded(x))
            for name in sorted(files):
                p = os.path.join(d, name)
                if _excluded(name):
                    continue
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if os.path.isfile(p) and not os.path.islink(p) and st.st_size <= MAX_FILE:
                    candidates.append((p, st.st_size))
    random.Random(seed).shuffle(candidates)
    tree = dest / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    total = files = 0
    for p, size in candidates:
        if total >= size_mb * 1_000_000:
            break
        out = tree / p.lstrip("/")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, out)
        except OSError:
            continue
        total += size
        files += 1
    info = {"size_mb": size_mb, "seed": seed, "files": files, "bytes": total, "sources": list(CORPUS_SOURCES)}
    manifest.write_text(json.dumps(info, indent=1))
    return info


def tree_digest(root: Path) -> dict[str, tuple[int, str]]:
    """relative path -> (size, sha256) of every regular file beneath ``root``."""
    out = {}
    for d, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(d, name)
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            out[os.path.relpath(p, root)] = (os.path.getsize(p), h.hexdigest())
    return out


def tree_bytes(root: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


# -- running things --------------------------------------------------------------------------


@dataclass
class Step:
    seconds: float
    rss_mib: float
    cpu: float
    load: float


@dataclass
class Results:
    steps: dict[str, list[Step]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, key: str, step: Step) -> None:
        self.steps.setdefault(key, []).append(step)

    def median(self, key: str) -> float | None:
        s = self.steps.get(key)
        return statistics.median(x.seconds for x in s) if s else None


def timed(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> Step:
    """Run ``cmd`` to completion; wall time, peak RSS and CPU of that process tree."""
    os.sync()  # earlier steps' dirty pages are not this step's cost
    load = os.getloadavg()[0]
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        t = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=cwd)
        _pid, status, ru = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {p.returncode}; see {log}")
    return Step(seconds, ru.ru_maxrss / 1024, ru.ru_utime + ru.ru_stime, load)


def quiet(cmd: list[str], env: dict[str, str], log: Path) -> None:
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        if subprocess.run(cmd, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL).returncode:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed; see {log}")


def find_lbk(explicit: str | None) -> str:
    for c in (explicit, os.environ.get("LBK_BIN"), str(Path(sys.executable).parent / "lbk"), shutil.which("lbk")):
        if c and os.access(c, os.X_OK):
            return c
    raise SystemExit("lbk not found: pass --lbk PATH or run with the venv's python")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, help="back up this tree instead of building one")
    ap.add_argument("--size-mb", type=int, default=500, help="size of the built corpus in MB (500)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--raw-mib", type=int, default=256, help="size of the sftp put/get file (256)")
    ap.add_argument("--runs", type=int, default=1, help="repeat backup+restore per tool, report medians (1)")
    ap.add_argument("--cipher", default="aes128-gcm@openssh.com",
                    help="SSH cipher for every client; 'default' = each client's own (aes128-gcm@openssh.com)")
    ap.add_argument("--tools", default="lbk,restic", help="subset of lbk,restic (lbk,restic)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lbk-sftp-bench"))
    ap.add_argument("--lbk", help="the lbk executable (default: beside this Python)")
    ap.add_argument("--restic", default=shutil.which("restic") or "restic")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep repositories and restores")
    args = ap.parse_args()
    tools = [t for t in args.tools.split(",") if t]
    for need in ("/usr/sbin/sshd", shutil.which("sftp"), shutil.which("ssh")):
        if not need or not os.access(need, os.X_OK):
            raise SystemExit("needs openssh-server and openssh-client (sshd, ssh, sftp)")
    lbk = find_lbk(args.lbk) if "lbk" in tools else ""
    if "restic" in tools and not shutil.which(args.restic):
        raise SystemExit("restic not found: apt-get install restic, or --tools lbk")
    os.makedirs("/run/sshd", exist_ok=True)

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if args.corpus:
        corpus = args.corpus.resolve()
        info = {"path": str(corpus), "bytes": tree_bytes(corpus)}
    else:
        print(f"corpus: building/reusing {args.size_mb} MB from {', '.join(CORPUS_SOURCES)} ...", flush=True)
        info = build_corpus(work / f"corpus-{args.size_mb}-{args.seed}", args.size_mb, args.seed)
        corpus = work / f"corpus-{args.size_mb}-{args.seed}" / "tree"
    corpus_bytes = tree_bytes(corpus)
    print(f"corpus: {corpus} ({corpus_bytes / MiB:.0f} MiB, {info.get('files', '?')} files)", flush=True)
    want = tree_digest(corpus)

    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    logs = run_dir / "logs"
    logs.mkdir()
    server = SshServer(run_dir / "sshd")
    server.start()
    extra = f"    Ciphers {args.cipher}\n" if args.cipher != "default" else ""
    home = write_ssh_home(run_dir / "home", server, extra=extra + "    BatchMode yes\n")
    ssh_config = home.ssh_dir / "config"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LBK_", "RESTIC_", "SSH_AUTH_SOCK"))}
    env.update(HOME=str(home.path), LC_ALL="C.UTF-8")
    res = Results()
    sizes: dict[str, int] = {}
    verified: dict[str, bool] = {}

    def lbk_env(cache: Path) -> dict[str, str]:
        return dict(env, LBK_PASSWORD=PASSWORD, LBK_CACHE_DIR=str(cache))

    def restic_env(cache: Path) -> dict[str, str]:
        return dict(env, RESTIC_PASSWORD=PASSWORD, RESTIC_CACHE_DIR=str(cache))

    restic_ssh = ["-o", f"sftp.command=ssh -F {ssh_config} {ALIAS} -s sftp"]

    try:
        # -- the ceiling ------------------------------------------------------------------
        big = run_dir / "raw.bin"
        with open(big, "wb") as f:
            for _ in range(args.raw_mib):
                f.write(os.urandom(MiB))
        back = run_dir / "raw.back"
        sftp = ["sftp", "-q", "-F", str(ssh_config)]
        for _ in range(args.runs):
            for op, batch in (("put", f"put {big} {server.root}/raw.bin\n"), ("get", f"get {server.root}/raw.bin {back}\n")):
                script = run_dir / f"raw-{op}.batch"
                script.write_text(batch)
                res.add(f"sftp {op}", timed(sftp + ["-b", str(script), ALIAS], env, logs / "sftp.log"))
            back.unlink()
            (server.root / "raw.bin").unlink()
        big.unlink()

        # -- lbk and restic -----------------------------------------------------------------
        for r in range(args.runs):
            order = tools if r % 2 == 0 else list(reversed(tools))
            for tool in order:
                repo = server.root / f"{tool}-{r}"
                cache = run_dir / f"cache-{tool}-{r}"
                target = run_dir / f"restore-{tool}-{r}"
                log = logs / f"{tool}.log"
                print(f"run {r + 1}/{args.runs}: {tool} ...", flush=True)
                if tool == "lbk":
                    e = lbk_env(cache)
                    g = [lbk, "-r", f"sftp:{ALIAS}:{repo}", "--quiet"]
                    quiet(g + ["init"], e, log)
                    res.add("lbk backup", timed(g + ["backup", str(corpus)], e, log))
                    res.add("lbk restore", timed(g + ["restore", "latest", "--target", str(target)], e, log))
                else:
                    e = restic_env(cache)
                    g = [args.restic, "-r", f"sftp:{ALIAS}:{repo}", *restic_ssh, "--quiet"]
                    quiet(g + ["init"], e, log)
                    res.add("restic backup", timed(g + ["backup", str(corpus)], e, log))
                    res.add("restic restore", timed(g + ["restore", "latest", "--target", str(target)], e, log))
                sizes[tool] = tree_bytes(repo)
                got = tree_digest(target / str(corpus).lstrip("/"))
                verified[tool] = verified.get(tool, True) and got == want
                if got != want:
                    missing = len(set(want) - set(got))
                    wrong = sum(1 for k in want if k in got and got[k] != want[k])
                    res.notes.append(f"{tool} run {r + 1}: restore differs: {missing} missing, {wrong} changed")
                if not args.keep:
                    shutil.rmtree(target, ignore_errors=True)
                    shutil.rmtree(repo, ignore_errors=True)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(run_dir / "sshd" / "srv", ignore_errors=True)

    # -- the table ---------------------------------------------------------------------------
    mib = corpus_bytes / MiB
    print(f"\n{mib:.0f} MiB corpus ({len(want)} files), {args.runs} run(s), cipher {args.cipher}, "
          f"{os.cpu_count()} CPUs; medians\n")
    print(f"{'step':24} {'seconds':>8} {'MiB/s':>7} {'peak RSS':>9} {'CPU s':>7} {'load1':>6}")
    for key, steps in res.steps.items():
        secs = statistics.median(s.seconds for s in steps)
        size = args.raw_mib if key.startswith("sftp") else mib
        label = f"{key} ({args.raw_mib} MiB)" if key.startswith("sftp") else key
        print(f"{label:24} {secs:8.2f} {size / secs:7.1f} {max(s.rss_mib for s in steps):7.0f}Mi "
              f"{statistics.median(s.cpu for s in steps):7.2f} {max(s.load for s in steps):6.2f}")
    for tool, size in sizes.items():
        print(f"repository size {tool:8} {size / MiB:8.1f} MiB")
    for tool, ok in verified.items():
        print(f"restore verified {tool:7} {'yes' if ok else 'NO'}")

    ratios: dict[str, float] = {}
    print()
    for op, raw in (("backup", "sftp put"), ("restore", "sftp get")):
        lt, rt, ct = res.median(f"lbk {op}"), res.median(f"restic {op}"), res.median(raw)
        if lt and rt:
            ratios[f"{op}: lbk ÷ restic (time)"] = lt / rt
        if lt and ct:
            ratios[f"{op}: lbk ÷ ceiling (MiB/s)"] = (mib / lt) / (args.raw_mib / ct)
    for name, v in ratios.items():
        target = "<= 1.0" if "restic" in name else ">= 0.8"
        print(f"{name:34} {v:5.2f}   (target {target})")
    for n in res.notes:
        print("note:", n)
    if args.json:
        args.json.write_text(json.dumps({
            "corpus": info | {"bytes": corpus_bytes, "files": len(want)}, "cipher": args.cipher, "runs": args.runs,
            "steps": {k: [s.__dict__ for s in v] for k, v in res.steps.items()},
            "repo_bytes": sizes, "verified": verified, "ratios": ratios, "notes": res.notes,
        }, indent=1))
    return 0 if all(verified.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
