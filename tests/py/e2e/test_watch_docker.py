"""``relsync --watch`` onto a docker-otp board (the OTP this machine builds with), both modes:
the same three saves as on a local board, rebuilt here and synced into the board's shadow
tree over 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.watch_edits import three_edits

from relsync.harness.example import build_example_release
from relsync.harness.kinds import start_board

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("mode", ["erl", "ssh"])
def test_watch_onto_a_docker_board(mode: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        release = build_example_release()
        board = await start_board("docker-otp", release, workdir=tmp_path / "b", ssh=mode == "ssh")
        try:
            await three_edits(board, mode, tmp_path)
        finally:
            await board.stop()

    asyncio.run(scenario())
