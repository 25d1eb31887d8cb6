"""The watch daemon's local files read back: the status file (state.py) and the spool's
file names (spool.py). Damaged or foreign files are skipped, never a traceback."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from lbk.backend.base import FileKind, Handle
from lbk.backend.mem import MemoryBackend
from lbk.watch.spool import SpoolingBackend, parse_spool_name
from lbk.watch.state import WatchState, decode_state, is_running, load_states

H = "0123456789abcdef" * 4
GOOD = asdict(WatchState(pid=1, repository="/srv/lbk", paths=["/home/ann"], started=1.7e9, updated=1.7e9,
                         phase="watching", last_commit=1.7e9, last_snapshot=H, commits=2, oldest_unsynced=None))


def state(**kw) -> bytes:
    return json.dumps({**GOOD, **kw}).encode()


def test_state_round_trip():
    st = decode_state(state())
    assert asdict(st) == GOOD


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"[]", id="not-an-object"),  # found by fuzzing: AttributeError escaped
        pytest.param(b"[" * 100_000, id="deep-nesting"),  # RecursionError escaped
        pytest.param(state(pid=2**40), id="pid-too-big-for-kill"),  # found by fuzzing: is_running crashed
        pytest.param(state(pid="1"), id="pid-a-string"),
        pytest.param(state(started=1e30), id="time-not-a-date"),  # lbk status formats it
        pytest.param(state(last_commit=float("nan")), id="time-nan"),
        pytest.param(state(paths="/home/ann"), id="paths-a-string"),
        pytest.param(state(paths=[1]), id="paths-not-strings"),
        pytest.param(state(online="yes"), id="online-not-a-bool"),
        pytest.param(state(spool_bytes=-1), id="spool-bytes-negative"),
        pytest.param(state(last_error=5), id="error-not-a-string"),
        pytest.param(state(version=2), id="other-version"),
        pytest.param(b"\xff", id="not-json"),
    ],
)
def test_damaged_state_is_skipped(tmp_path, raw):
    assert decode_state(raw) is None
    for name, data in (("watch-aaaa", raw), ("watch-bbbb", state())):
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.json").write_bytes(data)
    (st,) = load_states(str(tmp_path))
    assert asdict(st) == GOOD and is_running(st) in (True, False)


@pytest.mark.parametrize(
    "name,parsed",
    [
        (f"000000000001.data.{H}", (1, Handle(FileKind.DATA, H))),
        ("000000000012.config.config", (12, Handle(FileKind.CONFIG))),
        (f"999999999999.snapshots.{H}", (999999999999, Handle(FileKind.SNAPSHOT, H))),
        ("000000000001.coufig.config", None),  # found by fuzzing: ValueError escaped the spool
        (f"000000000001.config.{H}", None),  # a kind and a name that do not go together
        ("000000000001.data.config", None),
        ("\u0660" * 12 + f".data.{H}", None),  # Arabic-Indic digits are not a sequence number
        (f"000000000001.data.{H}.tmp-5", None),
        (".tmp-1234", None),
    ],
)
def test_spool_names(tmp_path, name, parsed):
    assert parse_spool_name(name) == parsed
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / name).write_bytes(b"x")
    sb = SpoolingBackend(MemoryBackend(), str(tmp_path))
    assert [(seq, h) for seq, h, _ in sb.spooled()] == ([parsed] if parsed else [])
