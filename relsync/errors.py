"""relsync's own errors: each one maps to an exit code and prints as one line."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes (documented in ``relsync --help``)."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONNECT = 3
    HOOK = 4
    SYNC = 5
    RELOAD = 6
    BUSY = 7
    UPGRADE = 8
    UPGRADE_KEPT = 9


class RelsyncError(Exception):
    """Base class: ``str(exc)`` is one line saying what failed, why, and what to do."""

    exit_code = ExitCode.INTERNAL


class UsageError(RelsyncError):
    """Bad command line or local input; nothing was sent to the target."""

    exit_code = ExitCode.USAGE


class ConnectError(RelsyncError):
    """The target could not be reached or refused us; it was not touched."""

    exit_code = ExitCode.CONNECT


class HookError(RelsyncError):
    """A presync/postsync hook failed."""

    exit_code = ExitCode.HOOK


class TargetError(RelsyncError):
    """An operation on the target failed (write, link, code path)."""

    exit_code = ExitCode.SYNC


class BusyError(RelsyncError):
    """Another sync holds the board's sync lock; the board was not touched."""

    exit_code = ExitCode.BUSY

    def __init__(self, message: str, holder: str = "", since: int = 0) -> None:
        super().__init__(message)
        #: Who holds the lock (the other client's label) and since when (Unix seconds).
        self.holder = holder
        self.since = since
