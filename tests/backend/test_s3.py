"""S3 specifics beyond the contract, against a real SeaweedFS (tests/seaweed.py).

URLs; where objects land; conditional writes (measured, and the HEAD-then-PUT fallback);
multipart uploads and their clean-up; paging; many threads on one client; and how the
store refuses: wrong or missing credentials, a missing bucket, a dead port, and a store
that answers 503 SlowDown / 500 (through a fault-injecting proxy in front of the real
server, so the retries are botocore's own against real answers).
"""

from __future__ import annotations

import http.client
import http.server
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lbk.backend import s3 as s3mod
from lbk.backend.base import BackendError, FileKind, Handle, NotFound
from lbk.backend.registry import open_backend
from lbk.backend.s3 import S3Backend, S3Target, open_s3, parse_s3_url
from lbk.errors import UsageError


def h(kind: FileKind, n: int = 0) -> Handle:
    return Handle(kind, f"{n:064x}")


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


# -- URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url,expect",
    [
        ("s3:http://127.0.0.1:8333/bucket/prefix", S3Target("bucket", "prefix", "http://127.0.0.1:8333")),
        ("s3:http://127.0.0.1:8333/bucket", S3Target("bucket", "", "http://127.0.0.1:8333")),
        ("s3:http://127.0.0.1:8333/bucket/", S3Target("bucket", "", "http://127.0.0.1:8333")),
        ("s3:https://minio.example.org/b-1/a/b/c/", S3Target("b-1", "a/b/c", "https://minio.example.org")),
        ("s3:http://[::1]:9000/bucket/p", S3Target("bucket", "p", "http://[::1]:9000")),
        ("s3:my.bucket", S3Target("my.bucket")),
        ("s3:bucket/some/prefix", S3Target("bucket", "some/prefix")),
        ("s3://bucket/some/prefix", S3Target("bucket", "some/prefix")),
        ("s3:s3.amazonaws.com/bucket/prefix", S3Target("bucket", "prefix")),
        ("s3:s3.eu-west-1.amazonaws.com/bucket", S3Target("bucket", "", None, "eu-west-1")),
        ("s3:s3-us-west-2.amazonaws.com/bucket/p", S3Target("bucket", "p", None, "us-west-2")),
    ],
)
def test_url_parsing(url, expect):
    t = parse_s3_url(url)
    assert t == expect
    if expect.region is None:
        assert parse_s3_url(str(t)) == t  # the location round-trips


@pytest.mark.parametrize(
    "url",
    [
        "s3:",
        "s3:/",
        "s3:http://127.0.0.1:8333",
        "s3:http://127.0.0.1:8333/",
        "s3:http://:8333/bucket",
        "s3:http://127.0.0.1:abc/bucket",
        "s3:http://127.0.0.1:0/bucket",
        "s3:http://127.0.0.1:8333/bucket?x=1",
        "s3:http://127.0.0.1:8333/b/prefix",  # bucket name too short
        "s3:bu",
        "s3:bucket//x",
        "s3:bucket/a/../b",
        "s3:bucket name",
        "s3:host:9000/bucket",
    ],
)
def test_bad_urls_are_usage_errors(url):
    with pytest.raises(UsageError) as e:
        parse_s3_url(url)
    assert url in one_line(e)


@pytest.mark.parametrize("url", ["s3:https://AKIAKEY:topsecret@s3.example.org/bucket", "s3:http://topsecret@h:9/bucket"])
def test_credentials_in_url_refused_without_echoing_them(url):
    with pytest.raises(UsageError) as e:
        parse_s3_url(url)
    msg = one_line(e)
    assert "AWS_ACCESS_KEY_ID" in msg and "***@" in msg and "topsecret" not in msg


def test_registry_opens_s3_without_connecting():
    b = open_backend("s3:http://127.0.0.1:1/bucket/prefix")
    assert isinstance(b.inner, S3Backend) and b.location == "s3:http://127.0.0.1:1/bucket/prefix"
    b.close()


# -- layout and the store's own semantics -----------------------------------------------


def test_layout_matches_local(s3):
    with open_s3(s3.url) as b:
        b.create()
        b.save(Handle(FileKind.CONFIG), b"cfg")
        b.save(h(FileKind.DATA, 0xAB), b"pack")
        b.save(h(FileKind.KEY, 1), b"key")
        b.save(h(FileKind.LOCK, 2), b"lock")
    assert sorted(s3.keys()) == sorted([
        "config", f"data/00/{0xAB:064x}", f"keys/{1:064x}", f"locks/{2:064x}",
    ])  # and no probe object left behind


def test_create_refuses_foreign_objects_but_not_a_sibling_prefix(s3):
    c = s3.server.client()
    c.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}-sibling/x", Body=b"x")
    with open_s3(s3.url) as b:
        b.create()  # "<prefix>-sibling/" is not under "<prefix>/"
    c.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}/notes.txt", Body=b"x")
    with open_s3(s3.url) as b, pytest.raises(BackendError) as e:
        b.create()
    assert "not empty" in one_line(e)


def test_stray_keys_are_not_listed(s3):
    c = s3.server.client()
    with open_s3(s3.url) as b:
        b.create()
        b.save(h(FileKind.DATA, 0x11), b"ok")
        for key in ("data/11/short", f"data/22/{0x11:064x}", f"data/{0x11:064x}", "index/README", "keys/a/b"):
            c.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}/{key}", Body=b"x")
        assert [i.name for i in b.list(FileKind.DATA)] == [f"{0x11:064x}"]
        assert list(b.list(FileKind.INDEX)) == [] and list(b.list(FileKind.KEY)) == []


def test_list_pages_through_many_keys(s3, monkeypatch):
    monkeypatch.setattr(s3mod, "LIST_PAGE", 7)
    with open_s3(s3.url) as b:
        b.create()
        names = {f"{i:064x}" for i in range(40)}
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda n: b.save(Handle(FileKind.SNAPSHOT, n), n.encode()), names))
        assert {i.name for i in b.list(FileKind.SNAPSHOT)} == names


def test_store_honours_conditional_put(s3):
    """Measured, not assumed: SeaweedFS refuses If-None-Match: * on an existing key."""
    with open_s3(s3.url) as b:
        b.create()
        assert b.conditional_writes() is True
    assert s3.keys() == []  # the probe was removed


@pytest.mark.parametrize("conditional", [True, False])
def test_racing_writers_of_one_name(s3, conditional):
    """Eight threads save one name: with conditional writes exactly one wins; with
    HEAD-then-PUT the race may let several through (documented), but never a mix."""
    with S3Backend(s3.url, conditional_writes=conditional) as b:
        b.create()
        datas = [bytes([i]) * 1000 for i in range(8)]
        barrier = threading.Barrier(8)

        def write(d: bytes) -> bool:
            barrier.wait()
            try:
                b.save(h(FileKind.INDEX, 5), d)
                return True
            except BackendError as e:
                assert "already exists" in str(e)
                return False

        with ThreadPoolExecutor(8) as ex:
            won = list(ex.map(write, datas))
        stored = b.load(h(FileKind.INDEX, 5))
        assert stored in datas
        if conditional:
            assert won.count(True) == 1 and datas[won.index(True)] == stored
        else:
            assert won.count(True) >= 1
        with pytest.raises(BackendError, match="already exists"):
            b.save(h(FileKind.INDEX, 5), b"later")  # sequentially, the fallback refuses too


def test_multipart_upload_round_trip_and_refusal(s3):
    data = os.urandom(12 * 1024 * 1024 + 5)
    c = s3.server.client()
    with S3Backend(s3.url, multipart_threshold=5 << 20, part_size=5 << 20) as b:
        b.create()
        b.save(h(FileKind.DATA, 7), data)
        head = c.head_object(Bucket=s3.bucket, Key=f"{s3.prefix}/data/00/{7:064x}")
        assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
        assert b.stat(h(FileKind.DATA, 7)) == len(data)
        assert b.load(h(FileKind.DATA, 7)) == data
        assert b.load(h(FileKind.DATA, 7), (5 << 20) - 3, 10) == data[(5 << 20) - 3:(5 << 20) + 7]
        with pytest.raises(BackendError, match="already exists"):
            b.save(h(FileKind.DATA, 7), os.urandom(6 << 20))
        assert b.load(h(FileKind.DATA, 7)) == data
        b.save(h(FileKind.LOCK, 7), os.urandom(6 << 20), overwrite=True)
    uploads = c.list_multipart_uploads(Bucket=s3.bucket, Prefix=f"{s3.prefix}/").get("Uploads", [])
    assert uploads == []  # the refused upload was aborted


def test_sweep_aborts_only_stale_uploads(s3):
    c = s3.server.client()
    key = f"{s3.prefix}/data/00/{1:064x}"
    up = c.create_multipart_upload(Bucket=s3.bucket, Key=key)["UploadId"]
    c.upload_part(Bucket=s3.bucket, Key=key, UploadId=up, PartNumber=1, Body=b"x" * 100)
    with open_s3(s3.url) as b:
        assert list(b.list(FileKind.DATA)) == []  # an unfinished upload is invisible
        assert b.sweep_temporary() == 0  # younger than an hour: may belong to a running backup
        assert b.sweep_temporary(older_than=0) == 1
    assert c.list_multipart_uploads(Bucket=s3.bucket, Prefix=f"{s3.prefix}/").get("Uploads", []) == []


def test_many_threads_share_one_client(s3):
    with open_s3(s3.url) as b:
        b.create()
        blobs = {i: os.urandom(1000 + i) for i in range(64)}

        def roundtrip(i: int) -> None:
            b.save(h(FileKind.DATA, i), blobs[i])
            assert b.load(h(FileKind.DATA, i), 10, 100) == blobs[i][10:110]
            assert b.stat(h(FileKind.DATA, i)) == len(blobs[i])

        with ThreadPoolExecutor(16) as ex:
            list(ex.map(roundtrip, blobs))
        assert len(list(b.list(FileKind.DATA))) == 64


def test_empty_object_ranges(s3):
    with open_s3(s3.url) as b:
        b.create()
        b.save(h(FileKind.KEY, 1), b"")
        assert b.load(h(FileKind.KEY, 1)) == b""
        assert b.load(h(FileKind.KEY, 1), 0, 0) == b""
        with pytest.raises(BackendError):
            b.load(h(FileKind.KEY, 1), 0, 1)
        with pytest.raises(NotFound):
            b.load(h(FileKind.KEY, 2), 0, 0)


# -- refusals ---------------------------------------------------------------------------


def test_wrong_secret_is_one_clear_line(s3, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with open_s3(s3.url) as b, pytest.raises(BackendError) as e:
        b.exists()
    msg = one_line(e)
    assert "access denied" in msg and "AWS_ACCESS_KEY_ID" in msg and s3.server.endpoint in msg
    assert "not-the-secret" not in msg


def test_unknown_key_id_named_on_list(s3, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with open_s3(s3.url) as b, pytest.raises(BackendError) as e:
        list(b.list(FileKind.SNAPSHOT))
    assert "InvalidAccessKeyId" in one_line(e)


def test_no_credentials_at_all(s3, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    t = time.monotonic()
    with open_s3(s3.url) as b, pytest.raises(BackendError) as e:
        b.exists()
    assert "no S3 credentials found" in one_line(e)
    assert time.monotonic() - t < 5  # no wait for an instance metadata service


def test_missing_bucket(s3):
    url = s3.server.url("lbk-no-such-bucket", "p")
    with open_s3(url) as b:
        assert b.exists() is False  # no bucket, no repository (exit 10 for commands)
        with pytest.raises(BackendError) as e:
            list(b.list(FileKind.SNAPSHOT))
        assert "bucket 'lbk-no-such-bucket' does not exist" in one_line(e)
    with open_s3(s3.server.url("lbk-created-by-init", "p")) as b:
        b.create()  # init creates a missing bucket, as restic does
        b.save(Handle(FileKind.CONFIG), b"c")
        assert b.exists()


def test_connection_refused_fails_fast_with_one_line(s3):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    t = time.monotonic()
    with open_s3(f"s3:http://127.0.0.1:{port}/bucket/p") as b, pytest.raises(BackendError) as e:
        b.exists()
    msg = one_line(e)
    assert f"cannot reach http://127.0.0.1:{port}" in msg and "refused" in msg.lower()
    assert time.monotonic() - t < 15


# -- throttling and 5xx: botocore's retries against real answers ---------------------------


class FaultProxy:
    """HTTP proxy to the real server that answers some requests itself with an S3 error."""

    def __init__(self, upstream_port: int, fail):
        self.fail = fail  # (method, path, n) -> None | (status, code)
        self.count = 0
        self.failed = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with proxy.lock:
                    proxy.count += 1
                    verdict = proxy.fail(self.command, self.path, proxy.count)
                    if verdict:
                        proxy.failed += 1
                if verdict:
                    status, code = verdict
                    xml = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(xml)
                    return
                up = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in self.headers.items():
                    up.putheader(k, v)  # Host too: the signature covers it
                up.endheaders(body)
                r = up.getresponse()
                data = r.read()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                up.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fault_proxy(s3):
    proxies = []

    def make(fail):
        p = FaultProxy(s3.server.ports["s3"], fail)
        proxies.append(p)
        return p, f"s3:http://127.0.0.1:{p.port}/{s3.bucket}/{s3.prefix}"

    yield make
    for p in proxies:
        p.close()


def test_transient_500s_are_retried(fault_proxy):
    # every other request fails at first: each call needs its retry
    proxy, url = fault_proxy(lambda m, path, n: (500, "InternalError") if n % 2 else None)
    with S3Backend(url, conditional_writes=True) as b:
        b.create()
        for i in range(5):
            b.save(h(FileKind.INDEX, i), b"i" * i)
        assert sorted(i.size for i in b.list(FileKind.INDEX)) == [0, 1, 2, 3, 4]
        assert b.load(h(FileKind.INDEX, 4)) == b"iiii"
    assert proxy.failed >= 8


def test_throttling_is_waited_for_then_reported(fault_proxy):
    proxy, url = fault_proxy(lambda m, path, n: (503, "SlowDown") if n <= 2 else None)
    t = time.monotonic()
    with S3Backend(url, conditional_writes=True) as b:
        assert b.exists() is False  # two SlowDowns, then the real answer
    assert proxy.failed == 2 and time.monotonic() - t < 10
    proxy2, url2 = fault_proxy(lambda m, path, n: (503, "SlowDown"))
    with S3Backend(url2, max_attempts=3) as b:
        with pytest.raises(BackendError) as e:
            list(b.list(FileKind.SNAPSHOT))
        assert proxy2.failed == 3  # every attempt was made
        msg = one_line(e)
        assert "503" in msg and "SlowDown" in msg and "after retries" in msg
        with pytest.raises(BackendError) as e:
            b.exists()  # a HEAD answer has no body: the status speaks
        assert "HTTP 503 Service Unavailable" in one_line(e)


# -- the block cache: small reads of a pack read again become few large GETs -----------------


def count_gets(b: S3Backend) -> list:
    gets = []
    b._client().meta.events.register("before-send.s3.GetObject", lambda request, **kw: gets.append(request.headers.get("Range", b"").decode()))
    return gets


def test_small_reads_of_a_pack_are_served_from_blocks(s3):
    data = os.urandom(9 * 1024 * 1024 + 333)  # blocks of 4 MiB: 0-4, 4-8, 8-9.x
    with open_s3(s3.url) as b:
        b.create()
        b.save(h(FileKind.DATA, 9), data)
        gets = count_gets(b)
        spans = [(0, 10), (100, 5000), ((4 << 20) - 7, 20), (len(data) - 50, 50), (5 << 20, 512 * 1024)]
        spans += [(o, 300) for o in range(0, len(data) - 300, 97_001)]
        with ThreadPoolExecutor(8) as ex:
            got = list(ex.map(lambda s: b.load(h(FileKind.DATA, 9), *s), spans))
        assert got == [data[o:o + n] for o, n in spans]
        # the first read is exact (a pack read once costs no more than that), then 3 blocks
        assert len(gets) <= 1 + 3, gets
        with pytest.raises(BackendError):
            b.load(h(FileKind.DATA, 9), len(data) - 5, 6)  # past the end, through the blocks
        with pytest.raises(BackendError):
            b.load(h(FileKind.DATA, 9), len(data) + (4 << 20), 1)  # a block beyond the end
        big = b.load(h(FileKind.DATA, 9), 1000, 600 * 1024)  # larger reads go straight through
        assert big == data[1000:1000 + 600 * 1024] and gets[-1] == f"bytes=1000-{1000 + 600 * 1024 - 1}"


def test_block_cache_does_not_hide_a_missing_pack(s3):
    with open_s3(s3.url) as b:
        b.create()
        b.save(h(FileKind.DATA, 1), b"x" * 1000)
        assert b.load(h(FileKind.DATA, 1), 0, 10) == b"x" * 10
        with pytest.raises(NotFound):
            b.load(h(FileKind.DATA, 2), 0, 10)
        with pytest.raises(NotFound):
            b.load(h(FileKind.DATA, 2), 0, 10)  # the second read takes the block path
