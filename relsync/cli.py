"""The ``relsync`` command line, compatible with the original relsync's options."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import errno
import gc
import io
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from relsync import __version__, api, config
from relsync.boards import Board, boards_from_file, check_destination
from relsync.config import project_root
from relsync.engine import SyncReport
from relsync.errors import ExitCode, RelsyncError, UsageError
from relsync.release import find_release
from relsync.release_node import release_node
from relsync.report import print_json, print_summary, print_table
from relsync.status import BoardStatus, print_status, print_status_json
from relsync.words import human

T = TypeVar("T")

EXIT_CODES = """boards to try a release on: relsync target --help
check a release on an emulated board before flashing: relsync validate --help

exit codes:
  0  synced (or nothing to do)
  1  internal error (a bug: please report it), or the output could not be written (disk full)
  2  bad command line or local release; the target was not touched
  3  could not connect to the target; it was not touched
  4  a hook failed (presync: nothing was changed; postsync: files and code were updated)
  5  a file operation on the target failed; run relsync again, it converges
  6  synced, but processes still run old code (a module reloaded while they ran it, or
     not reloaded because of them), a module failed to load, or a deleted module is still
     in use and stays loaded (the warnings name the processes and users)
  7  the board was busy with another sync for --lock-timeout seconds; it was not touched
  8  --upgrade: a step failed; every step was undone, the old code runs with its old state
  9  --upgrade: a step failed after the point of no return (a new child, an apply), or a
     module could not be undone (killing processes, or its state not converted back): the
     new code runs where the error says
with several boards, the highest of their codes (0 only when every board synced)"""


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
        metavar="PATH",
        help="writable path on the destination for a shadow tree (without it the release is "
        "updated in place)",
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
        type=config.boolean,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="do not synchronize OTP system libs [default: true]; ERTS is never synced (the "
        "running VM is that runtime): listed under skipped",
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
        help="Erlang magic cookie [default: $RELSYNC_COOKIE, else the release's (vm.args "
        "-setcookie, mix's releases/COOKIE), else ~/.erlang.cookie, else 'cookie']",
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
    a("-P", "--port", type=config.port, metavar="PORT", help="ssh port to use [default: 2228]")
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
        type=config.port,
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
        type=config.seconds,
        default=60.0,
        metavar="SECONDS",
        help="time limit for each hook [default: 60]",
    )
    a(
        "--lock-timeout",
        type=config.seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait while another sync holds the board [default: 30]",
    )
    a(
        "--connect-timeout",
        type=config.seconds,
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
        type=config.seconds,
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
    a("--version", action="store_true", help="print relsync's version (--json: as an object)")
    return p


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


def settings_from(args: argparse.Namespace) -> api.Settings:
    """The library's settings from the parsed command line (the same names)."""
    return api.Settings(**{f.name: getattr(args, f.name) for f in fields(api.Settings)})


def check_settings(args: argparse.Namespace, sources: dict[str, str]) -> None:
    """:meth:`api.Settings.check`, its error naming the file a refused value came from."""
    try:
        settings_from(args).check()
    except UsageError as exc:
        option = str(exc).partition(" ")[0].removeprefix("--").replace("-", "_")
        if sources.get(option, "command line") in ("command line", "default"):
            raise
        raise UsageError(f"{sources[option]}: {exc}; fix it there") from None


async def run(args: argparse.Namespace, cwd: Path) -> list[SyncReport] | list[BoardStatus]:
    """Resolve the options, then sync (or roll back, or read) every board concurrently; the
    release is scanned once, while the boards list their files."""
    asyncio.get_running_loop().set_exception_handler(_orphan_errors(args.verbose))
    if args.clean and not args.rollback:
        raise UsageError("--clean goes with --rollback (it removes the shadow tree)")
    if args.rollback and args.status:
        raise UsageError("give either --rollback or --status, not both")
    settings = settings_from(args)
    settings.check()
    named = boards_from_args(args)
    if args.build and args.local_path:
        raise UsageError(
            "--build builds the project's own release: run it in the project without -l, "
            "or sync -l PATH as it is without --build"
        )
    if args.build:
        from relsync.build import build_release

        root = await build_release(project_root(cwd) or cwd, args.profile, args.relname)
    else:
        root = find_release(args.local_path, cwd)
    boards = named or [release_board(args, root)]
    hook = None
    if args.hooks:  # before connecting: a hook that does not compile leaves boards untouched
        from relsync.hooks import resolve_hook

        hook = await resolve_hook(args.hooks, root, cwd)
    alone = len(boards) == 1 and not (args.watch or args.json)  # its failure: the one-line error
    if args.status:
        if alone:
            return [await api.status_one(boards[0], settings, api.scan(root, settings))]
        return await api.status(root, boards, settings)
    if args.rollback:
        if alone:
            local = api.scan(root, settings)
            return [await api.rollback_one(boards[0], settings, local, clean=args.clean)]
        return await api.rollback(root, boards, settings, clean=args.clean)
    if alone:
        local = api.scan(root, settings)
        return [await api.sync_one(boards[0], settings, local, hook, progress=not args.quiet)]
    return await api.sync(root, boards, settings, hook)


async def terminable(work: Awaitable[T]) -> T:
    """``work``, cancelled by SIGTERM as asyncio.run cancels it on Ctrl-C (outside the event
    loop, SIGTERM raises KeyboardInterrupt as Ctrl-C does: see :func:`main`)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await work
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.default_int_handler)


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


def _board_ids(argv: list[str]) -> list[str]:
    """``-d ID`` naming a board of ``relsync target up``: the options that reach it instead."""
    if not any(arg.startswith("relsync-") for arg in argv):
        return argv
    from relsync import board_command  # the board harness, only when a board id is named

    try:
        return board_command.expand_board_ids(argv)
    except RuntimeError as exc:  # the board's files or the Docker engine could not be read
        raise UsageError(f"cannot find the board named by -d: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``relsync`` command (``relsync target ...`` manages boards,
    ``relsync validate ...`` checks a release on one)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C, before anything
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, where a reader that left or a full disk is caught
        return code
    except BrokenPipeError:  # the reader left (relsync --status | head -3): end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing at exit
        return 141  # 128 + SIGPIPE, as a Unix tool whose reader left
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing at exit
        print(f"relsync: cannot write the output: {exc.strerror}", file=sys.stderr)
        return int(ExitCode.INTERNAL)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["target"]:  # imported here: the board harness is not needed to sync
        from relsync import board_command

        return board_command.main(argv[1:])
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
    for stream in (sys.stdout, sys.stderr):  # a name that is not UTF-8 prints as its bytes
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="surrogateescape")
    wants_json = "--json" in argv
    verbose = "-v" in argv or "--verbose" in argv
    try:
        argv = _board_ids(argv)
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.version:  # whatever the option files say
            version = {"version": __version__}
            print(json.dumps(version) if args.json else f"relsync {__version__}")
            return int(ExitCode.OK)
        sources = config.apply(parser, args, argv, config.layers(Path.cwd(), args.targets))
        wants_json, verbose = args.json, args.verbose
        check_settings(args, sources)
        if args.show_config:
            show = config.show_json if args.json else config.show
            sys.stdout.write(show(args, sources))
            return int(ExitCode.OK)
        if args.watch:
            try:
                asyncio.run(terminable(watch_project(args, Path.cwd())))
            except (KeyboardInterrupt, asyncio.CancelledError):
                print("relsync: watch ended", file=sys.stderr)
            return int(ExitCode.OK)
        reports = asyncio.run(terminable(run(args, Path.cwd())))
    except api.Interrupted as exc:  # every board's report, those it stopped saying so
        reports = exc.reports
    except RelsyncError as exc:
        detail = getattr(exc.__cause__, "detail", None)
        hint = "; -v shows the whole error" if detail and not verbose else ""
        print(human(f"relsync: error: {exc}{hint}"), file=sys.stderr)
        if wants_json:
            print_json([], error=str(exc), exit_code=int(exc.exit_code))
        if detail and verbose:
            print(f"relsync: the target's error: {detail}", file=sys.stderr)
        return int(exc.exit_code)
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C or SIGTERM
        print(f"relsync: {api.INTERRUPTED}", file=sys.stderr)
        if wants_json:
            print_json([], error=api.INTERRUPTED, exit_code=int(ExitCode.SYNC))
        return int(ExitCode.SYNC)
    finally:
        gc.set_threshold(*threshold)
    return _print_results(args, reports)


def _print_results(args: argparse.Namespace, reports: list[SyncReport] | list[BoardStatus]) -> int:
    """Print what the boards did (or are), as the options ask; the exit code."""
    if len(reports) == 1 and reports[0].error:  # the one-line error, as when it raises
        print(human(f"relsync: error: {reports[0].error}"), file=sys.stderr)
    if args.status:
        statuses = [r for r in reports if isinstance(r, BoardStatus)]
        if args.json:
            print_status_json(statuses)
        else:
            for status in statuses:
                print_status(status)
        return max(int(s.exit_code) for s in statuses)
    reports = [r for r in reports if isinstance(r, SyncReport)]
    code = max(r.exit_code for r in reports)
    if args.json:
        print_json(reports)
    elif len(reports) > 1:
        if not args.quiet or code:
            print_table(reports, verbose=args.verbose)
    elif not args.quiet or code:
        on_screen = sys.stdout.isatty() and sys.stderr.isatty()  # the error is on stderr
        print_summary(reports[0], verbose=args.verbose, with_error=not on_screen)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
