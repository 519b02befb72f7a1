"""``--watch``'s fast path (:mod:`relsync.fastbuild`): a changed module is compiled by the warm
compiler, not by a full build, and reloaded; an ``.app.src`` change and a new module go to the
full build; the next full build changes nothing the board runs (it writes the same beams).
Nothing asserts how fast a round is."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.cli import relsync
from support.local_board import with_board

from relsync.harness.example import copy_example_project
from relsync.harness.local import LocalBoard
from relsync.harness.watching import WatchRun, save, watch_argv

pytestmark = pytest.mark.integration

NEW_MODULE = "-module(demo_new).\n-export([hello/0]).\nhello() -> new.\n"


def test_watch_compiles_a_changed_module_warm_and_converges(
    demo_release: Path, tmp_path: Path
) -> None:
    async def body(board: LocalBoard) -> None:
        project = copy_example_project(tmp_path)
        counter = project / "src" / "demo_counter.erl"
        async with WatchRun(watch_argv(board, "erl", board.rw_path), project) as run:
            await run.started()
            for version in (2, 3):
                save(counter, f"-define(VERSION, {version - 1}).", f"-define(VERSION, {version}).")
                line = await run.round()
                assert "reloaded demo_counter" in line, line
                assert await board.rpc("demo_counter", "version") == version
            app_src = project / "src" / "demo.app.src"
            save(app_src, "{env, []}", "{env, [{fast, false}]}")
            assert "nothing to reload" in await run.round()
            await asyncio.sleep(1)  # not a wait for relsync: rebar3 compares whole seconds
            (project / "src" / "demo_new.erl").write_text(NEW_MODULE)
            line = await run.round()
            assert "reloaded demo_new" in line, line
            assert await board.rpc("demo_new", "hello") == "new"
            assert await run.stop() == 0, run.stderr
        warm = run.stderr.count("compiled src/demo_counter.erl (warm compiler)")
        assert warm == 2 and run.stderr.count("relsync: building:") == 3, run.stderr
        # The full build the fast path left to the next round writes the beams it wrote.
        build = await asyncio.create_subprocess_exec(
            "rebar3", "release", cwd=project, stdout=asyncio.subprocess.DEVNULL
        )
        assert await build.wait() == 0
        release = project / "_build" / "default" / "rel" / "demo"
        again = await relsync(board, release, "-q", str(board.rw_path), "--json", mode="erl")
        assert again.code == 0 and again.report["reload"] == [], again.report

    with_board(demo_release, tmp_path / "board", body)
