"""relsync as a library (``relsync.sync``, ``relsync.status``, ``relsync.rollback``) against a
real read-only board, with a second board that does not answer: one report a board, in order,
the unreachable one's failure in its report, nothing raised."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.local_board import with_board

import relsync
from relsync.errors import ExitCode, UsageError
from relsync.harness.example import Variant
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration


def test_the_library_syncs_reads_and_rolls_back(demo_release: Path, tmp_path: Path) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        here = relsync.Board(board.node, "erl", cookie=board.cookie, epmd_port=board.epmd_port)
        nobody = relsync.Board("nobody@127.0.0.1", "erl", cookie="x", epmd_port=board.epmd_port)
        settings = relsync.Settings(destination_rw_path=str(board.rw_path))
        ok, failed = await relsync.sync(v2.root, [here, nobody], settings)
        assert (ok.exit_code, ok.error) == (ExitCode.OK, None)
        assert [m.module for m in ok.modules if m.status == "loaded"] == ["demo_counter"]
        assert failed.exit_code == ExitCode.CONNECT and "nobody" in (failed.error or "")
        assert await board.rpc("demo_counter", "version") == 2
        (status,) = await relsync.status(v2.root, [here], settings)
        assert status.shadow_active and not status.local.touches_target  # it runs v2
        (back,) = await relsync.rollback(v2.root, [here], settings)
        assert back.exit_code == ExitCode.OK, back.error
        assert await board.rpc("demo_counter", "version") == 1

    with_board(demo_release, tmp_path / "board", body)


def test_bad_settings_raise_before_any_board(demo_release: Path) -> None:
    board = relsync.Board("demo@127.0.0.1", "erl")
    with pytest.raises(UsageError, match="--hook-timeout"):
        asyncio.run(relsync.sync(demo_release, [board], relsync.Settings(hook_timeout=0)))
