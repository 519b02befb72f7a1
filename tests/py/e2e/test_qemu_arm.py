"""End to end on the qemu-arm board: a 32-bit ARM machine with a read-only root, the example
release (its port program cross-compiled for armhf) read-only at /srv/erlang, /data kept.

One boot serves the whole scenario (booting emulated ARM costs ~20 s): erl mode syncs a change
with hooks (the new ARM port program answers), a clean reboot comes back pristine, ssh mode
syncs again into the stale shadow tree, a power cut comes back pristine, and a last sync
converges.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import relsync

from relsync.harness.example import APP_DIR, Variant
from relsync.harness.qemu import CROSS_CC, RELEASE_PATH, RW_PATH, QemuBoard, example_release

pytestmark = [pytest.mark.e2e, pytest.mark.arm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
HOOKS = REPO / "examples" / "demo_hooks.erl"
COUNTER = f"{APP_DIR}/ebin/demo_counter.beam"
PORT = f"{APP_DIR}/priv/demo_port"


def test_arm_board_both_modes_reboot_and_power_cut(tmp_path: Path) -> None:
    async def scenario() -> None:
        release = await example_release()
        v2 = Variant(release, tmp_path / "v2").counter_version(2).port_version("v2", CROSS_CC)
        v3 = Variant(release, tmp_path / "v3").counter_version(3)
        async with await QemuBoard.start(release, workdir=tmp_path / "boards") as board:
            assert (await board.exec("uname", "-m")).strip().startswith("armv7")
            pristine = await board.tree(RELEASE_PATH)
            await board.rpc("demo_counter", "bump")
            run = await relsync(board, v2.root, "-q", RW_PATH, "-H", str(HOOKS), "--json",
                                mode="erl")  # fmt: skip
            assert run.code == 0, run.err
            assert sorted(run.report["changed"]) == [COUNTER, PORT]
            assert await board.rpc("demo_counter", "version") == 2
            assert await board.rpc("demo_counter", "value") == 1  # state kept
            assert await board.rpc("demo_port", "ask", [b"arm"]) == b"v2:arm"  # new ARM binary
            shadow = await board.tree(RW_PATH)
            assert shadow[PORT].startswith("file:") and shadow[COUNTER].startswith("file:")
            assert shadow[f"{APP_DIR}/ebin/demo_sup.beam"] == (
                f"link:{RELEASE_PATH}/{APP_DIR}/ebin/demo_sup.beam"
            )

            await board.reboot()
            assert await board.rpc("demo_counter", "version") == 1
            assert await board.rpc("demo_port", "ask", [b"arm"]) == b"v1:arm"
            assert await board.tree(RELEASE_PATH) == pristine

            ssh = await relsync(board, v3.root, "-q", RW_PATH, "--json", mode="ssh")
            assert ssh.code == 0, ssh.err
            assert await board.rpc("demo_counter", "version") == 3
            after = await board.tree(RW_PATH)
            assert after[PORT] == f"link:{RELEASE_PATH}/{PORT}"  # reconciled back to a link

            await board.power_cut()
            assert await board.rpc("demo_counter", "version") == 1
            assert await board.tree(RELEASE_PATH) == pristine
            last = await relsync(board, v3.root, "-q", RW_PATH, "--json", mode="ssh")
            assert last.code == 0, last.err
            assert last.report["reload"] == ["demo_counter"]
            assert await board.rpc("demo_counter", "version") == 3
            # A power cut may drop the last renames (ext4 commits directory entries every 5 s):
            # whatever survived, the sync converged on exactly v3's tree.
            assert await board.tree(RW_PATH) == after

    asyncio.run(scenario())


def test_board_command_for_qemu_arm(tmp_path: Path) -> None:
    release = asyncio.run(example_release())

    def target(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "relsync.cli", "target", *argv],
                              capture_output=True, text=True, timeout=600, check=False)  # fmt: skip

    up = target("up", "qemu-arm", "--release", str(release), "--json")
    assert up.returncode == 0, up.stderr
    board = json.loads(up.stdout)
    try:
        assert board["kind"] == "qemu-arm" and board["release_path"] == RELEASE_PATH
        assert board["id"] in target("list").stdout
        reboot = target("reboot", board["id"], "--power-cut", "--json")
        assert reboot.returncode == 0, reboot.stderr
        assert json.loads(reboot.stdout)["ssh_port"] == board["ssh_port"]
    finally:
        down = target("down", board["id"])
    assert down.returncode == 0, down.stderr
    assert board["id"] not in target("list").stdout
