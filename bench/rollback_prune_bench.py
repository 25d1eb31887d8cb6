#!/usr/bin/env python3
"""Benchmark: rollback proportional to what changed, and forget + prune at scale.

1. Rollback of a tree of --files files (default 10,000, in 100 directories) where 0.1%,
   1% and 10% of the files changed since a checkpoint. For each: the plan (one lstat per
   entry, reads only suspicious files), the pre-rollback snapshot (metadata-only for
   unchanged files), the writes; compared with a full restore of the same tree and a bare
   lstat walk. Also one end-to-end `lbk rollback --yes` (process start included).
2. forget + prune of --forget of --snapshots snapshots (default 900 of 1,000) of that
   tree, each snapshot changing --churn files (default 10) like an hourly backup. The
   snapshots are made through the repository API (blobs, trees, snapshot files, exactly
   as backup writes them) because 1,000 real backups would take most of the run. Then
   `lbk forget --keep-last N --prune` as a process, and `lbk check --read-data`.

    /work/venv/bin/python bench/rollback_prune_bench.py                  # full size
    /work/venv/bin/python bench/rollback_prune_bench.py --files 2000 --snapshots 200 --forget 180

Everything lives under --workdir (default /tmp/lbk-rollback-bench, removed first). The
repository uses the test-only cheap KDF (LBK_INSECURE_FAST_KDF=1) so that process
timings are not dominated by Argon2id; add ~0.2 s per process for the real KDF.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("LBK_INSECURE_FAST_KDF", "1")

from lbk.backend.local import LocalBackend  # noqa: E402
from lbk.cache import Cache  # noqa: E402
from lbk.events import discard  # noqa: E402
from lbk.model import DIR, Snapshot, encode_tree  # noqa: E402
from lbk.ops.checkpoint import CheckpointOptions, checkpoint  # noqa: E402
from lbk.ops.prune import prune  # noqa: E402
from lbk.ops.restore import RestoreOptions, restore, tree_nodes  # noqa: E402
from lbk.ops.rollback import RollbackOptions, rollback  # noqa: E402
from lbk.repo.pack import DATA, TREE  # noqa: E402
from lbk.repo.repository import Repository  # noqa: E402
from lbk.repo.snapshots import load_all, remove_snapshot, save_snapshot  # noqa: E402

PASSWORD = "bench"


def build_tree(root: str, files: int, rnd: random.Random) -> list[str]:
    dirs = max(1, files // 100)
    paths = []
    for d in range(dirs):
        dp = os.path.join(root, f"d{d:03d}")
        os.makedirs(dp, exist_ok=True)
        for i in range(files // dirs):
            p = os.path.join(dp, f"f{i:03d}.dat")
            with open(p, "wb") as f:
                f.write(rnd.randbytes(rnd.randint(1024, 8192)))
            paths.append(p)
    return paths


def lstat_walk(root: str) -> float:
    t = time.perf_counter()
    n = 0
    for dirpath, dirs, fs in os.walk(root):
        for x in dirs + fs:
            os.lstat(os.path.join(dirpath, x))
            n += 1
    return time.perf_counter() - t


def lbk_cli(env, *args) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "lbk", *map(str, args)], capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"lbk {' '.join(map(str, args))} failed ({p.returncode}): {p.stderr.strip()}")
    return dt, p


def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "?"


def bench_rollback(work: str, files: int, rnd: random.Random, env) -> dict:
    src = os.path.join(work, "tree")
    t = time.perf_counter()
    paths = build_tree(src, files, rnd)
    print(f"built {len(paths)} files in {time.perf_counter() - t:.1f}s")
    repo = Repository.create(LocalBackend(os.path.join(work, "repo")), PASSWORD.encode())
    cache = Cache(os.path.join(work, "cache"), repo.id)
    t = time.perf_counter()
    first = checkpoint(repo, cache, CheckpointOptions(paths=[os.fsencode(src)], name="base"), discard)
    print(f"first checkpoint: {time.perf_counter() - t:.2f}s ({first.bytes_read >> 20} MiB read)")
    out: dict = {"files": len(paths), "lstat_walk_s": round(min(lstat_walk(src) for _ in range(3)), 3)}
    out_dir = os.path.join(work, "restore")
    t, c = time.perf_counter(), time.process_time()
    restore(repo, first.snapshot, RestoreOptions(target=os.fsencode(out_dir)), discard)
    out["full_restore_s"] = round(time.perf_counter() - t, 3)
    out["full_restore_cpu_s"] = round(time.process_time() - c, 3)
    print(f"full restore of the tree: {out['full_restore_s']:.3f}s (cpu {out['full_restore_cpu_s']:.3f}s); "
          f"bare lstat walk: {out['lstat_walk_s']:.3f}s")
    shutil.rmtree(out_dir)
    rows = []
    for pct in (0.1, 1.0, 10.0):
        cp = checkpoint(repo, cache, CheckpointOptions(paths=[os.fsencode(src)], name=f"p{pct}"), discard).snapshot
        k = max(1, round(len(paths) * pct / 100))
        victims = rnd.sample(paths, k)
        expected = {}
        for p in victims:
            expected[p] = open(p, "rb").read()
            with open(p, "wb") as f:
                f.write(rnd.randbytes(rnd.randint(1024, 8192)))
        t, c = time.perf_counter(), time.process_time()
        res = rollback(repo, cache, cp, os.fsencode(src), RollbackOptions(), discard)
        total, cpu = time.perf_counter() - t, time.process_time() - c
        assert res.errors == 0
        assert all(open(p, "rb").read() == data for p, data in expected.items()), "rollback result differs"
        row = {
            "changed_pct": pct, "changed_files": k, "total_s": round(total, 3), "cpu_s": round(cpu, 3),
            "plan_s": round(res.plan.duration, 3), "pre_rollback_snapshot_s": round(res.save_duration, 3),
            "apply_s": round(res.apply_duration, 3),
            "rewritten": res.done["rewrite"], "entries_compared": res.plan.entries,
            "files_read_to_compare": res.plan.files_hashed,
            "pre_rollback_bytes_read": res.pre_rollback.summary["bytes_read"],
            "bytes_written": res.bytes_written,
        }
        rows.append(row)
        print(f"rollback {pct:>4}% ({k:>5} files): {total:6.3f}s (cpu {cpu:.3f}s)  plan {row['plan_s']:.3f}s, "
              f"pre-rollback snapshot {row['pre_rollback_snapshot_s']:.3f}s, apply {row['apply_s']:.3f}s; "
              f"{row['rewritten']} rewritten, {row['files_read_to_compare']} read to compare, "
              f"{row['pre_rollback_bytes_read']} B read for the snapshot")
    out["rollback"] = rows
    # end to end: one process, 1% changed
    name = "cli"
    checkpoint(repo, cache, CheckpointOptions(paths=[os.fsencode(src)], name=name), discard)
    for p in rnd.sample(paths, max(1, len(paths) // 100)):
        with open(p, "wb") as f:
            f.write(rnd.randbytes(2000))
    e = dict(env, LBK_REPOSITORY=os.path.join(work, "repo"), LBK_CACHE_DIR=os.path.join(work, "cache"))
    dt, p = lbk_cli(e, "--json", "rollback", src, "--to", f"@{name}", "--yes")
    out["cli_rollback_1pct_s"] = round(dt, 3)
    print(f"lbk rollback --yes (1%, one process, cheap KDF): {dt:.3f}s")
    return out


def synthetic_history(repo: Repository, base: Snapshot, n: int, churn: int, rnd: random.Random) -> list[str]:
    """``n`` snapshots after ``base``, one hour apart, each with ``churn`` files changed."""
    # the chain from / down to the tree's directory, and its directories' listings
    chain = []  # [(nodes of the directory, index of the next component)]
    tree = base.tree
    parts = [x for x in base.paths[0].split(b"/") if x]
    for part in parts:
        nodes = tree_nodes(repo, tree)
        i = next(j for j, x in enumerate(nodes) if x.name == part)
        chain.append((nodes, i))
        tree = nodes[i].subtree
    top = tree_nodes(repo, tree)  # the d000 ... directories
    listings = {d.name: tree_nodes(repo, d.subtree) for d in top if d.type == DIR}
    t0 = base.time
    ids = []
    for s in range(n):
        for _ in range(churn):
            dname = rnd.choice(list(listings))
            files = listings[dname]
            j = rnd.randrange(len(files))
            data = rnd.randbytes(rnd.randint(1024, 8192))
            bid, _ = repo.save_blob(DATA, data)
            node = files[j]
            files[j] = dataclasses.replace(node, content=[bid], size=len(data), mtime_ns=node.mtime_ns + 3_600 * 10**9)
            for d in top:
                if d.name == dname:
                    d.subtree, _ = repo.save_blob(TREE, encode_tree(files))
        sub, _ = repo.save_blob(TREE, encode_tree(top))
        for nodes, i in reversed(chain):
            nodes[i].subtree = sub
            sub, _ = repo.save_blob(TREE, encode_tree(nodes))
        repo.flush()  # as every backup does: its packs and index, then its snapshot
        snap = Snapshot(time=t0 + timedelta(hours=s + 1), tree=sub, paths=list(base.paths), host=base.host,
                        user=base.user, kind="backup", summary=dict(base.summary))
        save_snapshot(repo, snap)
        ids.append(snap.id)
    return ids


def bench_forget_prune(work: str, snapshots: int, forget: int, churn: int, rnd: random.Random, env) -> dict:
    e = dict(env, LBK_REPOSITORY=os.path.join(work, "repo"), LBK_CACHE_DIR=os.path.join(work, "cache"))
    repo = Repository.open(LocalBackend(os.path.join(work, "repo")), lambda: PASSWORD.encode())
    # start from a repository that holds only the first checkpoint, as an old backup
    snaps = load_all(repo)
    base = next(s for s in snaps if s.name == "base")
    for s in snaps:
        remove_snapshot(repo, s.id)
    base.time = datetime.now(timezone.utc) - timedelta(hours=snapshots + 1)
    base.kind, base.name = "backup", ""
    save_snapshot(repo, base)
    prune(repo)
    t = time.perf_counter()
    ids = synthetic_history(repo, base, snapshots - 1, churn, rnd)
    made = time.perf_counter() - t
    size = lambda: sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(work, "repo")) for f in fs)  # noqa: E731
    n_index = len(os.listdir(os.path.join(work, "repo", "index")))
    print(f"made {len(ids) + 1} snapshots in {made:.1f}s; repository {size() >> 20} MiB, {n_index} index files")
    before = size()
    keep = snapshots - forget
    dt_forget, p = lbk_cli(e, "--json", "forget", "--keep-last", keep)
    doc = json.loads(p.stdout)
    assert len(doc["removed"]) == forget, len(doc["removed"])
    dt_prune, p = lbk_cli(e, "--json", "prune")
    pr = json.loads(p.stdout)
    after = size()
    dt_check, _ = lbk_cli(e, "check", "--read-data")
    out = {
        "snapshots": snapshots, "forgotten": forget, "churn_files_per_snapshot": churn,
        "forget_s": round(dt_forget, 3), "prune_s": round(dt_prune, 3), "prune_internal_s": pr["duration"],
        "prune_plan_s": pr["plan_duration"], "blobs_repacked": pr["blobs_repacked"], "bytes_repacked": pr["bytes_repacked"],
        "repo_bytes_before": before, "repo_bytes_after": after, "bytes_freed": pr["bytes_freed"],
        "packs_deleted": pr["packs_deleted"], "packs_repacked": pr["packs_repacked"],
        "packs_before": pr["packs_before"], "packs_after": pr["packs_after"],
        "index_files_before": pr["index_files_before"], "check_read_data_s": round(dt_check, 3),
    }
    print(f"lbk forget --keep-last {keep} ({forget} removed): {dt_forget:.2f}s")
    print(f"lbk prune: {dt_prune:.2f}s (in prune {pr['duration']:.2f}s, of which loading and marking "
          f"{pr['plan_duration']:.2f}s; {pr['blobs_repacked']} blobs repacked): freed {pr['bytes_freed'] >> 20} MiB of "
          f"{before >> 20} MiB; packs {pr['packs_before']} -> {pr['packs_after']} ({pr['packs_deleted']} deleted, "
          f"{pr['packs_repacked']} repacked); index files {pr['index_files_before']} -> 1")
    print(f"lbk check --read-data afterwards: ok in {dt_check:.2f}s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--snapshots", type=int, default=1_000)
    ap.add_argument("--forget", type=int, default=900)
    ap.add_argument("--churn", type=int, default=10, help="files changed per synthetic snapshot")
    ap.add_argument("--workdir", default="/tmp/lbk-rollback-bench")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", dest="json_out", help="also write the figures to this file")
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    rnd = random.Random(a.seed)
    env = dict(os.environ, LBK_PASSWORD=PASSWORD, LBK_INSECURE_FAST_KDF="1",
               XDG_CONFIG_HOME=os.path.join(a.workdir, "config"))
    result = {"cpus": os.cpu_count(), "load_before": load()}
    print(f"{os.cpu_count()} CPUs, load average {result['load_before']}")
    result["rollback"] = bench_rollback(a.workdir, a.files, rnd, env)
    result["forget_prune"] = bench_forget_prune(a.workdir, a.snapshots, a.forget, a.churn, rnd, env)
    result["load_after"] = load()
    print(f"load average afterwards {result['load_after']}")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
