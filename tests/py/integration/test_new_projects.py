"""A new user's first runs, from projects the generators make and nothing else edited:
``rebar3 new release myapp`` (its default dev-mode release links its application back into the
project, with dangling ``priv``/``include`` links) and ``mix new myex --sup`` + ``mix release``.

The board runs a copy of the release from another path, under the node name and cookie the
release itself gives (vm.args, mix's ``releases/COOKIE``). The user edits a source and runs
``relsync --build`` in the project, naming no node, cookie or path (none in the environment or
the home directory either): it builds, finds the node and the release it runs, syncs and
reloads; a ``-p`` that is not that release is refused with nothing written."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.mix_project import mix_env
from support.stock_projects import mix_release, rebar3_release

from relsync.erldist.etf import Atom
from relsync.harness.local import LocalBoard

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _user(board: LocalBoard, home: Path) -> dict[str, str]:
    """A user's environment: the board's EPMD, no cookie but the release's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELSYNC_", "MIX_"))}
    return {**env, "HOME": str(home), "ERL_EPMD_PORT": str(board.epmd_port)}


async def _relsync(project: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relsync", *args, cwd=project, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=300)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


async def _first_runs(
    board: LocalBoard, project: Path, workdir: Path, env: dict[str, str], edits: dict[Path, str]
) -> str:
    """Edit, then bare relsync (checked), then one with a wrong ``-p`` (refused, nothing
    written); what the first printed."""
    user = {**_user(board, workdir / "home"), **env}
    for path, text in edits.items():
        path.write_text(text)
    rw = str(board.rw_path)
    code, out, err = await _relsync(project, user, "--build", "-q", rw)
    assert code == 0, err
    assert "Traceback" not in out + err and f"-> {board.rw_path}" in out
    synced = _files(board.rw_path)
    elsewhere = workdir / "elsewhere"
    code, _, err = await _relsync(project, user, "-q", rw, "-p", str(elsewhere))
    assert code == 2, err
    assert err.count("\n") == 1 and "is not the release" in err and "--force-path" in err
    assert str(board.release_path) in err  # the one it runs
    assert not elsewhere.exists() and _files(board.rw_path) == synced
    return out


def _reloaded(out: str) -> list[str]:
    lines = [line for line in out.splitlines() if line.startswith("  reloaded: ")]
    assert len(lines) == 1, out
    return lines[0].removeprefix("  reloaded: ").split(", ")


def test_a_stock_rebar3_release(tmp_path: Path) -> None:
    project = rebar3_release(tmp_path)
    source = project / "apps" / "myapp" / "src" / "myapp_app.erl"
    edited = source.read_text().replace(
        "-export([start/2, stop/1]).", "-export([start/2, stop/1, hello/0]).\nhello() -> world."
    )
    assert "hello/0" in edited
    sys_config = project / "config" / "sys.config"
    config = sys_config.read_text().replace("{myapp, []}", "{myapp, [{greeting, hello}]}")

    async def body() -> None:
        release = project / "_build" / "default" / "rel" / "myapp"
        async with await LocalBoard.start(release, workdir=tmp_path / "board") as board:
            assert board.node.startswith("myapp@")  # vm.args: -sname myapp
            edits = {source: edited, sys_config: config}
            out = await _first_runs(board, project, tmp_path, {}, edits)
            assert _reloaded(out) == ["myapp_app"]
            assert "dangling symlink (-> ../../../../apps/myapp/priv)" in out
            assert "releases/0.1.0/sys.config changed" in out and "after a restart" in out
            assert await board.rpc("myapp_app", "hello") == Atom("world")

    asyncio.run(body())


def test_a_stock_mix_release(tmp_path: Path) -> None:
    project = mix_release(tmp_path)
    env = mix_env(tmp_path)
    main = project / "lib" / "myex.ex"
    edited = main.read_text().replace(":world", ":there")
    assert ":there" in edited
    config = project / "config" / "config.exs"
    config.parent.mkdir()
    home_keys = {k: v for k, v in env.items() if k in ("MIX_HOME", "HEX_HOME", "HEX_OFFLINE")}

    async def body() -> None:
        release = project / "_build" / "prod" / "rel" / "myex"
        async with await LocalBoard.start(release, workdir=tmp_path / "board") as board:
            assert board.node.startswith("myex@")  # mix: the release's name, its COOKIE
            edits = {main: edited, config: "import Config\nconfig :myex, greeting: :hello\n"}
            out = await _first_runs(board, project, tmp_path, home_keys, edits)
            reloaded = _reloaded(out)
            assert "Myex" in reloaded and not [m for m in reloaded if m.startswith("Elixir.")]
            assert "releases/0.1.0/sys.config changed" in out and "after a restart" in out
            assert await board.rpc("Elixir.Myex", "hello") == Atom("there")

    asyncio.run(body())
