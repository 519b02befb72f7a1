"""The watch-mode scenario every board kind runs: a copy of the example project under
``relsync --watch``, three saves (the second does not compile), then Ctrl-C."""

from __future__ import annotations

from pathlib import Path

from relsync.harness.example import copy_example_project
from relsync.harness.kinds import EmulatedBoard
from relsync.harness.watching import WatchRun, save, watch_argv


async def three_edits(board: EmulatedBoard, mode: str, where: Path) -> None:
    """Each save is rebuilt and reloaded, a compile error is shown and leaves the board alone,
    and Ctrl-C ends the watch with exit 0."""
    project = copy_example_project(where)
    counter = project / "src" / "demo_counter.erl"
    async with WatchRun(watch_argv(board, mode, board.rw_path), project) as run:
        first = await run.started()
        assert first.startswith("relsync: start -> 1/1 board(s)"), first
        save(counter, "-define(VERSION, 1).", "-define(VERSION, 2).")
        line = await run.round()
        assert "src/demo_counter.erl changed" in line and "reloaded demo_counter" in line, line
        assert await board.rpc("demo_counter", "version") == 2

        save(counter, "-define(VERSION, 2).", "-define(VERSION, 3")
        line = await run.round()
        assert "the build failed" in line and "boards left alone" in line, line
        assert await board.rpc("demo_counter", "version") == 2

        save(counter, "-define(VERSION, 3", "-define(VERSION, 4).")
        line = await run.round()
        assert "reloaded demo_counter" in line, line
        assert await board.rpc("demo_counter", "version") == 4
        code = await run.stop()
    assert code == 0 and "watch ended" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert "demo_counter.erl" in run.stderr  # the compiler's message for the broken save
