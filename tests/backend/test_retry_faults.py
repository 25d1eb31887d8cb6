"""The fault rules (lbk/faults.py), the faulty wrapper, and what the retrying wrapper
makes of each fault: a retry that succeeds, or a clear error."""

from __future__ import annotations

import errno
import os

import pytest

from lbk.backend.base import AlreadyExists, BackendError, FileKind, Handle, NotFound, TransientError
from lbk.backend.faulty import FaultyBackend
from lbk.backend.local import LocalBackend
from lbk.backend.retry import RetryingBackend
from lbk.faults import Faults, Rule, parse

NO_WAIT = (0.0, 0.0, 0.0)


def h(n: int = 1, kind: FileKind = FileKind.DATA) -> Handle:
    return Handle(kind, f"{n:064x}")


@pytest.mark.parametrize(
    "spec,rules,trace",
    [
        ("", (), None),
        ("kill@3", (Rule("kill", "write", 3),), None),
        ("kill:rollback-fs@2", (Rule("kill", "rollback-fs", 2),), None),
        ("enospc@1+", (Rule("enospc", "save", 1, True),), None),
        ("eio@2, eio-read@5+", (Rule("eio", "save", 2), Rule("eio-read", "load", 5, True)), None),
        ("short@4,trace=/tmp/t", (Rule("short", "save", 4),), "/tmp/t"),
    ],
)
def test_rules_parse(spec, rules, trace):
    plan = parse(spec)
    assert plan.rules == rules and plan.trace == trace


@pytest.mark.parametrize("spec", ["kill", "kill@0", "kill@-1", "boom@1", "eio:x@1", "kill@1++", "kill@x"])
def test_malformed_rules_are_refused(spec):
    with pytest.raises(ValueError, match="LBK_TEST_FAULTS"):
        parse(spec)


def test_rules_fire_on_their_count_only():
    f = Faults(parse("eio@2,short@4+"))
    assert [f.count("save") for _ in range(6)] == [[], ["eio"], [], ["short"], ["short"], ["short"]]
    assert f.count("load") == [] and f.counted("save") == 6


@pytest.fixture
def local(tmp_path):
    b = LocalBackend(str(tmp_path / "repo"))
    b.create()
    return b


def stack(local, spec: str, messages: list | None = None) -> tuple[RetryingBackend, Faults]:
    faults = Faults(parse(spec))
    on_retry = messages.append if messages is not None else None
    return RetryingBackend(FaultyBackend(local, faults), on_retry, delays=NO_WAIT), faults


def test_a_transient_write_error_is_retried_and_reported(local):
    messages: list[str] = []
    b, _ = stack(local, "eio@1", messages)
    b.save(h(), b"data")
    assert local.load(h()) == b"data"
    assert len(messages) == 1 and "Input/output error" in messages[0] and "attempt 2 of 4" in messages[0]


def test_a_persistent_write_error_fails_after_four_attempts(local):
    b, faults = stack(local, "eio@1+")
    with pytest.raises(TransientError, match="Input/output error"):
        b.save(h(), b"data")
    assert faults.counted("save") == 4 and b.retries == 3
    assert list(local.list(FileKind.DATA)) == []


def test_no_space_is_not_retried(local):
    b, faults = stack(local, "enospc@1")
    with pytest.raises(BackendError, match="no space left on device"):
        b.save(h(), b"data")
    assert faults.counted("save") == 1 and b.retries == 0


def test_a_short_write_is_caught_removed_and_written_again(local):
    b, _ = stack(local, "short@1")
    b.save(h(), b"0123456789")
    assert local.load(h()) == b"0123456789"


def test_a_backend_that_always_writes_short_fails_and_leaves_nothing(local):
    b, _ = stack(local, "short@1+")
    with pytest.raises(BackendError, match="stored 5 of 10 bytes"):
        b.save(h(), b"0123456789")
    assert list(local.list(FileKind.DATA)) == []


def test_a_read_error_is_retried(local):
    local.save(h(), b"abc")
    b, _ = stack(local, "eio-read@1")
    assert b.load(h()) == b"abc"
    b, _ = stack(local, "eio-read@1+")
    with pytest.raises(TransientError):
        b.load(h())


class LostAck:
    """A backend whose first save/remove takes effect but reports a transient failure
    (the connection dropped before the answer came)."""

    def __init__(self, inner):
        self.inner = inner
        self.location = inner.location
        self.lost = {"save": 1, "remove": 1}

    def save(self, h, data, *, overwrite=False):
        self.inner.save(h, data, overwrite=overwrite)
        if self.lost["save"]:
            self.lost["save"] -= 1
            raise TransientError(f"cannot write {h}: connection reset")

    def remove(self, h):
        self.inner.remove(h)
        if self.lost["remove"]:
            self.lost["remove"] -= 1
            raise TransientError(f"cannot remove {h}: connection reset")

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_lost_acknowledgement_is_not_an_error(local):
    b = RetryingBackend(LostAck(local), delays=NO_WAIT)
    b.save(h(), b"content")  # the retry finds the complete file under its content name
    assert local.load(h()) == b"content"
    b.remove(h())  # the retry finds it gone
    with pytest.raises(NotFound):
        local.stat(h())


def test_an_existing_name_is_still_refused_without_an_earlier_failure(local):
    b, _ = stack(local, "")
    b.save(h(), b"one")
    with pytest.raises(AlreadyExists):
        b.save(h(), b"one")


def test_kill_rule_kills_after_the_nth_write(local, monkeypatch):
    import lbk.backend.faulty as faulty_mod

    class Died(BaseException):
        pass

    def die():
        raise Died

    monkeypatch.setattr(faulty_mod, "die", die)
    b, _ = stack(local, "kill@2")
    b.save(h(1), b"a")
    with pytest.raises(Died):
        b.save(h(2), b"b")
    assert local.load(h(2)) == b"b"  # the write completed before the process died


def test_trace_records_every_write(local, tmp_path):
    trace = tmp_path / "trace"
    b, _ = stack(local, f"trace={trace}")
    b.save(h(1), b"abc")
    b.save(h(2, FileKind.LOCK), b"l", overwrite=True)
    b.remove(h(1))
    assert trace.read_text().splitlines() == [
        f"save data/{1:064x} 3", f"save locks/{2:064x} 1", f"remove data/{1:064x}",
    ]


@pytest.mark.parametrize("err,transient", [
    (errno.EIO, True), (errno.ESTALE, True), (errno.EAGAIN, True),
    (errno.ENOSPC, False), (errno.EACCES, False), (errno.EROFS, False),
])
def test_local_backend_classifies_os_errors(local, monkeypatch, err, transient):
    def fail(*a, **kw):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr("lbk.backend.local.os.fsync", fail)
    with pytest.raises(BackendError) as e:
        local.save(h(), b"x")
    assert isinstance(e.value, TransientError) == transient
    if err == errno.ENOSPC:
        assert "no space left on device" in e.value.message
    assert not [f for f in os.listdir(os.path.join(local.root, "data", "00")) if f.startswith(".tmp-")]


def test_abort_ends_retries_in_progress_but_not_later_operations(local):
    import threading

    faults = Faults(parse("eio@1,eio@2,eio@3,eio@4,eio@6"))
    b = RetryingBackend(FaultyBackend(local, faults), delays=(60.0, 60.0, 60.0))
    caught = []
    t = threading.Thread(target=lambda: caught.append(pytest.raises(TransientError, b.save, h(1), b"x")))
    t.start()
    while b.retries == 0:
        t.join(0.01)
    b.abort()
    t.join(10)
    assert not t.is_alive() and caught  # it gave up at once instead of waiting 60 s
    b.delays = NO_WAIT
    b.save(h(2), b"y")  # started after the abort: the failure at save 6 is retried
    assert local.load(h(2)) == b"y"


def test_a_rewritten_lock_is_never_taken_for_a_short_write(local):
    """Locks are saved with overwrite; another writer (the refresh thread) may replace one
    right after our save. Its size differing is no short write: it must not be removed."""

    class Racing:
        def __init__(self, inner):
            self.inner = inner
            self.location = inner.location

        def save(self, h, data, *, overwrite=False):
            self.inner.save(h, data, overwrite=overwrite)
            self.inner.save(h, data + b"longer", overwrite=True)  # the other writer

        def __getattr__(self, name):
            return getattr(self.inner, name)

    b = RetryingBackend(Racing(local), delays=NO_WAIT)
    b.save(h(1, FileKind.LOCK), b"lock", overwrite=True)
    assert local.load(h(1, FileKind.LOCK)) == b"locklonger"
