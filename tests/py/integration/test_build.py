"""``relsync --build`` from inside a project: rebar3 and mix projects made by the tests are
built with their own tool and what they built is synced; a build error is shown as the tool
printed it and nothing is sent."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
from support.cli import cli_argv
from support.local_board import with_board
from support.mix_project import mix_env, mix_release

from relsync.harness.client import Run
from relsync.harness.example import copy_example_project
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration


async def relsync_in(project: Path, board: LocalBoard, mode: str, *args: str) -> Run:
    """The relsync command run inside ``project`` (no --local-path: --build finds it)."""
    argv = cli_argv(board, Path("."), "-q", str(board.rw_path), *args, mode=mode)
    at = argv.index("-l")
    argv = argv[:at] + argv[at + 2 :]
    env = mix_env(project.parent)
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=project, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def test_build_a_rebar3_project_then_sync_it(demo_release: Path, tmp_path: Path, mode: str) -> None:
    project = copy_example_project(tmp_path)
    counter = project / "src" / "demo_counter.erl"

    async def body(board: LocalBoard) -> None:
        counter.write_text(
            counter.read_text().replace("-define(VERSION, 1).", "-define(VERSION, 3).")
        )
        run = await relsync_in(project, board, mode, "--build", "--relname", "demo", "--json")
        assert run.code == 0, run.err
        assert "rebar3 release -n demo" in run.err and "demo_counter" in run.report["reload"]
        assert await board.rpc("demo_counter", "version") == 3

        counter.write_text(counter.read_text().replace("-define(VERSION, 3).", "oops("))
        later = time.time() + 5  # an edit within the second of the last build looks unchanged
        os.utime(counter, (later, later))
        broken = await relsync_in(project, board, mode, "--build")
        assert broken.code == 2, broken
        assert "demo_counter.erl" in broken.err  # the compiler's own words
        assert "the build failed" in broken.err.strip().splitlines()[-1]
        assert await board.rpc("demo_counter", "version") == 3

    with_board(demo_release, tmp_path / "board", body, mode)


def test_build_a_mix_project_then_sync_it(tmp_path: Path) -> None:
    project = tmp_path / "myex"
    v1 = shutil.copytree(mix_release(project, 1), tmp_path / "v1", symlinks=True)
    counter = project / "lib" / "myex" / "counter.ex"

    async def body(board: LocalBoard) -> None:
        counter.write_text(
            counter.read_text().replace(
                ":version, _from, n), do: {:reply, 1", ":version, _from, n), do: {:reply, 4"
            )
        )
        run = await relsync_in(project, board, "erl", "--build", "--json")
        assert run.code == 0, run.err
        assert "mix release --overwrite" in run.err
        assert await board.rpc("Elixir.Myex.Counter", "version") == 4

    with_board(v1, tmp_path / "board", body)
