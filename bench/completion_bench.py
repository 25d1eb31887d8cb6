#!/usr/bin/env python3
"""How long completing a REF at the shell takes (`lbk restore <TAB>`), from the cache.

Builds a local repository with --snapshots snapshots (one real backup, the rest saved
through the ops API with the same tree, every 10th a checkpoint with a name), runs
``lbk snapshots`` once so the cache holds the list, then times, each as a real process
with click's completion protocol (``_LBK_COMPLETE=bash_complete``, COMP_WORDS,
COMP_CWORD), min and median of --runs:

- ``python -c pass`` with the same interpreter (start-up and site, not lbk's work);
- ``lbk --version`` (lbk's root imports);
- ``lbk restore <TAB>`` and ``lbk restore @<TAB>``, and ``lbk ba<TAB>`` (subcommands);
- in-process: ``complete_refs`` alone (find the cache, read the list, build candidates).

"lbk's own work" is the completion process minus ``python -c pass``. lbk's bytecode
is compiled first (as an installed package has it). No password is
given to the completion processes (LBK_PASSWORD is unset for them), so a prompt or a
repository access would fail them.

    .venv/bin/python bench/completion_bench.py [--snapshots 1000] [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BIN = Path(sys.executable).parent / "lbk"


def timed(argv: list[str], env: dict, runs: int) -> tuple[float, float, float]:
    """(min wall, median wall, median CPU) seconds of ``runs`` runs of a process."""
    xs, cpu = [], []
    for _ in range(runs):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        r = subprocess.run(argv, env=env, capture_output=True)
        xs.append(time.perf_counter() - t)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        if r.returncode != 0:
            raise SystemExit(f"{argv} failed: {r.stderr.decode()}")
    return min(xs), statistics.median(xs), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--snapshots", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()

    from lbk.backend.local import LocalBackend
    from lbk.repo.repository import Repository
    from lbk.repo.snapshots import load_all, save_snapshot

    # an installed lbk has its bytecode compiled; a checkout run with
    # PYTHONDONTWRITEBYTECODE would compile every module on every run instead
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "lbk")], check=True,
                   env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    work = Path(tempfile.mkdtemp(prefix="lbk-complete-bench-"))
    env = dict({k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, LBK_CACHE_DIR=str(work / "cache"), XDG_CONFIG_HOME=str(work / "cfg"),
               LBK_REPOSITORY=str(work / "repo"), LBK_PASSWORD="bench", LBK_INSECURE_FAST_KDF="1")
    (work / "src").mkdir()
    (work / "src" / "f").write_text("x\n")
    for argv in (["init"], ["backup", str(work / "src")]):
        subprocess.run([str(BIN), "-q", *argv], env=env, check=True)
    os.environ.update(LBK_INSECURE_FAST_KDF="1")
    repo = Repository.open(LocalBackend(str(work / "repo")), lambda: b"bench")
    first = load_all(repo)[0]
    for i in range(1, args.snapshots):
        kind, name = ("checkpoint", f"cp-{i // 10}") if i % 10 == 0 else ("backup", "")
        save_snapshot(repo, replace(first, id="", time=first.time + timedelta(seconds=i), kind=kind, name=name))
    subprocess.run([str(BIN), "-q", "snapshots"], env=env, check=True, capture_output=True)

    cenv = {k: v for k, v in env.items() if k != "LBK_PASSWORD"}
    comp = lambda words, cword: (cenv | {"_LBK_COMPLETE": "bash_complete", "COMP_WORDS": words,  # noqa: E731
                                         "COMP_CWORD": str(cword)})
    rows = [
        ("python -c pass", [sys.executable, "-c", "pass"], cenv),
        ("lbk --version", [str(BIN), "--version"], cenv),
        ("lbk restore <TAB>", [str(BIN)], comp("lbk restore ", 2)),
        ("lbk restore @<TAB>", [str(BIN)], comp("lbk restore @", 2)),
        ("lbk ba<TAB>", [str(BIN)], comp("lbk ba", 1)),
    ]
    out = subprocess.run([str(BIN)], env=comp("lbk restore ", 2), capture_output=True, text=True).stdout
    print(f"{args.snapshots} snapshots; `lbk restore <TAB>` offers {out.count('plain,')} candidates")
    base = None
    print(f"{'':<22} {'wall min':>9} {'median':>9} {'CPU':>9}   lbk's own (min wall / CPU, less python -c pass)")
    for label, argv, e in rows:
        lo, med, cpu = timed(argv, e, args.runs)
        base = (lo, cpu) if base is None else base
        extra = "" if label.startswith("python") else f"   {1000 * (lo - base[0]):6.1f} / {1000 * (cpu - base[1]):6.1f} ms"
        print(f"{label:<22} {1000 * lo:6.1f} ms {1000 * med:6.1f} ms {1000 * cpu:6.1f} ms{extra}")

    # in-process: the completion function alone
    import click

    from lbk.cli.context import Settings
    from lbk.cli.main import cli
    from lbk.cli.params import complete_refs

    os.environ.update(cenv)
    ctx = click.Context(cli, obj=Settings(repo=cenv["LBK_REPOSITORY"], cache_dir=cenv["LBK_CACHE_DIR"]))
    xs = []
    for _ in range(args.runs):
        t = time.perf_counter()
        items = complete_refs(ctx, "")
        xs.append(time.perf_counter() - t)
    print(f"{'complete_refs() alone':<22} min {1000 * min(xs):7.1f} ms  median {1000 * statistics.median(xs):7.1f} ms"
          f"   ({len(items)} candidates)")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
