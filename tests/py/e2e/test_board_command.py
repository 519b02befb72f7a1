"""``relsync target`` as a script would drive it: up --json, sync with what it printed, reboot,
list, down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relsync.harness.example import Variant

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[3]


def relsync(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relsync.cli", *argv], capture_output=True,
                          text=True, timeout=600, check=False, env=env)  # fmt: skip


def test_board_command_round_trip(tmp_path: Path) -> None:
    release = Path(
        subprocess.run(
            [str(REPO / "targets/docker-otp/release.sh"), "25"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[-1]
    )
    up = relsync("target", "up", "docker-otp", "--release", str(release), "--json",
                 "--workdir", str(tmp_path / "boards"))  # fmt: skip
    assert up.returncode == 0, up.stderr
    board: dict[str, Any] = json.loads(up.stdout)
    try:
        assert board["kind"] == "docker-otp" and board["otp"] == 25  # picked from the release
        for key in ("id", "node", "cookie", "epmd_port", "ssh_port", "ssh_user", "ssh_identity",
                    "release_path", "rw_path", "console_log"):  # fmt: skip
            assert board[key], key
        assert Path(board["console_log"]).read_text()  # the board's console is captured
        v2 = Variant(release, tmp_path / "v2").counter_version(2)
        env = dict(os.environ, RELSYNC_COOKIE=board["cookie"])
        erl = relsync("-d", board["node"], "--epmd-port", str(board["epmd_port"]),
                      "-p", board["release_path"], "-q", board["rw_path"], "-l", str(v2.root),
                      "--json", env=env)  # fmt: skip
        assert erl.returncode == 0, erl.stderr
        assert json.loads(erl.stdout)["boards"][0]["reload"] == ["demo_counter"]
        reboot = relsync("target", "reboot", board["id"], "--json")
        assert reboot.returncode == 0, reboot.stderr
        ssh = relsync("-M", "ssh", "-d", "127.0.0.1", "-P", str(board["ssh_port"]),
                      "-u", board["ssh_user"], "-i", board["ssh_identity"],
                      "--known-hosts", str(tmp_path / "known_hosts"), "--accept-new-host-key",
                      "-p", board["release_path"], "-q", board["rw_path"], "-l", str(v2.root),
                      "--json")  # fmt: skip
        assert ssh.returncode == 0, ssh.stderr
        # rebooted: pristine again
        assert json.loads(ssh.stdout)["boards"][0]["reload"] == ["demo_counter"]
        listed = json.loads(relsync("target", "list", "--json").stdout)
        assert board["id"] in [b["id"] for b in listed]
    finally:
        down = relsync("target", "down", board["id"])
    assert down.returncode == 0, down.stderr
    assert board["id"] not in relsync("target", "list").stdout
    missing = relsync("target", "down", board["id"])
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
