"""``relsync target`` as a script would drive it: up --json, sync with what it printed, reboot,
list, down."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relsync.harness.example import Variant, build_example_release

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
        assert f"relsync -d {board['id']}" in relsync("target", "reboot", board["id"]).stdout
        # The board by its id: one command (its node, EPMD port, cookie, paths).
        erl = relsync("-d", board["id"], "-l", str(v2.root), "--json")
        assert erl.returncode == 0, erl.stderr
        assert json.loads(erl.stdout)["boards"][0]["reload"] == ["demo_counter"]
        reboot = relsync("target", "reboot", board["id"], "--json")
        assert reboot.returncode == 0, reboot.stderr
        ssh = relsync("-M", "ssh", "-d", board["id"], "-l", str(v2.root), "--json")
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


def test_local_board_command_and_env(tmp_path: Path) -> None:
    """``relsync target up local``: a board that outlives the command, found by its id by
    ``env``, ``relsync -d ID``, ``reboot``, ``list`` and ``down``."""
    release = build_example_release()
    up = relsync("target", "up", "local", "--release", str(release), "--json")
    assert up.returncode == 0, up.stderr
    assert up.stderr == ""  # no progress line off a terminal
    board: dict[str, Any] = json.loads(up.stdout)
    try:
        assert board["kind"] == "local" and board["id"].startswith("relsync-local-")
        exports = relsync("target", "env", board["id"])
        assert exports.returncode == 0, exports.stderr
        assert f"export RELSYNC_COOKIE={board['cookie']}" in exports.stdout
        v2 = Variant(release, tmp_path / "v2").counter_version(2)
        env = {k: v for k, v in os.environ.items() if k != "RELSYNC_COOKIE"}
        erl = relsync("-d", board["id"], "-l", str(v2.root), "--json", env=env)
        assert erl.returncode == 0, erl.stderr
        assert json.loads(erl.stdout)["boards"][0]["reload"] == ["demo_counter"]
        reboot = relsync("target", "reboot", board["id"], "--json")
        assert reboot.returncode == 0, reboot.stderr
        again = relsync("-d", board["id"], "-l", str(v2.root), "--json", env=env)
        assert json.loads(again.stdout)["boards"][0]["reload"] == ["demo_counter"]  # pristine
        assert board["id"] in relsync("target", "list").stdout
    finally:
        down = relsync("target", "down", board["id"])
    assert down.returncode == 0, down.stderr
    assert board["id"] not in relsync("target", "list").stdout
    gone = relsync("-d", board["id"], "-l", str(release))
    assert gone.returncode == 2 and "no board" in gone.stderr


def test_progress_line_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal, ``up`` says what it is doing and for how long (then clears the line)."""
    release = build_example_release()
    terminal, side = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "relsync.cli", "target", "up", "local", "--release", str(release),
         "--json"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=side,
    ) as proc:  # fmt: skip
        os.close(side)
        out, _ = proc.communicate(timeout=300)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the terminal's other side is closed
        while chunk := os.read(terminal, 4096):
            shown += chunk
    os.close(terminal)
    board = json.loads(out)
    assert relsync("target", "down", board["id"]).returncode == 0
    assert f"relsync: booting {board['id']}... 0 s".encode() in shown, shown
    assert shown.endswith(b"\r\x1b[K")  # cleared
