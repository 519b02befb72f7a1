"""``--status`` of two boards, one of them down: the reachable board's status is shown, the
other's error beside it, and the exit code is the failure's (3), with and without ``--json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.local_board import with_board

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
