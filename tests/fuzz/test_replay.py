"""Replay every committed seed and every regression through its fuzz harness.

The fuzzer itself is opt-in (``python -m tests.fuzz.run``); this test is not: each input
that ever crashed a decoder stays in ``tests/fuzz/regressions/<target>/`` and must keep
passing the harness contract (``tests/fuzz/targets.py``) — a value or a FormatError /
IntegrityError naming the object, the invariants the consumers rely on, nothing else.
"""

from __future__ import annotations

import os
import resource

import pytest

from tests.fuzz.targets import TARGETS
from tests.fuzz.worker import HEADROOM_MB, vm_size

HERE = os.path.dirname(os.path.abspath(__file__))
DIRS = ("corpus", "regressions")


def _inputs() -> list:
    out = []
    for kind in DIRS:
        base = os.path.join(HERE, kind)
        for target in sorted(os.listdir(base)) if os.path.isdir(base) else ():
            for name in sorted(os.listdir(os.path.join(base, target))):
                out.append(pytest.param(target, os.path.join(base, target, name), id=f"{kind}/{target}/{name}"))
    return out


@pytest.fixture(scope="module", autouse=True)
def bounded_memory():
    """The fuzzer's address-space cap: a regression that once allocated gigabytes fails
    here as it failed there (a MemoryError), and cannot exhaust the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm_size() + (HEADROOM_MB << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("target,path", _inputs())
def test_replay(target, path):
    with open(path, "rb") as f:
        data = f.read()
    TARGETS[target](data)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_target_has_seeds(target):
    """A harness without seeds would be replayed by nothing."""
    assert os.listdir(os.path.join(HERE, "corpus", target))


def test_no_stray_directories():
    """Corpus and regression directories are named after targets (a typo would be skipped silently)."""
    for kind in DIRS:
        base = os.path.join(HERE, kind)
        assert set(os.listdir(base) if os.path.isdir(base) else ()) <= set(TARGETS)


def test_fresh_seeds_pass_every_harness(tmp_path):
    """The seed generator still works, and what lbk writes today satisfies every harness."""
    from tests.fuzz.run import generate_seeds

    seeds = generate_seeds(str(tmp_path))
    assert set(seeds) == set(TARGETS)
    for target, items in seeds.items():
        assert items, target
        for data in items:
            TARGETS[target](data)


def test_runner_lists_targets_and_refuses_unknown_ones(capsys):
    from tests.fuzz.run import main

    assert main(["--list"]) == 0
    assert capsys.readouterr().out.split() == list(TARGETS)
    with pytest.raises(SystemExit) as e:
        main(["no-such-target"])
    assert e.value.code == 2 and "unknown target(s) no-such-target" in capsys.readouterr().err
