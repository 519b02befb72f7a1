"""A block delta reads the new file a piece at a time: memory does not grow with its size."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relsync import delta
from relsync.delta import BLOCK, Copy, apply_delta, file_delta, make_delta, signatures_of
from relsync.erldist.etf import Atom, Term
from relsync.target import FilePut
from relsync.transports.helper import CALL_TIMEOUT, HelperTarget

MB = 1 << 20
#: The big file's size: far above what the delta may hold at a time.
SIZE = 64 * MB
#: What a delta of it may allocate at its peak (a piece read and the pieces around it).
PEAK = 8 * MB


class _Board(HelperTarget):
    """A target that knows the base's block sums and keeps the ``put_delta`` call."""

    label = "fake board"

    def __init__(self, sums: list[tuple[int, bytes]]) -> None:
        self.sums = sums
        self.put: list[Term] = []

    async def _call(self, function: str, args: list[Term], timeout: float = CALL_TIMEOUT) -> Term:
        if function == "block_signatures":
            return (Atom("ok"), list(self.sums))
        assert function == "put_delta"
        self.put = args
        return Atom("ok")

    async def _load_binary(self, module: str, beam: bytes) -> Term:
        raise AssertionError("not used")

    async def _ensure_upgrader(self) -> None:
        raise AssertionError("not used")


def test_put_delta_of_a_big_file_holds_a_piece_of_it(tmp_path: Path) -> None:
    old = random.Random(1).randbytes(SIZE)
    at = SIZE // 2 + 100
    new = old[:at] + bytes(1024) + old[at + 1024 :]
    board = _Board(signatures_of(old))
    local = tmp_path / "big.bin"
    local.write_bytes(new)
    put = FilePut("/b/big.bin", str(local), SIZE, 0o644, hashlib.sha256(new).digest(), "/b/old")
    del new

    tracemalloc.start()
    try:
        sent = asyncio.run(board._put_delta(put, lambda n: None))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent
    assert peak < PEAK, f"peak {peak / MB:.1f} MiB for a {SIZE // MB} MiB file"
    wire_ops = board.put[2]
    assert isinstance(wire_ops, list)
    ops = [Copy(op[1], op[2]) if isinstance(op, tuple) else op for op in wire_ops]
    assert all(isinstance(op, Copy | bytes) for op in ops)
    assert apply_delta(old, ops) == local.read_bytes()  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    st.binary(min_size=0, max_size=8 * 512),
    st.lists(st.tuples(st.integers(0, 4095), st.binary(max_size=700)), max_size=4),
    st.integers(1, 1500),
)
def test_small_pieces_give_the_same_ops(
    base: bytes, edits: list[tuple[int, bytes]], piece: int
) -> None:
    new = base
    for at, text in edits:
        at = min(at, len(new))
        new = new[:at] + text + new[at + len(text) // 2 :]
    sums = signatures_of(base, 512)
    whole = make_delta(new, sums, block=512, max_literal=1.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(delta, "READ", piece)
        pieces = make_delta(new, sums, block=512, max_literal=1.0)
    assert pieces == whole
    assert pieces is not None and apply_delta(base, pieces) == new


class _Shrinking(io.BytesIO):
    """A file that is 1000 bytes shorter than it was when its size was taken."""

    def seek(self, pos: int, whence: int = 0) -> int:
        where = super().seek(pos, whence)
        return where + 1000 if whence == io.SEEK_END else where


def test_a_file_that_got_shorter_goes_whole() -> None:
    old = random.Random(2).randbytes(4 * BLOCK)
    assert file_delta(_Shrinking(old), signatures_of(old)) is None
    assert file_delta(io.BytesIO(old), signatures_of(old)) == [Copy(0, 4 * BLOCK)]
