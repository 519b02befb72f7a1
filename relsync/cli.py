"""The ``relsync`` command line, compatible with the original relsync's options."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import gc
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relsync import __version__, config
from relsync.boards import Board, boards_from_file, check_destination
from relsync.config import project_root
from relsync.destination import release_destination
from relsync.engine import SyncOptions, SyncReport, check_paths, sync
from relsync.errors import ExitCode, RelsyncError, UsageError
from relsync.local_scan import LocalScan, scan_while_reading
from relsync.plan import SyncPlan
from relsync.progress import ProgressBar
from relsync.release import find_release
from relsync.release_node import default_cookie, release_node
from relsync.report import print_json, print_summary, print_table
from relsync.rollback import rollback
from relsync.status import BoardStatus, board_status, print_status, print_status_json
from relsync.target import Target
from relsync.transports.erl import ErlTarget

if TYPE_CHECKING:  # relsync.hooks is imported only when there is a hook
    from relsync.hooks import Hook

EXIT_CODES = """boards to try a release on: relsync target --help
check a release on an emulated board before flashing: relsync validate --help

exit codes:
  0  synced (or nothing to do)
  1  internal error (a bug: please report it)
  2  bad command line or local release; the target was not touched
  3  could not connect to the target; it was not touched
  4  a hook failed (presync: nothing was changed; postsync: files and code were updated)
  5  a file operation on the target failed; run relsync again, it converges
  6  synced, but some modules could not be reloaded (processes still run old code)
  7  the board was busy with another sync for --lock-timeout seconds; it was not touched
  8  --upgrade: a process refused a step; every step was undone, the old code runs
with several boards, the highest of their codes (0 only when every board synced)"""


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _port(text: str) -> int:
    value = int(text) if text.isdigit() else -1
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"expected a TCP port number (1-65535), got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see relsync --help)")


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns`` without importing shutil (and bz2, lzma...)."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, given the width it would look up itself: argparse makes one for
    every option added, and without a width each imports shutil to ask the terminal."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        width = _terminal_columns() - 2 if width is None else width
        super().__init__(prog, indent_increment, max_help_position, width)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (original options with their short forms and defaults, then ours)."""
    p = _Parser(
        prog="relsync",
        description="Synchronize a local Erlang/OTP release with a running target node.",
        epilog=EXIT_CODES,
        formatter_class=_Formatter,
    )
    a = p.add_argument
    a(
        "-d",
        "--destination-node",
        action="append",
        metavar="NODE",
        help="destination node (erl mode) or host (ssh mode); repeat it to sync several boards "
        "at once [default: the node the release's vm.args or mix release names]",
    )
    a(
        "--targets",
        type=Path,
        metavar="FILE",
        help="a TOML file naming boards to sync at once ([[board]] tables: see README)",
    )
    a(
        "-p",
        "--destination-path",
        metavar="PATH",
        help="path to the release on the destination (can be read-only) [default: the release "
        "the node was booted from]",
    )
    a(
        "--force-path",
        action="store_true",
        help="write to -p even when the node runs its release from another path",
    )
    a(
        "-q",
        "--destination-rw-path",
        default="",
        metavar="PATH",
        help="writable path on the destination for a shadow tree (empty if not needed)",
    )
    a(
        "-l",
        "--local-path",
        metavar="PATH",
        help="path to the local release [default: the one release under _build/*/rel, or ./_rel]",
    )
    a(
        "-H",
        "--hooks",
        metavar="MOD|FILE.erl",
        help="module with presync/0 and postsync/0 to run on the destination",
    )
    a(
        "-E",
        "--exclude-system-libs",
        type=_bool,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="do not synchronize OTP system libs and ERTS [default: true]",
    )
    a(
        "--copy-unsafe-links",
        action="store_true",
        help="copy what a symlink leading out of the release points to [default: refuse it]",
    )
    a(
        "-c",
        "--cookie",
        metavar="COOKIE",
        help="Erlang magic cookie [default: $RELSYNC_COOKIE, else 'cookie']",
    )
    a("-s", "--sname", metavar="NAME", help="short name for the local node")
    a("-n", "--name", metavar="NAME", help="long name for the local node")
    a(
        "-M",
        "--mode",
        choices=("erl", "ssh"),
        default="erl",
        help="transfer over the Erlang distribution protocol or ssh [default: erl]",
    )
    a("-P", "--port", type=_port, metavar="PORT", help="ssh port to use [default: 2228]")
    a("-u", "--user", metavar="USER", default="relsync", help="ssh user name [default: relsync]")
    a(
        "-i",
        "--identity",
        metavar="FILE",
        help="ssh private key [default: ssh-agent, then ~/.ssh/id_*]",
    )
    a(
        "--known-hosts",
        metavar="FILE",
        type=Path,
        help="ssh known_hosts file [default: ~/.ssh/known_hosts]",
    )
    a(
        "--accept-new-host-key",
        action="store_true",
        help="trust and record a board's host key seen for the first time (a changed key is "
        "always refused)",
    )
    a(
        "--epmd-port",
        type=_port,
        metavar="PORT",
        help="EPMD port on the destination host [default: $ERL_EPMD_PORT, else 4369]",
    )
    a("--dry-run", action="store_true", help="show what would change; touch nothing")
    a(
        "--purge",
        choices=("soft", "brutal"),
        default="soft",
        help="soft: report processes still in old code; brutal: kill them [default: soft]",
    )
    a(
        "--hook-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="time limit for each hook [default: 60]",
    )
    a(
        "--lock-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait while another sync holds the board [default: 30]",
    )
    a(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time limit for reaching the destination [default: 10]",
    )
    a(
        "--upgrade",
        action="store_true",
        help="load as an appup would: suspend the processes of changed modules, convert their "
        "state with code_change, update supervisors' child specs; undone if a step fails",
    )
    a(
        "--upgrade-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="--upgrade: limit for each process to suspend, convert or resume [default: 10]",
    )
    a(
        "--rollback",
        action="store_true",
        help="put the board back on its pristine release, without a reboot (needs -q)",
    )
    a("--clean", action="store_true", help="--rollback: also remove the shadow tree")
    a(
        "--status",
        action="store_true",
        help="show what the board runs against its pristine release and the local one",
    )
    a(
        "--show-config",
        action="store_true",
        help="print the options that apply and where each comes from (command line, "
        "relsync.toml, --targets [relsync], rebar.config {relsync, [...]}), then exit",
    )
    a("--json", action="store_true", help="print the result as one JSON object")
    a("-v", "--verbose", action="store_true", help="list every file and module")
    a("--quiet", action="store_true", help="print nothing but errors")
    a(
        "--build",
        action="store_true",
        help="build the release first (rebar3 release, or mix release), then sync what it built",
    )
    a(
        "--profile",
        metavar="PROFILE",
        help="--build: rebar3 profile, or MIX_ENV [default: rebar3's default; for mix "
        "MIX_ENV, else prod]",
    )
    a("--relname", metavar="NAME", help="--build: the release to build (rebar3 -n)")
    a(
        "--watch",
        action="store_true",
        help="sync, then rebuild (--build) and sync every board again whenever the project's "
        "sources change; Ctrl-C ends it",
    )
    a("--version", action="version", version=f"relsync {__version__}")
    return p


def local_node_name(args: argparse.Namespace, destination: str) -> str | None:
    """Our own node name from ``--sname``/``--name`` (completed with a host when bare)."""
    if args.sname and args.name:
        raise UsageError("give either --sname or --name, not both")
    if args.sname:
        name = str(args.sname)
        return name if "@" in name else f"{name}@{socket.gethostname().split('.')[0]}"
    if args.name:
        name = str(args.name)
        if "@" in name:
            return name
        host = destination.partition("@")[2]
        return f"{name}@{host if host in ('127.0.0.1', 'localhost') else socket.getfqdn()}"
    return None


def boards_from_args(args: argparse.Namespace) -> list[Board]:
    """The boards the command line names: from ``--targets`` and each ``-d`` (maybe none)."""
    boards = boards_from_file(args.targets, args.mode) if args.targets else []
    for destination in args.destination_node or []:
        board = Board(destination, args.mode)
        check_destination(board)
        boards.append(board)
    return boards


def release_board(args: argparse.Namespace, root: Path) -> Board:
    """The board when none is named: the node the release at ``root`` starts as (erl mode)."""
    node = release_node(root) if args.mode == "erl" else None
    if node is None:
        raise UsageError("no target: pass -d NODE (or -d HOST with -M ssh) or --targets FILE")
    board = Board(node, args.mode)
    check_destination(board)
    return board


async def open_target(board: Board, args: argparse.Namespace, root: Path | None) -> Target:
    """Connect to one board in its mode (its own settings first, then the command line's, then
    for the cookie what the local release at ``root`` says)."""
    if board.mode == "ssh":
        # Imported here: asyncssh costs ~0.15 s of start-up that erl mode does not need.
        from relsync.transports.ssh import DEFAULT_PORT, SshTarget

        identity = board.identity or args.identity
        return await SshTarget.open(
            board.destination,
            port=board.port or args.port or DEFAULT_PORT,
            user=board.user or args.user,
            identity=str(Path(identity).expanduser()) if identity else None,
            known_hosts=args.known_hosts,
            accept_new_host_key=args.accept_new_host_key,
            timeout=args.connect_timeout,
        )
    cookie = board.cookie or args.cookie or default_cookie(root)
    return await ErlTarget.open(
        board.destination,
        cookie,
        local_name=local_node_name(args, board.destination),
        epmd_port=board.epmd_port or args.epmd_port,
        timeout=args.connect_timeout,
    )


async def board_options(
    board: Board, args: argparse.Namespace, hook: Hook | None, target: Target
) -> SyncOptions:
    """One board's sync options: its own settings first, then the command line's (the release
    path, when neither gives it, is the one the board runs)."""
    given = board.dest_path or args.destination_path
    options = SyncOptions(
        dest_path=await release_destination(target, given, args.force_path),
        rw_path=board.rw_path or args.destination_rw_path or None,
        hook=hook,
        hook_timeout=args.hook_timeout,
        brutal_purge=args.purge == "brutal",
        dry_run=args.dry_run or args.status,
        lock_timeout=args.lock_timeout,
        upgrade=args.upgrade,
        upgrade_timeout=args.upgrade_timeout,
    )
    check_paths(options)
    if args.rollback and not options.rw_path:
        raise UsageError(
            f"--rollback on {board.destination} needs its shadow tree (-q PATH): an in-place "
            "sync replaced the release's own files, so there is no pristine copy to go back to"
        )
    return options


async def sync_board(
    board: Board, args: argparse.Namespace, local: LocalScan, hook: Hook | None, bar: bool
) -> SyncReport:
    """Connect to one board and sync it (or roll it back)."""
    target = await open_target(board, args, local.root)
    try:
        options = await board_options(board, args, hook, target)
    except BaseException:
        await target.close()
        raise
    if args.rollback:
        try:
            release = await local.release() if args.upgrade else None
            return await rollback(
                target, options, local.exclude_prefixes, release=release, clean=args.clean
            )
        finally:
            await target.close()
    progress = ProgressBar(board.destination, enabled=bar)
    try:
        release, state = await scan_while_reading(target, local, options)
        return await sync(
            target,
            release,
            options,
            on_transfer=progress.start,
            progress=progress.advance,
            state=state,
        )
    finally:
        progress.finish()
        await target.close()


async def status_of(board: Board, args: argparse.Namespace, local: LocalScan) -> BoardStatus:
    """Connect to one board and read its status."""
    target = await open_target(board, args, local.root)
    try:
        return await board_status(target, local, await board_options(board, args, None, target))
    finally:
        await target.close()


async def _guarded(
    board: Board, args: argparse.Namespace, local: LocalScan, hook: Hook | None
) -> SyncReport:
    try:
        return await sync_board(board, args, local, hook, bar=False)
    except RelsyncError as exc:
        report = SyncReport(board.destination, SyncPlan(root=board.rw_path or ""), [])
        report.error, report.exit_code = str(exc), exc.exit_code
        return report


def _orphan_errors(verbose: bool) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """The loop's handler for errors nobody awaited. A lost connection fails every request in
    flight, and asyncssh awaits only the first of a file's parallel writes: that failure is
    reported once, as relsync's one-line error, and its echoes only with ``-v``."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        echo = isinstance(exc, OSError) or type(exc).__module__.startswith("asyncssh.")
        if verbose or not echo:
            loop.default_exception_handler(context)

    return handle


async def run(args: argparse.Namespace, cwd: Path) -> list[SyncReport] | list[BoardStatus]:
    """Resolve the options, then sync every board concurrently; the release is scanned once,
    while the boards list their files."""
    asyncio.get_running_loop().set_exception_handler(_orphan_errors(args.verbose))
    if args.clean and not args.rollback:
        raise UsageError("--clean goes with --rollback (it removes the shadow tree)")
    if args.rollback and args.status:
        raise UsageError("give either --rollback or --status, not both")
    if args.upgrade_timeout <= 0:
        raise UsageError("--upgrade-timeout must be a positive number of seconds")
    if args.hook_timeout <= 0:
        raise UsageError("--hook-timeout must be a positive number of seconds")
    if args.lock_timeout < 0:
        raise UsageError("--lock-timeout must be 0 (do not wait) or more seconds")
    for opt in ("destination_path", "destination_rw_path"):
        value = getattr(args, opt)
        if value and not value.startswith("/"):
            raise UsageError(f"--{opt.replace('_', '-')} {value!r} must be an absolute path")
    named = boards_from_args(args)
    if args.build and not args.local_path:
        from relsync.build import build_release

        root = await build_release(project_root(cwd) or cwd, args.profile, args.relname)
    else:
        root = find_release(args.local_path, cwd)
    boards = named or [release_board(args, root)]
    hook = None
    if args.hooks:  # before connecting: a hook that does not compile leaves boards untouched
        from relsync.hooks import resolve_hook

        hook = await resolve_hook(args.hooks, root, cwd)
    local = LocalScan(root, args.exclude_system_libs, args.copy_unsafe_links)
    if args.status:
        return list(await asyncio.gather(*(status_of(b, args, local) for b in boards)))
    if len(boards) == 1 and not (args.watch or args.json):  # its failure: the one-line error
        bar = not (args.quiet or args.json)
        return [await sync_board(boards[0], args, local, hook, bar)]
    return list(await asyncio.gather(*(_guarded(b, args, local, hook) for b in boards)))


async def watch_project(args: argparse.Namespace, cwd: Path) -> None:
    """``--watch``: a round of build and sync now and after every change of the sources."""
    from relsync.watch import watch

    if args.local_path:
        raise UsageError("--watch builds the release itself: run it in the project, without -l")
    args.build = True

    async def sync_round() -> list[SyncReport]:
        reports = await run(args, cwd)
        return [r for r in reports if isinstance(r, SyncReport)]

    await watch(project_root(cwd) or cwd, sync_round)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``relsync`` command (``relsync target ...`` manages boards,
    ``relsync validate ...`` checks a release on one)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["target"]:  # imported here: the board harness is not needed to sync
        from relsync import target_cli

        return target_cli.main(argv[1:])
    if argv[:1] == ["validate"]:
        from relsync import validate

        return validate.main(argv[1:])
    # At exit, skip the collector's passes over every object of the run (~15 ms for a large
    # release): the process ends, the OS takes the memory back. Registered once.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    # A sync makes thousands of objects that live until the end (file lists, manifests): look
    # for cycles among young objects every 50,000 allocations, not every 700 (~20 passes).
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], 50_000), *threshold[1:])
    wants_json = "--json" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        sources = config.apply(parser, args, argv, config.layers(Path.cwd(), args.targets))
        if args.show_config:
            sys.stdout.write(config.show(args, sources))
            return int(ExitCode.OK)
        if args.watch:
            try:
                asyncio.run(watch_project(args, Path.cwd()))
            except KeyboardInterrupt:
                print("relsync: watch ended", file=sys.stderr)
            return int(ExitCode.OK)
        reports = asyncio.run(run(args, Path.cwd()))
    except RelsyncError as exc:
        print(f"relsync: error: {exc}", file=sys.stderr)
        if wants_json and "--status" not in argv:
            print_json([], error=str(exc), exit_code=int(exc.exit_code))
        detail = getattr(exc.__cause__, "detail", None)
        if detail and ("-v" in argv or "--verbose" in argv):
            print(f"relsync: the target's error: {detail}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("relsync: interrupted; run it again to finish the sync", file=sys.stderr)
        return int(ExitCode.SYNC)
    finally:
        gc.set_threshold(*threshold)
    if args.status:
        statuses = [r for r in reports if isinstance(r, BoardStatus)]
        if args.json:
            print_status_json(statuses)
        else:
            for status in statuses:
                print_status(status)
        return int(ExitCode.OK)
    reports = [r for r in reports if isinstance(r, SyncReport)]
    code = max(r.exit_code for r in reports)
    if args.json:
        print_json(reports)
        if len(reports) == 1 and reports[0].error:
            print(f"relsync: error: {reports[0].error}", file=sys.stderr)
    elif len(reports) > 1:
        if not args.quiet or code:
            print_table(reports, verbose=args.verbose)
    elif not args.quiet or code:
        print_summary(reports[0], verbose=args.verbose)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
