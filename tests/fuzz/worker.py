"""One atheris (libFuzzer) process fuzzing one target; started by ``tests/fuzz/run.py``.

    python -m tests.fuzz.worker TARGET [libFuzzer flags] CORPUS_DIR...

lbk (and tomllib, which the user-config target exercises) is imported under atheris's
instrumentation, so libFuzzer is guided by Python branch coverage. Before fuzzing, the
address space is capped at what the process already maps plus ``LBK_FUZZ_HEADROOM_MB``
(default 1024): an input that makes a decoder allocate more fails with MemoryError,
which escapes the harness and is reported as a crash with its input saved.
"""

from __future__ import annotations

import os
import resource
import sys

HEADROOM_MB = 1024  # address space beyond the start-up mapping (the replay test uses it too)


def vm_size() -> int:
    """The process's mapped address space (VmSize) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def main() -> None:
    target, flags = sys.argv[1], sys.argv[2:]
    import atheris

    with atheris.instrument_imports(include=["lbk", "tomllib"]):
        from tests.fuzz.targets import TARGETS

    harness = TARGETS[target]
    headroom = int(os.environ.get("LBK_FUZZ_HEADROOM_MB", HEADROOM_MB)) << 20
    limit = vm_size() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    atheris.Setup([sys.argv[0], *flags], harness)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
