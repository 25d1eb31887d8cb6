"""A repository in an S3 bucket (``s3:`` URLs): AWS S3 or any S3-compatible store.

Layout under ``<bucket>/<prefix>/`` is the local backend's: ``config``, ``keys/<id>``,
``data/<2 hex>/<id>``, ``index/<id>``, ``snapshots/<id>``, ``locks/<id>``. There are no
directories and no temporary names: an S3 object becomes visible only when its PUT (or
its multipart upload's completion) has succeeded, whole, so ``save`` is atomic without a
rename, and durable once the store has answered. docs/FORMAT-s3.md tells how crash
safety and locking work without rename and without POSIX locks.

URLs::

    s3:http(s)://endpoint[:port]/bucket[/prefix]   an S3-compatible store (path-style)
    s3:bucket[/prefix]                             AWS S3, region from the AWS config
    s3://bucket[/prefix]                           the same (the aws CLI's spelling)
    s3:s3[.region].amazonaws.com/bucket[/prefix]   AWS S3 (restic's spelling)

Credentials and region come from where every AWS tool looks (botocore's chain, as in
boto3 and the aws CLI): ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``~/.aws/credentials`` and ``~/.aws/config``,
SSO, instance roles. A URL that carries a key is refused: nothing secret on a command
line.

Writes:

- ``overwrite=False`` (every file but locks) sends ``If-None-Match: *``, so the store
  itself refuses an existing name and two writers cannot both win. Whether a store
  honours the header is measured once per endpoint and bucket, by writing a probe
  object twice (``<prefix>/.lbk-probe-<hex>``, deleted at once). Measured: SeaweedFS
  4.48 refuses the second write with 412 PreconditionFailed, on PUT and on
  CompleteMultipartUpload alike; AWS S3 documents the same since 2024. A store that
  ignores the header gets HEAD-then-PUT, which has a window between the two requests in which
  a concurrent writer of the same name can be overwritten. lbk's names are content
  hashes or 256-bit random ids, so such a race would write the same bytes or needs a
  collision; only the contract's "refuse" is weaker there, never the data.
- Objects of ``MULTIPART_THRESHOLD`` (64 MiB; ``LBK_S3_MULTIPART_MIB`` sets another)
  or more go up as a multipart upload of ``PART_SIZE`` parts, ``PART_THREADS`` at a
  time; the object appears only when the upload is completed (conditionally, as above).
  A failed upload is aborted; one that a crash leaves behind is invisible, never
  listed, and aborted by ``sweep_temporary`` (run by ``lbk prune``) once it is an hour
  old by the store's clock. Why not multipart for packs (16 MiB plus one blob):
  measured against SeaweedFS 4.48 on loopback (2 cores, load average 7-14 from other
  work), 17 MiB objects with two saves in flight as the repository does, MiB/s over
  three rounds: single PUT 30-77, 8 MiB parts 29-72, 5 MiB parts 30-66: no difference
  beyond the noise, while a single PUT is one request instead of three or more and
  leaves nothing behind when interrupted.
- A retried conditional write that meets 412 may be the echo of its own first attempt
  (the answer was lost): the object's ETag is then compared with the MD5 of the data
  (for multipart, the MD5 of the part MD5s), and an identical object counts as saved.

Reads use ``Range`` requests; a short answer is refused, never returned. Lists page
through ``ListObjectsV2``. ``remove`` HEADs first, since S3 DELETE succeeds on a missing
key and the contract wants ``NotFound``.

Client and retries: one botocore client per backend (botocore is boto3's engine; used
directly because importing boto3 on top costs 0.2-0.4 s more per command here), created
on first use and shared by all threads (botocore clients are thread-safe; the
connection pool holds ``POOL_CONNECTIONS``). Sessions are reused within a process while
the AWS environment is unchanged (a new one loads the S3 model again, ~0.2 s). botocore's "standard" retry mode retries throttling (SlowDown,
503: backoff 1 s doubling) and transient failures (500/502/503/504, resets, refused
connections: 50 ms doubling, with jitter) up to ``MAX_ATTEMPTS`` attempts in all, so a
store that is down fails a call within a few seconds and a throttled one is waited for.
``AWS_RETRY_MODE`` (``standard`` or ``adaptive``) and ``AWS_MAX_ATTEMPTS`` override.
A body that breaks off mid-read is fetched again (``READ_RETRIES``).

Every failure is one line: a ``BackendError`` naming the operation and the cause
(access denied with where credentials come from, a missing bucket, a refused or timed
out connection), or ``NotFound``. ``lbk init`` creates the bucket when it is missing (as
restic does); every other command on a missing bucket finds no repository (exit 10).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import urlsplit

import botocore.exceptions as bexc
import botocore.session
from botocore.config import Config

from lbk.backend.base import AlreadyExists, BackendError, FileInfo, FileKind, Handle, NotFound, check_range
from lbk.errors import UsageError

__all__ = ["S3Target", "S3Backend", "parse_s3_url", "open_s3"]

MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
PART_THREADS = 4
MIN_PART = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PARTS = 10_000
MAX_ATTEMPTS = 6
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
READ_RETRIES = 3
POOL_CONNECTIONS = 32
LIST_PAGE = 1000  # keys per ListObjectsV2 page (the S3 maximum)
READ_BLOCK = 4 * 1024 * 1024  # small reads of a pack read again soon are served from blocks this big
SMALL_READ = 512 * 1024  # reads up to this size may go through the block cache
READ_CACHE = 64 * 1024 * 1024  # bytes of blocks kept (least recently used dropped first)
HOT_PACKS = 4096  # packs remembered as "read before"
STALE_UPLOAD = 3600.0  # seconds before sweep_temporary aborts an unfinished multipart upload

_T = TypeVar("_T")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]\Z")
_AWS_HOST = re.compile(r"s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com(?:\.cn)?\Z")

# botocore sessions by the environment that configures them: a new session loads the S3
# service model again (~0.2 s), a known one makes a client in ~15 ms. Sessions are not
# thread-safe, so clients are made under the lock.
_SESSIONS: dict[tuple, Any] = {}
_SESSIONS_LOCK = threading.Lock()
_SESSION_ENV = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_REGION",
                "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED", "HOME")

# Whether an endpoint+bucket honours If-None-Match on PUT, measured once per process.
_CONDITIONAL: dict[tuple[str | None, str], bool] = {}
_CONDITIONAL_LOCK = threading.Lock()

_ACCESS = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "InvalidClientTokenId", "403",
}
_MISSING = {"NoSuchKey", "NotFound", "404"}
_EXISTS = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


# -- URLs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Target:
    """Where a repository lives. ``endpoint`` None means AWS S3 itself."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None

    def __str__(self) -> str:
        where = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        if self.endpoint is None:
            return f"s3:{where}"
        return f"s3:{self.endpoint}/{where}"


def _split_path(url: str, path: str) -> tuple[str, str]:
    parts = path.strip("/").split("/")
    bucket, rest = parts[0], parts[1:]
    if not bucket:
        raise UsageError(f"invalid s3 URL {url!r}: no bucket (expected s3:http(s)://host/bucket/prefix or s3:bucket/prefix)")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise UsageError(f"invalid s3 URL {url!r}: {bucket!r} is not a valid bucket name (3-255 letters, digits, '.', '-', '_')")
    if any(p in ("", ".", "..") for p in rest):
        raise UsageError(f"invalid s3 URL {url!r}: empty, '.' or '..' component in the prefix")
    return bucket, "/".join(rest)


def parse_s3_url(url: str) -> S3Target:
    """Parse an ``s3:`` repository URL (see the module docstring for the forms)."""
    if not url.startswith("s3:"):
        raise UsageError(f"not an s3 URL: {url!r}")
    rest = url[3:]
    if rest.startswith(("http://", "https://")):
        u = urlsplit(rest)
        if u.username is not None or u.password is not None:
            shown = "s3:" + rest.replace(u.netloc, "***@" + u.netloc.rsplit("@", 1)[-1], 1)
            raise UsageError(  # without echoing the secret
                f"credentials in the s3 URL are not supported: {shown!r}; "
                "use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials"
            )
        if u.query or u.fragment:
            raise UsageError(f"invalid s3 URL {url!r}: no query or fragment allowed")
        if not u.hostname:
            raise UsageError(f"invalid s3 URL {url!r}: no host")
        try:
            port = u.port
        except ValueError:
            raise UsageError(f"invalid s3 URL {url!r}: bad port") from None
        if port == 0:
            raise UsageError(f"invalid s3 URL {url!r}: bad port")
        bucket, prefix = _split_path(url, u.path)
        return S3Target(bucket, prefix, f"{u.scheme}://{u.netloc}")
    if rest.startswith("//"):
        rest = rest[2:]
    first = rest.split("/", 1)[0]
    m = _AWS_HOST.match(first)
    if m:
        bucket, prefix = _split_path(url, rest[len(first):])
        return S3Target(bucket, prefix, None, m.group("region"))
    if ":" in first:
        raise UsageError(f"invalid s3 URL {url!r}: expected s3:http(s)://host:port/bucket/prefix or s3:bucket/prefix")
    bucket, prefix = _split_path(url, rest)
    return S3Target(bucket, prefix)


def open_s3(url: str) -> "S3Backend":
    """The backend for an ``s3:`` URL; it connects on first use."""
    return S3Backend(parse_s3_url(url))


# -- errors ---------------------------------------------------------------------------


def _line(x: object) -> str:
    return " ".join(str(x).split()) or type(x).__name__


def _code(e: bexc.ClientError) -> tuple[str, int, str]:
    err = e.response.get("Error", {}) or {}
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(err.get("Code") or status or "error")
    return code, status, _line(err.get("Message") or "")


def _retried(e: bexc.ClientError) -> bool:
    return bool(e.response.get("ResponseMetadata", {}).get("RetryAttempts"))


def _reason(e: BaseException) -> str:
    """The useful end of a connection error: 'Connection refused', 'timed out', ..."""
    inner = getattr(e, "kwargs", {}).get("error") if isinstance(getattr(e, "kwargs", None), dict) else None
    text = _line(inner if inner is not None else e)
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if m:
        return m.group(1).strip()
    if isinstance(e, (bexc.ConnectTimeoutError, bexc.ReadTimeoutError)) or "timed out" in text.lower():
        return "timed out"
    return text


# -- the backend --------------------------------------------------------------------


class S3Backend:
    def __init__(
        self,
        target: S3Target | str,
        *,
        multipart_threshold: int | None = None,
        part_size: int = PART_SIZE,
        part_threads: int = PART_THREADS,
        conditional_writes: bool | None = None,
        max_attempts: int | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ):
        """``multipart_threshold`` None: ``LBK_S3_MULTIPART_MIB`` (MiB) or 64 MiB.
        ``conditional_writes`` None measures whether the store honours If-None-Match;
        True/False skip the probe. ``max_attempts`` None: ``AWS_MAX_ATTEMPTS`` or 6."""
        self.target = parse_s3_url(target) if isinstance(target, str) else target
        self.location = str(self.target)
        self.bucket = self.target.bucket
        self.base = f"{self.target.prefix}/" if self.target.prefix else ""
        self.where = self.target.endpoint or "AWS S3"
        if part_size < MIN_PART:
            raise ValueError(f"part_size must be at least {MIN_PART}")
        if multipart_threshold is None:
            env = os.environ.get("LBK_S3_MULTIPART_MIB")
            try:
                multipart_threshold = int(float(env) * 1024 * 1024) if env else MULTIPART_THRESHOLD
            except ValueError:
                raise UsageError(f"LBK_S3_MULTIPART_MIB={env!r}: expected a number of MiB") from None
        self.multipart_threshold = max(multipart_threshold, MIN_PART)
        self.part_size = min(part_size, self.multipart_threshold)
        self._part_threads = max(1, part_threads)
        self._conditional = conditional_writes
        self._max_attempts = max_attempts
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._lock = threading.Lock()
        self._client_obj: Any = None
        self._parts: ThreadPoolExecutor | None = None
        self._blocks = _BlockCache(READ_CACHE)
        self._hot: OrderedDict[str, None] = OrderedDict()

    # -- client -------------------------------------------------------------------
    def _client(self) -> Any:
        with self._lock:
            if self._client_obj is None:
                self._client_obj = self._make_client()
            return self._client_obj

    def _make_client(self) -> Any:
        with _SESSIONS_LOCK:
            fingerprint = tuple(hashlib.sha256(os.environ.get(v, "").encode()).digest() for v in _SESSION_ENV)
            session = _SESSIONS.get(fingerprint)
            try:
                if session is None:
                    session = botocore.session.Session()
                    session.get_scoped_config()  # an unknown AWS_PROFILE fails here, once
                    _SESSIONS[fingerprint] = session
                return self._client_from(session)
            except bexc.ProfileNotFound as e:
                raise BackendError(f"cannot open {self.location}: {_line(e)} (check AWS_PROFILE and ~/.aws/config)") from None

    def _client_from(self, session: Any) -> Any:
        t = self.target
        region = t.region or session.get_config_variable("region")
        if region is None and t.endpoint is not None:
            region = "us-east-1"  # S3-compatible stores accept any region; SigV4 needs one
        try:
            attempts = self._max_attempts or int(os.environ.get("AWS_MAX_ATTEMPTS") or MAX_ATTEMPTS)
        except ValueError:
            raise UsageError(f"AWS_MAX_ATTEMPTS={os.environ.get('AWS_MAX_ATTEMPTS')!r}: expected a number") from None
        mode = os.environ.get("AWS_RETRY_MODE") or "standard"
        if mode not in ("standard", "adaptive", "legacy"):
            raise UsageError(f"AWS_RETRY_MODE={mode!r}: expected standard or adaptive")
        cfg = Config(
            region_name=region,
            retries={"mode": mode, "total_max_attempts": attempts},
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            max_pool_connections=POOL_CONNECTIONS,
            tcp_keepalive=True,
            # path-style for S3-compatible stores (SeaweedFS, MinIO, Ceph): a bucket name
            # need not resolve as a host name there; AWS picks its own (virtual) style
            s3={"addressing_style": "path"} if t.endpoint else {},
            user_agent_extra="lbk",
        )
        try:
            return session.create_client("s3", endpoint_url=t.endpoint, config=cfg)
        except ValueError as e:
            raise UsageError(f"invalid s3 endpoint in {self.location!r}: {_line(e)}") from None
        except bexc.BotoCoreError as e:
            raise BackendError(f"cannot open {self.location}: {_line(e)}") from None

    def _call(self, what: str, fn: Callable[..., _T], **kw: Any) -> _T:
        """Call ``fn(Bucket=..., **kw)`` on the client; every failure becomes one line."""
        try:
            return fn(Bucket=self.bucket, **kw)
        except (bexc.ClientError, bexc.BotoCoreError) as e:
            raise self._error(e, what) from None

    def _error(self, e: Exception, what: str) -> BackendError:
        if isinstance(e, bexc.ClientError):
            return self._translate(e, what)
        if isinstance(e, bexc.NoCredentialsError):
            return BackendError(
                f"{what}: no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or AWS_PROFILE, or write ~/.aws/credentials"
            )
        if isinstance(e, (bexc.EndpointConnectionError, bexc.ConnectionClosedError, bexc.ConnectTimeoutError,
                          bexc.ReadTimeoutError, bexc.HTTPClientError)):
            return BackendError(f"{what}: cannot reach {self.where}: {_reason(e)}")
        return BackendError(f"{what}: {_line(e)}")

    def _translate(self, e: bexc.ClientError, what: str) -> BackendError:
        code, status, msg = _code(e)
        if code in _MISSING:
            return NotFound(f"{what}: not found")
        if code == str(status):  # a HEAD answer: no body, so no S3 error code
            code = http.client.responses.get(status, code)
        detail = f"{code}: {msg}" if msg and msg not in (code, str(status)) else code
        if code == "NoSuchBucket":
            return BackendError(f"{what}: bucket {self.bucket!r} does not exist at {self.where}")
        if code in _ACCESS or status == 403:
            return BackendError(
                f"{what}: access denied by {self.where} ({detail}): check the credentials "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials) "
                f"and their permissions on bucket {self.bucket!r}"
            )
        if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
            return BackendError(f"{what}: {self.where} failed (HTTP {status} {detail}), also after retries")
        return BackendError(f"{what}: {self.where} answered HTTP {status} {detail}")

    # -- layout -------------------------------------------------------------------
    def _key(self, h: Handle) -> str:
        if h.kind is FileKind.CONFIG:
            return f"{self.base}config"
        if h.kind is FileKind.DATA:
            return f"{self.base}data/{h.name[:2]}/{h.name}"
        return f"{self.base}{h.kind.value}/{h.name}"

    def _head(self, h: Handle, what: str) -> dict | None:
        """The object's HEAD answer, or None when it does not exist."""
        c = self._client()
        try:
            return c.head_object(Bucket=self.bucket, Key=self._key(h))
        except bexc.ClientError as e:
            code, status, _ = _code(e)
            if code in _MISSING:
                return None
            if status == 403:
                # a HEAD answer has no body; a LIST says which: InvalidAccessKeyId,
                # SignatureDoesNotMatch, AccessDenied ...
                try:
                    c.list_objects_v2(Bucket=self.bucket, Prefix=self._key(h), MaxKeys=1)
                except bexc.ClientError as e2:
                    raise self._translate(e2, what) from None
                except bexc.BotoCoreError:
                    pass
            raise self._translate(e, what) from None
        except bexc.BotoCoreError as e:
            raise self._error(e, what) from None

    def exists(self) -> bool:
        """True when the config object is present; a missing bucket means False."""
        return self._head(Handle(FileKind.CONFIG), f"cannot open {self.location}") is not None

    def create(self) -> None:
        """Create the bucket when it is missing; refuse a prefix that holds any object."""
        c = self._client()
        what = f"cannot create repository at {self.location}"
        try:
            self._call(what, c.head_bucket)
        except NotFound:
            kw: dict[str, Any] = {}
            region = c.meta.region_name
            if self.target.endpoint is None and region and region not in ("us-east-1", "aws-global"):
                kw["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                self._call(f"cannot create bucket {self.bucket!r} at {self.where}", c.create_bucket, **kw)
            except BackendError as e:
                if "BucketAlreadyOwnedByYou" not in e.message:
                    raise
        page = self._call(what, c.list_objects_v2, Prefix=self.base, MaxKeys=1)
        if page.get("KeyCount") or page.get("Contents"):
            raise BackendError(f"{self.location} is not empty")

    # -- conditional writes -------------------------------------------------------
    def conditional_writes(self) -> bool:
        """Whether the store refuses an existing name on ``If-None-Match: *`` (measured once)."""
        if self._conditional is not None:
            return self._conditional
        key = (self.target.endpoint, self.bucket)
        with _CONDITIONAL_LOCK:
            if key not in _CONDITIONAL:
                _CONDITIONAL[key] = self._probe_conditional()
            self._conditional = _CONDITIONAL[key]
        return self._conditional

    def _probe_conditional(self) -> bool:
        c = self._client()
        probe = f"{self.base}.lbk-probe-{secrets.token_hex(8)}"
        what = f"cannot write to {self.location}"
        self._call(what, c.put_object, Key=probe, Body=b"")
        try:
            c.put_object(Bucket=self.bucket, Key=probe, Body=b"", IfNoneMatch="*")
            return False  # the header was ignored
        except bexc.ClientError as e:
            code, status, _ = _code(e)
            if code in _EXISTS or status == 412:
                return True
            if status in (400, 501) or code in ("NotImplemented", "InvalidArgument", "InvalidRequest"):
                return False
            raise self._translate(e, what) from None
        except bexc.BotoCoreError as e:
            raise self._error(e, what) from None
        finally:
            try:
                c.delete_object(Bucket=self.bucket, Key=probe)
            except (bexc.BotoCoreError, bexc.ClientError):
                pass

    # -- files --------------------------------------------------------------------
    def save(self, h: Handle, data: bytes, *, overwrite: bool = False) -> None:
        what = f"cannot write {h}"
        key = self._key(h)
        conditional = False
        if not overwrite:
            conditional = self.conditional_writes()
            if not conditional and self._head(h, what) is not None:
                raise AlreadyExists(f"{h} already exists")
        data = bytes(data) if not isinstance(data, bytes) else data
        if len(data) >= self.multipart_threshold:
            self._save_multipart(h, key, data, conditional, what)
            return
        kw = {"IfNoneMatch": "*"} if conditional else {}
        try:
            self._client().put_object(Bucket=self.bucket, Key=key, Body=data, **kw)
        except bexc.ClientError as e:
            code, status, _ = _code(e)
            if conditional and (code in _EXISTS or status == 412):
                if _retried(e) and self._etag_matches(h, hashlib.md5(data).hexdigest()):
                    return  # our own first attempt landed; its answer was lost
                raise AlreadyExists(f"{h} already exists") from None
            raise self._translate(e, what) from None
        except bexc.BotoCoreError as e:
            raise self._error(e, what) from None

    def _etag_matches(self, h: Handle, md5hex: str) -> bool:
        head = self._head(h, f"cannot stat {h}")
        return head is not None and str(head.get("ETag", "")).strip('"') == md5hex

    def _save_multipart(self, h: Handle, key: str, data: bytes, conditional: bool, what: str) -> None:
        c = self._client()
        part = max(self.part_size, -(-len(data) // MAX_PARTS))
        bounds = [(o, min(o + part, len(data))) for o in range(0, len(data), part)]
        up = self._call(what, c.create_multipart_upload, Key=key)["UploadId"]
        try:
            def one(i: int) -> dict:
                a, b = bounds[i]
                r = self._call(what, c.upload_part, Key=key, UploadId=up, PartNumber=i + 1, Body=data[a:b])
                return {"PartNumber": i + 1, "ETag": r["ETag"]}

            parts = list(self._part_pool().map(one, range(len(bounds))))
            kw = {"IfNoneMatch": "*"} if conditional else {}
            try:
                c.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=up,
                                            MultipartUpload={"Parts": parts}, **kw)
            except bexc.ClientError as e:
                code, status, _ = _code(e)
                if code in _EXISTS or status == 412 or (code == "NoSuchUpload" and _retried(e)):
                    digests = b"".join(hashlib.md5(data[a:b]).digest() for a, b in bounds)
                    if _retried(e) and self._etag_matches(h, f"{hashlib.md5(digests).hexdigest()}-{len(bounds)}"):
                        return
                    if code != "NoSuchUpload":
                        raise AlreadyExists(f"{h} already exists") from None
                raise self._translate(e, what) from None
            except bexc.BotoCoreError as e:
                raise self._error(e, what) from None
        except BaseException:
            try:
                c.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=up)
            except (bexc.BotoCoreError, bexc.ClientError):
                pass  # sweep_temporary aborts it later
            raise

    def _part_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._parts is None:
                self._parts = ThreadPoolExecutor(self._part_threads, thread_name_prefix="lbk-s3-part")
            return self._parts

    def load(self, h: Handle, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            check_range(h, 0, offset, length)  # raises
        what = f"cannot read {h}"
        if length == 0:
            check_range(h, self.stat(h), offset, 0)
            return b""
        if h.kind is FileKind.DATA and length is not None and length <= SMALL_READ and self._seen(h.name):
            return self._load_blocks(h, offset, length)
        kw: dict[str, Any] = {}
        if length is not None:
            kw["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            kw["Range"] = f"bytes={offset}-"
        c = self._client()
        for attempt in range(READ_RETRIES):
            try:
                r = c.get_object(Bucket=self.bucket, Key=self._key(h), **kw)
            except bexc.ClientError as e:
                code, status, _ = _code(e)
                if code in _MISSING:
                    raise NotFound(f"{h} not found") from None
                if code != "InvalidRange" and status != 416:
                    raise self._translate(e, what) from None
                if check_range(h, self.stat(h), offset, length):  # raises unless offset == size
                    raise self._translate(e, what) from None
                return b""
            except bexc.BotoCoreError as e:
                raise self._error(e, what) from None
            try:
                buf = r["Body"].read()
                break
            except (bexc.BotoCoreError, OSError, ValueError) as e:
                if attempt == READ_RETRIES - 1:
                    raise BackendError(f"{what}: transfer from {self.where} broke off: {_reason(e)}") from None
                time.sleep(0.2 * 2**attempt)
            finally:
                r["Body"].close()
        if kw and not r.get("ContentRange"):  # a store that ignored Range sent it all
            buf = buf[offset:] if length is None else buf[offset:offset + length]
        expect = length if length is not None else r.get("ContentLength", len(buf))
        if len(buf) != expect:
            raise BackendError(f"{h}: short read: want {offset}+{expect} bytes, got {len(buf)}")
        return buf

    # -- the block cache: many small reads of one pack become a few large GETs ----------
    def _seen(self, pack: str) -> bool:
        """Whether this pack was read before (and remember that it now was)."""
        with self._lock:
            if pack in self._hot:
                self._hot.move_to_end(pack)
                return True
            self._hot[pack] = None
            if len(self._hot) > HOT_PACKS:
                self._hot.popitem(last=False)
            return False

    def _load_blocks(self, h: Handle, offset: int, length: int) -> bytes:
        first, last = offset // READ_BLOCK, (offset + length - 1) // READ_BLOCK
        out = []
        for b in range(first, last + 1):
            block, size = self._blocks.get((h.name, b), lambda b=b: self._fetch_block(h, b))
            out.append(block)
        check_range(h, size, offset, length)  # raises when the range runs past the end
        base = first * READ_BLOCK
        return b"".join(out)[offset - base:offset - base + length]

    def _fetch_block(self, h: Handle, b: int) -> tuple[bytes, int]:
        """Block ``b`` of a pack (shorter at the end) and the pack's size."""
        what = f"cannot read {h}"
        start = b * READ_BLOCK
        try:
            r = self._client().get_object(Bucket=self.bucket, Key=self._key(h),
                                          Range=f"bytes={start}-{start + READ_BLOCK - 1}")
        except bexc.ClientError as e:
            code, status, _ = _code(e)
            if code in _MISSING:
                raise NotFound(f"{h} not found") from None
            if code == "InvalidRange" or status == 416:
                return b"", self.stat(h)
            raise self._translate(e, what) from None
        except bexc.BotoCoreError as e:
            raise self._error(e, what) from None
        try:
            data = r["Body"].read()
        except (bexc.BotoCoreError, OSError, ValueError) as e:
            raise BackendError(f"{what}: transfer from {self.where} broke off: {_reason(e)}") from None
        finally:
            r["Body"].close()
        m = re.match(r"bytes (\d+)-(\d+)/(\d+)", r.get("ContentRange") or "")
        if not m:  # a store that ignored Range sent the whole object
            return data[start:start + READ_BLOCK], len(data)
        size = int(m.group(3))
        if int(m.group(1)) != start or len(data) != min(READ_BLOCK, size - start):
            raise BackendError(f"{h}: short read: want block at {start}, got {len(data)} bytes")
        return data, size

    def stat(self, h: Handle) -> int:
        head = self._head(h, f"cannot stat {h}")
        if head is None:
            raise NotFound(f"{h} not found")
        return int(head["ContentLength"])

    def list(self, kind: FileKind) -> Iterator[FileInfo]:
        if kind is FileKind.CONFIG:
            head = self._head(Handle(FileKind.CONFIG), "cannot list config")
            if head is not None:
                yield FileInfo("config", int(head["ContentLength"]))
            return
        top = f"{self.base}{kind.value}/"
        c = self._client()
        what = f"cannot list {kind.value}"
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Prefix": top, "MaxKeys": LIST_PAGE}
            if token:
                kw["ContinuationToken"] = token
            page = self._call(what, c.list_objects_v2, **kw)
            for obj in page.get("Contents", ()):
                rel = obj["Key"][len(top):]
                if kind is FileKind.DATA:
                    sub, _, name = rel.partition("/")
                    if sub != name[:2]:
                        continue
                else:
                    name = rel
                if _HEX64.match(name):
                    yield FileInfo(name, int(obj["Size"]))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def remove(self, h: Handle) -> None:
        what = f"cannot remove {h}"
        if self._head(h, what) is None:
            raise NotFound(f"{h} not found")
        self._call(what, self._client().delete_object, Key=self._key(h))

    def sweep_temporary(self, older_than: float = STALE_UPLOAD) -> int:
        """Abort unfinished multipart uploads under the prefix that started more than
        ``older_than`` seconds ago (by the store's clock); returns the count."""
        c = self._client()
        what = f"cannot clean up {self.location}"
        n = 0
        kw: dict[str, Any] = {"Prefix": self.base}
        while True:
            page = self._call(what, c.list_multipart_uploads, **kw)
            date = page.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
            now = parsedate_to_datetime(date) if date else datetime.now(timezone.utc)
            for u in page.get("Uploads", ()):
                started = u.get("Initiated")
                if started is not None and (now - started).total_seconds() < older_than:
                    continue
                try:
                    c.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
                    n += 1
                except (bexc.BotoCoreError, bexc.ClientError):
                    pass
            if not page.get("IsTruncated"):
                return n
            kw = {"Prefix": self.base, "KeyMarker": page.get("NextKeyMarker"),
                  "UploadIdMarker": page.get("NextUploadIdMarker")}

    def close(self) -> None:
        with self._lock:
            parts, self._parts = self._parts, None
            client, self._client_obj = self._client_obj, None
        self._blocks.clear()
        if parts is not None:
            parts.shutdown(wait=True)
        if client is not None and hasattr(client, "close"):
            client.close()

    def __enter__(self) -> "S3Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"S3Backend({self.location!r})"


class _BlockCache:
    """Least recently used blocks of immutable objects, each fetched once even when
    several threads ask for it at the same moment. Failures are not cached."""

    def __init__(self, cap: int):
        self.cap = cap
        self.size = 0
        self.blocks: OrderedDict[tuple[str, int], tuple[bytes, int]] = OrderedDict()
        self.inflight: dict[tuple[str, int], Future] = {}
        self.lock = threading.Lock()

    def get(self, key: tuple[str, int], fetch: Callable[[], tuple[bytes, int]]) -> tuple[bytes, int]:
        with self.lock:
            hit = self.blocks.get(key)
            if hit is not None:
                self.blocks.move_to_end(key)
                return hit
            fut = self.inflight.get(key)
            owner = fut is None
            if owner:
                fut = self.inflight[key] = Future()
        if not owner:
            return fut.result()
        try:
            value = fetch()
        except BaseException as e:
            with self.lock:
                del self.inflight[key]
            fut.set_exception(e)
            raise
        with self.lock:
            del self.inflight[key]
            self.blocks[key] = value
            self.size += len(value[0])
            while self.size > self.cap and self.blocks:
                _, old = self.blocks.popitem(last=False)
                self.size -= len(old[0])
        fut.set_result(value)
        return value

    def clear(self) -> None:
        with self.lock:
            self.blocks.clear()
            self.size = 0
