"""The frozen v1 sample repository (tests/data/sample-repo-v1) must keep opening.

It was made once with LBK_INSECURE_FAST_KDF=1, password "sample", from a small tree at
/tmp/samplesrc/docs, backed up twice (readme.txt changed in between). Never regenerate
it: a format change that breaks this test breaks every user's repository.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

FIRST = "b93fe8fab808a58c73fda2c98864f3e511c8d6a323f8588937a77d57e49f3fb4"
SECOND = "f3d44c38564a03043fd7a2f495f99276e90952b973b4b01a0433d6209b9171ef"
SRC = "/tmp/samplesrc/docs"
CONTENT = {
    "empty-file": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "sub/data.bin": "74becbcea7c045dfa72834362be9624fd8216fe8a75a27a045711c040dd2338e",
    "sub/text.txt": "7662477756dfd4331017c993f07276f7c1b756f6fcb9a85553ccf4bbd5e8c60a",
}
README = {
    FIRST: b"hello from the frozen v1 repository\n",
    SECOND: b"v2 of readme\n",
}


@pytest.fixture
def sample(tmp_path, monkeypatch):
    src = os.path.join(os.path.dirname(__file__), "..", "data", "sample-repo-v1")
    dst = tmp_path / "sample"
    shutil.copytree(src, dst)
    monkeypatch.setenv("LBK_PASSWORD", "sample")
    return dst


def test_sample_repository_lists_its_snapshots(lbk, sample):
    res = lbk("-r", sample, "snapshots", "--json")
    assert res.code == 0, res.err
    snaps = res.json()
    assert [s["id"] for s in snaps] == [FIRST, SECOND]
    assert all(s["host"] == "sample-host" and s["tags"] == ["frozen"] for s in snaps)
    assert snaps[0]["paths"] == [SRC]


@pytest.mark.parametrize("snap", [FIRST, SECOND])
def test_sample_repository_restores_exactly(lbk, sample, tmp_path, snap):
    out = tmp_path / "out"
    res = lbk("-r", sample, "restore", snap[:8], "--target", out, "--verify")
    assert res.code == 0, res.err
    base = out / SRC.lstrip("/")
    for rel, digest in CONTENT.items():
        assert hashlib.sha256((base / rel).read_bytes()).hexdigest() == digest, rel
    assert (base / "readme.txt").read_bytes() == README[snap]
    assert os.readlink(base / "link") == "readme.txt"
    assert (base / "empty").is_dir()


def test_sample_repository_checks_clean(lbk, sample):
    res = lbk("-r", sample, "check", "--read-data")
    assert res.code == 0, res.out + res.err
