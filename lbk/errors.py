"""The exit-code table and the one error tree.

Every error a user can cause or meet is an ``LbkError`` subclass that carries its exit
code; ``lbk.cli.main`` is the only place that turns them into a one-line message and an
exit status. Anything else that escapes is a bug and is reported as such.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FATAL = 1
    USAGE = 2
    PARTIAL = 3  # backup finished, some source files unreadable
    NO_REPOSITORY = 10
    LOCKED = 11
    WRONG_PASSWORD = 12
    INTERRUPTED = 130


class LbkError(Exception):
    """A fatal error with a message meant for the user."""

    exit_code: ExitCode = ExitCode.FATAL

    def __init__(self, message: str | None = None):
        super().__init__(message or (self.__doc__ or "error").strip().splitlines()[0])

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(LbkError):
    """Invalid usage."""

    exit_code = ExitCode.USAGE


class RepositoryNotFound(LbkError):
    """Repository does not exist."""

    exit_code = ExitCode.NO_REPOSITORY


class RepositoryExists(LbkError):
    """Repository already exists or the target is not empty."""


class NoRepositoryConfigured(LbkError):
    """No repository given."""


class WrongPassword(LbkError):
    """Wrong password or no key found."""

    exit_code = ExitCode.WRONG_PASSWORD


class LockFailed(LbkError):
    """Repository is locked."""

    exit_code = ExitCode.LOCKED


class IntegrityError(LbkError):
    """Stored data failed authentication or does not match its id."""


class FormatError(LbkError):
    """Stored data has an unknown version or a malformed structure."""


class RefError(LbkError):
    """Snapshot reference could not be resolved."""


class BackendError(LbkError):
    """The storage backend failed."""


class NotFound(BackendError):
    """Object not found in the backend."""


class AlreadyExists(BackendError):
    """A save without overwrite found the name taken."""


class TransientError(BackendError):
    """A backend operation failed in a way that may succeed when repeated (EIO on a
    network file system, a busy or stale handle); the retrying wrapper repeats it."""


class PasswordError(LbkError):
    """No password could be obtained."""


class RestoreError(LbkError):
    """Restore could not be completed."""


class ImageError(LbkError):
    """Disk image operation failed."""


class Interrupted(LbkError):
    """Interrupted."""

    exit_code = ExitCode.INTERRUPTED


class PartialBackup(LbkError):
    """Some source files could not be read."""

    exit_code = ExitCode.PARTIAL
