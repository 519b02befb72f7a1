"""relsync as a library: sync a local release onto boards, roll them back, read their status.

The command line parses its options into :class:`Settings` and calls these; so can a program::

    import asyncio
    from pathlib import Path
    import relsync

    reports = asyncio.run(relsync.sync(
        Path("_build/prod/rel/myapp"),
        [relsync.Board("myapp@192.0.2.7", "erl")],
        relsync.Settings(destination_rw_path="/data/relsync"),
    ))
    assert all(r.exit_code == 0 for r in reports), [r.error for r in reports]

The release is scanned and hashed once, while every board lists its files; the boards are
synced concurrently, each with its own plan and hooks. A board's failure is its report's
``error`` and ``exit_code``; bad local input (a release that is not one, a hook that does not
compile) raises :class:`~relsync.errors.UsageError` before any board is touched.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from relsync.boards import Board
from relsync.destination import release_destination, runs_local_release
from relsync.engine import SyncOptions, SyncReport, check_paths
from relsync.engine import sync as sync_target
from relsync.errors import ExitCode, RelsyncError, TargetError, UsageError
from relsync.local_scan import LocalScan, scan_while_reading
from relsync.plan import SyncPlan
from relsync.progress import ProgressBar
from relsync.release_node import default_cookie
from relsync.rollback import rollback as rollback_target
from relsync.status import BoardStatus, board_status
from relsync.target import Target
from relsync.transports.erl import ErlTarget

if TYPE_CHECKING:  # relsync.hooks is imported only when there is a hook
    from relsync.hooks import Hook

T = TypeVar("T")


#: The longest time limit the board can count (Erlang's ``after`` takes up to 2^32 - 1 ms).
MAX_SECONDS = 4_294_967


@dataclass(frozen=True, slots=True)
class Settings:
    """What applies to every board unless the :class:`Board` says otherwise (the long
    command-line options, by the same names)."""

    destination_path: str | None = None
    destination_rw_path: str | None = None
    force_path: bool = False
    exclude_system_libs: bool = True
    copy_unsafe_links: bool = False
    cookie: str | None = None
    sname: str | None = None
    name: str | None = None
    epmd_port: int | None = None
    connect_timeout: float = 10.0
    port: int | None = None
    user: str = "relsync"
    identity: str | None = None
    known_hosts: Path | None = None
    accept_new_host_key: bool = False
    dry_run: bool = False
    purge: str = "soft"
    hook_timeout: float = 60.0
    lock_timeout: float = 30.0
    upgrade: bool = False
    upgrade_timeout: float = 10.0

    def check(self) -> None:
        """A one-line UsageError for values no board could use."""
        # The board counts hook and upgrade limits in whole milliseconds (at least 1).
        for opt, least, what in (
            ("upgrade_timeout", 0.001, "from 0.001"),
            ("hook_timeout", 0.001, "from 0.001"),
            ("connect_timeout", 0.001, "from 0.001"),
            ("lock_timeout", 0.0, "from 0 (do not wait)"),
        ):
            value = getattr(self, opt)
            if not (isinstance(value, int | float) and least <= value <= MAX_SECONDS):
                raise UsageError(
                    f"--{opt.replace('_', '-')} {str(value).removesuffix('.0')}: give a number "
                    f"of seconds {what} "
                    f"to {MAX_SECONDS}"
                )
        if self.sname and self.name:
            raise UsageError("give either --sname or --name, not both")
        for opt in ("destination_path", "destination_rw_path"):
            value = getattr(self, opt)
            if value == "":  # not "in place": leave the option out for that
                raise UsageError(
                    f"--{opt.replace('_', '-')} is empty: give an absolute path, or leave it "
                    "out (without -q the release is updated in place)"
                )
            if value and not value.startswith("/"):
                raise UsageError(f"--{opt.replace('_', '-')} {value!r} must be an absolute path")


def local_node_name(settings: Settings, destination: str) -> str | None:
    """Our own node name from ``sname``/``name`` (completed with a host when bare)."""
    if settings.sname:
        name = settings.sname
        return name if "@" in name else f"{name}@{socket.gethostname().split('.')[0]}"
    if settings.name:
        if "@" in settings.name:
            return settings.name
        host = destination.partition("@")[2]
        local = host if host in ("127.0.0.1", "localhost") else socket.getfqdn()
        return f"{settings.name}@{local}"
    return None


def board_label(board: Board, settings: Settings) -> str:
    """The board's name in reports, as its target names itself once connected: the node, or
    ``user@host:port`` in ssh mode."""
    if board.mode != "ssh":
        return board.destination
    from relsync.transports.ssh import DEFAULT_PORT

    port = board.port or settings.port or DEFAULT_PORT
    return f"{board.user or settings.user}@{board.destination}:{port}"


async def open_target(board: Board, settings: Settings, root: Path | None) -> Target:
    """Connect to one board in its mode (its own settings first, then ``settings``, then for
    the cookie what the local release at ``root`` says)."""
    if board.mode == "ssh":
        # Imported here: asyncssh costs ~0.15 s of start-up that erl mode does not need.
        from relsync.transports.ssh import DEFAULT_PORT, SshTarget

        identity = board.identity or settings.identity
        return await SshTarget.open(
            board.destination,
            port=board.port or settings.port or DEFAULT_PORT,
            user=board.user or settings.user,
            identity=str(Path(identity).expanduser()) if identity else None,
            known_hosts=settings.known_hosts,
            accept_new_host_key=settings.accept_new_host_key,
            timeout=settings.connect_timeout,
        )
    return await ErlTarget.open(
        board.destination,
        board.cookie or settings.cookie or default_cookie(root),
        local_name=local_node_name(settings, board.destination),
        epmd_port=board.epmd_port or settings.epmd_port,
        timeout=settings.connect_timeout,
    )


async def board_options(
    board: Board,
    settings: Settings,
    hook: Hook | None,
    target: Target,
    *,
    dry_run: bool,
    local: Path | None = None,
) -> SyncOptions:
    """One board's sync options: its own settings first, then ``settings`` (the release path,
    when neither gives it, is the one the board runs; with the ``local`` release's path, a
    sync in place learns whether that is the local release itself)."""
    given = board.dest_path or settings.destination_path
    dest = await release_destination(target, given, settings.force_path)
    rw = board.rw_path or settings.destination_rw_path or None
    # The board running the very directory relsync syncs from has nothing to mirror: a shadow
    # tree would copy the build's files and take the VM off its release for nothing.
    local_tree = bool(local and await runs_local_release(target, dest, local))
    options = SyncOptions(
        dest_path=dest,
        rw_path=None if local_tree else rw,
        unused_rw_path=rw if local_tree else None,
        local_tree=local_tree,
        hook=hook,
        hook_timeout=settings.hook_timeout,
        brutal_purge=settings.purge == "brutal",
        dry_run=dry_run,
        lock_timeout=settings.lock_timeout,
        upgrade=settings.upgrade,
        upgrade_timeout=settings.upgrade_timeout,
    )
    check_paths(options)
    return options


def scan(release: Path, settings: Settings) -> LocalScan:
    """The local release, to be scanned once for every board."""
    return LocalScan(release, settings.exclude_system_libs, settings.copy_unsafe_links)


async def sync_one(
    board: Board,
    settings: Settings,
    local: LocalScan,
    hook: Hook | None = None,
    *,
    progress: bool = False,
) -> SyncReport:
    """Connect to one board and sync it; its failure raises (a :class:`RelsyncError`)."""
    target = await open_target(board, settings, local.root)
    bar = ProgressBar(target.label, enabled=progress)  # the summary's name for the board
    try:
        options = await board_options(
            board, settings, hook, target, dry_run=settings.dry_run, local=local.root
        )
        release, state = await scan_while_reading(target, local, options)
        return await sync_target(
            target, release, options, on_transfer=bar.start, progress=bar.advance, state=state
        )
    finally:
        bar.finish()
        await target.close()


async def rollback_one(
    board: Board, settings: Settings, local: LocalScan, *, clean: bool = False
) -> SyncReport:
    """Connect to one board and take it back to its pristine release (``clean``: remove the
    shadow tree too); its failure raises."""
    target = await open_target(board, settings, local.root)
    try:
        options = await board_options(board, settings, None, target, dry_run=settings.dry_run)
        if not options.rw_path:
            raise UsageError(
                f"--rollback on {board.destination} needs its shadow tree (-q PATH): an "
                "in-place sync replaced the release's own files, so there is no pristine copy "
                "to go back to"
            )
        release = await local.release() if settings.upgrade else None
        return await rollback_target(
            target, options, local.exclude_prefixes, release=release, clean=clean
        )
    finally:
        await target.close()


async def status_one(board: Board, settings: Settings, local: LocalScan) -> BoardStatus:
    """Connect to one board and read what it runs against its pristine and the local release."""
    target = await open_target(board, settings, local.root)
    try:
        options = await board_options(board, settings, None, target, dry_run=True)
        return await board_status(target, local, options)
    finally:
        await target.close()


class Interrupted(RelsyncError):
    """The run was cancelled (Ctrl-C, SIGTERM): ``reports`` has every board's, a board it
    stopped with its ``failed`` report saying so."""

    exit_code = ExitCode.SYNC

    def __init__(self, reports: list[Any]) -> None:
        super().__init__(INTERRUPTED)
        self.reports = reports


#: The error of a board whose sync, rollback or status was cancelled.
INTERRUPTED = "interrupted; run relsync again: it converges"


async def each_board(
    boards: Sequence[Board],
    one: Callable[[Board], Awaitable[T]],
    failed: Callable[[Board, RelsyncError], T],
) -> list[T]:
    """``one(board)`` for every board at once; a board's failure is ``failed(board, error)``.
    Cancelled, it raises :class:`Interrupted` once every board has stopped."""

    async def reported(board: Board) -> T:
        try:
            return await one(board)
        except RelsyncError as exc:
            return failed(board, exc)

    tasks = [asyncio.ensure_future(reported(b)) for b in boards]
    try:
        return list(await asyncio.gather(*tasks))
    except asyncio.CancelledError:
        stopped = TargetError(INTERRUPTED)
        raise Interrupted(
            [
                t.result() if not t.cancelled() else failed(b, stopped)
                for b, t in zip(boards, tasks, strict=True)
            ]
        ) from None


def failed_report(settings: Settings, action: str) -> Callable[[Board, RelsyncError], SyncReport]:
    """The report of a board whose ``action`` (sync, rollback) failed before it had one."""

    def report(board: Board, exc: RelsyncError) -> SyncReport:
        rw = board.rw_path or settings.destination_rw_path or ""
        done = SyncReport(board_label(board, settings), SyncPlan(root=rw), [], action=action)
        done.error, done.exit_code = str(exc), exc.exit_code
        return done

    return report


async def sync(
    release: Path, boards: Sequence[Board], settings: Settings, hook: Hook | None = None
) -> list[SyncReport]:
    """Sync ``release`` onto every board at once; one report a board, in their order."""
    settings.check()
    local = scan(release, settings)
    return await each_board(
        boards, lambda b: sync_one(b, settings, local, hook), failed_report(settings, "sync")
    )


async def rollback(
    release: Path, boards: Sequence[Board], settings: Settings, *, clean: bool = False
) -> list[SyncReport]:
    """Take every board back to its pristine release without a reboot; one report a board."""
    settings.check()
    local = scan(release, settings)
    return await each_board(
        boards,
        lambda b: rollback_one(b, settings, local, clean=clean),
        failed_report(settings, "rollback"),
    )


async def status(release: Path, boards: Sequence[Board], settings: Settings) -> list[BoardStatus]:
    """What every board runs, against its pristine release and ``release``; a board that
    could not be read has its error in its status."""
    settings.check()
    local = scan(release, settings)
    return await each_board(
        boards,
        lambda b: status_one(b, settings, local),
        lambda b, exc: BoardStatus.failed(
            board_label(b, settings), b.rw_path or settings.destination_rw_path or None, exc
        ),
    )
