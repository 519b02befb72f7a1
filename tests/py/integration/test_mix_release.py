"""A mix release (Elixir), built by the tests from ``mix new myex --sup`` with Debian's elixir,
on a real node from a read-only path: a GenServer keeps its state across the reload, a changed
protocol implementation and a new one are dispatched to, the consolidated protocol reloaded
after them; Elixir's own applications are left out like OTP's under -E; hooks written in
Elixir. Over ssh, relsyncd is started beside the release with OTP's ssh and crypto from this
machine (a user adds relsyncd to the project's dependencies instead)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.cli import relsync
from support.local_board import with_board
from support.mix_project import mix_release

from relsync.erldist.etf import Atom
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration

PROTOCOL = "releases/0.1.0/consolidated/Elixir.Myex.Greet.beam"


@pytest.fixture(scope="module")
def mix_releases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """v1 (copied out) and v2 of the project's release."""
    base = tmp_path_factory.mktemp("mix")
    v1 = shutil.copytree(mix_release(base / "myex", 1), base / "v1", symlinks=True)
    return v1, mix_release(base / "myex", 2)


def test_a_mix_release_reloads_elixir_modules_and_protocols(
    mix_releases: tuple[Path, Path], tmp_path: Path, mode: str
) -> None:
    v1, v2 = mix_releases

    async def body(board: LocalBoard) -> None:
        counter = "Elixir.Myex.Counter"
        assert await board.rpc(counter, "bump") == 1
        run = await relsync(board, v2, "-q", str(board.rw_path), "--json")
        assert run.code == 0, run.err
        reload = run.report["reload"]
        assert {counter, "Elixir.Myex.Greet.Atom", "Elixir.Myex.Greet.Integer"} <= set(reload)
        assert reload[-1] == "Elixir.Myex.Greet" and PROTOCOL in run.report["changed"]
        assert run.report["written"] and not [
            r for r in run.report["written"] if r.startswith("lib/elixir-")
        ]  # -E: Elixir's own
        assert await board.rpc(counter, "version") == 2
        assert await board.rpc(counter, "bump") == 2  # the GenServer kept its state
        greet = "Elixir.Myex.Greet"
        assert await board.rpc(greet, "hello", [Atom("x")]) == b"v2 x"
        assert await board.rpc(greet, "hello", [5]) == b"v2 number 5"  # the new impl
        # Hooks written in Elixir, named as Elixir writes them.
        hooks = await relsync(board, v2, "-q", str(board.rw_path), "-H", "Myex.Hooks", "--json")
        assert hooks.code == 0, hooks.err
        assert hooks.report["hooks"]["presync"]["status"] == "ok"
        assert await board.rpc("persistent_term", "get", [Atom("myex_presync")]) == "true"

    with_board(v1, tmp_path / "board", body, mode)
