"""``--rollback --upgrade`` brings the board back to what it ran at boot: the children an
``--upgrade`` stopped running again, the applications' vsn and env of the pristine ``.app``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.cli import relsync
from support.local_board import with_board

from relsync.erldist.etf import Atom, Term
from relsync.harness.example import APP_DIR, Variant
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration


async def rpc(board: LocalBoard, module: str, function: str, *args: Term) -> Term:
    return await board.rpc(module, function, list(args))


async def children(board: LocalBoard) -> list[str]:
    found = await rpc(board, "supervisor", "which_children", Atom("demo_sup"))
    assert isinstance(found, list)
    return sorted(str(c[0]) for c in found if isinstance(c, tuple))


async def vsn_env(board: LocalBoard) -> tuple[Term, Term]:
    return (
        await rpc(board, "application", "get_key", Atom("demo"), Atom("vsn")),
        await rpc(board, "application", "get_all_env", Atom("demo")),
    )


def test_rollback_upgrade_starts_the_child_the_upgrade_stopped(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    without = Variant(demo_release, tmp_path / "without").remove("demo_fsm")

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        at_boot = await children(board)
        assert "demo_fsm" in at_boot
        run = await relsync(board, without.root, "-q", rw, "--upgrade")
        assert run.code == 0, run
        assert await rpc(board, "erlang", "whereis", Atom("demo_fsm")) == "undefined"

        down = await relsync(board, without.root, "-q", rw, "--rollback", "--upgrade", "--json")
        assert down.code == 0, down
        assert ("started_child", "demo_sup") in {
            (e["event"], e["module"]) for e in down.report["processes"]
        }
        assert await children(board) == at_boot
        assert await rpc(board, "demo_fsm", "push") == 1

    with_board(demo_release, tmp_path / "board", body, mode)


@pytest.mark.parametrize("rename", [False, True], ids=["app_file", "app_dir"])
def test_rollback_upgrade_restores_the_vsn_and_env_of_an_app_file_change(
    demo_release: Path, tmp_path: Path, mode: str, rename: bool
) -> None:
    changed = Variant(demo_release, tmp_path / "changed")
    app = changed.ebin / "demo.app"
    text = app.read_text().replace('{vsn,"0.1.0"}', '{vsn,"0.1.1"}')
    app.write_text(text.replace("{env,[]}", "{env,[{foo,bar}]}"))
    if rename:  # the directory named for the new vsn, as rebar3 names it
        (changed.root / APP_DIR).rename(changed.root / "lib" / "demo-0.1.1")

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        at_boot = await vsn_env(board)
        assert at_boot == (("ok", "0.1.0"), [])
        run = await relsync(board, changed.root, "-q", rw, "--upgrade")
        assert run.code == 0, run
        assert await vsn_env(board) == (("ok", "0.1.1"), [(Atom("foo"), Atom("bar"))])

        down = await relsync(board, changed.root, "-q", rw, "--rollback", "--upgrade")
        assert down.code == 0, down
        assert await vsn_env(board) == at_boot

    with_board(demo_release, tmp_path / "board", body, mode)


def test_an_application_the_release_dropped_is_stopped_by_hand_and_comes_back(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    without = Variant(demo_release, tmp_path / "without")
    shutil.rmtree(without.root / APP_DIR)

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        at_boot = await children(board)
        run = await relsync(board, without.root, "-q", rw, "--upgrade")
        assert run.code == 6, run
        advice = [w for w in run.out.splitlines() if "demo_sup is no longer" in w]
        assert advice and "application demo is no longer in the release" in advice[0], run.out
        assert "application:stop(demo)" in advice[0] and "supervisor's child" not in advice[0]

        down = await relsync(board, without.root, "-q", rw, "--rollback", "--upgrade")
        assert down.code == 0, down
        assert await children(board) == at_boot
        assert await rpc(board, "demo_fsm", "push") == 1

    with_board(demo_release, tmp_path / "board", body, mode)
