#!/usr/bin/env python3
"""Benchmark of `lbk watch`: save-to-commit latency, CPU under load, RSS and start time
on a large tree, idle CPU.

Every part runs the real `lbk watch PATH --json` as a child process (default settings
unless --watch-arg says otherwise) against a local repository made with `lbk init` under
the work dir, with the real KDF (LBK_INSECURE_FAST_KDF is removed from the environment),
LBK_PASSWORD and a private LBK_CACHE_DIR. The daemon's JSON Lines are read as they
arrive and stamped with this process's monotonic clock.

Parts (--parts, default all of them, in this order):

  latency  N saves (--saves, default 1000), --spacing seconds apart (default 1.2 s:
           every save is isolated, so it is committed at once after its debounce).
           A save is open/write/close of a small file (a pool of files that are in the
           baseline, overwritten round-robin; every save has a unique size, so its own
           `captured` event is recognised). Latency = close() returning -> arrival of
           the `committed` event that holds the path, after the `captured` event of that
           version. The daemon's own `latency` field (per commit) is shown beside it.
  stream   the same at --stream-rate saves/s (default 20) to different files, for
           --stream-saves saves (default 1000): shows batching by --commit-interval.
  load     --load-rate files/s (default 50) saved for --load-seconds (default 60): the
           daemon's CPU seconds (utime+stime from /proc/<pid>/stat) over the run.
  tree     a tree of --tree-files files in --tree-dirs directories (default 100,000 in
           10,000; built once under the work dir and reused): start time (process start
           to the baseline's `committed` event), CPU, bytes read and RSS (VmHWM, VmRSS
           from /proc/<pid>/status), cold (fresh repository and cache: everything is
           read) and warm (second start, same cache: files-cache hits); then, on the warm
           daemon, --tree-idle seconds of idle CPU and --tree-saves isolated saves.
  idle     --idle-seconds (default 60) with nothing changing: CPU and context switches
           (wake-ups) of the daemon, after --settle seconds past its baseline.

The machine is shared: every part records the load average and the CPU time the rest
of the machine used meanwhile (from /proc/stat), and the table prints both.

    /work/venv/bin/python bench/watch_bench.py --quick            # smoke run, ~4 min
    /work/venv/bin/python bench/watch_bench.py --out watch.json   # everything, full size
    /work/venv/bin/python bench/watch_bench.py --parts tree,idle

Standard library only; Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "lbk-bench-password"  # a benchmark, not a secret
CLK_TCK = os.sysconf("SC_CLK_TCK")
PARTS = ("latency", "stream", "load", "tree", "idle")
TREE_FORMAT = 1  # bump when the tree recipe changes
SCRATCH = "bench-scratch.txt"  # the one file of the big tree that the tree part overwrites


WALL_OFFSET = time.time() - time.monotonic()  # monotonic -> wall clock


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- /proc -----------------------------------------------------------------------------

def proc_cpu(pid: int) -> float | None:
    """utime+stime (all threads) plus waited-for children's, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14-17
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def proc_status(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS"):
                    out[k] = int(v.split()[0]) * 1024
                elif k == "Threads":
                    out[k] = int(v)
    except OSError:
        pass
    return out


def proc_io(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = int(v)
    except OSError:
        pass
    return out


def proc_ctxt(pid: int) -> int | None:
    """Context switches of every thread (a thread that never wakes adds none)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split(":")[1])
        except OSError:
            continue
    return total


def proc_sched(pid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for a CPU), summed over the threads
    alive now (/proc/PID/task/*/schedstat). The wait is what a busy machine costs the
    daemon (it runs at nice 10 by default)."""
    run = wait = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                a, b, _ = f.read().split()
            run += int(a)
            wait += int(b)
        except (OSError, ValueError):
            continue
    return run / 1e9, wait / 1e9


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Window:
    """A measured stretch of time: wall, the daemon's CPU, and what everyone else used."""

    def __init__(self, pid: int):
        self.pid = pid
        self.t = time.monotonic()
        self.cpu = proc_cpu(pid)
        self.busy = machine_busy()
        self.mine = self_cpu()
        self.ctxt = proc_ctxt(pid)
        self.sched = proc_sched(pid)
        self.load = loadavg()

    def end(self) -> dict:
        wall = time.monotonic() - self.t
        cpu = (proc_cpu(self.pid) or 0.0) - (self.cpu or 0.0)
        busy = machine_busy() - self.busy
        mine = self_cpu() - self.mine
        ctxt = proc_ctxt(self.pid)
        others = max(0.0, busy - cpu - mine)
        sched = proc_sched(self.pid)
        runq = None if sched is None or self.sched is None else max(0.0, sched[1] - self.sched[1])
        return {
            "wall_s": round(wall, 3),
            "daemon_cpu_s": round(cpu, 3),
            "daemon_cpu_pct_of_core": round(100 * cpu / wall, 2) if wall > 0 else None,
            "daemon_ctxt_switches": None if ctxt is None or self.ctxt is None else ctxt - self.ctxt,
            "daemon_runqueue_wait_s": None if runq is None else round(runq, 3),
            "bench_cpu_s": round(mine, 3),
            "others_cpu_cores": round(others / wall, 2) if wall > 0 else None,
            "load_before": self.load,
            "load_after": loadavg(),
        }


# -- statistics ---------------------------------------------------------------------------

def pct(sorted_vals: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not sorted_vals:
        return None
    k = max(0, math.ceil(p / 100 * len(sorted_vals)) - 1)
    return sorted_vals[k]


def stats(vals: list[float]) -> dict:
    s = sorted(vals)
    if not s:
        return {"n": 0}
    return {"n": len(s), "p50": round(pct(s, 50), 4), "p90": round(pct(s, 90), 4),
            "p99": round(pct(s, 99), 4), "max": round(s[-1], 4), "mean": round(sum(s) / len(s), 4)}


# -- the daemon ---------------------------------------------------------------------------

class Daemon:
    """`lbk watch PATH --json` in the background; its JSON Lines stamped as they arrive."""

    def __init__(self, bench: "Bench", name: str, repo: Path, path: Path, cache: Path):
        self.name = name
        logs = bench.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.stderr_path = logs / f"{name}.stderr"
        self.jsonl_path = logs / f"{name}.jsonl"
        cmd = [*bench.wrap, bench.lbk, "-r", str(repo), "watch", str(path), "--json", *bench.watch_args]
        self.cmd = cmd
        self.events: list[tuple[float, dict]] = []
        self.cond = threading.Condition()
        self.eof = False
        self.baseline: dict | None = None  # /proc figures taken when the baseline commit arrived
        self.cache = cache
        self.scan_start: dict | None = None  # figures taken when the state file first said "scanning"
        self.sampled_rss_max = 0
        self.thread_sched: dict[str, tuple[float, float]] = {}
        self._busy0, self._mine0, self._load0 = machine_busy(), self_cpu(), loadavg()
        with open(self.stderr_path, "wb") as err:
            self.t_spawn = time.monotonic()
            self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=bench.env(cache))
        self.pid = self.p.pid
        self._t = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._t.start()
        self._s = threading.Thread(target=self._sample_start, name=f"sample-{name}", daemon=True)
        self._s.start()

    def _phase(self) -> str | None:
        for sd in self.cache.glob("watch-*/state.json"):
            try:
                return json.loads(sd.read_text()).get("phase")
            except (OSError, ValueError):
                return None
        return None

    def _sample_sched(self) -> None:
        """Latest (run, wait) per thread; threads that end keep their last sample."""
        try:
            tasks = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return
        for t in tasks:
            try:
                with open(f"/proc/{self.pid}/task/{t}/schedstat") as f:
                    a, b, _ = f.read().split()
                self.thread_sched[t] = (int(a) / 1e9, int(b) / 1e9)
            except (OSError, ValueError):
                continue

    def _sample_start(self) -> None:
        """Until the baseline is committed: sample VmRSS every 50 ms, and note when the scan
        starts (the state file's phase). At that moment the peak so far (imports, the
        password KDF, the index, the inotify watches) is recorded and VmHWM is reset
        (/proc/PID/clear_refs, root or same user), so the VmHWM taken at the baseline is
        the scan's own peak."""
        while self.baseline is None and self.p.poll() is None:
            self._sample_sched()
            st = proc_status(self.pid)
            self.sampled_rss_max = max(self.sampled_rss_max, st.get("VmRSS", 0))
            if self.scan_start is None and self._phase() == "scanning":
                t = time.monotonic()
                st = proc_status(self.pid)
                reset = False
                try:
                    with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                        f.write("5")
                    reset = True
                except OSError:
                    pass
                self.scan_start = {"t_s": round(t - self.t_spawn, 3), "cpu_s": proc_cpu(self.pid),
                                   "VmHWM": st.get("VmHWM"), "VmRSS": st.get("VmRSS"), "hwm_reset": reset}
            time.sleep(0.05)

    def _read(self) -> None:
        with open(self.jsonl_path, "wb") as out:
            for line in self.p.stdout:
                t = time.monotonic()
                try:
                    ev = json.loads(line)
                except ValueError:
                    ev = {"message_type": "unparsable", "raw": line.decode(errors="replace")}
                if self.baseline is None and ev.get("message_type") == "committed":
                    self.baseline = {"t": t, "cpu_s": proc_cpu(self.pid), **proc_status(self.pid),
                                     "io": proc_io(self.pid), "busy": machine_busy(), "mine": self_cpu()}
                out.write(line)
                with self.cond:
                    self.events.append((t, ev))
                    self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def stderr_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_until(self, pred, timeout: float, what: str):
        """Wait until pred(events) returns something truthy; return it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                r = pred(self.events)
                if r:
                    return r
                if self.eof or self.p.poll() is not None:
                    raise RuntimeError(f"{self.name}: watch exited ({self.p.poll()}) while waiting for "
                                       f"{what}; stderr:\n{self.stderr_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.name}: timed out after {timeout:.0f} s waiting for {what}; "
                                       f"last events: {[e for _, e in self.events[-3:]]}")
                self.cond.wait(min(left, 0.5))

    def wait_baseline(self, timeout: float) -> dict:
        self.wait_until(lambda _evs: self.baseline is not None, timeout, "the baseline commit")
        self._s.join(timeout=1)
        b = dict(self.baseline)
        wall = b.pop("t") - self.t_spawn
        b["start_s"] = round(wall, 3)
        others = b.pop("busy") - self._busy0 - (b.get("cpu_s") or 0.0) - (b.pop("mine") - self._mine0)
        b["others_cpu_cores"] = round(max(0.0, others) / wall, 2) if wall > 0 else None
        b["load_before"], b["load_after"] = self._load0, loadavg()
        b["sampled_VmRSS_max"] = self.sampled_rss_max
        # all threads' time on a CPU and runnable-but-waiting, up to the baseline (sampled
        # every 50 ms, so a thread's last 50 ms may be missing)
        b["threads_seen"] = len(self.thread_sched)
        b["sched_run_s"] = round(sum(r for r, _ in self.thread_sched.values()), 2)
        b["runqueue_wait_s"] = round(sum(w for _, w in self.thread_sched.values()), 2)
        b["scan_start"] = self.scan_start
        ss = self.scan_start
        # the peak of the whole start: before the scan (KDF) and during it
        b["peak_VmHWM"] = max(b.get("VmHWM") or 0, (ss or {}).get("VmHWM") or 0) or None
        b["scan_VmHWM"] = b.get("VmHWM") if ss and ss["hwm_reset"] else None
        return b

    def warnings(self) -> list[str]:
        return [e.get("message", "") for _, e in self.events if e.get("message_type") in ("warning", "error")]

    def stop(self, timeout: float = 120.0) -> dict:
        """SIGTERM (flush, commit, exit 0) and wait."""
        t = time.monotonic()
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
            log(f"{self.name}: did not stop within {timeout:.0f} s of SIGTERM; killed")
        self._t.join(timeout=10)
        return {"exit_code": rc, "stop_s": round(time.monotonic() - t, 3)}

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


# -- saves and their latencies ----------------------------------------------------------------

@dataclass
class Save:
    path: str
    size: int
    t_close: float
    late_s: float  # how far behind its schedule the save was written
    sched_wait: float | None = None  # the daemon's summed runqueue wait just before the write


def content(i: int, size: int, rnd: random.Random) -> bytes:
    head = f"lbk watch bench save {i}\n".encode()
    return (head + rnd.randbytes(max(0, size - len(head))))[:size]


def make_pool(d: Path, n: int) -> list[str]:
    d.mkdir(parents=True, exist_ok=True)
    pool = []
    for k in range(n):
        p = d / f"doc{k:05d}.txt"
        p.write_bytes(b"initial version\n")
        pool.append(str(p))
    return pool


def do_saves(pool: list[str], n: int, interval: float, size_base: int = 256, seed: int = 1,
             pid: int | None = None) -> list[Save]:
    """n saves, one every `interval` seconds (an absolute schedule), round-robin over pool.
    Save i has size size_base + i, unique within the run. With pid, the daemon's runqueue
    wait so far is sampled before each write."""
    rnd = random.Random(seed)
    saves = []
    t0 = time.monotonic() + 0.05
    for i in range(n):
        target = t0 + i * interval
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        path = pool[i % len(pool)]
        size = size_base + i
        data = content(i, size, rnd)
        sched = proc_sched(pid) if pid else None
        with open(path, "wb") as f:
            f.write(data)
        t_close = time.monotonic()
        saves.append(Save(path, size, t_close, max(0.0, t_close - target), sched[1] if sched else None))
    return saves


def match(events: list[tuple[float, dict]], saves: list[Save]) -> list[dict | None]:
    """Per save: its `captured` event (same path and size, after the close) and the first
    `committed` event holding the path after that; None while not (yet) committed."""
    caps: dict[tuple[str, int], list[int]] = {}
    commits: dict[str, list[int]] = {}
    for i, (_t, ev) in enumerate(events):
        mt = ev.get("message_type")
        if mt == "captured" and not ev.get("deleted"):
            caps.setdefault((ev.get("path"), ev.get("size")), []).append(i)
        elif mt == "committed":
            for p in ev.get("paths", ()):
                commits.setdefault(p, []).append(i)
    out: list[dict | None] = []
    for s in saves:
        found = None
        for ci in caps.get((s.path, s.size), ()):
            if events[ci][0] >= s.t_close:
                found = ci
                break
        if found is None:
            out.append(None)
            continue
        cl = commits.get(s.path, [])
        k = bisect_right(cl, found)
        if k == len(cl):
            out.append(None)
            continue
        t_commit, ev = events[cl[k]]
        out.append({"latency": t_commit - s.t_close, "capture_latency": events[found][0] - s.t_close,
                    "commit_index": cl[k], "daemon_latency": ev.get("latency"), "batch": ev.get("count")})
    return out


def slow_saves(m: list[dict | None], waits: list[float | None], threshold: float) -> dict:
    """Isolated saves slower than threshold against the others: how long the daemon's
    threads waited for a CPU between that save and the next (a busy machine), and how
    long from close to the `captured` event (debounce + wake-up + read) versus from
    `captured` to `committed` (the commit: trees, pack, index, snapshot, fsyncs)."""
    slow = [(x, w) for x, w in zip(m, waits) if x and x["latency"] >= threshold]
    rest = [(x, w) for x, w in zip(m, waits) if x and x["latency"] < threshold]

    def mean(vals):
        vals = [v for v in vals if v is not None]
        return round(1000 * sum(vals) / len(vals), 1) if vals else None

    def part(group):
        return {"count": len(group), "mean_latency_ms": mean([x["latency"] for x, _ in group]),
                "mean_close_to_captured_ms": mean([x["capture_latency"] for x, _ in group]),
                "mean_captured_to_committed_ms": mean([x["latency"] - x["capture_latency"] for x, _ in group]),
                "mean_runqueue_wait_ms": mean([w for _, w in group])}

    return {"threshold_s": threshold, "slow": part(slow), "rest": part(rest)}


def run_saves(d: Daemon, pool: list[str], n: int, interval: float, drain_timeout: float = 120.0) -> dict:
    """Save, wait until every save is committed (or the timeout), and measure."""
    win = Window(d.pid)
    n_events_before = len(d.events)
    saves = do_saves(pool, n, interval, pid=d.pid)
    t_last = time.monotonic()
    try:
        d.wait_until(lambda evs: match(evs, saves[-1:])[0], drain_timeout, "the last save's commit")
    except RuntimeError as e:
        log(str(e))
    time.sleep(0.5)  # a straggler (a retried torn read) would come now
    end_sched = proc_sched(d.pid)
    # the daemon's runqueue wait between one save and the next (the last: until the drain)
    marks = [s.sched_wait for s in saves] + [end_sched[1] if end_sched else None]
    waits = [None if a is None or b is None else max(0.0, b - a) for a, b in zip(marks, marks[1:])]
    window = win.end()
    with d.cond:
        events = list(d.events)
    m = match(events, saves)
    got = [x for x in m if x]
    commit_idx = sorted({x["commit_index"] for x in got})
    daemon_lat = [events[i][1].get("latency", 0.0) for i in commit_idx]
    batches = [events[i][1].get("count", 0) for i in commit_idx]
    all_commits = [e for _, e in events[n_events_before:] if e.get("message_type") == "committed"]
    first_close, last_close = saves[0].t_close, saves[-1].t_close
    return {
        "saves": n,
        "interval_s": interval,
        "achieved_rate_per_s": round((n - 1) / (last_close - first_close), 2) if n > 1 and last_close > first_close else None,
        "max_schedule_lag_s": round(max(s.late_s for s in saves), 4),
        "committed": len(got),
        "missed": [{"path": s.path, "size": s.size} for s, x in zip(saves, m) if x is None][:20],
        "missed_count": sum(1 for x in m if x is None),
        "latency_s": stats([x["latency"] for x in got]),
        "close_to_captured_s": stats([x["capture_latency"] for x in got]),
        "daemon_latency_per_commit_s": stats(daemon_lat),
        "commits": len(all_commits),
        "paths_per_commit": stats(batches),
        "drain_s": round(time.monotonic() - t_last, 3),
        "window": window,
        "cpu_ms_per_save": round(1000 * window["daemon_cpu_s"] / n, 2) if n else None,
        "slow_saves": slow_saves(m, waits, 1.0) if interval >= 0.5 else None,
        "runqueue_wait_ms_per_interval": [None if w is None else round(1000 * w, 1) for w in waits],
        "latencies_ms": [round(1000 * x["latency"], 2) if x else None for x in m],
        "close_to_captured_ms": [round(1000 * x["capture_latency"], 2) if x else None for x in m],
        # wall-clock time of each close (to line up with other tools' logs, e.g. strace -ttt)
        "close_wall_times": [round(s.t_close + WALL_OFFSET, 4) for s in saves],
        "warnings": d.warnings()[:20],
    }


# -- the large tree ---------------------------------------------------------------------------

def build_tree(root: Path, n_files: int, n_dirs: int, rebuild: bool) -> dict:
    """n_dirs leaf directories (top/sub, about sqrt(n_dirs) each), n_files files spread
    evenly, 0-4 KiB each (half text, half random), plus SCRATCH at the top. Reused when the
    manifest next to it matches."""
    manifest_path = root.with_name(root.name + ".json")
    want = {"format": TREE_FORMAT, "files": n_files, "dirs": n_dirs}
    if not rebuild and manifest_path.exists() and root.is_dir():
        try:
            m = json.loads(manifest_path.read_text())
            if all(m.get(k) == v for k, v in want.items()):
                log(f"reusing the tree {root} ({n_files:,} files in {n_dirs:,} directories)")
                m["reused"] = True
                return m
        except ValueError:
            pass
    log(f"building {root}: {n_files:,} files in {n_dirs:,} directories")
    t = time.monotonic()
    manifest_path.unlink(missing_ok=True)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    rnd = random.Random(4242)
    top = max(1, round(math.sqrt(n_dirs)))
    leaves = []
    for a in range(top):
        for b in range(n_dirs // top + (1 if a < n_dirs % top else 0)):
            leaves.append(root / f"d{a:03d}" / f"s{b:03d}")
    words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9))) for _ in range(2000)]
    total = 0
    for k, leaf in enumerate(leaves):
        leaf.mkdir(parents=True, exist_ok=True)
        per = n_files // len(leaves) + (1 if k < n_files % len(leaves) else 0)
        for j in range(per):
            size = min(4096, int(rnd.expovariate(1 / 1200)))
            if j % 2:
                data = rnd.randbytes(size)
            else:
                data = b" ".join(rnd.choices(words, k=size // 5 + 1))[:size]
            (leaf / f"f{j:03d}.dat").write_bytes(data)
            total += size
    (root / SCRATCH).write_bytes(b"scratch\n")
    m = {**want, "bytes": total, "leaf_dirs": len(leaves), "dirs_total": len(leaves) + top + 1,
         "build_s": round(time.monotonic() - t, 1)}
    manifest_path.write_text(json.dumps(m))
    log(f"built in {m['build_s']} s ({total / 2**20:.0f} MiB)")
    m["reused"] = False
    return m


def du(path: Path) -> int:
    total = 0
    for dp, _dn, fn in os.walk(path):
        for f in fn:
            try:
                total += os.lstat(os.path.join(dp, f)).st_size
            except OSError:
                pass
    return total


# -- the benchmark ---------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.workdir = Path(args.workdir).resolve()
        self.lbk = find_lbk(args.lbk)
        self.watch_args = list(args.watch_arg or [])
        self.wrap = shlex.split(args.wrap or "")  # must exec lbk (same pid), as nice and ionice do
        self.daemons: list[Daemon] = []

    def env(self, cache: Path) -> dict:
        e = {k: v for k, v in os.environ.items()
             if k not in ("LBK_INSECURE_FAST_KDF", "LBK_REPOSITORY", "LBK_PASSWORD_FILE", "LBK_PASSWORD_COMMAND")}
        e["LBK_PASSWORD"] = PASSWORD
        e["LBK_CACHE_DIR"] = str(cache)
        e["XDG_CONFIG_HOME"] = str(self.workdir / "xdg" / "config")  # keep the user's config out of it
        e["XDG_DATA_HOME"] = str(self.workdir / "xdg" / "data")
        return e

    def fresh(self, part: str) -> Path:
        d = self.workdir / "run" / part
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def init_repo(self, repo: Path, cache: Path) -> float:
        t = time.monotonic()
        r = subprocess.run([self.lbk, "-r", str(repo), "init"], env=self.env(cache), capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"lbk init failed ({r.returncode}): {r.stderr.strip()}")
        return round(time.monotonic() - t, 3)

    def start(self, name: str, repo: Path, path: Path, cache: Path, timeout: float = 300.0) -> tuple[Daemon, dict]:
        d = Daemon(self, name, repo, path, cache)
        self.daemons.append(d)
        log(f"{name}: started watch (pid {d.pid}); waiting for the baseline")
        b = d.wait_baseline(timeout)
        log(f"{name}: baseline committed after {b['start_s']:.2f} s")
        return d, b

    def small_setup(self, part: str, pool_size: int) -> tuple[Path, Path, Path, list[str], float]:
        d = self.fresh(part)
        repo, cache, src = d / "repo", d / "cache", d / "src"
        init_s = self.init_repo(repo, cache)
        pool = make_pool(src / "docs", pool_size)
        return repo, cache, src, pool, init_s

    # -- parts ---------------------------------------------------------------------------------
    def part_saves(self, part: str, n: int, interval: float, pool_size: int) -> dict:
        repo, cache, src, pool, init_s = self.small_setup(part, pool_size)
        d, base = self.start(part, repo, src, cache)
        try:
            time.sleep(self.args.settle)
            log(f"{part}: {n} saves, {interval:g} s apart, over {len(pool)} files "
                f"(~{n * interval:.0f} s)")
            res = run_saves(d, pool, n, interval)
        finally:
            stop = d.stop()
        lat = res["latency_s"]
        log(f"{part}: {res['committed']}/{n} committed; latency p50 {lat.get('p50')} p99 {lat.get('p99')} "
            f"max {lat.get('max')} s; daemon CPU {res['window']['daemon_cpu_s']} s")
        return {"init_s": init_s, "pool_files": len(pool), "baseline": base, **res, **stop}

    def part_latency(self) -> dict:
        a = self.args
        return self.part_saves("latency", a.saves, a.spacing, a.pool)

    def part_stream(self) -> dict:
        a = self.args
        return self.part_saves("stream", a.stream_saves, 1.0 / a.stream_rate,
                               min(a.stream_saves, max(a.pool, int(a.stream_rate * 10))))

    def part_load(self) -> dict:
        a = self.args
        n = int(a.load_rate * a.load_seconds)
        r = self.part_saves("load", n, 1.0 / a.load_rate, min(n, max(a.pool, int(a.load_rate * 10))))
        r["cpu_pct_of_core"] = r["window"]["daemon_cpu_pct_of_core"]
        return r

    def part_idle(self) -> dict:
        a = self.args
        repo, cache, src, pool, init_s = self.small_setup("idle", 100)
        d, base = self.start("idle", repo, src, cache)
        try:
            time.sleep(a.settle)
            n_ev = len(d.events)
            log(f"idle: measuring {a.idle_seconds:g} s with nothing changing")
            win = Window(d.pid)
            time.sleep(a.idle_seconds)
            w = win.end()
            events = [e for _, e in d.events[n_ev:]]
        finally:
            stop = d.stop()
        log(f"idle: daemon CPU {w['daemon_cpu_s']} s over {w['wall_s']} s, {w['daemon_ctxt_switches']} context switches")
        return {"init_s": init_s, "baseline": base, "idle_s": a.idle_seconds, "window": w,
                "wakeups_per_s": round(w["daemon_ctxt_switches"] / w["wall_s"], 2) if w["daemon_ctxt_switches"] is not None else None,
                "events_while_idle": len(events), **stop}

    def part_tree(self) -> dict:
        a = self.args
        root = self.workdir / f"tree-{a.tree_files}-{a.tree_dirs}"
        manifest = build_tree(root, a.tree_files, a.tree_dirs, a.rebuild_tree)
        d0 = self.fresh("tree")
        repo, cache = d0 / "repo", d0 / "cache"
        init_s = self.init_repo(repo, cache)
        out = {"tree": manifest, "init_s": init_s}
        for phase in ("cold", "warm"):
            d, base = self.start(f"tree-{phase}", repo, root, cache, timeout=a.tree_timeout)
            ss = base.get("scan_start") or {}
            r: dict = {"start_s": base["start_s"], "baseline_cpu_s": base.get("cpu_s"),
                       "scan_started_s": ss.get("t_s"), "cpu_before_scan_s": ss.get("cpu_s"),
                       "pre_scan_VmHWM": ss.get("VmHWM"), "scan_VmHWM": base.get("scan_VmHWM"),
                       "peak_VmHWM": base.get("peak_VmHWM"), "baseline_VmRSS": base.get("VmRSS"),
                       "sampled_VmRSS_max": base.get("sampled_VmRSS_max"),
                       "baseline_read_bytes": base.get("io", {}).get("rchar"),
                       # what actually came from / went to the block device (the rest: page cache)
                       "baseline_storage_read_bytes": base.get("io", {}).get("read_bytes"),
                       "baseline_storage_write_bytes": base.get("io", {}).get("write_bytes"),
                       "threads": base.get("Threads"), "threads_seen": base.get("threads_seen"),
                       "runqueue_wait_s": base.get("runqueue_wait_s"),
                       "baseline_count": next((e.get("count") for _, e in d.events
                                               if e.get("message_type") == "committed"), None),
                       "start_window": {k: base.get(k) for k in ("others_cpu_cores", "load_before", "load_after")}}
            try:
                time.sleep(a.settle)
                st = proc_status(d.pid)
                r["settled_VmRSS"], r["settled_VmHWM"] = st.get("VmRSS"), st.get("VmHWM")
                if phase == "warm":
                    if a.tree_idle > 0:
                        log(f"tree-warm: idle for {a.tree_idle:g} s")
                        w = Window(d.pid)
                        time.sleep(a.tree_idle)
                        r["idle"] = w.end()
                    if a.tree_saves > 0:
                        log(f"tree-warm: {a.tree_saves} saves of {SCRATCH}, {a.spacing:g} s apart")
                        r["saves"] = run_saves(d, [str(root / SCRATCH)], a.tree_saves, a.spacing)
                    st = proc_status(d.pid)
                    r["final_VmRSS"], r["final_VmHWM"] = st.get("VmRSS"), st.get("VmHWM")
                r["warnings"] = d.warnings()[:20]
            finally:
                r.update(d.stop(timeout=max(120.0, a.tree_timeout / 2)))
            log(f"tree-{phase}: start {r['start_s']:.2f} s (scan from {r['scan_started_s']} s), baseline CPU "
                f"{r['baseline_cpu_s']} s, peak VmHWM {fmt_mib(r['peak_VmHWM'])} (scan {fmt_mib(r['scan_VmHWM'])}), "
                f"read {fmt_mib(r['baseline_read_bytes'])}")
            out[phase] = r
        out["repo_bytes"] = du(repo)
        return out

    def run(self) -> dict:
        self.workdir.mkdir(parents=True, exist_ok=True)
        results: dict = {"meta": meta(self), "parts": {}}
        for part in self.args.parts:
            log(f"== {part} (load average {' '.join(map(str, loadavg()))})")
            try:
                results["parts"][part] = getattr(self, f"part_{part}")()
            except Exception as e:  # report and go on with the next part
                log(f"{part}: FAILED: {e}")
                results["parts"][part] = {"error": str(e)}
            finally:
                for d in self.daemons:
                    d.kill()
                self.daemons.clear()
        results["meta"]["load_end"] = loadavg()
        results["targets"] = targets(results["parts"])
        return results


def find_lbk(explicit: str | None) -> str:
    if explicit:
        return explicit
    if os.environ.get("LBK_BIN"):
        return os.environ["LBK_BIN"]
    sibling = Path(sys.executable).parent / "lbk"
    if sibling.exists():
        return str(sibling)
    venv = Path(__file__).resolve().parent.parent.parent / "venv" / "bin" / "lbk"
    if venv.exists():
        return str(venv)
    return shutil.which("lbk") or "lbk"


def meta(b: Bench) -> dict:
    def run(cmd, cwd=None):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    src = Path(__file__).resolve().parent.parent
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f.readline().split(":")[1].strip()
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "lbk": b.lbk,
        "lbk_version": run([b.lbk, "--version"]),
        "lbk_commit": run(["git", "rev-parse", "--short", "HEAD"], cwd=src),
        "lbk_tree_dirty": bool(run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src)),
        "watch_args": b.watch_args,
        "wrap": b.wrap,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "memory": mem,
        "load_start": loadavg(),
        "workdir": str(b.workdir),
        "args": {k: v for k, v in vars(b.args).items()},
    }


def targets(parts: dict) -> list[dict]:
    out = []
    lat = parts.get("latency", {})
    if "latency_s" in lat:
        p99 = lat["latency_s"].get("p99")
        out.append({"target": "save-to-commit p99 < 1 s (isolated saves, defaults)", "value": p99,
                    "ok": p99 is not None and p99 < 1.0 and not lat["missed_count"]})
    st = parts.get("stream", {})
    if "latency_s" in st:
        p99 = st["latency_s"].get("p99")
        # under a stream, a save waits its debounce and then up to --commit-interval for the
        # next batch: with the defaults that is up to 0.5 + 1 s by design
        out.append({"target": "save-to-commit p99 < 1 s (stream of saves, defaults; design bound 1.5 s)",
                    "value": p99, "ok": p99 is not None and p99 < 1.0 and not st["missed_count"]})
    idle = parts.get("idle", {})
    if "window" in idle:
        cpu = idle["window"]["daemon_cpu_s"]
        # /proc counts in ticks of 1/CLK_TCK s: one tick over a minute is noise, more is not
        out.append({"target": f"idle CPU effectively 0 (<= 1 tick over {idle['idle_s']:g} s)", "value": cpu,
                    "ok": cpu <= 1.0 / CLK_TCK + 1e-9})
    tree = parts.get("tree", {})
    for phase in ("cold", "warm"):
        r = tree.get(phase)
        if r:
            hwm = max(x or 0 for x in (r.get("peak_VmHWM"), r.get("settled_VmHWM"), r.get("final_VmHWM")))
            out.append({"target": f"RSS < 150 MB with {tree['tree']['files']:,} files ({phase} start, VmHWM)",
                        "value": hwm, "ok": hwm < 150e6})
    return out


# -- output ---------------------------------------------------------------------------------

def fmt_mib(v) -> str:
    return "n/a" if v is None else f"{v / 2**20:.1f} MiB"


def fmt_s(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f} s"


def fmt_ms(v) -> str:
    return "n/a" if v is None else f"{1000 * v:.0f} ms"


def fmt_lat(s: dict) -> str:
    if not s or not s.get("n"):
        return "n/a"
    return f"{fmt_ms(s['p50'])} / {fmt_ms(s['p99'])} / {fmt_ms(s['max'])}"


def fmt_load(w: dict) -> str:
    return (f"{w['others_cpu_cores']:.2f} cores; load {w['load_before'][0]:.2f} -> {w['load_after'][0]:.2f}"
            if w else "n/a")


def table(res: dict) -> str:
    m = res["meta"]
    lines = [f"lbk watch benchmark — {m['lbk_version']} ({m['lbk_commit']}{', dirty' if m['lbk_tree_dirty'] else ''}), "
             f"{m['cpus']} CPUs, {m['memory']}, kernel {m['kernel']}",
             f"load average at start {' '.join(map(str, m['load_start']))}, at end {' '.join(map(str, m['load_end']))}"
             + (f"; watch args: {' '.join(m['watch_args'])}" if m["watch_args"] else "; default watch settings")
             + (f"; run under: {' '.join(m['wrap'])}" if m.get("wrap") else "")]
    rows: list[tuple[str, str]] = []

    def section(title):
        rows.append(("", ""))
        rows.append((title, ""))

    p = res["parts"]
    for key, title in (("latency", "save-to-commit latency, isolated saves"),
                       ("stream", "save-to-commit latency, stream of saves"),
                       ("load", "CPU while saving a steady stream of files")):
        r = p.get(key)
        if r is None:
            continue
        section(title)
        if "error" in r:
            rows.append(("  FAILED", r["error"][:200]))
            continue
        rate = r["achieved_rate_per_s"]
        rows += [
            ("  saves", f"{r['saves']} ({'every ' + format(r['interval_s'], 'g') + ' s' if r['interval_s'] >= 0.5 else format(1 / r['interval_s'], 'g') + '/s'}"
                        f", achieved {rate}/s) over {r['pool_files']} files"),
            ("  committed / missed", f"{r['committed']} / {r['missed_count']}"),
            ("  latency p50 / p99 / max (close -> committed event)", fmt_lat(r["latency_s"])),
            ("  close -> captured event p50 / p99 / max", fmt_lat(r["close_to_captured_s"])),
            ("  daemon-reported latency per commit p50 / p99 / max", fmt_lat(r["daemon_latency_per_commit_s"])),
            ("  commits; paths per commit mean / max",
             f"{r['commits']}; {r['paths_per_commit'].get('mean', 'n/a')} / {r['paths_per_commit'].get('max', 'n/a')}"),
            ("  watch CPU during the run", f"{r['window']['daemon_cpu_s']:.2f} s over {r['window']['wall_s']:.1f} s "
                                           f"({r['window']['daemon_cpu_pct_of_core']:.1f} % of a core), "
                                           f"{r['cpu_ms_per_save']} ms per save"),
            ("  watch start (small tree): time / CPU / peak RSS",
             f"{fmt_s(r['baseline']['start_s'], 2)} / {fmt_s(r['baseline'].get('cpu_s'), 2)} / {fmt_mib(r['baseline'].get('peak_VmHWM'))}"),
            ("  watch time waiting for a CPU (runnable, not running)",
             f"{fmt_s(r['window']['daemon_runqueue_wait_s'], 2)}, "
             f"{fmt_ms((r['window']['daemon_runqueue_wait_s'] or 0) / r['saves']) if r['saves'] else 'n/a'} per save"),
            ("  others' CPU during the run", fmt_load(r["window"])),
        ]
        sl = r.get("slow_saves")
        if sl and sl["slow"]["count"]:
            a, b = sl["slow"], sl["rest"]
            rows.append((f"  saves >= {sl['threshold_s']:g} s: count; close->captured / captured->committed / CPU wait (mean)",
                         f"{a['count']}; {a['mean_close_to_captured_ms']} / {a['mean_captured_to_committed_ms']} / "
                         f"{a['mean_runqueue_wait_ms']} ms (other saves: {b['mean_close_to_captured_ms']} / "
                         f"{b['mean_captured_to_committed_ms']} / {b['mean_runqueue_wait_ms']} ms)"))
    r = p.get("tree")
    if r is not None:
        section("start and memory with a large tree")
        if "error" in r:
            rows.append(("  FAILED", r["error"][:200]))
        else:
            t = r["tree"]
            rows.append(("  tree", f"{t['files']:,} files in {t['dirs_total']:,} directories, "
                                   f"{t['bytes'] / 2**20:.0f} MiB ({'reused' if t.get('reused') else 'built'})"))
            for phase in ("cold", "warm"):
                x = r.get(phase)
                if not x:
                    continue
                rows += [
                    (f"  {phase}: start to baseline committed (scan began at)", f"{fmt_s(x['start_s'], 2)} ({fmt_s(x['scan_started_s'], 2)})"),
                    (f"  {phase}: CPU to baseline (before the scan) / bytes read (from the disk)",
                     f"{fmt_s(x['baseline_cpu_s'], 2)} ({fmt_s(x['cpu_before_scan_s'], 2)}) / {fmt_mib(x['baseline_read_bytes'])} "
                     f"({fmt_mib(x.get('baseline_storage_read_bytes'))})"),
                    (f"  {phase}: time its threads waited for a CPU (summed)", fmt_s(x.get("runqueue_wait_s"), 1)),
                    (f"  {phase}: peak RSS (VmHWM) whole start / before scan / scan",
                     f"{fmt_mib(x['peak_VmHWM'])} / {fmt_mib(x['pre_scan_VmHWM'])} / {fmt_mib(x['scan_VmHWM'])}"),
                    (f"  {phase}: VmRSS at baseline / after settling", f"{fmt_mib(x['baseline_VmRSS'])} / {fmt_mib(x.get('settled_VmRSS'))}"),
                    (f"  {phase}: stop (SIGTERM to exit)", f"{fmt_s(x['stop_s'], 2)}, exit {x['exit_code']}"),
                    (f"  {phase}: others' CPU during the start", fmt_load(x.get("start_window"))),
                ]
            w = r.get("warm", {})
            if "idle" in w:
                i = w["idle"]
                rows.append(("  warm: idle CPU", f"{i['daemon_cpu_s']:.2f} s over {i['wall_s']:.0f} s, "
                                                 f"{i['daemon_ctxt_switches']} context switches"))
            if "saves" in w:
                s = w["saves"]
                rows.append(("  warm: save-to-commit p50 / p99 / max", fmt_lat(s["latency_s"]) + f" ({s['committed']}/{s['saves']} saves)"))
                rows.append(("  warm: VmHWM / VmRSS at the end", f"{fmt_mib(w.get('final_VmHWM'))} / {fmt_mib(w.get('final_VmRSS'))}"))
            rows.append(("  repository size", fmt_mib(r.get("repo_bytes"))))
    r = p.get("idle")
    if r is not None:
        section("idle")
        if "error" in r:
            rows.append(("  FAILED", r["error"][:200]))
        else:
            w = r["window"]
            rows += [("  watch CPU while idle", f"{w['daemon_cpu_s']:.2f} s over {w['wall_s']:.1f} s "
                                                f"(ticks of {1 / CLK_TCK:.2f} s)"),
                     ("  context switches (all threads)", f"{w['daemon_ctxt_switches']} ({r['wakeups_per_s']}/s)"),
                     ("  events while idle", str(r["events_while_idle"])),
                     ("  others' CPU meanwhile", fmt_load(w))]
    if res.get("targets"):
        section("targets")
        for t in res["targets"]:
            v = t["value"]
            shown = fmt_mib(v) if "RSS" in t["target"] else fmt_ms(v) if "latency" in t["target"] or "p99" in t["target"] else fmt_s(v, 2)
            rows.append((f"  {t['target']}", f"{shown}  {'ok' if t['ok'] else 'MISSED'}"))
    width = max(len(a) for a, _ in rows) + 2
    lines += [f"{a:<{width}}{b}" if b else a for a, b in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description="Benchmark `lbk watch`: latency, CPU, RSS, start time, idle CPU.",
                                 epilog="See bench/README.md, section 'watch'.")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 100 saves, 10 s of load and idle, a 10k-file tree (~4 min)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--workdir", default="/tmp/lbk-bench-watch", help="where repositories, caches, logs and the tree live")
    ap.add_argument("--lbk", help="lbk executable (default: $LBK_BIN, the lbk next to this Python, /work/venv/bin/lbk)")
    ap.add_argument("--out", help="write all figures as JSON to this file")
    ap.add_argument("--saves", type=int, help="latency: number of isolated saves (default 1000; quick 100)")
    ap.add_argument("--spacing", type=float, default=1.2, help="latency: seconds between saves (default 1.2)")
    ap.add_argument("--pool", type=int, default=50, help="files the saves rotate over (default 50, more for the streams)")
    ap.add_argument("--stream-rate", type=float, default=20.0, help="stream: saves per second (default 20)")
    ap.add_argument("--stream-saves", type=int, help="stream: number of saves (default 1000; quick 100)")
    ap.add_argument("--load-rate", type=float, default=50.0, help="load: files saved per second (default 50)")
    ap.add_argument("--load-seconds", type=float, help="load: duration (default 60; quick 10)")
    ap.add_argument("--tree-files", type=int, help="tree: files (default 100000; quick 10000)")
    ap.add_argument("--tree-dirs", type=int, help="tree: leaf directories (default 10000; quick 1000)")
    ap.add_argument("--tree-idle", type=float, help="tree: idle seconds measured on the warm daemon (default 10; quick 5)")
    ap.add_argument("--tree-saves", type=int, help="tree: isolated saves on the warm daemon (default 20; quick 5)")
    ap.add_argument("--tree-timeout", type=float, default=1800, help="tree: longest wait for a baseline (default 1800 s)")
    ap.add_argument("--rebuild-tree", action="store_true", help="tree: build the tree again even if present")
    ap.add_argument("--idle-seconds", type=float, help="idle: duration (default 60; quick 10)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait after a baseline before measuring (default 3)")
    ap.add_argument("--watch-arg", action="append", metavar="ARG",
                    help="extra argument for `lbk watch` (repeatable; use --watch-arg=--no-nice); default: none")
    ap.add_argument("--wrap", metavar="CMD",
                    help="run watch under this command, which must exec it (e.g. 'nice -n 10' or 'ionice -c3' "
                         "with --watch-arg=--no-nice, to tell CPU from I/O priority)")
    a = ap.parse_args()
    q = a.quick
    defaults = {"saves": (1000, 100), "stream_saves": (1000, 100), "load_seconds": (60, 10),
                "tree_files": (100_000, 10_000), "tree_dirs": (10_000, 1_000), "tree_idle": (10, 5),
                "tree_saves": (20, 5), "idle_seconds": (60, 10)}
    for k, (full, quick) in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, quick if q else full)
    a.parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    bad = [x for x in a.parts if x not in PARTS]
    if bad:
        ap.error(f"unknown part(s): {', '.join(bad)} (choose from {', '.join(PARTS)})")
    if not sys.platform.startswith("linux"):
        ap.error("this benchmark reads /proc: Linux only")

    bench = Bench(a)
    log(f"lbk: {bench.lbk}; work dir {bench.workdir}; parts {', '.join(a.parts)}")
    try:
        res = bench.run()
    except KeyboardInterrupt:
        for d in bench.daemons:
            d.kill()
        log("interrupted")
        return 130
    print(table(res))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
        log(f"wrote {a.out}")
    return 1 if any("error" in r for r in res["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
