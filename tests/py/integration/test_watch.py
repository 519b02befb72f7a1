"""``relsync --watch`` in a rebar3 project, onto a local board: three saves, one of them a
compile error (shown, the board left alone), then Ctrl-C ends it cleanly. Saves follow each
other with no pause; waits are bounded; nothing asserts how fast a round is."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.local_board import with_board
from support.watch_edits import three_edits

from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration


def test_watch_rebuilds_and_syncs_each_edit(demo_release: Path, tmp_path: Path, mode: str) -> None:
    async def body(board: LocalBoard) -> None:
        await three_edits(board, mode, tmp_path)

    with_board(demo_release, tmp_path / "board", body, mode)
