#!/usr/bin/env python3
"""Build dist/lbk.pyz: lbk and every dependency in ONE file, for a rescue system.

    pip install -e '.[pyz]'                  # the build tool (pex), once
    python scripts/build_pyz.py              # -> dist/lbk.pyz
    python scripts/build_pyz.py --s3         # also S3 repositories (adds boto3, larger)
    python scripts/build_pyz.py --refresh-platforms /usr/bin/python3.14 ...

On the rescue system: ``python3 lbk.pyz --repo ... snapshots`` (see docs/recovery.md).

Why PEX: lbk needs compiled wheels (PyNaCl, zstandard, blake3, pyfastcdc, cffi and
cryptography for asyncssh), and Python cannot import an extension module from inside
a zip. A PEX file (https://docs.pex-tool.org) is a zipapp that carries those wheels and,
on first run, installs them into a virtual environment under ``PEX_ROOT``
(``~/.cache/pex`` by default), then runs from there; later runs start at once. It is
the maintained standard for this (Pants, many deployments), and it resolves for other
interpreters than the one building it: the file holds the wheels for every *complete
platform* in scripts/pyz-platforms/ (CPython 3.11, 3.12 and 3.13 on x86_64 Linux) and
picks the right set when it starts, so it runs on whichever of those Pythons the rescue
system has. Wheels are limited to manylinux tags up to glibc 2.28 (platform files are
trimmed to that), so the file runs on any x86_64 distribution with glibc >= 2.28.

Options given to pex, and why:
  --venv         run from a venv built on first use: a warm start is one interpreter
                 start (about 0.2 s) instead of re-checking every wheel (2-3 s);
  --sh-boot      a /bin/sh header: ``./lbk.pyz`` or ``sh lbk.pyz`` execs the cached venv
                 directly, without a first Python start; ``python3 lbk.pyz`` works too;
  --python-shebang "/usr/bin/env python3"   whatever python3 the rescue system has.

The build resolves the newest versions that pyproject.toml allows, from the package
index (network needed at build time, not at run time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLATFORMS = ROOT / "scripts" / "pyz-platforms"
MAX_GLIBC = 28  # manylinux_2_28: Debian 10+, Ubuntu 20.04+, RHEL 8+, Fedora 29+


def pex_command(out: Path, s3: bool, platforms: list[Path]) -> list[str]:
    project = f"{ROOT}[s3]" if s3 else str(ROOT)
    cmd = [sys.executable, "-m", "pex", project, "--console-script", "lbk", "--output-file", str(out),
           "--venv", "--sh-boot", "--python-shebang", "/usr/bin/env python3"]
    for p in platforms:
        cmd += ["--complete-platform", str(p)]
    return cmd


def trim_platform(doc: dict) -> dict:
    """A complete platform that admits no wheel needing a glibc newer than MAX_GLIBC,
    without this machine's details (interpreter path, kernel release)."""
    def ok(tag: str) -> bool:
        m = re.search(r"manylinux_2_(\d+)_", tag)
        return m is None or int(m.group(1)) <= MAX_GLIBC

    env = dict(doc["marker_environment"])
    env["platform_release"] = ""
    env["platform_version"] = ""
    return {"compatible_tags": [t for t in doc["compatible_tags"] if ok(t)], "marker_environment": env}


def refresh_platforms(pythons: list[str]) -> None:
    """Write scripts/pyz-platforms/cpXY.json from real interpreters (``pex3 interpreter inspect``)."""
    PLATFORMS.mkdir(exist_ok=True)
    for py in pythons:
        r = subprocess.run([sys.executable, "-m", "pex.cli", "interpreter", "inspect", "--python", py,
                            "--markers", "--tags"], capture_output=True, text=True, check=True)
        doc = trim_platform(json.loads(r.stdout))
        env = doc["marker_environment"]
        path = PLATFORMS / f"cp{env['python_version'].replace('.', '')}-{env['platform_machine']}.json"
        path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        print(f"wrote {path.relative_to(ROOT)} ({len(doc['compatible_tags'])} tags)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "dist" / "lbk.pyz", help="default: dist/lbk.pyz")
    ap.add_argument("--s3", action="store_true", help="include boto3 for s3: repositories")
    ap.add_argument("--refresh-platforms", nargs="+", metavar="PYTHON",
                    help="regenerate scripts/pyz-platforms/ from these interpreters, then stop")
    args = ap.parse_args(argv)
    try:
        import pex  # noqa: F401
    except ImportError:
        print("pex is not installed: pip install -e '.[pyz]'", file=sys.stderr)
        return 1
    if args.refresh_platforms:
        refresh_platforms(args.refresh_platforms)
        return 0
    platforms = sorted(PLATFORMS.glob("*.json"))
    if not platforms:
        print(f"no platform files in {PLATFORMS}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(pex_command(args.output, args.s3, platforms))
    if r.returncode != 0:
        return r.returncode
    data = args.output.read_bytes()
    names = ", ".join(p.stem for p in platforms)
    print(f"built {args.output} ({len(data) / 2**20:.1f} MiB, sha256 {hashlib.sha256(data).hexdigest()[:16]}...) "
          f"for {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
