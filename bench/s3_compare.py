#!/usr/bin/env python3
"""lbk against restic on a local SeaweedFS S3 server, in one run.

What it does:

1. Builds (or reuses) a corpus under WORKDIR/corpus-<MB>-<seed>: real files (<= 4 MiB)
   sampled with the seed from /usr/lib, /usr/share and /usr/include until ~MB
   megabytes, copied with their directory structure, split into eight shards
   (``shard0`` .. ``shard7``, file by file) so that eight clients have disjoint data.
2. Starts one ``weed mini`` (tests/seaweed.py: every port explicit, loopback only, a
   generated identity; GOMEMLIMIT as given) and points both tools at it through
   ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in their environment.
3. Per step, lbk then restic, each in a fresh bucket, with the page cache warm and a
   ``sync`` before every timed step: init (untimed), first backup of the whole corpus,
   unchanged backup, restore of the latest snapshot (file count and a sample of hashes
   verified against the source), and the bytes stored in the bucket.
4. Eight clients at once: eight ``backup`` processes (``--host client<i>`` for lbk),
   one shard each, into one fresh repository per tool; aggregate MiB/s = corpus bytes /
   wall time from the first start to the last finish. Every client must succeed.
5. Prints a table with the ratio lbk / restic per row (time ratios, so below 1.0 means
   lbk is faster, also for the throughput row), the load average before each step and
   the CPU seconds the client and the server used; ``--out`` writes it all as JSON.

The machine is assumed shared: the load average and the server's CPU are printed with
every row, so a slow row can be read against what else was running. One round by
default; ``--rounds N`` repeats the timed steps and reports the median.

Usage::

    /work/venv/bin/python bench/s3_compare.py [--workdir /tmp/lbk-s3-bench] [--corpus-mb 500]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.seaweed import SeaweedServer, isolated_aws_env  # noqa: E402  (one place knows weed's flags)

MiB = 1 << 20
SOURCE_ROOTS = ("/usr/lib", "/usr/share", "/usr/include")
PER_FILE_CAP = 4 * MiB
SHARDS = 8
PASSWORD = "lbk-bench-password"  # a benchmark, not a secret
LBK_DEFAULT_EXCLUDES = ("__pycache__",)  # names lbk skips by default (plus *.tmp, *~ ...)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def proc_cpu(pid: int | None) -> float:
    """utime + stime of a process in seconds (0 when gone)."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


# -- corpus ---------------------------------------------------------------------------


def _skip(name: str) -> bool:
    return (name in LBK_DEFAULT_EXCLUDES or name.endswith((".tmp", ".swp", "~"))
            or name.startswith((".~lock.", "~$", ".#")))


def build_corpus(workdir: Path, mb: int, seed: int) -> Path:
    root = workdir / f"corpus-{mb}-{seed}"
    done = root / ".complete"
    if done.exists():
        log(f"corpus: reusing {root}")
        return root
    shutil.rmtree(root, ignore_errors=True)
    log(f"corpus: sampling ~{mb} MB of files from {', '.join(SOURCE_ROOTS)}")
    files: list[tuple[str, int]] = []
    for top in SOURCE_ROOTS:
        for d, dirs, names in os.walk(top):
            dirs[:] = sorted(x for x in dirs if not _skip(x))
            for n in sorted(names):
                p = os.path.join(d, n)
                if _skip(n):
                    continue
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if os.path.isfile(p) and not os.path.islink(p) and 0 < st.st_size <= PER_FILE_CAP:
                    files.append((p, st.st_size))
    random.Random(seed).shuffle(files)
    budget, total, n = mb * 1_000_000, 0, 0
    for i, (p, size) in enumerate(files):
        if total >= budget:
            break
        dst = root / f"shard{n % SHARDS}" / p.lstrip("/")
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst)
        except OSError:
            continue
        total += size
        n += 1
    done.write_text(json.dumps({"files": n, "bytes": total}))
    log(f"corpus: {n} files, {total / MiB:.0f} MiB")
    return root


def tree_stats(root: Path) -> tuple[int, int]:
    files = size = 0
    for d, _, names in os.walk(root):
        for n in names:
            if n == ".complete":
                continue
            files += 1
            size += os.lstat(os.path.join(d, n)).st_size
    return files, size


def warm(root: Path) -> None:
    for d, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                while f.read(1 << 20):
                    pass


def verify_restore(src: Path, restored: Path, sample: int, seed: int) -> str | None:
    """None when the restored tree has every file and a hashed sample matches."""
    want = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file() and p.name != ".complete")
    got = set(str(p.relative_to(restored)) for p in restored.rglob("*") if p.is_file())
    missing = [w for w in want if w not in got]
    if missing:
        return f"{len(missing)} files missing, e.g. {missing[0]}"
    for rel in random.Random(seed).sample(want, min(sample, len(want))):
        a = hashlib.sha256((src / rel).read_bytes()).hexdigest()
        b = hashlib.sha256((restored / rel).read_bytes()).hexdigest()
        if a != b:
            return f"content differs: {rel}"
    return None


# -- running the tools ------------------------------------------------------------------


class Tool:
    def __init__(self, name: str, argv0: list[str], env: dict[str, str], workdir: Path):
        self.name = name
        self.argv0 = argv0
        self.env = env
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def cmd(self, repo: str, *args: str) -> list[str]:
        raise NotImplementedError

    def popen(self, step: str, repo: str, *args: str, cache: Path) -> subprocess.Popen:
        env = dict(self.env)
        env.update(self.cache_env(cache))
        logf = open(self.logs / f"{self.name}-{step}.log", "w")
        logf.write(" ".join(self.cmd(repo, *args)) + "\n")
        logf.flush()
        p = subprocess.Popen(self.cmd(repo, *args), env=env, stdout=logf, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        p.logf = logf  # type: ignore[attr-defined]
        return p

    def cache_env(self, cache: Path) -> dict[str, str]:
        raise NotImplementedError


class Lbk(Tool):
    def cmd(self, repo: str, *args: str) -> list[str]:
        return [*self.argv0, "-r", repo, "-q", *args]

    def cache_env(self, cache: Path) -> dict[str, str]:
        return {"LBK_CACHE_DIR": str(cache), "LBK_PASSWORD": PASSWORD}


class Restic(Tool):
    def cmd(self, repo: str, *args: str) -> list[str]:
        return [*self.argv0, "-r", repo, "-q", *args]

    def cache_env(self, cache: Path) -> dict[str, str]:
        return {"RESTIC_CACHE_DIR": str(cache), "RESTIC_PASSWORD": PASSWORD}


def run_timed(procs_fn, server_pid: int | None) -> dict:
    """Start the processes ``procs_fn()`` returns, wait for all; wall time, CPU, load."""
    subprocess.run(["sync"], check=False)
    la = loadavg()
    srv0 = proc_cpu(server_pid)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    procs = procs_fn()
    codes = [p.wait() for p in procs]
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    for p in procs:
        p.logf.close()
    return {
        "seconds": wall,
        "client_cpu": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "server_cpu": proc_cpu(server_pid) - srv0,
        "loadavg_before": la,
        "returncodes": codes,
        "ok": all(c == 0 for c in codes),
    }


def bucket_bytes(server: SeaweedServer, bucket: str, prefix: str = "") -> int:
    c = server.client()
    total, token = 0, None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix}
        if token:
            kw["ContinuationToken"] = token
        page = c.list_objects_v2(**kw)
        total += sum(o["Size"] for o in page.get("Contents", ()))
        token = page.get("NextContinuationToken")
        if not token:
            return total


def one_round(tools: list[Tool], server: SeaweedServer, corpus: Path, work: Path, rnd: int,
              sample: int, seed: int) -> dict:
    res: dict[str, dict] = {t.name: {} for t in tools}
    repos = {}
    for t in tools:
        bucket = f"{t.name}-r{rnd}-{os.getpid()}"
        repos[t.name] = server.url(bucket, "repo") if t.name == "lbk" else server.url(bucket)
        res[t.name]["bucket"] = bucket
        cache = work / "cache" / f"{t.name}-r{rnd}"
        shutil.rmtree(cache, ignore_errors=True)
        r = run_timed(lambda: [t.popen(f"init-r{rnd}", repos[t.name], "init", cache=cache)], server.pid)
        if not r["ok"]:
            raise SystemExit(f"{t.name} init failed: see {t.logs}/{t.name}-init-r{rnd}.log")
    for step, args in (("backup1", ("backup", str(corpus))), ("backup2", ("backup", str(corpus)))):
        for t in tools:
            cache = work / "cache" / f"{t.name}-r{rnd}"
            log(f"round {rnd}: {t.name} {step}")
            res[t.name][step] = run_timed(lambda: [t.popen(f"{step}-r{rnd}", repos[t.name], *args, cache=cache)],
                                          server.pid)
    for t in tools:
        target = work / "restore" / t.name
        shutil.rmtree(target, ignore_errors=True)
        cache = work / "cache" / f"{t.name}-r{rnd}"
        log(f"round {rnd}: {t.name} restore")
        r = run_timed(lambda: [t.popen(f"restore-r{rnd}", repos[t.name], "restore", "latest", "--target",
                                       str(target), cache=cache)], server.pid)
        r["verify"] = verify_restore(corpus, target / str(corpus).lstrip("/"), sample, seed) if r["ok"] else None
        res[t.name]["restore"] = r
        shutil.rmtree(target, ignore_errors=True)
        res[t.name]["stored_bytes"] = bucket_bytes(server, res[t.name]["bucket"])
    return res


def concurrent_round(tools: list[Tool], server: SeaweedServer, corpus: Path, work: Path, rnd: int) -> dict:
    res = {}
    for t in tools:
        bucket = f"{t.name}-c{rnd}-{os.getpid()}"
        repo = server.url(bucket, "repo") if t.name == "lbk" else server.url(bucket)
        init_cache = work / "cache" / f"{t.name}-c{rnd}-init"
        r = run_timed(lambda: [t.popen(f"cinit-r{rnd}", repo, "init", cache=init_cache)], server.pid)
        if not r["ok"]:
            raise SystemExit(f"{t.name} init failed")
        log(f"round {rnd}: {SHARDS} concurrent {t.name} clients")

        def start() -> list[subprocess.Popen]:
            procs = []
            for i in range(SHARDS):
                cache = work / "cache" / f"{t.name}-c{rnd}-{i}"  # eight machines, eight caches
                procs.append(t.popen(f"client{i}-r{rnd}", repo, "backup", "--host", f"client{i}",
                                     str(corpus / f"shard{i}"), cache=cache))
            return procs

        res[t.name] = run_timed(start, server.pid)
        res[t.name]["stored_bytes"] = bucket_bytes(server, bucket)
    return res


# -- report -----------------------------------------------------------------------------


def fmt_ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "n/a"


def report(rounds: list[dict], conc: list[dict], corpus_bytes: int, corpus_files: int, meta: dict) -> str:
    def med(tool: str, step: str, key: str = "seconds") -> float | None:
        vals = [r[tool][step][key] for r in rounds if tool in r and r[tool][step].get("ok")]
        return statistics.median(vals) if vals else None

    def medc(tool: str, key: str = "seconds") -> float | None:
        vals = [c[tool][key] for c in conc if tool in c and c[tool].get("ok")]
        return statistics.median(vals) if vals else None

    lines = [
        f"corpus: {corpus_files} files, {corpus_bytes / MiB:.0f} MiB; server: SeaweedFS weed mini "
        f"(GOMEMLIMIT {meta['gomemlimit']}) on 127.0.0.1; {os.cpu_count()} CPUs; rounds: {len(rounds)}",
        "",
        f"{'step':<28} {'lbk':>10} {'restic':>10} {'lbk/restic':>11}   {'load avg (lbk/restic)':>22}"
        f"   {'cpu s client lbk/restic':>24}   {'cpu s server lbk/restic':>24}",
    ]
    for step, title in (("backup1", "first backup (s)"), ("backup2", "unchanged backup (s)"),
                        ("restore", "restore latest (s)")):
        a, b = med("lbk", step), med("restic", step)
        la = "/".join(f"{med(t, step, 'loadavg_before') or 0:.1f}" for t in ("lbk", "restic"))
        cc = "/".join(f"{med(t, step, 'client_cpu') or 0:.1f}" for t in ("lbk", "restic"))
        sc = "/".join(f"{med(t, step, 'server_cpu') or 0:.1f}" for t in ("lbk", "restic"))
        lines.append(f"{title:<28} {a or 0:>10.2f} {b or 0:>10.2f} {fmt_ratio(a, b):>11}   {la:>22}   {cc:>24}   {sc:>24}")
    sa = statistics.median([r["lbk"]["stored_bytes"] for r in rounds]) if rounds and "lbk" in rounds[0] else None
    sb = statistics.median([r["restic"]["stored_bytes"] for r in rounds]) if rounds and "restic" in rounds[0] else None
    lines.append(f"{'bucket size (MiB)':<28} {(sa or 0) / MiB:>10.1f} {(sb or 0) / MiB:>10.1f} {fmt_ratio(sa, sb):>11}")
    if conc:
        a, b = medc("lbk"), medc("restic")
        la = "/".join(f"{medc(t, 'loadavg_before') or 0:.1f}" for t in ("lbk", "restic"))
        cc = "/".join(f"{medc(t, 'client_cpu') or 0:.1f}" for t in ("lbk", "restic"))
        sc = "/".join(f"{medc(t, 'server_cpu') or 0:.1f}" for t in ("lbk", "restic"))
        lines.append(f"{f'{SHARDS} clients at once (s)':<28} {a or 0:>10.2f} {b or 0:>10.2f} {fmt_ratio(a, b):>11}"
                     f"   {la:>22}   {cc:>24}   {sc:>24}")
        ta = corpus_bytes / MiB / a if a else None
        tb = corpus_bytes / MiB / b if b else None
        lines.append(f"{f'  aggregate MiB/s':<28} {ta or 0:>10.1f} {tb or 0:>10.1f} {fmt_ratio(tb, ta):>11}"
                     "   (ratio as time: restic MiB/s / lbk MiB/s)")
        s1 = med("lbk", "backup1")
        if s1 and a:
            lines.append(f"{'  lbk: 8 clients vs 1':<28} {corpus_bytes / MiB / s1:>10.1f} MiB/s alone -> "
                         f"{ta:.1f} MiB/s with {SHARDS} clients")
    problems = []
    for r in rounds:
        for tool, steps in r.items():
            for step, v in steps.items():
                if isinstance(v, dict) and (not v.get("ok") or v.get("verify")):
                    problems.append(f"{tool} {step}: exit {v.get('returncodes')} {v.get('verify') or ''}")
    for c in conc:
        for tool, v in c.items():
            if not v.get("ok"):
                problems.append(f"{tool} concurrent clients: exit codes {v['returncodes']}")
    if problems:
        lines += ["", "PROBLEMS:"] + [f"  {p}" for p in problems]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lbk-s3-bench"))
    ap.add_argument("--corpus-mb", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--lbk", default=str(Path(sys.executable).parent / "lbk"))
    ap.add_argument("--restic", default=shutil.which("restic") or "restic")
    ap.add_argument("--gomemlimit", default="512MiB", help="GOMEMLIMIT for weed (default 512MiB)")
    ap.add_argument("--verify-sample", type=int, default=300)
    ap.add_argument("--skip-concurrent", action="store_true")
    ap.add_argument("--out", type=Path, help="write every figure as JSON")
    a = ap.parse_args()

    a.workdir.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(a.workdir, a.corpus_mb, a.seed)
    files, size = tree_stats(corpus)
    work = a.workdir / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()

    server = SeaweedServer(work / "seaweed", mem_limit=a.gomemlimit)
    log(f"starting weed mini (GOMEMLIMIT={a.gomemlimit})")
    server.start(bucket=None)
    env = dict(os.environ)
    for k, v in isolated_aws_env(work, server.access_key, server.secret_key).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    tools: list[Tool] = [Lbk("lbk", [a.lbk], env, work), Restic("restic", [a.restic], env, work)]
    rounds, conc = [], []
    try:
        log("warming the page cache")
        warm(corpus)
        for rnd in range(a.rounds):
            rounds.append(one_round(tools, server, corpus, work, rnd, a.verify_sample, a.seed))
            if not a.skip_concurrent:
                conc.append(concurrent_round(tools, server, corpus, work, rnd))
        rss = server.rss_mb()
    finally:
        server.stop()
    meta = {"gomemlimit": a.gomemlimit, "server_rss_mb_at_end": rss, "corpus_files": files, "corpus_bytes": size,
            "lbk": subprocess.run([a.lbk, "--version"], capture_output=True, text=True).stdout.strip(),
            "restic": subprocess.run([a.restic, "version"], capture_output=True, text=True).stdout.strip()}
    text = report(rounds, conc, size, files, meta)
    print(text)
    if a.out:
        a.out.write_text(json.dumps({"meta": meta, "rounds": rounds, "concurrent": conc}, indent=1))
    bad = any(not v.get("ok") or v.get("verify") for r in rounds for s in r.values() for v in s.values()
              if isinstance(v, dict)) or any(not v.get("ok") for c in conc for v in c.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
