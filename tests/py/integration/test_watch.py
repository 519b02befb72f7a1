"""``relsync --watch`` in a rebar3 project, onto a local board: three saves, one of them a
compile error (shown, the board left alone), then Ctrl-C ends it cleanly. Saves follow each
other with no pause; waits are bounded; nothing asserts how fast a round is."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.local_board import with_board
from support.watch_edits import three_edits

from relsync.harness.example import copy_example_project
from relsync.harness.local import LocalBoard
from relsync.harness.watching import WatchRun, save, watch_argv

pytestmark = pytest.mark.integration


def test_watch_rebuilds_and_syncs_each_edit(demo_release: Path, tmp_path: Path, mode: str) -> None:
    async def body(board: LocalBoard) -> None:
        await three_edits(board, mode, tmp_path)

    with_board(demo_release, tmp_path / "board", body, mode)


def test_watch_keeps_watching_src_removed_and_made_again(
    demo_release: Path, tmp_path: Path
) -> None:
    """A branch switch removes ``src/`` and writes it again (new directories): saves in it are
    still seen."""

    async def body(board: LocalBoard) -> None:
        project = copy_example_project(tmp_path)
        src, away = project / "src", tmp_path / "src-away"
        async with WatchRun(watch_argv(board, "erl", board.rw_path), project) as run:
            await run.started()
            shutil.copytree(src, away)
            shutil.rmtree(src)
            await run.round()  # src removed: the build fails
            shutil.copytree(away, src)
            await run.round()  # src back as the board runs it: nothing to reload
            save(src / "demo_counter.erl", "-define(VERSION, 1).", "-define(VERSION, 2).")
            for _ in range(4):  # a round of the restore may still come first
                line = await run.round()
                if "reloaded demo_counter" in line:
                    break
            else:
                raise AssertionError(f"the save after src/ came back was not synced: {line}")
            assert await board.rpc("demo_counter", "version") == 2
            assert await run.stop() == 0, run.stderr

    with_board(demo_release, tmp_path / "board", body)
