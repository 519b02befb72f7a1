"""A board that stops answering mid-upload (power lost, VM hung) while the TCP connection stays
open, as behind QEMU's user networking: relsync notices and ends with a one-line error instead of
waiting forever. erl mode relies on the distribution tick (``test_dist_link.py``); ssh mode on
ssh keepalives, shortened here (in the client process) so the test takes seconds."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

import pytest
from support.cli import cli_argv
from support.local_board import with_board

from relsync.errors import ExitCode
from relsync.harness.example import APP_DIR, Variant
from relsync.harness.local import LocalBoard
from relsync.plan import is_temp

pytestmark = pytest.mark.integration

#: ``python -m relsync.cli`` with keepalives every 0.5 s, given up after 2 unanswered.
SHORT_KEEPALIVE = (
    "import sys, relsync.transports.ssh as s, relsync.cli as c;"
    "s.KEEPALIVE_INTERVAL = 0.5; s.KEEPALIVE_COUNT_MAX = 2;"
    "sys.argv[0] = 'relsync'; sys.exit(c.main())"
)


def test_board_frozen_mid_upload_ends_an_ssh_sync_with_a_one_line_error(
    demo_release: Path, tmp_path: Path
) -> None:
    variant = Variant(demo_release, tmp_path / "v2").counter_version(2)
    big = random.Random(2).randbytes(48_000_000)  # uploads long enough to freeze the board in
    (variant.root / APP_DIR / "priv" / "big.bin").write_bytes(big)

    async def body(board: LocalBoard) -> None:
        argv = cli_argv(
            board, variant.root, "--destination-rw-path", str(board.rw_path), mode="ssh"
        )
        argv[1:3] = ["-c", SHORT_KEEPALIVE]  # instead of "-m relsync.cli"
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None and board.pid is not None
        board_pid = board.pid
        parts = board.rw_path / APP_DIR / "priv"
        try:
            for _ in range(3000):  # until the upload began
                if proc.returncode is not None:
                    raise AssertionError(f"the sync ended first: {await proc.stderr.read()!r}")
                if parts.is_dir() and any(is_temp(p.name) for p in parts.iterdir()):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("no upload began within 30 s")
            os.kill(board_pid, signal.SIGSTOP)  # frozen, not dead: the socket stays open
            err = (await asyncio.wait_for(proc.stderr.read(), 30)).decode()
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            os.kill(board_pid, signal.SIGCONT)
        assert proc.returncode == ExitCode.SYNC, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "lost the connection" in err, err

    with_board(demo_release, tmp_path / "board", body, "ssh")
