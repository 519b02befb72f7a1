"""Running a test body against a local board (the example release on a read-only mount)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from relsync.harness.local import LocalBoard
from relsync.transports.erl import ErlTarget
from relsync.transports.helper import HelperTarget
from relsync.transports.ssh import SshTarget


def with_board(
    release: Path,
    workdir: Path,
    body: Callable[[LocalBoard], Awaitable[None]],
    mode: str = "erl",
    *,
    writable: bool = False,
) -> None:
    """Boot a board on ``release`` (with relsyncd for ``ssh``; ``writable``: the release not
    made read-only, for syncs in place), run ``body``, stop the board."""

    async def main() -> None:
        async with await LocalBoard.start(release, workdir=workdir, writable=writable) as board:
            if mode == "ssh":
                await board.enable_ssh()
            await body(board)

    asyncio.run(main())


async def open_target(
    board: LocalBoard, mode: str, ssh_kind: type[SshTarget] = SshTarget
) -> HelperTarget:
    """A transport connected to ``board`` in ``mode`` (``ssh`` needs ``enable_ssh`` first;
    ``ssh_kind``: a subclass of SshTarget to connect with)."""
    if mode == "erl":
        return await ErlTarget.open(board.node, board.cookie, epmd_port=board.epmd_port)
    assert board.ssh is not None
    ssh = board.ssh
    return await ssh_kind.open(
        "127.0.0.1", port=ssh.port, user=ssh.user, identity=str(ssh.identity),
        known_hosts=ssh.known_hosts, accept_new_host_key=True,
    )  # fmt: skip
