"""lbk image: JSON shapes, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import random

import pytest

from lbk.errors import ExitCode
from tests.helpers import one_line_error

MiB = 1 << 20


@pytest.fixture
def repo(lbk, tmp_path):
    r = tmp_path / "repo"
    assert lbk("-r", r, "init").code == 0
    return r


@pytest.fixture
def disk(tmp_path):
    """A 6 MiB image file: data, a zero region, more data, a hole at the end."""
    p = tmp_path / "disk.img"
    rng = random.Random(7)
    with open(p, "wb") as f:
        f.write(rng.randbytes(2 * MiB))
        f.write(bytes(1 * MiB))
        f.write(rng.randbytes(1 * MiB))
        f.truncate(6 * MiB)
    return p



@pytest.mark.parametrize("sub", ["create", "list", "info", "restore", "verify"])
def test_every_image_command_has_help_with_an_example(lbk, sub):
    res = lbk("image", sub, "-h")
    assert res.code == 0 and "Example" in res.out


def test_create_json_lines_and_list_and_info(lbk, repo, disk):
    res = lbk("-r", repo, "--json", "image", "create", disk, "--tag", "weekly,disk", "--name", "laptop")
    assert res.code == 0, res.err
    lines = res.lines()
    assert all("message_type" in x for x in lines)
    status = [x for x in lines if x["message_type"] == "status"]
    assert status and status[-1]["bytes_done"] == 6 * MiB and status[-1]["bytes_total"] == 6 * MiB
    assert "bytes_per_second" in status[-1] and status[-1]["action"] == "image create"
    summary = lines[-1]
    assert summary["message_type"] == "summary"
    assert summary["name"] == "laptop" and summary["image_size"] == 6 * MiB and summary["sector_size"] == 512
    assert summary["zero_bytes"] == 3 * MiB and summary["data_bytes"] == 3 * MiB
    assert summary["stored_bytes"] >= 3 * MiB - 64 * 1024 and isinstance(summary["bytes_per_second"], float)
    snap_id = summary["snapshot_id"]

    res = lbk("-r", repo, "--json", "image", "list")
    assert res.code == 0
    doc = res.json()
    assert isinstance(doc, list) and len(doc) == 1
    row = doc[0]
    assert row["id"] == snap_id and row["name"] == "laptop" and row["size"] == 6 * MiB
    assert row["tags"] == ["weekly", "disk"] and row["source"] == str(disk) and row["stored_bytes"] > 0
    assert row["time"][10] == "T" and ("+" in row["time"][19:] or "-" in row["time"][19:])

    text = lbk("-r", repo, "image", "list")
    assert text.code == 0 and "laptop" in text.out and "6.0 MiB" in text.out and "1 images" in text.out
    assert "image" in lbk("-r", repo, "snapshots", "--kind", "image").out

    info = lbk("-r", repo, "--json", "image", "info", "latest")
    assert info.code == 0
    doc = info.json()
    assert doc["id"] == snap_id and doc["data_extents"] >= 2 and doc["zero_extents"] == 2
    assert doc["source_type"] == "file" and doc["chunking"]["alg"] == "fastcdc2020"


def test_restore_verify_and_refusals(lbk, repo, disk, tmp_path):
    assert lbk("-r", repo, "image", "create", disk).code == 0
    out = tmp_path / "out.img"
    res = lbk("-r", repo, "--json", "image", "restore", "latest", out)
    assert res.code == 0, res.err
    summary = res.lines()[-1]
    assert summary["message_type"] == "summary" and summary["verified"] is True and summary["device"] is False
    assert summary["size"] == 6 * MiB and summary["zero_bytes"] == 3 * MiB
    assert out.read_bytes() == disk.read_bytes()

    # a non-empty file is refused without --yes: exit 1, one line, nothing written
    res = lbk("-r", repo, "image", "restore", "latest", out)
    assert res.code == ExitCode.FATAL
    assert "exists and is not empty; add --yes" in one_line_error(res)
    res = lbk("-r", repo, "--json", "image", "restore", "latest", out)
    err = json.loads(res.err)
    assert res.code == 1 and err["message_type"] == "error" and err["code"] == 1 and res.out == ""
    res = lbk("-r", repo, "--json", "image", "restore", "latest", out, "--yes", "--no-verify")
    assert res.code == 0 and res.lines()[-1]["verified"] is False

    res = lbk("-r", repo, "--json", "image", "verify", "latest", out)
    assert res.code == 0
    s = res.lines()[-1]
    assert s["identical"] is True and s["differences"] == 0 and s["first_differences"] == []

    with open(out, "r+b") as f:
        f.seek(2 * MiB + 4242)  # inside the zero region
        f.write(b"\x07")
        f.seek(100)
        f.write(b"\x00\x01\x02")
    res = lbk("-r", repo, "--json", "image", "verify", "latest", out)
    assert res.code == ExitCode.FATAL
    s = res.lines()[-1]
    assert s["identical"] is False and s["differences"] == 2
    assert [d["offset"] for d in s["first_differences"]][1] == 2 * MiB + 4242
    assert s["first_differences"][0]["offset"] in (100, 101, 102)
    res = lbk("-r", repo, "image", "verify", "latest", out)
    assert res.code == ExitCode.FATAL and f"differs at byte {2 * MiB + 4242}" in res.out
    assert "differs from image" in one_line_error(res)


def test_image_ref_errors(lbk, repo, tmp_path, disk):
    res = lbk("-r", repo, "image", "restore", "latest", tmp_path / "x.img")
    assert res.code == ExitCode.FATAL and "no image found" in one_line_error(res)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f")
    b = lbk("-r", repo, "--json", "backup", src).lines()[-1]["snapshot_id"]
    res = lbk("-r", repo, "image", "verify", b[:8], disk)
    assert res.code == ExitCode.FATAL and "is a backup snapshot, not an image" in one_line_error(res)
    assert lbk("-r", repo, "image", "restore", "latest").code == ExitCode.USAGE
    res = lbk("-r", repo, "image", "create", tmp_path / "missing.img")
    assert res.code == ExitCode.FATAL and "cannot open" in one_line_error(res)
    assert not os.path.exists(tmp_path / "x.img")
