"""Repository URL -> backend. The one place that knows which schemes exist."""

from __future__ import annotations

from typing import Callable

from lbk.backend.base import Backend
from lbk.errors import UsageError


def open_backend(url: str, on_retry: Callable[[str], None] | None = None) -> Backend:
    """The backend for a repository URL (see SPEC.md "Repository URLs"), wrapped so that
    transient failures are retried and every save is verified (``retry.py``)."""
    from lbk import faults
    from lbk.backend.retry import RetryingBackend

    backend = _open(url)
    plan = faults.active()
    if plan is not None:  # tests only: LBK_TEST_FAULTS
        from lbk.backend.faulty import FaultyBackend

        backend = FaultyBackend(backend, plan)
    return RetryingBackend(backend, on_retry)


def _open(url: str) -> Backend:
    if not url:
        raise UsageError("empty repository URL")
    if url.startswith("file://"):
        from lbk.backend.local import LocalBackend

        return LocalBackend(url[len("file://"):])
    if url.startswith("sftp:"):
        try:
            from lbk.backend.sftp import open_sftp
        except ImportError as e:  # pragma: no cover - depends on installed extras
            raise UsageError(f"sftp repositories are not available: {e}") from e
        return open_sftp(url)
    if url.startswith("s3:"):
        try:
            from lbk.backend.s3 import open_s3
        except ImportError as e:  # pragma: no cover - depends on installed extras
            raise UsageError(f"s3 repositories need boto3: pip install 'lbk[s3]' ({e})") from e
        return open_s3(url)
    if url.startswith("rest:"):
        raise UsageError("rest repositories are not supported yet")
    if "://" in url:
        raise UsageError(f"unknown repository URL scheme: {url}")
    from lbk.backend.local import LocalBackend

    return LocalBackend(url)
