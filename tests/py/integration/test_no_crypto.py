"""A release without crypto (users do not add it just to be synced), on a real node from a
read-only path: in erl mode files are compared by MD5, which the runtime always has; in ssh mode
relsyncd brings OTP's ssh and with it crypto, so SHA-256."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import relsync
from support.local_board import with_board
from support.slim import without_crypto

from relsync.erldist.etf import Atom
from relsync.harness.example import Variant
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("layout", ["shadow", "in_place"])
def test_a_release_without_crypto_syncs(
    demo_release: Path, tmp_path: Path, layout: str, mode: str
) -> None:
    expected = "md5" if mode == "erl" else "sha256"
    bare = without_crypto(demo_release, tmp_path / "bare")
    v2 = Variant(bare, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        where = ["-q", str(board.rw_path)] if layout == "shadow" else []
        if mode == "erl":
            assert await board.rpc("code", "is_loaded", [Atom("crypto")]) == "false"
        for _ in range(3):
            await board.rpc("demo_counter", "bump")
        run = await relsync(board, v2.root, *where, "--json")
        assert run.code == 0, run.err
        assert run.report["hash"] == expected and run.report["reload"] == ["demo_counter"]
        assert await board.rpc("demo_counter", "version") == 2
        assert await board.rpc("demo_counter", "value") == 3
        again = await relsync(board, v2.root, *where, "--json")
        assert again.code == 0 and again.report["written"] == [] and again.report["reload"] == []
        verbose = await relsync(board, v2.root, *where, "-v")
        assert f"files compared by {expected}" in verbose.out
        if mode == "erl":  # nothing loaded crypto behind our back
            assert "(the board's VM cannot load crypto from its release or OTP)" in verbose.out
            assert await board.rpc("code", "is_loaded", [Atom("crypto")]) == "false"

    with_board(bare, tmp_path / "board", body, mode, writable=layout == "in_place")
