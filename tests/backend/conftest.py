"""Backend fixtures. Every name in BACKENDS runs the whole contract suite.

A new backend adds one entry here (a fixture that yields a fresh, *uncreated* backend)
and nothing else.
"""

from __future__ import annotations

import pytest

from lbk.backend.local import LocalBackend
from lbk.backend.mem import MemoryBackend
from lbk.backend.sftp import open_sftp

BACKENDS = ["mem", "local", "retry", "sftp", "s3"]


@pytest.fixture
def mem_backend():
    yield MemoryBackend()


@pytest.fixture
def local_backend(tmp_path):
    yield LocalBackend(str(tmp_path / "repo"))


@pytest.fixture
def retry_backend(tmp_path):
    """The wrapper every command uses (retries, verified saves) over a local directory."""
    from lbk.backend.retry import RetryingBackend

    yield RetryingBackend(LocalBackend(str(tmp_path / "repo")))


@pytest.fixture
def sftp_backend(ssh_home, tmp_path):
    """A fresh directory on the session's real sshd, reached through the ``lbktest`` alias."""
    yield open_sftp(ssh_home.url(ssh_home.server.root / tmp_path.name / "repo"))


@pytest.fixture
def s3_backend(s3):
    """A fresh prefix in a bucket on the session's real SeaweedFS (tests/seaweed.py)."""
    from lbk.backend.s3 import open_s3

    yield open_s3(s3.url)


@pytest.fixture(params=BACKENDS)
def backend(request):
    b = request.getfixturevalue(f"{request.param}_backend")
    yield b
    b.close()
