"""``relsync target``: boot, reboot, list and remove emulated boards (the same for every kind).

relsync target up KIND --release PATH [--json]
relsync target reboot ID [--power-cut] [--json]
relsync target down ID
relsync target list [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relsync.errors import ExitCode, RelsyncError, UsageError
from relsync.harness.docker import DockerBoard
from relsync.harness.kinds import STANDING, EmulatedBoard, start_board
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
    up.add_argument("kind", choices=STANDING)
    up.add_argument("--release", required=True, type=Path, help="the release directory")
    up.add_argument(
        "--otp",
        type=int,
        choices=(25, 27),
        help="the board's OTP [default: the one the release was built with]",
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
        "release_path": board.release_path,
        "rw_path": board.rw_path,
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
    print("  sync over Erlang distribution (the cookie: relsync target list --json):")
    print(f"    RELSYNC_COOKIE=... relsync -d {board.node} --epmd-port {board.epmd_port} "
          f"-p {board.release_path} -q {board.rw_path}")  # fmt: skip
    if board.ssh is not None:
        print("  sync over ssh:")
        print(f"    relsync -M ssh -d 127.0.0.1 -P {board.ssh.port} -i {board.ssh.identity} "
              f"--accept-new-host-key -p {board.release_path} -q {board.rw_path}")  # fmt: skip


BOARDS_DIR = default_cache_dir() / "boards"


async def _qemu_ids() -> list[str]:
    return sorted(p.parent.name for p in BOARDS_DIR.glob("relsync-qemu-*/board.env"))


async def _find(ident: str) -> DockerBoard | QemuBoard:
    if ident in await _qemu_ids():
        return await QemuBoard.attach(ident, BOARDS_DIR)
    if ident not in await DockerBoard.list_ids():
        raise UsageError(f"no board {ident!r} on this machine; see relsync target list")
    return await DockerBoard.attach(ident)


async def run(args: argparse.Namespace) -> None:
    """Carry out one ``relsync target`` command."""
    if args.command == "up":
        release = args.release.resolve()
        if not (release / "releases").is_dir():
            raise UsageError(f"--release {args.release}: not a release directory (no releases/)")
        _print_board(await start_board(args.kind, release, workdir=args.workdir, otp=args.otp),
                     args.json)  # fmt: skip
    elif args.command == "reboot":
        board = await _find(args.id)
        await (board.power_cut() if args.power_cut else board.reboot())
        _print_board(board, args.json)
    elif args.command == "down":
        board = await _find(args.id)
        await board.stop()
        if isinstance(board, QemuBoard):  # its disks and keys go with it, like a container's
            shutil.rmtree(board.state)
        print(f"board {args.id} removed")
    else:
        boards: list[DockerBoard | QemuBoard] = [
            await DockerBoard.attach(name) for name in await DockerBoard.list_ids()
        ]
        boards += [await QemuBoard.attach(name, BOARDS_DIR) for name in await _qemu_ids()]
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
