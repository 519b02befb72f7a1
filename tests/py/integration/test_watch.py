"""``relsync --watch`` in a rebar3 project, onto a local board: three edits, one of them a
compile error (shown, the board left alone), then Ctrl-C ends it cleanly. Waits are bounded;
nothing asserts how fast a round is."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from support.cli import cli_argv
from support.local_board import with_board

from relsync.harness.example import example_project
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration

#: The longest a round (a rebar3 build and a sync) may take before the test gives up.
ROUND_LIMIT = 120.0


async def edit(path: Path, old: str, new: str) -> None:
    """Save an edit as an editor would, a temporary file first (which must be ignored), once
    the watcher is back to watching after the last round."""
    await asyncio.sleep(1)
    (path.parent / f".#{path.name}").write_text("lock")
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    later = time.time() + 2  # never within the second of the last build, which rebar3 skips
    os.utime(path, (later, later))
    (path.parent / f".#{path.name}").unlink()


async def next_round(lines: asyncio.StreamReader) -> str:
    """The next round's line (build output goes to stderr, not here)."""
    while True:
        line = (await asyncio.wait_for(lines.readline(), ROUND_LIMIT)).decode()
        assert line, "relsync --watch ended early"
        if " -> " in line:
            return line.strip()


def test_watch_rebuilds_and_syncs_each_edit(demo_release: Path, tmp_path: Path, mode: str) -> None:
    project = tmp_path / "demo"
    shutil.copytree(
        example_project(), project, symlinks=True, ignore=shutil.ignore_patterns("_build")
    )
    counter = project / "src" / "demo_counter.erl"

    async def body(board: LocalBoard) -> None:
        argv = cli_argv(board, Path("."), "-q", str(board.rw_path), "--watch", mode=mode)
        at = argv.index("-l")
        proc = await asyncio.create_subprocess_exec(
            *(argv[:at] + argv[at + 2 :]), cwd=project, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        stderr = asyncio.ensure_future(proc.stderr.read())  # drained, or the builds block
        try:
            first = await next_round(proc.stdout)
            assert first.startswith("relsync: start -> 1/1 board(s)"), first
            watching = (await asyncio.wait_for(proc.stdout.readline(), ROUND_LIMIT)).decode()
            assert "watching" in watching
            await edit(counter, "-define(VERSION, 1).", "-define(VERSION, 2).")
            line = await next_round(proc.stdout)
            assert "src/demo_counter.erl changed" in line and "reloaded demo_counter" in line
            assert await board.rpc("demo_counter", "version") == 2

            await edit(counter, "-define(VERSION, 2).", "-define(VERSION, 3")
            line = await next_round(proc.stdout)
            assert "the build failed" in line and "boards left alone" in line, line
            assert await board.rpc("demo_counter", "version") == 2

            await edit(counter, "-define(VERSION, 3", "-define(VERSION, 4).")
            line = await next_round(proc.stdout)
            assert "reloaded demo_counter" in line, line
            assert await board.rpc("demo_counter", "version") == 4
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(proc.wait(), 30)
            err = (await stderr).decode()
        assert code == 0 and "watch ended" in err and "Traceback" not in err, err
        assert "demo_counter.erl" in err  # the compiler's message for the broken save

    with_board(demo_release, tmp_path / "board", body, mode)
