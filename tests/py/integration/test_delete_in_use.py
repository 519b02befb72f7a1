"""Deleting a module something on the board still needs (issue 29), in both modes.

The example release's demo_sup starts demo_counter. A release without demo_counter's beam used
to unload it: nothing ran its code at that moment, so the purge went through, and the next
restart of the child failed until demo_sup gave up and the permanent application took the node
down. Now a module still in use stays loaded, the sync says who uses it (exit 6), and the next
sync tries again; ``--purge brutal`` unloads it anyway.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.cli import relsync
from support.local_board import with_board

from relsync.erldist.etf import Atom, Term
from relsync.harness.example import Variant
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration


async def rpc(board: LocalBoard, module: str, function: str, *args: Term) -> Term:
    return await board.rpc(module, function, list(args))


async def loaded(board: LocalBoard, module: str) -> bool:
    return await rpc(board, "code", "is_loaded", Atom(module)) != "false"


async def restarted(board: LocalBoard, name: str, old: Term) -> Term:
    """The pid registered as ``name`` once it is another than ``old`` (its supervisor
    restarted it)."""
    while (pid := await rpc(board, "erlang", "whereis", Atom(name))) in (old, "undefined"):
        await asyncio.sleep(0.05)
    return pid


def test_a_module_its_supervisor_still_starts_stays_loaded(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    without = Variant(demo_release, tmp_path / "without").remove("demo_counter")

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        await rpc(board, "demo_counter", "bump")
        run = await relsync(board, without.root, "-q", rw, "--json")
        assert run.code == 6, run
        [result] = [m for m in run.report["modules"] if m["module"] == "demo_counter"]
        assert result["status"] == "in_use", result
        [warning] = [w for w in run.report["warnings"] if "demo_counter" in w]
        assert "child demo_counter of demo_sup" in warning and "--purge brutal" in warning
        text = await relsync(board, without.root, "-q", rw)
        assert text.code == 6 and "still used by" in text.out, text

        # Still loaded, still working, and its supervisor can still restart it.
        assert await loaded(board, "demo_counter")
        assert await rpc(board, "demo_counter", "value") == 1
        pid = await rpc(board, "erlang", "whereis", Atom("demo_counter"))
        await rpc(board, "erlang", "exit", pid, Atom("kill"))
        await restarted(board, "demo_counter", pid)
        assert await rpc(board, "demo_counter", "value") == 0
        assert await rpc(board, "erlang", "whereis", Atom("demo_sup")) != "undefined"

        status = await relsync(board, without.root, "-q", rw, "--status", "--json")
        assert status.code == 0, status.err
        assert "demo_counter" in status.report["pending"]
        assert status.report["against_local"]["purge"] == ["demo_counter"]
        shown = await relsync(board, without.root, "-q", rw, "--status")
        assert "up to date" not in shown.out and "demo_counter" in shown.out, shown.out

    with_board(demo_release, tmp_path / "board", body, mode)


def test_with_upgrade_its_child_is_stopped_first_and_the_vm_stays_up(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    without = Variant(demo_release, tmp_path / "without").remove("demo_counter")

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        run = await relsync(board, without.root, "-q", rw, "--upgrade", "--json")
        assert run.code == 0, run
        stopped = {"event": "stopped_child", "module": "demo_sup", "process": "demo_counter"}
        assert stopped in run.report["processes"], run.report["processes"]
        assert {"module": "demo_counter", "status": "deleted", "processes": [], "detail": ""} in (
            run.report["modules"]
        )
        assert not await loaded(board, "demo_counter")
        children = await rpc(board, "supervisor", "which_children", Atom("demo_sup"))
        assert isinstance(children, list) and "demo_counter" not in [c[0] for c in children]
        # demo_sup restarts its other children as before: nothing left to start the module.
        pid = await rpc(board, "erlang", "whereis", Atom("demo_store"))
        await rpc(board, "erlang", "exit", pid, Atom("kill"))
        await restarted(board, "demo_store", pid)
        status = await relsync(board, without.root, "-q", rw, "--status", "--json")
        assert status.report["pending"] == [] and status.report["against_local"]["purge"] == []

    with_board(demo_release, tmp_path / "board", body, mode)


def test_a_deleted_module_nobody_uses_is_unloaded(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    lonely = "-module(demo_lonely).\n-export([hi/0]).\nhi() -> hi.\n"
    with_it = Variant(demo_release, tmp_path / "with").compile("demo_lonely", lonely)

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        assert (await relsync(board, with_it.root, "-q", rw)).code == 0
        assert await rpc(board, "demo_lonely", "hi") == "hi"
        run = await relsync(board, demo_release, "-q", rw, "--json")
        assert run.code == 0, run
        assert {"module": "demo_lonely", "status": "deleted", "processes": [], "detail": ""} in (
            run.report["modules"]
        )
        assert run.report["warnings"] == []
        assert not await loaded(board, "demo_lonely")
        status = await relsync(board, demo_release, "-q", rw, "--status")
        assert "against the local release: up to date" in status.out, status.out

    with_board(demo_release, tmp_path / "board", body, mode)


def test_purge_brutal_unloads_it_anyway_and_says_who_used_it(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    without = Variant(demo_release, tmp_path / "without").remove("demo_counter")

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        run = await relsync(board, without.root, "-q", rw, "--purge", "brutal", "--json")
        assert run.code == 0, run
        [result] = [m for m in run.report["modules"] if m["module"] == "demo_counter"]
        assert result["status"] == "deleted" and result["processes"], result
        [warning] = [w for w in run.report["warnings"] if "demo_counter" in w]
        assert "child demo_counter of demo_sup" in warning and "unloaded" in warning
        assert not await loaded(board, "demo_counter")
        status = await relsync(board, without.root, "-q", rw, "--status", "--json")
        assert status.report["pending"] == [] and status.report["against_local"]["purge"] == []

    with_board(demo_release, tmp_path / "board", body, mode)


APPUP = """{"0.1.0",
 [{"0.1.0", [{delete_module, demo_counter}]}],
 [{"0.1.0", []}]}.
"""


def test_an_appup_deleting_a_module_the_release_carries_is_refused(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    wrong = Variant(demo_release, tmp_path / "wrong").counter_version(2)
    (wrong.ebin / "demo.appup").write_text(APPUP)

    async def body(board: LocalBoard) -> None:
        rw = board.rw_path
        run = await relsync(board, wrong.root, "-q", str(rw), "--upgrade")
        assert run.code == 2, run
        error = run.err.strip()
        assert "\n" not in error
        assert "demo.appup" in error and "{delete_module, demo_counter}" in error
        assert "still carries" in error
        assert list(rw.iterdir()) == []  # nothing sent
        assert await rpc(board, "demo_counter", "version") == 1

    with_board(demo_release, tmp_path / "board", body, mode)
