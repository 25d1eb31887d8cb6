"""Run the coverage-guided fuzzers (atheris): ``python -m tests.fuzz.run TARGET... | all``.

    python -m tests.fuzz.run all --seconds 300        every target, one after the other
    python -m tests.fuzz.run tree snapshot --seconds 60
    python -m tests.fuzz.run --write-seeds            regenerate tests/fuzz/corpus/

Opt-in: needs the ``fuzz`` extra (``pip install -e '.[fuzz]'``); the plain test suite
never fuzzes, it replays the committed corpus and regressions (``test_replay.py``).

For each target a libFuzzer process (``tests/fuzz/worker.py``) starts from a working
corpus under ``--workdir`` (default ``.fuzz/``, not committed) that holds the committed
seeds (``tests/fuzz/corpus/<target>/``), every regression
(``tests/fuzz/regressions/<target>/``) and fresh encodings made by lbk itself in a
temporary repository (``tests/fuzz/seeds.py``); new interesting inputs accumulate there
between runs. Each input runs under a per-input timeout, an RSS limit and an
address-space cap; a crashing, hanging or memory-hungry input is written to
``tests/fuzz/regressions/<target>/`` (``crash-``, ``timeout-``, ``oom-`` + sha1), where
the replay test picks it up once it is committed. Executions and findings per target
are printed and appended to ``<workdir>/runs.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import blake3

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")
REGRESSIONS = os.path.join(HERE, "regressions")
FINDING = re.compile(r"(crash|timeout|oom|leak)-[0-9a-f]+\Z")
SEEDS_PER_TARGET = 6
SEED_MAX = 16 << 10


def target_names() -> list[str]:
    from tests.fuzz.targets import TARGETS

    return list(TARGETS)


def _files(d: str) -> dict[str, bytes]:
    if not os.path.isdir(d):
        return {}
    out = {}
    for f in sorted(os.listdir(d)):
        with open(os.path.join(d, f), "rb") as fh:
            out[f] = fh.read()
    return out


def _write(d: str, data: bytes, prefix: str = "seed") -> str:
    os.makedirs(d, exist_ok=True)
    name = f"{prefix}-{blake3.blake3(data).hexdigest()[:16]}"
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    return name


def generate_seeds(workdir: str) -> dict[str, list[bytes]]:
    """Fresh real encodings from a repository made by lbk in a temporary directory (in a
    child process: the CLI and its environment must not leak into the fuzzers)."""
    out_dir = os.path.join(workdir, "generated")
    shutil.rmtree(out_dir, ignore_errors=True)
    code = (
        "import sys, os, tempfile\n"
        "from tests.fuzz.seeds import generate\n"
        "from tests.fuzz.run import _write\n"
        "with tempfile.TemporaryDirectory(prefix='lbk-fuzz-seeds-') as t:\n"
        "    for target, items in generate(t).items():\n"
        "        for data in items:\n"
        "            _write(os.path.join(sys.argv[1], target), data)\n"
    )
    subprocess.run([sys.executable, "-c", code, out_dir], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return {t: list(_files(os.path.join(out_dir, t)).values()) for t in target_names()}


def write_committed_seeds(workdir: str) -> None:
    """Replace tests/fuzz/corpus/ with a small sample of fresh encodings per target."""
    for target, items in generate_seeds(workdir).items():
        d = os.path.join(CORPUS, target)
        shutil.rmtree(d, ignore_errors=True)
        small = sorted((x for x in items if len(x) <= SEED_MAX), key=len)
        picked = small[:: max(1, len(small) // SEEDS_PER_TARGET)][:SEEDS_PER_TARGET] or sorted(items, key=len)[:1]
        for data in picked:
            _write(d, data)
        print(f"{target}: {len(picked)} seeds ({sum(map(len, picked))} bytes)")


def fuzz_one(target: str, seconds: int, workdir: str, generated: list[bytes], args) -> dict:
    corpus = os.path.join(workdir, "corpus", target)
    os.makedirs(corpus, exist_ok=True)
    for d in (os.path.join(CORPUS, target), os.path.join(REGRESSIONS, target)):
        for data in _files(d).values():
            _write(corpus, data)
    for data in generated:
        _write(corpus, data)
    regdir = os.path.join(REGRESSIONS, target)
    os.makedirs(regdir, exist_ok=True)
    before = set(os.listdir(regdir))
    log_path = os.path.join(workdir, f"{target}.log")
    cmd = [
        sys.executable, "-m", "tests.fuzz.worker", target,
        f"-max_total_time={seconds}", f"-timeout={args.timeout}", f"-rss_limit_mb={args.rss_mb}",
        f"-artifact_prefix={regdir}/", "-print_final_stats=1", f"-max_len={args.max_len}", corpus,
    ]
    # libFuzzer ends the process without running atexit: the harnesses' scratch files go
    # to a temporary directory of our own, removed here
    tmp = tempfile.mkdtemp(prefix=f"{target}-", dir=workdir)
    env = dict(os.environ, LBK_FUZZ_HEADROOM_MB=str(args.headroom_mb), TMPDIR=tmp)
    start = time.monotonic()
    try:
        with open(log_path, "wb") as log:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - start
    with open(log_path, "rb") as f:
        text = f.read().decode(errors="replace")
    m = re.search(r"stat::number_of_executed_units: (\d+)", text) or None
    runs = int(m.group(1)) if m else max((int(x) for x in re.findall(r"^#(\d+)\s", text, re.M)), default=0)
    cov = re.findall(r"\bcov: (\d+) ft: (\d+)", text)
    written = {os.path.basename(p) for p in re.findall(r"Test unit written to (\S+)", text)}
    new = sorted(f for f in written if FINDING.match(f))  # new, or a known regression that fails again
    for f in set(os.listdir(regdir)) - before - set(new):  # slow-unit reports and the like are not findings
        os.unlink(os.path.join(regdir, f))
    exc = re.findall(r"^(?:\w+\.)*\w+(?:Error|Exception)\b.*$", text, re.M)
    return {
        "target": target, "seconds": round(elapsed, 1), "executions": runs, "exit": rc,
        "coverage": int(cov[-1][0]) if cov else None, "features": int(cov[-1][1]) if cov else None,
        "corpus": len(os.listdir(corpus)), "findings": new, "error": exc[-1] if (new and exc) else None,
        "log": log_path, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="*", help="target names, or 'all'")
    p.add_argument("--seconds", type=int, default=60, help="fuzzing time per target (default 60)")
    p.add_argument("--timeout", type=int, default=10, help="seconds one input may take (default 10)")
    p.add_argument("--rss-mb", type=int, default=2048, help="RSS limit of a fuzzing process (default 2048)")
    p.add_argument("--headroom-mb", type=int, default=1024,
                   help="address space a fuzzing process may map beyond its start (default 1024)")
    p.add_argument("--max-len", type=int, default=65536, help="largest input libFuzzer makes (default 65536)")
    p.add_argument("--workdir", default=os.path.join(ROOT, ".fuzz"), help="working corpora and logs (default .fuzz/)")
    p.add_argument("--write-seeds", action="store_true", help="regenerate the committed seed corpus and exit")
    p.add_argument("--list", action="store_true", help="list the targets and exit")
    args = p.parse_args(argv)
    names = target_names()
    if args.list:
        print("\n".join(names))
        return 0
    os.makedirs(args.workdir, exist_ok=True)
    if args.write_seeds:
        write_committed_seeds(args.workdir)
        return 0
    wanted = names if args.targets == ["all"] else args.targets
    unknown = [t for t in wanted if t not in names]
    if not wanted or unknown:
        p.error(f"unknown target(s) {', '.join(unknown)}; choose from: all, {', '.join(names)}" if unknown
                else "name a target or 'all' (--list shows them)")
    try:
        import atheris  # noqa: F401
    except ImportError:
        p.error("atheris is not installed: pip install -e '.[fuzz]'")
    generated = generate_seeds(args.workdir)
    results = []
    for t in wanted:
        r = fuzz_one(t, args.seconds, args.workdir, generated.get(t, []), args)
        results.append(r)
        with open(os.path.join(args.workdir, "runs.jsonl"), "a") as f:
            f.write(json.dumps(r) + "\n")
        print(f"{t:14} {r['executions']:>10,} executions in {r['seconds']:>6.0f} s, cov {r['coverage']}, "
              f"corpus {r['corpus']}, " + (f"FOUND {', '.join(r['findings'])}: {r['error']}" if r["findings"]
                                          else "no findings"), flush=True)
    return 1 if any(r["findings"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
