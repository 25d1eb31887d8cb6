"""lbk/model.py: nodes, trees and snapshots, and their versioned JSON encoding."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from lbk.errors import FormatError
from lbk.model import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    SOCKET,
    SYMLINK,
    Node,
    Snapshot,
    decode_tree,
    encode_tree,
    valid_name,
)

CHUNK = bytes(range(32))


def full_node(name: bytes, t: str) -> Node:
    """A node with every field its type carries set to a non-default value."""
    n = Node(name=name, type=t, mode=0o4755, uid=1000, gid=1001, user="ann", group="staff",
             mtime_ns=1_600_000_000_123_456_789, ctime_ns=-5,
             xattrs=[(b"user.a", b"\x00\xff binary\n"), (b"security.selinux", b"")], error="")
    if t != DIR:
        n.inode, n.dev, n.nlink = 123456789, 64769, 3
    if t == FILE:
        n.size = 5 << 30
        n.content = [CHUNK, bytes(32), b"\xff" * 32]
    elif t == DIR:
        n.subtree = b"\xab" * 32
    elif t == SYMLINK:
        n.target = b"../target/\xff\xfe not utf-8"
    elif t in (CHARDEV, BLOCKDEV):
        n.rdev = 259
    return n


@pytest.mark.parametrize("t", [FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET])
@pytest.mark.parametrize(
    "name",
    [b"plain.txt", b"\xff\xfe", b"latin1-\xe9", "ünïcödé-日本".encode(), b" leading space", b"-", b"...", b"a\\b", b"\x01ctl"],
)
def test_node_round_trip(t, name):
    node = full_node(name, t)
    (back,) = decode_tree(encode_tree([node]))
    assert back == node


def test_tree_is_sorted_by_name_bytes_and_canonical():
    nodes = [Node(name=n, type=FILE) for n in (b"b", b"\xff", b"a", b"B")]
    data = encode_tree(nodes)
    assert [n.name for n in decode_tree(data)] == [b"B", b"a", b"b", b"\xff"]
    assert encode_tree(list(reversed(nodes))) == data  # same listing, same bytes, same id


def test_empty_tree_round_trip():
    assert decode_tree(encode_tree([])) == []


def test_node_with_error_round_trip():
    node = Node(name=b"unreadable", type=FILE, size=10, error="permission denied")
    assert decode_tree(encode_tree([node])) == [node]


@pytest.mark.parametrize(
    "extra",
    [
        {"size": 9, "content": [CHUNK.hex()]},  # found by fuzzing (target tree): kept, then dropped on re-encoding
        {"subtree": CHUNK.hex()},
        {"rdev": 5, "target": "x"},
    ],
)
def test_fields_of_other_node_types_are_ignored(extra):
    """A symlink node carrying file fields decodes as what it is: a symlink (and encodes back
    to the same bytes), as an unknown key would."""
    doc = {"name": "l", "type": "symlink", "target": "t", "mode": 511, "uid": 0, "gid": 0, "mtime_ns": 0,
           "ctime_ns": 0, "inode": 1, "dev": 2, "nlink": 1}
    (node,) = decode_tree(json.dumps({"version": 1, "nodes": [{**doc, **extra, "target": "t"}]}).encode())
    assert node == Node(name=b"l", type=SYMLINK, mode=0o777, target=b"t", inode=1, dev=2)
    assert decode_tree(encode_tree([node])) == [node]


def test_empty_dir_without_subtree_round_trip():
    node = Node(name=b"d", type=DIR, subtree=None)
    assert decode_tree(encode_tree([node])) == [node]


@pytest.mark.parametrize(
    "name,ok",
    [
        (b"a", True), (b"\xff", True), (b"...", True), (b".hidden", True),
        (b"", False), (b".", False), (b"..", False), (b"a/b", False), (b"/", False),
        (b"a\0b", False), (b"\0", False), (b"../x", False),
    ],
)
def test_valid_name(name, ok):
    assert valid_name(name) is ok


# -- decode_tree refuses what it must ------------------------------------------------

def tree(*nodes: dict, version=1) -> bytes:
    return json.dumps({"version": version, "nodes": list(nodes)}).encode()


def fnode(**kw) -> dict:
    d = {"name": "f", "type": "file", "mode": 0o644, "uid": 0, "gid": 0, "mtime_ns": 0,
         "atime_ns": 0, "ctime_ns": 0, "size": 0, "content": []}
    d.update(kw)
    return d


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(tree(fnode(name="")), id="name-empty"),
        pytest.param(tree(fnode(name=".")), id="name-dot"),
        pytest.param(tree(fnode(name="..")), id="name-dotdot"),
        pytest.param(tree(fnode(name="a/b")), id="name-slash"),
        pytest.param(tree(fnode(name="/")), id="name-root"),
        pytest.param(tree(fnode(name="a\0b")), id="name-nul"),
        pytest.param(tree(fnode(name="\udcff\udcfe/x")), id="name-surrogates-and-slash"),
        pytest.param(tree(fnode(name="\ud800")), id="name-lone-high-surrogate"),
        pytest.param(tree(fnode(name=5)), id="name-not-a-string"),
        pytest.param(tree(fnode(name=None)), id="name-null"),
        pytest.param(tree(fnode(name="x"), fnode(name="x")), id="duplicate-names"),
        pytest.param(tree(fnode(name="\u00ff"), fnode(name="\udcc3\udcbf")), id="duplicate-after-encoding"),
        pytest.param(tree(fnode(type="hardlink")), id="unknown-type"),
        pytest.param(tree(fnode(type=None)), id="type-null"),
        pytest.param(tree(fnode(type=["file"])), id="type-unhashable"),
        pytest.param(tree(fnode(size=-1)), id="negative-size"),
        pytest.param(tree(fnode(size="big")), id="size-not-a-number"),
        pytest.param(tree(fnode(mode=None)), id="mode-null"),
        pytest.param(tree(fnode(content=["zz"])), id="content-not-hex"),
        pytest.param(tree(fnode(content=[1])), id="content-not-string"),
        pytest.param(tree(fnode(content="ab")), id="content-string"),
        pytest.param(tree(fnode(xattrs=[["a"]])), id="xattr-not-a-pair"),
        pytest.param(tree(fnode(xattrs=[[1, 2]])), id="xattr-not-base64-strings"),
        pytest.param(tree(fnode(subtree=5, type="dir")), id="subtree-not-hex"),
        pytest.param(tree({"type": "file"}), id="missing-name"),
        pytest.param(tree({"name": "x"}), id="missing-type"),
        pytest.param(tree("not a node"), id="node-is-a-string"),
        pytest.param(tree([1, 2]), id="node-is-a-list"),
        pytest.param(tree(fnode(), version=2), id="unknown-version"),
        pytest.param(tree(fnode(), version=0), id="version-zero"),
        pytest.param(tree(fnode(), version="1"), id="version-string"),
        pytest.param(b'{"nodes": []}', id="version-missing"),
        pytest.param(b'{"version": 1}', id="nodes-missing"),
        pytest.param(b'{"version": 1, "nodes": {}}', id="nodes-not-a-list"),
        pytest.param(b'{"version": 1, "nodes": null}', id="nodes-null"),
        pytest.param(b"[]", id="document-is-a-list"),
        pytest.param(b"1", id="document-is-a-number"),
        pytest.param(b"null", id="document-null"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"version": 1, "nodes": [', id="truncated-json"),
        pytest.param(b"\xff\xfe\x00garbage", id="not-json"),
        pytest.param(tree(fnode())[:-1], id="cut-by-one"),
        pytest.param(
            tree(fnode(size=float("inf"))), id="size-infinity",
        ),
        pytest.param(
            tree(fnode(mtime_ns=float("-inf"))), id="mtime-minus-infinity",
        ),
        pytest.param(
            b'{"version": 1, "nodes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="nested-too-deep",
        ),
        # decoded until the fuzzing work (tests/fuzz, target tree), then failed in restore, log or prune
        pytest.param(tree(fnode(content=["ab"])), id="content-id-short"),  # prune: not an id
        pytest.param(tree(fnode(content=["ab " * 21 + "a"])), id="content-id-with-spaces"),
        pytest.param(tree(fnode(content=["ab" * 31 + " a"])), id="content-id-64-chars-31-bytes"),
        pytest.param(tree(fnode(content=["AB" * 32])), id="content-id-upper-case"),
        pytest.param(tree(fnode(type="dir", subtree="ab" * 31 + " a")), id="subtree-id-64-chars-31-bytes"),
        pytest.param(tree(fnode(type="dir", subtree="abcd")), id="subtree-id-short"),
        pytest.param(tree(fnode(type="dir", subtree="")), id="subtree-empty"),
        pytest.param(tree(fnode(uid=2**32)), id="uid-too-big-for-chown"),
        pytest.param(tree(fnode(uid=-2)), id="uid-negative"),
        pytest.param(tree(fnode(gid="0")), id="gid-a-string"),
        pytest.param(tree(fnode(mode=1.5)), id="mode-a-float"),
        pytest.param(tree(fnode(mode=True)), id="mode-a-bool"),
        pytest.param(tree(fnode(mtime_ns=10**30)), id="mtime-beyond-utime"),
        pytest.param(tree(fnode(ctime_ns=-(10**30))), id="ctime-before-any-date"),
        pytest.param(tree(fnode(size=2**63)), id="size-beyond-ftruncate"),
        pytest.param(tree(fnode(type="chardev", rdev=2**64)), id="rdev-beyond-mknod"),
        pytest.param(tree(fnode(nlink=-1)), id="nlink-negative"),
        pytest.param(tree(fnode(type="symlink", target="a\0b")), id="target-nul"),  # os.symlink: ValueError
        pytest.param(tree(fnode(type="symlink", target=5)), id="target-not-a-string"),
        pytest.param(tree(fnode(xattrs=[["", "eA=="]])), id="xattr-name-empty"),
        pytest.param(tree(fnode(xattrs=[["dXNlcgBh", "eA=="]])), id="xattr-name-nul"),  # os.setxattr
        pytest.param(tree(fnode(xattrs=[["dXNlci5h!", "eA=="]])), id="xattr-not-base64"),
        pytest.param(tree(fnode(xattrs={"a": "b"})), id="xattrs-not-a-list"),
        pytest.param(tree(fnode(user="root\0x")), id="user-nul"),  # pwd.getpwnam: ValueError
        pytest.param(tree(fnode(group=["staff"])), id="group-not-a-string"),
        pytest.param(tree(fnode(error=1)), id="error-not-a-string"),
    ],
)
def test_decode_tree_refuses(data):
    with pytest.raises(FormatError, match="^tree 0123abcd: "):
        decode_tree(data, "tree 0123abcd")


# -- snapshots -----------------------------------------------------------------------

def snapshot(**kw) -> Snapshot:
    s = Snapshot(
        time=datetime(2026, 11, 25, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1))),
        tree=b"\x01" * 32,
        paths=[b"/home/ann", b"/srv/\xff\xfe-data"],
        host="ann-laptop",
        user="ann",
        kind="checkpoint",
        name="before-upgrade",
        tags=["daily", "work"],
        parent="ab" * 32,
        uid=1000,
        gid=1000,
        summary={"files_new": 3, "bytes_added": 12345},
        id="cd" * 32,
    )
    for k, v in kw.items():
        setattr(s, k, v)
    return s


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"kind": "backup", "name": "", "tags": [], "parent": "", "summary": {}},
        {"time": datetime(2026, 1, 1, tzinfo=timezone.utc)},
        {"time": datetime(1969, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-9, minutes=-30)))},
        {"paths": [b"/"]},
        {"kind": "image"},
    ],
)
def test_snapshot_round_trip(change):
    s = snapshot(**change)
    back = Snapshot.decode(s.encode(), s.id)
    assert back == s
    assert back.time.utcoffset() == s.time.utcoffset()


def test_snapshot_id_is_not_part_of_the_encoding():
    assert snapshot(id="aa" * 32).encode() == snapshot(id="bb" * 32).encode()
    assert Snapshot.decode(snapshot().encode(), "ef" * 32).id == "ef" * 32


def snap_doc(**kw) -> bytes:
    doc = json.loads(snapshot().encode())
    for k, v in kw.items():
        if v is ...:
            del doc[k]
        else:
            doc[k] = v
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "data,match",
    [
        (snap_doc(time="2026-11-25T14:00:00"), "time without offset"),
        (snap_doc(time="2026-11-25"), "time without offset"),
        (snap_doc(time="yesterday"), "malformed"),
        (snap_doc(time=1700000000), "malformed"),
        (snap_doc(time=...), "malformed"),
        (snap_doc(version=2), "unknown snapshot version 2"),
        (snap_doc(version=...), "unknown snapshot version None"),
        (snap_doc(tree="xyz"), "malformed"),
        (snap_doc(tree=...), "malformed"),
        (snap_doc(paths=...), "malformed"),
        (snap_doc(paths=[1]), "malformed"),
        (snap_doc(host=...), "malformed"),
        (snap_doc(summary=[1, 2]), "malformed"),
        (b"[]", "malformed"),
        (b"{", "malformed"),
        (b"", "malformed"),
        pytest.param(
            snap_doc(uid=float("inf")), "malformed",
            id="uid-infinity",
        ),
        # decoded until the fuzzing work (tests/fuzz, target snapshot), then failed in listings
        (snap_doc(kind="backupp"), "unknown snapshot kind"),
        (snap_doc(paths=["home/ann"]), "not absolute"),
        (snap_doc(paths=["/a\0b"]), "not absolute"),
        (snap_doc(uid=-1), "invalid uid"),
        (snap_doc(gid=2**32), "invalid uid or gid"),
        (snap_doc(uid=True), "malformed"),
        (snap_doc(parent="xyz"), "invalid parent"),
        (snap_doc(summary={"total_bytes": "big"}), "summary total_bytes is not a number"),  # human_size
        (snap_doc(summary={"duration": float("nan")}), "summary duration is not a number"),
        (snap_doc(time="0001-01-01T00:00:00+23:59"), "malformed"),  # astimezone: OverflowError
        (snap_doc(host=5), "malformed"),
        (snap_doc(tags="abc"), "malformed"),
        (snap_doc(tree="ab" * 31), "malformed"),
        # found by fuzzing (round 3, target snapshot): 64 characters with spaces are 31 bytes
        (snap_doc(tree="45f0016def 9de29b4ce3d0016def 9de29b4ce3d3b5d7898a8e560b685cbba6"), "malformed"),
        (snap_doc(name=None), "malformed"),
    ],
)
def test_snapshot_decode_refuses(data, match):
    with pytest.raises(FormatError, match=f"^snapshot cdcdcdcd: .*{match}"):
        Snapshot.decode(data, "cd" * 32)


def test_short_id():
    assert snapshot(id="0123456789abcdef" * 4).short_id == "01234567"
