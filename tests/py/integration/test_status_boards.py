"""How boards are named to people: ``--status`` of two boards, one of them down (the reachable
board's status shown, the other's error beside it, exit 3, with and without ``--json``), and
the progress bar, named as the summary names the board."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import cli_argv
from support.local_board import with_board

from relsync.harness.example import Variant
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration


def test_status_of_two_boards_one_down(demo_release: Path, tmp_path: Path) -> None:
    async def body(board: LocalBoard) -> None:
        targets = tmp_path / "targets.toml"
        targets.write_text(
            f'[[board]]\nnode = "{board.node}"\ncookie_env = "UP_COOKIE"\n'
            f'epmd_port = {board.epmd_port}\ndestination_path = "{board.release_path}"\n'
            f'destination_rw_path = "{board.rw_path}"\n\n'
            f'[[board]]\nnode = "down@127.0.0.1"\nepmd_port = {board.epmd_port}\n'
            'destination_path = "/srv/erlang"\n'
        )
        argv = [sys.executable, "-m", "relsync.cli", "--targets", str(targets),
                "-l", str(demo_release), "--status"]  # fmt: skip
        env = {**os.environ, "UP_COOKIE": board.cookie}
        machine = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True)
        assert machine.returncode == 3, machine.stderr
        result = json.loads(machine.stdout)
        assert result["ok"] is False and result["exit_code"] == 3
        up, down = result["boards"]
        assert up["target"] == board.node and up["exit_code"] == 0 and up["error"] is None
        assert up["shadow_active"] is False and up["against_local"]["reload"] == []
        assert down["target"] == "down@127.0.0.1" and down["exit_code"] == 3 and down["error"]
        assert result["error"].startswith("down@127.0.0.1: ")

        human = subprocess.run(argv, env=env, capture_output=True, text=True)
        assert human.returncode == 3, human.stderr
        assert f"relsync: {board.node} runs the release at {board.release_path}" in human.stdout
        assert "relsync: down@127.0.0.1 could not be read: " in human.stdout

    with_board(demo_release, tmp_path / "board", body)


def test_the_progress_bar_names_the_board_as_the_summary_does(
    demo_release: Path, tmp_path: Path
) -> None:
    """Over ssh the board is ``relsync@127.0.0.1:PORT`` in the summary: the bar on the
    terminal says the same, not the bare host."""

    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        argv = cli_argv(board, v2.root, "-q", str(board.rw_path), mode="ssh")
        leader, follower = pty.openpty()  # the bar is drawn on a terminal only
        try:
            done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=follower, text=True)
            os.close(follower)
            follower = -1
            drawn = b""
            with contextlib.suppress(OSError):  # EIO: the writer is gone
                while chunk := os.read(leader, 65536):
                    drawn += chunk
        finally:
            os.close(leader)
            if follower >= 0:
                os.close(follower)
        assert done.returncode == 0, drawn
        label = done.stdout.split(" ", 3)[2]  # relsync: synced LABEL in ...
        assert label.startswith("relsync@127.0.0.1:"), done.stdout
        assert f"\r{label} [".encode() in drawn, drawn[:200]

    with_board(demo_release, tmp_path / "board", body, "ssh")
