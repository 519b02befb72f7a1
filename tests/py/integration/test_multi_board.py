"""Several boards in one run: one scan, concurrent syncs, one line each, failures contained."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from relsync.harness.example import Variant, build_example_release
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration


def test_three_boards_and_an_unreachable_one(tmp_path: Path) -> None:
    release = build_example_release()
    v2 = Variant(release, tmp_path / "v2").counter_version(2)

    async def scenario() -> None:
        boards = [await LocalBoard.start(release, workdir=tmp_path / f"b{i}") for i in range(3)]
        try:
            ssh = await boards[2].enable_ssh()
            env = dict(os.environ)
            lines = []
            for i, board in enumerate(boards[:2]):
                env[f"BOARD{i}_COOKIE"] = board.cookie
                lines += ["[[board]]", f'node = "{board.node}"', f'cookie_env = "BOARD{i}_COOKIE"',
                          f"epmd_port = {board.epmd_port}",
                          f'destination_path = "{board.release_path}"',
                          f'destination_rw_path = "{board.rw_path}"', ""]  # fmt: skip
            lines += ["[[board]]", 'mode = "ssh"', 'host = "127.0.0.1"', f"port = {ssh.port}",
                      f'identity = "{ssh.identity}"',
                      f'destination_path = "{boards[2].release_path}"',
                      f'destination_rw_path = "{boards[2].rw_path}"', "",
                      "[[board]]", 'node = "nosuch@127.0.0.1"',
                      f"epmd_port = {boards[0].epmd_port}",
                      'destination_path = "/srv/erlang"']  # fmt: skip
            targets = tmp_path / "relsync.toml"
            targets.write_text("\n".join(lines) + "\n")
            argv = [sys.executable, "-m", "relsync.cli", "--targets", str(targets),
                    "-l", str(v2.root), "--known-hosts", str(tmp_path / "kh"),
                    "--accept-new-host-key"]  # fmt: skip
            proc = await asyncio.create_subprocess_exec(
                *argv,
                "--json",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
            assert proc.returncode == 3, err  # the unreachable board's code; the others synced
            result = json.loads(out)
            assert result["ok"] is False
            by_target = {b["target"]: b for b in result["boards"]}
            assert len(by_target) == 4
            assert "nosuch" in by_target["nosuch@127.0.0.1"]["error"]
            for board in boards:
                assert await board.rpc("demo_counter", "version") == 2
            ok = [b for b in result["boards"] if b["ok"]]
            assert len(ok) == 3 and all(b["reload"] == ["demo_counter"] for b in ok)
            # The text table: a line per board and the failure's message.
            again = await asyncio.create_subprocess_exec(
                *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            text = (await again.communicate())[0].decode()
            assert again.returncode == 3
            assert text.startswith("relsync: 4 boards, 3 synced, 1 failed\n")
            assert text.count(" ok ") == 3 and "FAILED (3)" in text
            # --quiet: the table only when a board failed, nothing when every board synced.
            for listed, code in (
                (lines, 3),
                (lines[: lines.index('node = "nosuch@127.0.0.1"') - 1], 0),
            ):
                targets.write_text("\n".join(listed) + "\n")
                quiet = await asyncio.create_subprocess_exec(
                    *argv, "--quiet", env=env, stdout=asyncio.subprocess.PIPE
                )
                text = (await quiet.communicate())[0].decode()
                assert quiet.returncode == code
                assert text.startswith("relsync: 4 boards") if code else text == "", text
        finally:
            for board in boards:
                await board.stop()

    asyncio.run(scenario())
