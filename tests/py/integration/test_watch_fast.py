"""``--watch``'s fast path (:mod:`relsync.fastbuild`): a changed module is compiled by the warm
compiler, not by a full build, and reloaded; an ``.app.src`` change and a new module go to the
full build; the next full build changes nothing the board runs (it writes the same beams). The
same for a mix project.
Nothing asserts how fast a round is."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from support.cli import relsync
from support.local_board import with_board
from support.mix_project import mix_env, mix_release

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


def test_watch_compiles_an_elixir_module_warm(tmp_path: Path) -> None:
    """A mix project: a changed module goes through the warm Elixir compiler; a protocol's file
    (it may change other modules) goes to the full build."""
    project = tmp_path / "myex"
    release = shutil.copytree(mix_release(project, 1), tmp_path / "v1", symlinks=True)

    async def body(board: LocalBoard) -> None:
        counter, argv = "Elixir.Myex.Counter", watch_argv(board, "erl", board.rw_path)
        async with WatchRun(argv, project, env=mix_env(tmp_path)) as run:
            await run.started()
            for version in (2, 3):
                old, new = f":reply, {version - 1}, n}}", f":reply, {version}, n}}"
                save(project / "lib" / "myex" / "counter.ex", old, new)
                line = await run.round()
                assert "reloaded Myex.Counter" in line, line
                assert await board.rpc(counter, "version") == version
            save(project / "lib" / "myex" / "greet.ex", '"v1 ', '"v4 ')
            line = await run.round()
            assert "reloaded" in line and "Myex.Greet.Atom" in line, line
            assert await run.stop() == 0, run.stderr
        warm = run.stderr.count("compiled lib/myex/counter.ex (warm compiler)")
        assert warm == 2 and run.stderr.count("relsync: building:") == 2, run.stderr

    with_board(release, tmp_path / "board", body)
