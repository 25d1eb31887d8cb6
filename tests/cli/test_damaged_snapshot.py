"""One damaged snapshot file must not lock a user out of the others: listings skip it
with a warning naming it, prune refuses (it cannot know what the snapshot uses), and
``forget ID`` removes it."""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import files_under


@pytest.fixture
def two_snapshots(lbk, tmp_path):
    """A repository with an older good snapshot and a newer one whose file is damaged."""
    repo = str(tmp_path / "repo")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("first\n")
    assert lbk("-r", repo, "init").code == 0
    assert lbk("-r", repo, "backup", src).code == 0
    (src / "b").write_text("second\n")
    assert lbk("-r", repo, "backup", src).code == 0
    snaps = lbk("-r", repo, "snapshots", "--json").json()
    good, bad = snaps[0]["id"], snaps[1]["id"]
    path = os.path.join(repo, "snapshots", bad)
    data = bytearray(open(path, "rb").read())
    data[40] ^= 0x01
    with open(path, "wb") as f:
        f.write(data)
    return repo, src, good, bad


def _warned(err: str, bad: str) -> bool:
    return f"warning: skipped a damaged snapshot: snapshots/{bad}" in err and f"lbk forget {bad[:8]}" in err


def test_listing_and_refs_skip_the_damaged_snapshot(lbk, two_snapshots, tmp_path):
    repo, src, good, bad = two_snapshots
    res = lbk("-r", repo, "snapshots")
    assert res.code == 0 and good[:8] in res.out and bad[:8] not in res.out
    assert _warned(res.err, bad)

    res = lbk("-r", repo, "--json", "snapshots")
    assert res.code == 0 and [s["id"] for s in res.json()] == [good]
    warning = json.loads(res.err.splitlines()[0])
    assert warning["message_type"] == "warning" and bad in warning["message"]

    res = lbk("-r", repo, "restore", "latest", "--target", tmp_path / "t")  # the newest readable one
    assert res.code == 0 and _warned(res.err, bad)
    assert (tmp_path / "t" / str(src).lstrip("/") / "a").read_text() == "first\n"
    assert not (tmp_path / "t" / str(src).lstrip("/") / "b").exists()

    res = lbk("-r", repo, "ls", bad[:8])
    assert res.code == 1
    warning, error = res.err.splitlines()
    assert _warned(warning, bad)
    assert error == f"lbk: snapshot {bad[:8]} is damaged and cannot be read ('lbk check' names the damage)"

    res = lbk("-r", repo, "check")
    assert res.code == 1 and bad[:8] in res.out + res.err


def test_prune_refuses_until_forget_removes_it(lbk, two_snapshots):
    repo, src, good, bad = two_snapshots
    before = files_under(repo)
    res = lbk("-r", repo, "prune")
    assert res.code == 1
    assert res.err.splitlines()[-1] == (
        f"lbk: snapshot {bad[:8]} is damaged; prune must read every snapshot to know which data is in use: "
        f"remove it with 'lbk forget {bad[:8]}' first - nothing was deleted"
    )
    after = files_under(repo)
    assert {k: v for k, v in after.items() if not k.startswith("locks")} == {
        k: v for k, v in before.items() if not k.startswith("locks")
    }

    # a keep policy neither keeps nor removes what it cannot read
    res = lbk("-r", repo, "--json", "forget", "--keep-last", "1")
    assert res.code == 0 and res.json()["kept"] == [good] and res.json()["removed"] == []
    assert os.path.exists(os.path.join(repo, "snapshots", bad))

    res = lbk("-r", repo, "--json", "forget", bad[:8], "--prune")
    assert res.code == 0, res.err
    assert res.json()["removed"] == [bad]
    assert not os.path.exists(os.path.join(repo, "snapshots", bad))
    res = lbk("-r", repo, "check", "--read-data")
    assert res.code == 0, res.out + res.err
    assert lbk("-r", repo, "snapshots").err == ""
