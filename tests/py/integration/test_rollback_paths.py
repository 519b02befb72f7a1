"""``--rollback`` and ``--status`` whatever the shadow trees went through: another ``-q`` than
the one the board runs, a live tree deleted by hand, a ``--rollback --clean`` killed halfway."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from support.cli import cli_argv, relsync
from support.faults import kill_when_paused
from support.local_board import with_board

from relsync.erldist.etf import Atom
from relsync.harness.example import Variant
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration


async def _version(board: LocalBoard) -> object:
    return await board.rpc("demo_counter", "version")


def test_another_q_names_the_tree_the_board_runs(demo_release: Path, tmp_path: Path) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        rw, other = str(board.rw_path), str(board.rw_path.parent / "other")
        assert (await relsync(board, v2.root, "-q", rw)).code == 0
        back = await relsync(board, v2.root, "-q", other, "--rollback")
        assert back.code == 2 and f"runs the shadow tree {rw}" in back.err, back
        assert back.err.count("\n") == 1 and await _version(board) == 2  # left alone
        status = await relsync(board, v2.root, "-q", other, "--status", "--json")
        assert status.code == 0 and status.report["running_tree"] == rw, status.out
        text = await relsync(board, v2.root, "-q", other, "--status")
        assert f"it runs the shadow tree {rw} (not {other})" in text.out, text.out
        assert (await relsync(board, v2.root, "-q", rw, "--rollback")).code == 0
        assert await _version(board) == 1

    with_board(demo_release, tmp_path / "board", body)


@pytest.mark.parametrize("clean", [[], ["--clean"]])
def test_a_live_shadow_tree_deleted_by_hand_rolls_back(
    demo_release: Path, tmp_path: Path, mode: str, clean: list[str]
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)
    extra = v2.root / "lib/extra-1.0/ebin"  # an application only the shadow tree has
    extra.mkdir(parents=True)
    (tmp_path / "extra_mod.erl").write_text("-module(extra_mod).\n-export([f/0]).\nf() -> ok.\n")
    subprocess.run(["erlc", "-o", str(extra), str(tmp_path / "extra_mod.erl")], check=True)

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        assert (await relsync(board, v2.root, "-q", rw)).code == 0
        shutil.rmtree(board.rw_path)
        back = await relsync(board, v2.root, "-q", rw, "--rollback", "--json", *clean)
        assert back.code == 0, back
        assert await _version(board) == 1
        which = await board.rpc("code", "which", [Atom("demo_counter")])
        assert isinstance(which, str) and which.startswith(str(board.release_path))
        status = await relsync(board, v2.root, "-q", rw, "--status", "--json")
        assert status.report["shadow_active"] is False, status.out

    with_board(demo_release, tmp_path / "board", body, mode)


def test_a_killed_rollback_clean_is_finished(demo_release: Path, tmp_path: Path) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        assert (await relsync(board, v2.root, "-q", rw)).code == 0
        argv = cli_argv(board, v2.root, "-q", rw, "--rollback", "--clean", mode="erl")
        await kill_when_paused(argv, "shadow_files_deleted")
        assert [p for p in board.rw_path.rglob("*") if not p.is_dir()] == []
        assert any(board.rw_path.iterdir())  # the directories were left
        again = await relsync(board, v2.root, "-q", rw, "--rollback", "--clean")
        assert again.code == 0, again
        assert "nothing to roll back" in again.out and "removed the shadow tree" in again.out
        assert list(board.rw_path.iterdir()) == []
        assert await _version(board) == 1

    with_board(demo_release, tmp_path / "board", body)


def test_a_rollback_after_a_sync_in_place_does_not_call_the_release_pristine(
    demo_release: Path, tmp_path: Path
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        assert (await relsync(board, v2.root)).code == 0  # in place: the release itself changed
        back = await relsync(board, v2.root, "--rollback", "-q", str(board.rw_path))
        assert back.code == 0, back.err
        assert f"runs the release at {board.release_path}, not a shadow tree" in back.out
        assert "pristine" not in back.out + back.err  # it is not: the sync replaced its files
        assert await board.rpc("demo_counter", "version", []) == 2

    with_board(demo_release, tmp_path / "board", body, writable=True)
