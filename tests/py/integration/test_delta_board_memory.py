"""The board rebuilds a delta without holding a merged copy of its base in memory at once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from support.big_file import random_bytes
from support.local_board import open_target, with_board

from relsync.erldist.etf import Atom, Term
from relsync.harness.local import LocalBoard
from relsync.transports.helper import FILE_TIMEOUT

pytestmark = pytest.mark.integration

MB = 1 << 20
#: The base's size: one copy of all of it is what a 1 KB change in a big file becomes.
SIZE = 128 * MB
#: What rebuilding it may add to the board's peak memory (pieces of 1 MiB, and slack).
GROWTH = 32 * MB


def peak_rss(pid: int) -> int:
    """The peak resident memory (VmHWM) of process ``pid``, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def test_a_copy_of_the_whole_base_goes_in_pieces(demo_release: Path, tmp_path: Path) -> None:
    async def body(board: LocalBoard) -> None:
        base = board.rw_path / "base.bin"
        base.parent.mkdir(parents=True, exist_ok=True)
        piece = random_bytes(MB, seed=3)
        with base.open("wb") as out:
            for _ in range(SIZE // MB):
                out.write(piece)
        digest = hashlib.sha256()
        for _ in range(SIZE // MB):
            digest.update(piece)
        digest.update(b"tail")
        path = board.rw_path / "new.bin"
        ops: list[Term] = [(Atom("copy"), 0, SIZE), b"tail"]
        target = await open_target(board, "erl")
        try:
            await target._call("info", [])  # the helper is loaded before the measure
            pid = board.pid
            assert pid is not None
            before = peak_rss(pid)
            args: list[Term] = [str(path).encode(), str(base).encode(), ops, 0o644,
                                digest.digest()]  # fmt: skip
            assert await target._call("put_delta", args, FILE_TIMEOUT) == "ok"
            grown = peak_rss(pid) - before
        finally:
            await target.close()
        assert path.stat().st_size == SIZE + 4
        assert grown < GROWTH, f"the board's peak memory grew {grown / MB:.0f} MiB"

    with_board(demo_release, tmp_path / "board", body)
