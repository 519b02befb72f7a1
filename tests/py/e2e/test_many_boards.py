"""Several boards in one relsync run, end to end: four docker-otp boards and one qemu-arm board
(32-bit ARM), over both transports, from one scan of one local release.

The boards boot the example release without its C port program (a port binary is built for one
architecture; the beams are the same on x86-64 and ARM), so one release fits all five.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from relsync.erldist.etf import Atom
from relsync.harness.docker import DockerBoard
from relsync.harness.example import APP_DIR, Variant, build_example_release
from relsync.harness.kinds import EmulatedBoard
from relsync.harness.qemu import QemuBoard

pytestmark = [pytest.mark.e2e, pytest.mark.arm]

PORT_CHILD = "        #{id => demo_port, start => {demo_port, start_link, []}},\n"
EXTRA_SRC = "-module(demo_many).\n-export([hello/0]).\nhello() -> many.\n"


def portless(base: Path, root: Path) -> Variant:
    """The example release without its port program, for boards of any architecture."""
    variant = Variant(base, root).edit("demo_sup", PORT_CHILD, "")
    (variant.root / APP_DIR / "priv" / "demo_port").unlink()
    return variant


def board_entry(board: EmulatedBoard, mode: str, index: int, env: dict[str, str]) -> list[str]:
    """The targets-file lines for ``board`` over ``mode``."""
    paths = [f'destination_path = "{board.release_path}"',
             f'destination_rw_path = "{board.rw_path}"']  # fmt: skip
    if mode == "erl":
        env[f"BOARD{index}_COOKIE"] = board.cookie
        return ["[[board]]", f'node = "{board.node}"', f'cookie_env = "BOARD{index}_COOKIE"',
                f"epmd_port = {board.epmd_port}", *paths, ""]  # fmt: skip
    assert board.ssh is not None
    ssh = board.ssh
    return ["[[board]]", 'mode = "ssh"', 'host = "127.0.0.1"', f"port = {ssh.port}",
            f'user = "{ssh.user}"', f'identity = "{ssh.identity}"', *paths, ""]  # fmt: skip


@pytest.mark.timeout(900)
def test_four_docker_boards_and_one_arm_board_in_one_run(tmp_path: Path) -> None:
    base = portless(build_example_release(), tmp_path / "base").root
    new = portless(build_example_release(), tmp_path / "new").counter_version(2)
    new.compile("demo_many", EXTRA_SRC)
    modes = ["erl", "ssh", "erl", "ssh", "ssh"]  # the last one is the qemu-arm board

    async def scenario() -> None:
        workdir = tmp_path / "boards"
        starting = [DockerBoard.start(base, otp=25, workdir=workdir, ssh=m == "ssh")
                    for m in modes[:4]]  # fmt: skip
        started = await asyncio.gather(
            *starting, QemuBoard.start(base, workdir=workdir, ssh=True), return_exceptions=True
        )
        boards: list[EmulatedBoard] = [b for b in started if not isinstance(b, BaseException)]
        try:
            failures = [b for b in started if isinstance(b, BaseException)]
            assert not failures, f"boards did not come up: {failures}"
            env = dict(os.environ)
            lines = [line for i, (b, m) in enumerate(zip(boards, modes, strict=True))
                     for line in board_entry(b, m, i, env)]  # fmt: skip
            targets = tmp_path / "relsync.toml"
            targets.write_text("\n".join(lines))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "relsync.cli", "--targets", str(targets),
                "-l", str(new.root), "--known-hosts", str(tmp_path / "known_hosts"),
                "--accept-new-host-key", "--json",
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            result = json.loads(out)
            assert result["ok"] is True and len(result["boards"]) == 5, result
            for report in result["boards"]:
                assert sorted(report["reload"]) == ["demo_counter", "demo_many"], report
            for board in boards:
                assert await board.rpc("demo_counter", "version") == 2, board.id
                assert await board.rpc("demo_many", "hello") == "many", board.id
            arm = boards[-1]
            arch = await arm.rpc("erlang", "system_info", [Atom("system_architecture")])
            assert str(arch).startswith("arm"), arch
        finally:
            await asyncio.gather(*(b.stop() for b in boards), return_exceptions=True)

    asyncio.run(scenario())
