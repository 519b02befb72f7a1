"""End to end against docker-otp boards (OTP 25 and OTP 27), over both transports.

Each board is a container with a read-only root, the example release (built against the board's
OTP) read-only at /srv/erlang and a /data volume. The relsync command line syncs a change into a
shadow tree under /data, the board restarts pristine, and a second sync after the restart
reconciles the stale tree.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import relsync

from relsync.erldist.etf import Atom
from relsync.harness.docker import RELEASE_PATH, RW_PATH, DockerBoard, example_release
from relsync.harness.example import APP_DIR, Variant
from relsync.harness.ready import BoardError

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[3]
HOOKS = REPO / "examples" / "demo_hooks.erl"
COUNTER = f"{APP_DIR}/ebin/demo_counter.beam"
PORT = f"{APP_DIR}/priv/demo_port"


@pytest.mark.parametrize("otp", [25, 27])
@pytest.mark.parametrize("mode", ["erl", "ssh"])
def test_sync_restart_resync(otp: int, mode: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        release = await example_release(otp)
        v2 = Variant(release, tmp_path / "v2").counter_version(2).port_version("v2")
        v3 = Variant(release, tmp_path / "v3").counter_version(3)
        async with await DockerBoard.start(release, otp=otp, workdir=tmp_path / "b") as board:
            assert await board.rpc("erlang", "system_info", [Atom("otp_release")]) == str(otp)
            pristine = await board.tree(RELEASE_PATH)
            for _ in range(2):
                await board.rpc("demo_counter", "bump")
            run = await relsync(board, v2.root, "-q", RW_PATH, "-H", str(HOOKS), "--json",
                                mode=mode)  # fmt: skip
            assert run.code == 0, run.err
            assert sorted(run.report["changed"]) == [COUNTER, PORT]
            assert await board.rpc("demo_counter", "version") == 2
            assert await board.rpc("demo_counter", "value") == 2  # state kept
            assert await board.rpc("demo_port", "ask", [b"hi"]) == b"v2:hi"  # the new port program
            shadow = await board.tree(RW_PATH)
            assert shadow[COUNTER].startswith("file:") and shadow[PORT].startswith("file:")
            links = {r: e for r, e in shadow.items() if r.startswith(APP_DIR)}
            for rel, entry in links.items():
                if rel not in (COUNTER, PORT):
                    assert entry == f"link:{RELEASE_PATH}/{rel}", rel
            assert await board.tree(RELEASE_PATH) == pristine

            await board.reboot()
            assert await board.rpc("demo_counter", "version") == 1
            assert await board.rpc("demo_port", "ask", [b"hi"]) == b"v1:hi"
            assert await board.tree(RELEASE_PATH) == pristine
            assert (await board.tree(RW_PATH))[COUNTER] == shadow[COUNTER]  # stale tree kept

            again = await relsync(board, v3.root, "-q", RW_PATH, "--json", mode=mode)
            assert again.code == 0, again.err
            assert again.report["reload"] == ["demo_counter"]
            assert await board.rpc("demo_counter", "version") == 3
            after = await board.tree(RW_PATH)
            assert after[PORT] == f"link:{RELEASE_PATH}/{PORT}"  # back to the original port
            assert after[COUNTER].startswith("file:") and after[COUNTER] != shadow[COUNTER]
            noop = await relsync(board, v3.root, "-q", RW_PATH, "--json", mode=mode)
            assert noop.code == 0 and noop.report["written"] == [] and noop.report["reload"] == []

    asyncio.run(scenario())


def test_board_fixture_read_file_and_power_cut(
    docker_board: Callable[..., DockerBoard], tmp_path: Path
) -> None:
    release = asyncio.run(example_release(25))
    board = docker_board(release, otp=25, ssh=False)
    rel_file = asyncio.run(board.read_file(f"{RELEASE_PATH}/releases/start_erl.data"))
    assert rel_file.split()[1] == b"0.1.0"
    asyncio.run(board.exec("sh", "-c", "echo kept > /data/marker"))
    asyncio.run(board.rpc("demo_counter", "bump"))
    asyncio.run(board.power_cut())
    assert asyncio.run(board.rpc("demo_counter", "value")) == 0  # a fresh boot
    assert asyncio.run(board.read_file("/data/marker")) == b"kept\n"  # /data survives
    with pytest.raises(BoardError, match="cannot read"):
        asyncio.run(board.read_file("/nonexistent"))
