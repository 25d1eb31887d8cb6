"""Repository URL -> backend. The one place that knows which schemes exist."""

from __future__ import annotations

from lbk.backend.base import Backend
from lbk.errors import UsageError


def open_backend(url: str) -> Backend:
    """Return the backend for a repository URL (see SPEC.md "Repository URLs")."""
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
    for scheme in ("s3:", "rest:"):
        if url.startswith(scheme):
            raise UsageError(f"{scheme[:-1]} repositories are not supported yet")
    if "://" in url:
        raise UsageError(f"unknown repository URL scheme: {url}")
    from lbk.backend.local import LocalBackend

    return LocalBackend(url)
