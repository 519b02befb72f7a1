"""Running a test body against a local board (the example release on a read-only mount)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from relsync.harness.local import LocalBoard


def with_board(
    release: Path, workdir: Path, body: Callable[[LocalBoard], Awaitable[None]], mode: str = "erl"
) -> None:
    """Boot a board on ``release`` (with relsyncd for ``ssh``), run ``body``, stop the board."""

    async def main() -> None:
        async with await LocalBoard.start(release, workdir=workdir) as board:
            if mode == "ssh":
                await board.enable_ssh()
            await body(board)

    asyncio.run(main())
