"""A source file truncated, grown, replaced or rewritten while backup reads it.

The change is made for real on the file system, from inside the read: right after the
first chunk of the file was handed to the repository (a hook on ``save_blob``), so the
timing is exact. Files above ``WHOLE_FILE`` are streamed, chunk by chunk, so the change
lands mid-read; smaller ones are read whole before their first chunk is stored, so it
lands after a complete, consistent read. Whatever happens, the snapshot holds a version
of the file that really existed, byte for byte, never a mix of two.
"""

from __future__ import annotations

import os

import pytest

from lbk.events import Collector, Warning_
from lbk.ops.backup import BackupOptions, backup
from lbk.ops.restore import RestoreOptions, restore
from lbk.ops.walk import WHOLE_FILE

SIZE = WHOLE_FILE + (3 << 20)  # streamed, in several content-defined chunks (min 256 KiB)


def truncate(path, old):
    with open(path, "r+b") as f:
        f.truncate(len(old) // 3)


def grow(path, old):
    with open(path, "ab") as f:
        f.write(b"appended while being read\n" * 40000)


def replace(path, old):
    tmp = path.with_suffix(".new")
    tmp.write_bytes(os.urandom(SIZE // 2))
    os.rename(tmp, path)  # the reader's descriptor still reads the old file, whole


def rewrite_middle(path, old):
    with open(path, "r+b") as f:
        f.seek(len(old) // 2)
        f.write(b"\xff" * 4096)


@pytest.mark.parametrize("size,change,stored", [
    (SIZE, truncate, "new"),  # the read notices, reads again: the truncated file
    (SIZE, grow, "new"),
    (SIZE, replace, "old"),  # the old inode is read whole and consistently; the next backup takes the new one
    (SIZE, rewrite_middle, "new"),
    # read whole: the change comes after a complete read that fstat confirmed
    (3 << 20, truncate, "old"),
    (3 << 20, rewrite_middle, "old"),
])
def test_file_changed_during_read_is_stored_as_one_real_version(local_repo, tmp_path, size, change, stored):
    src = tmp_path / "src"
    src.mkdir()
    f = src / "data.bin"
    old = os.urandom(size)
    f.write_bytes(old)
    real = local_repo.save_blob
    calls = {"n": 0}

    def hooked(blob_type, data, blob_id=None):
        out = real(blob_type, data, blob_id)
        calls["n"] += 1
        if calls["n"] == 1:
            change(f, old)
        return out

    local_repo.save_blob = hooked  # the reader calls it for every chunk
    ev = Collector()
    res = backup(local_repo, None, BackupOptions(paths=[os.fsencode(src)]), ev)
    del local_repo.save_blob
    new = f.read_bytes()
    assert new != old
    out = tmp_path / "out"
    r = restore(local_repo, res.snapshot, RestoreOptions(target=os.fsencode(out)), Collector())
    assert r.errors == 0 and res.errors == 0
    got = (out / str(f).lstrip("/")).read_bytes()
    assert got == (new if stored == "new" else old)
    assert not ev.of(Warning_)  # it settled: no torn-version warning
    again = backup(local_repo, None, BackupOptions(paths=[os.fsencode(src)]), Collector())
    out2 = tmp_path / "out2"
    restore(local_repo, again.snapshot, RestoreOptions(target=os.fsencode(out2)), Collector())
    assert (out2 / str(f).lstrip("/")).read_bytes() == new


def test_file_rewritten_during_every_read_is_stored_with_a_warning(local_repo, tmp_path):
    """It never settles: after the retries the last read is kept and the user is told."""
    src = tmp_path / "src"
    src.mkdir()
    f = src / "busy.db"
    f.write_bytes(os.urandom(SIZE))
    real = local_repo.save_blob

    def hooked(blob_type, data, blob_id=None):
        out = real(blob_type, data, blob_id)
        with open(f, "ab") as fh:  # every chunk read, the file grows
            fh.write(b"x" * 1000)
        return out

    local_repo.save_blob = hooked
    ev = Collector()
    res = backup(local_repo, None, BackupOptions(paths=[os.fsencode(src)]), ev)
    del local_repo.save_blob
    assert [w.path for w in ev.of(Warning_)] == [os.fsencode(f)]
    assert res.snapshot is not None and res.errors == 0


@pytest.mark.parametrize("size", [10, 400_000, WHOLE_FILE + 1])  # one chunk, read whole, streamed
def test_file_replaced_by_a_fifo_before_the_read_does_not_block(local_repo, tmp_path, size):
    """Opening a FIFO for reading waits for a writer; a backup must never hang on one
    that took a file's place between the walk and the read."""
    import threading

    from lbk.ops.walk import Reader

    f = tmp_path / "was-a-file"
    f.write_bytes(os.urandom(size))
    st = os.lstat(f)
    f.unlink()
    os.mkfifo(f)
    outcome = []

    def read():
        try:
            Reader(local_repo).read(os.fsencode(f), st)
            outcome.append("read")
        except OSError as e:
            outcome.append(e.strerror)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the read blocked on a FIFO"
    assert outcome == ["not a regular file any more"]
