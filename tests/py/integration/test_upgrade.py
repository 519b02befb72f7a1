"""``--upgrade``, ``--rollback`` and ``--status`` against real boards, in both modes.

The example release runs demo_store (a gen_server whose state is a record), demo_fsm (a
gen_statem) and demo_sup. Their v2 sources below are what a developer would write for an
appup: a record that gains a field with the code_change/3 converting it (both ways), a
state machine whose data gains a key, a supervisor that gains a child.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import relsync
from support.local_board import with_board
from support.upgrade_sources import STORE_V2_CRASH, STORE_V2_OK, v2_release

from relsync.erldist.etf import Atom, Term
from relsync.harness.example import Variant
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration


async def rpc(board: LocalBoard, module: str, function: str, *args: Term) -> Term:
    return await board.rpc(module, function, list(args))


async def md5(board: LocalBoard, module: str) -> Term:
    return await rpc(board, "erlang", "get_module_info", Atom(module), Atom("md5"))


def layout_args(board: LocalBoard, layout: str) -> list[str]:
    return ["-q", str(board.rw_path)] if layout == "shadow" else []


@pytest.mark.parametrize("layout", ["shadow", "in_place"])
def test_upgrade_converts_state_and_starts_the_new_child(
    demo_release: Path, tmp_path: Path, mode: str, layout: str
) -> None:
    v2 = v2_release(demo_release, tmp_path / "v2")

    async def body(board: LocalBoard) -> None:
        where = layout_args(board, layout)
        await rpc(board, "demo_store", "put", Atom("a"), 1)
        await rpc(board, "demo_fsm", "push")
        dry = await relsync(board, v2.root, *where, "--upgrade", "--dry-run", "--json")
        assert dry.code == 0, dry.err
        assert dry.report["upgrade"] == [
            "{add_module, demo_extra}",
            "{update, demo_fsm, {advanced, []}}",
            "{update, demo_store, {advanced, []}}",
            "{update, demo_sup, supervisor}",
        ]
        text = await relsync(board, v2.root, *where, "--upgrade", "--dry-run")
        assert "{update, demo_sup, supervisor}" in text.out
        assert await rpc(board, "erlang", "whereis", Atom("demo_extra")) == "undefined"

        run = await relsync(board, v2.root, *where, "--upgrade", "--json")
        assert run.code == 0, run.err
        events = {(e["event"], e["module"]) for e in run.report["processes"]}
        for module in ("demo_store", "demo_fsm"):
            assert {("suspended", module), ("converted", module), ("resumed", module)} <= events
        assert ("started_child", "demo_sup") in events
        # The record gained its field, converted by code_change/3; the data its key.
        assert await rpc(board, "sys", "get_state", Atom("demo_store")) == (
            Atom("state"), {Atom("a"): 1}, 0,
        )  # fmt: skip
        assert await rpc(board, "demo_store", "get", Atom("a")) == 1
        assert await rpc(board, "demo_store", "hits") == 1
        state = await rpc(board, "sys", "get_state", Atom("demo_fsm"))
        assert state == (Atom("idle"), {Atom("pushes"): 1, Atom("version"): 2})
        assert await rpc(board, "gen_server", "call", Atom("demo_extra"), Atom("hi")) == "hello"
        again = await relsync(board, v2.root, *where, "--upgrade", "--json")
        assert again.code == 0 and again.report["upgrade"] == [], again.err

    with_board(demo_release, tmp_path / "board", body, mode, writable=layout == "in_place")


def test_without_upgrade_a_reload_keeps_the_old_state(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    v2 = v2_release(demo_release, tmp_path / "v2")

    async def body(board: LocalBoard) -> None:
        await rpc(board, "demo_store", "put", Atom("a"), 1)
        run = await relsync(board, v2.root, "-q", str(board.rw_path), "--json")
        assert run.code == 0, run.err
        assert run.report["upgrade"] == [] and run.report["processes"] == []
        assert "demo_store" in run.report["reload"]
        # Plain reload: nothing converted, no child started.
        assert await rpc(board, "sys", "get_state", Atom("demo_store")) == (
            Atom("state"), {Atom("a"): 1},
        )  # fmt: skip
        assert await rpc(board, "erlang", "whereis", Atom("demo_extra")) == "undefined"

    with_board(demo_release, tmp_path / "board", body, mode)


def test_a_crashing_code_change_leaves_the_old_code_and_every_process_resumed(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    bad = v2_release(demo_release, tmp_path / "bad", store=STORE_V2_CRASH)
    good = v2_release(demo_release, tmp_path / "good")

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        await rpc(board, "demo_store", "put", Atom("a"), 1)
        await rpc(board, "demo_fsm", "push")
        before = {m: await md5(board, m) for m in ("demo_store", "demo_fsm", "demo_sup")}
        run = await relsync(board, bad.root, "-q", rw, "--upgrade")
        assert run.code == 8, run
        error = run.out.strip().splitlines()[-1]
        assert "demo_store" in error and "refused code_change" in error and "undone" in error
        assert "\n" not in run.err.strip()
        # demo_fsm was converted before demo_store refused: converted back, old code again.
        assert {m: await md5(board, m) for m in before} == before
        assert await rpc(board, "sys", "get_state", Atom("demo_fsm")) == (
            Atom("idle"), {Atom("pushes"): 1},
        )  # fmt: skip
        assert await rpc(board, "sys", "get_state", Atom("demo_store")) == (
            Atom("state"), {Atom("a"): 1},
        )  # fmt: skip
        assert await rpc(board, "demo_fsm", "push") == 2  # resumed
        assert await rpc(board, "erlang", "whereis", Atom("demo_extra")) == "undefined"
        # The next sync converges.
        fixed = await relsync(board, good.root, "-q", rw, "--upgrade", "--json")
        assert fixed.code == 0, fixed.err
        assert await rpc(board, "demo_store", "hits") == 0

    with_board(demo_release, tmp_path / "board", body, mode)


def test_a_process_that_does_not_suspend_stops_the_upgrade(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    v2 = v2_release(demo_release, tmp_path / "v2")

    async def body(board: LocalBoard) -> None:
        before = await md5(board, "demo_store")
        await rpc(board, "demo_store", "busy", 4000)
        run = await relsync(
            board, v2.root, "-q", str(board.rw_path), "--upgrade", "--upgrade-timeout", "1",
            "--json",
        )  # fmt: skip
        assert run.code == 8, run
        assert "demo_store" in run.report["error"] and "did not suspend" in run.report["error"]
        assert await md5(board, "demo_store") == before
        # Once its long call is over it answers again: not left suspended.
        assert await board.rpc("demo_store", "get", [Atom("a")], timeout=30) == "undefined"
        assert await rpc(board, "demo_fsm", "push") == 1

    with_board(demo_release, tmp_path / "board", body, mode)


def test_rollback_after_a_sync_and_after_an_upgrade_with_status(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    plain = Variant(demo_release, tmp_path / "plain").counter_version(2)
    v2 = v2_release(demo_release, tmp_path / "v2")

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        status = await relsync(board, plain.root, "-q", rw, "--status", "--json")
        assert status.code == 0, status.err
        assert status.report["shadow_active"] is False
        assert status.report["against_local"]["reload"] == ["demo_counter"]
        nothing = await relsync(board, plain.root, "-q", rw, "--rollback")
        assert nothing.code == 0 and "nothing to roll back" in nothing.out

        assert (await relsync(board, plain.root, "-q", rw)).code == 0
        assert await rpc(board, "demo_counter", "version") == 2
        status = await relsync(board, plain.root, "-q", rw, "--status", "--json")
        assert status.report["shadow_active"] is True
        assert status.report["against_pristine"]["changed"] == ["demo_counter"]
        assert status.report["against_local"]["reload"] == []
        text = await relsync(board, plain.root, "-q", rw, "--status")
        assert "shadow tree" in text.out and "1 module changed" in text.out

        back = await relsync(board, plain.root, "-q", rw, "--rollback", "--json")
        assert back.code == 0, back.err
        assert back.report["action"] == "rollback" and back.report["reload"] == ["demo_counter"]
        assert await rpc(board, "demo_counter", "version") == 1
        which = await rpc(board, "code", "which", Atom("demo_counter"))
        assert isinstance(which, str) and which.startswith(str(board.release_path))

        # An upgrade, rolled back with code_change {down, Vsn}; the shadow tree removed.
        await rpc(board, "demo_store", "put", Atom("a"), 1)
        assert (await relsync(board, v2.root, "-q", rw, "--upgrade")).code == 0
        down = await relsync(
            board, v2.root, "-q", rw, "--rollback", "--upgrade", "--clean", "--json"
        )
        assert down.code == 0, down.err
        events = {(e["event"], e["module"]) for e in down.report["processes"]}
        assert {("converted", "demo_store"), ("stopped_child", "demo_sup")} <= events
        assert await rpc(board, "sys", "get_state", Atom("demo_store")) == (
            Atom("state"), {Atom("a"): 1},
        )  # fmt: skip
        assert await rpc(board, "code", "is_loaded", Atom("demo_extra")) == "false"
        assert await rpc(board, "erlang", "whereis", Atom("demo_extra")) == "undefined"
        assert list(Path(rw).iterdir()) == []
        status = await relsync(board, v2.root, "-q", rw, "--status", "--json")
        assert status.report["shadow_active"] is False and status.report["old_code"] == {}

        # And a normal sync again.
        again = await relsync(board, plain.root, "-q", rw, "--json")
        assert again.code == 0, again.err
        assert await rpc(board, "demo_counter", "version") == 2

    with_board(demo_release, tmp_path / "board", body, mode)


def test_rollback_in_place_is_refused(demo_release: Path, tmp_path: Path) -> None:
    async def body(board: LocalBoard) -> None:
        run = await relsync(board, demo_release, "--rollback")
        assert run.code == 2 and "needs its shadow tree" in run.err

    with_board(demo_release, tmp_path / "board", body, writable=True)


APPUP = """%% written by hand: it wins over the generated instructions for demo_store
{"0.1.0",
 [{"0.1.0", [{update, demo_store, {advanced, [from_appup]}},
             {apply, {demo_store, put, [applied, yes]}}]}],
 [{"0.1.0", []}]}.
"""


def test_the_users_appup_wins_for_the_modules_it_names(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    keep_extra = STORE_V2_OK.replace(
        "{ok, #state{items = I}}", "{ok, #state{items = I#{extra => _Extra}}}"
    )
    v2 = v2_release(demo_release, tmp_path / "v2", store=keep_extra)
    (v2.ebin / "demo.appup").write_text(APPUP)
    bad = v2_release(demo_release, tmp_path / "bad")
    restart = APPUP.replace("{apply,", "{restart_application, demo}, {apply,")
    (bad.ebin / "demo.appup").write_text(restart)

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        refused = await relsync(board, bad.root, "-q", rw, "--upgrade")
        assert refused.code == 2 and "restart_application" in refused.err, refused
        assert list(Path(rw).iterdir()) == []  # nothing sent
        dry = await relsync(board, v2.root, "-q", rw, "--upgrade", "--dry-run", "--json")
        assert dry.code == 0, dry.err
        steps = dry.report["upgrade"]
        assert "{update, demo_store, {advanced, [from_appup]}}" in steps
        assert steps[-1] == "{apply, {demo_store, put, [applied,yes]}}"
        assert "{update, demo_store, {advanced, []}}" not in steps
        run = await relsync(board, v2.root, "-q", rw, "--upgrade", "--json")
        assert run.code == 0, run.err
        state = await rpc(board, "sys", "get_state", Atom("demo_store"))
        assert state == (
            Atom("state"), {Atom("extra"): [Atom("from_appup")], Atom("applied"): Atom("yes")}, 0,
        )  # fmt: skip

    with_board(demo_release, tmp_path / "board", body, mode)
