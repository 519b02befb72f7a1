"""``relsync target``: boot, reboot, list and remove emulated boards (the same for every kind).

relsync target up KIND --release PATH [--env NAME=VALUE]... [--json]
relsync target reboot ID [--power-cut] [--json]
relsync target down ID
relsync target list [--json]
relsync target env ID

A board is then addressed by its id: ``relsync -d ID`` (or ``relsync -M ssh -d ID``) syncs it
(:func:`expand_board_ids`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relsync.errors import ExitCode, RelsyncError, UsageError
from relsync.harness.docker import DockerBoard
from relsync.harness.kinds import TARGETS, EmulatedBoard, parse_env, start_board
from relsync.harness.local import STATE_FILE, LocalBoard
from relsync.harness.qemu import QemuBoard
from relsync.harness.ready import BoardError
from relsync.release import default_cache_dir


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see relsync target --help)")


def build_parser() -> argparse.ArgumentParser:
    """The ``relsync target`` argument parser."""
    p = _Parser(prog="relsync target", description="Emulated boards for trying a release.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    up = sub.add_parser("up", help="boot a board running a release; returns when it answers")
    up.add_argument("kind", choices=TARGETS)
    up.add_argument("--release", required=True, type=Path, help="the release directory")
    up.add_argument(
        "--otp",
        type=int,
        choices=(25, 27),
        help="the board's OTP [default: the one the release was built with]",
    )
    up.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable the release's vm.args / sys.config use; repeatable",
    )
    up.add_argument("--workdir", type=Path, default=BOARDS_DIR,
                    help="where boards keep keys and console logs")  # fmt: skip
    up.add_argument("--json", action="store_true")
    reboot = sub.add_parser("reboot", help="reboot a board; returns when it answers again")
    reboot.add_argument("id")
    reboot.add_argument("--power-cut", action="store_true", help="no clean shutdown")
    reboot.add_argument("--json", action="store_true")
    down = sub.add_parser("down", help="stop and remove a board")
    down.add_argument("id")
    listing = sub.add_parser("list", help="the boards on this machine")
    listing.add_argument("--json", action="store_true")
    env = sub.add_parser("env", help="shell exports for relsync to reach a board")
    env.add_argument("id")
    return p


def describe(board: EmulatedBoard) -> dict[str, Any]:
    """The board as ``--json`` prints it."""
    ssh = board.ssh
    return {
        "kind": board.kind,
        "id": board.id,
        "node": board.node,
        "cookie": board.cookie,
        "epmd_port": board.epmd_port,
        "ssh_port": ssh.port if ssh else None,
        "ssh_user": ssh.user if ssh else None,
        "ssh_identity": str(ssh.identity) if ssh else None,
        "release_path": str(board.release_path),
        "rw_path": str(board.rw_path),
        "console_log": str(board.console_log),
        "otp": board.otp,
    }


def _print_board(board: EmulatedBoard, as_json: bool) -> None:
    info = describe(board)
    if as_json:
        print(json.dumps(info))
        return
    print(f"board {board.id} ({board.kind}, OTP {board.otp}) answers")
    print(f"  node {board.node}, EPMD on 127.0.0.1:{board.epmd_port}; console: {board.console_log}")
    print(f"  release {board.release_path} (read-only), writable {board.rw_path}")
    print(f"  sync over Erlang distribution:  relsync -d {board.id}")
    if board.ssh is not None:
        print(f"  sync over ssh:                  relsync -M ssh -d {board.id}")
    print(f"  (the options these stand for: relsync target env {board.id})")


BOARDS_DIR = default_cache_dir() / "boards"
#: What the ids of ``relsync target up``'s boards begin with.
ID_PREFIXES = ("relsync-board-", "relsync-qemu-", "relsync-local-")

Standing = DockerBoard | QemuBoard | LocalBoard


def _qemu_ids() -> list[str]:
    return sorted(p.parent.name for p in BOARDS_DIR.glob("relsync-qemu-*/board.env"))


def _local_ids() -> list[str]:
    return sorted(p.parent.name for p in BOARDS_DIR.glob(f"relsync-local-*/{STATE_FILE}"))


async def _find(ident: str) -> Standing:
    if ident in _qemu_ids():
        return await QemuBoard.attach(ident, BOARDS_DIR)
    if ident in _local_ids():
        return LocalBoard.attach(BOARDS_DIR / ident)
    if not ident.startswith(ID_PREFIXES[0]) or ident not in await DockerBoard.list_ids():
        raise UsageError(f"no board {ident!r} on this machine; see relsync target list")
    return await DockerBoard.attach(ident)


def sync_options(board: EmulatedBoard, ssh: bool) -> tuple[list[str], dict[str, str]]:
    """The relsync options that reach ``board`` (over ssh, without ``-M ssh`` itself, or over
    Erlang distribution) and the environment they need (the cookie stays off the command
    line)."""
    if not ssh:
        return ["-d", board.node, "--epmd-port", str(board.epmd_port)], {
            "RELSYNC_COOKIE": board.cookie
        }
    if board.ssh is None:
        raise UsageError(f"board {board.id} runs no relsyncd: sync it over Erlang distribution")
    access = board.ssh
    return ["-d", "127.0.0.1", "-P", str(access.port), "-u", access.user,
            "-i", str(access.identity), "--known-hosts", str(access.known_hosts),
            "--accept-new-host-key"], {}  # fmt: skip


def _paths(board: EmulatedBoard) -> list[str]:
    return ["-p", str(board.release_path), "-q", str(board.rw_path)]


def expand_board_ids(argv: list[str]) -> list[str]:
    """``relsync -d ID ...`` with ``ID`` a board of ``relsync target up``: the options that
    reach it in its place (its ``-p``/``-q`` unless either is given), its cookie in
    ``RELSYNC_COOKIE`` unless that is set. Other arguments are left as they are."""
    pairs = list(itertools.pairwise(argv))
    ssh = "--mode=ssh" in argv or any(a in ("-M", "--mode") and b == "ssh" for a, b in pairs)
    given = {"-p", "--destination-path", "-q", "--destination-rw-path"} & set(argv)
    out: list[str] = []
    skip = False
    for arg, value in [*pairs, (argv[-1], "")] if argv else []:
        if skip:
            skip = False
        elif arg in ("-d", "--destination-node") and value.startswith(ID_PREFIXES):
            board = asyncio.run(_find(value))
            options, env = sync_options(board, ssh)
            out += options + ([] if given else _paths(board))
            for key, val in env.items():
                os.environ.setdefault(key, val)
            skip = True
        else:
            out.append(arg)
    return out


async def run(args: argparse.Namespace) -> None:
    """Carry out one ``relsync target`` command."""
    if args.command == "up":
        release = args.release.resolve()
        if not (release / "releases").is_dir():
            raise UsageError(f"--release {args.release}: not a release directory (no releases/)")
        board = await start_board(args.kind, release, workdir=args.workdir, otp=args.otp,
                                  env=parse_env(args.env))  # fmt: skip
        if isinstance(board, LocalBoard):  # it outlives this command, like the others
            board.keep()
        _print_board(board, args.json)
    elif args.command == "reboot":
        board = await _find(args.id)
        await (board.power_cut() if args.power_cut else board.reboot())
        _print_board(board, args.json)
    elif args.command == "down":
        board = await _find(args.id)
        await board.stop()
        # Its files on this machine (snapshot, keys, console log) go with it, like a container.
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(board.state if isinstance(board, QemuBoard) else board.workdir)
        print(f"board {args.id} removed")
    elif args.command == "env":
        board = await _find(args.id)
        options, env = sync_options(board, ssh=False)
        for key, value in env.items():
            print(f"export {key}={shlex.quote(value)}")
        command = shlex.join([*options, *_paths(board)])
        print(f"# then: relsync {command}   (or simply: relsync -d {board.id})")
    else:
        boards: list[Standing] = []
        try:
            boards += [await DockerBoard.attach(name) for name in await DockerBoard.list_ids()]
        except BoardError as exc:  # the others are listed all the same
            print(f"relsync target: docker boards not listed: {exc}", file=sys.stderr)
        boards += [await QemuBoard.attach(name, BOARDS_DIR) for name in _qemu_ids()]
        boards += [LocalBoard.attach(BOARDS_DIR / name) for name in _local_ids()]
        if args.json:
            print(json.dumps([describe(b) for b in boards]))
        for b in [] if args.json else boards:
            print(f"{b.id}  {b.kind}  OTP {b.otp}  {b.node}  epmd 127.0.0.1:{b.epmd_port}")


def main(argv: Sequence[str]) -> int:
    """Entry point of ``relsync target``."""
    try:
        asyncio.run(run(build_parser().parse_args(argv)))
    except RelsyncError as exc:
        print(f"relsync target: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except BoardError as exc:
        print(f"relsync target: error: {exc}", file=sys.stderr)
        return int(ExitCode.CONNECT)
    return 0
