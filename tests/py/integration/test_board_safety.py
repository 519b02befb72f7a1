"""A sync never damages a board, whatever the input: several clients at once, paths that
overlap or do not exist, a hook that stops the VM.

Each test boots a ``local`` board (the example release on a read-only mount) and runs the real
``relsync`` command line, in both modes.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from support.cli import relsync
from support.erlnode import compile_erl
from support.faults import expected_shadow, release_files, tmp_leftovers, tree, without_tmp
from support.local_board import open_target, with_board

from relsync.erldist.etf import Atom, Charlist, Term
from relsync.harness.example import APP_DIR, Variant
from relsync.harness.local import LocalBoard
from relsync.transports.erl import ErlTarget, _helper_code
from relsync.transports.helper import HELPER

pytestmark = pytest.mark.integration

#: Rounds of clients started together against one board.
ROUNDS = 20
#: Long enough for every other client of a round to finish its sync first.
WAIT = "120"


def variant(base: Path, root: Path, tag: int) -> Variant:
    """demo_counter at version ``tag`` and 5 MB of priv data of its own: written in chunks in
    erl mode (over 4 MiB) and over SFTP in ssh mode, so two clients would share temp files."""
    made = Variant(base, root).counter_version(tag)
    (root / APP_DIR / "priv" / "big.bin").write_bytes(random.Random(tag).randbytes(5_000_000))
    return made


async def call(
    board: LocalBoard, module: str, function: str, args: list[Term] | None = None
) -> Term:
    return await board.rpc(module, function, args or [])


async def version_of(board: LocalBoard, expected: dict[int, dict[str, str]]) -> int:
    """The one variant the shadow tree and the running code both are."""
    entries = without_tmp(tree(board.rw_path))
    matches = [tag for tag, want in expected.items() if entries == want]
    assert len(matches) == 1, "the shadow tree is no single variant"
    assert await call(board, "demo_counter", "version") == matches[0]
    return matches[0]


class LateCheck(ErlTarget):
    """A client whose "is the helper loaded?" ran before another client loaded it."""

    checked = False

    async def _loaded_attributes(self, module: str) -> Term | None:
        if not self.checked:
            self.checked = True
            return None
        return await super()._loaded_attributes(module)


def test_a_second_helper_load_keeps_the_first_clients_sync(
    demo_release: Path, tmp_path: Path
) -> None:
    """Clients meeting a fresh board together each load the helper: no load may kill a call of
    another client's sync running in the code it replaces (here a hook waiting for a word)."""
    source = tmp_path / "waiting_hooks.erl"
    source.write_text(
        "-module(waiting_hooks).\n-export([presync/0]).\n"
        "presync() -> register(waiting_hook, self()), receive go -> ok end.\n"
    )
    hook = compile_erl(source, tmp_path).read_bytes()

    async def body(board: LocalBoard) -> None:
        first = await open_target(board, "erl")
        late: ErlTarget | None = None
        try:
            running = asyncio.ensure_future(first.run_hook("waiting_hooks", "presync", hook, 60))
            while await call(board, "erlang", "whereis", [Atom("waiting_hook")]) == "undefined":
                await asyncio.sleep(0.05)
            beam, _ = await _helper_code(HELPER)
            # A third client's load, done meanwhile: the waiting call now runs old code.
            assert await call(board, "code", "load_binary", [Atom(HELPER), Charlist("h"), beam])
            late = await LateCheck.open(board.node, board.cookie, epmd_port=board.epmd_port)
            await late._call("info", [])
            assert late.checked
            await call(board, "erlang", "send", [Atom("waiting_hook"), Atom("go")])
            assert (await running).status == "ok"
        finally:
            await first.close()
            if late is not None:
                await late.close()

    with_board(demo_release, tmp_path / "board", body)


@pytest.mark.parametrize("clients", [2, 4])
def test_concurrent_clients_leave_exactly_one_version(
    demo_release: Path, tmp_path: Path, mode: str, clients: int
) -> None:
    variants = {
        tag: variant(demo_release, tmp_path / f"v{tag}", tag) for tag in range(2, 2 + clients)
    }
    base = release_files(demo_release)

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        expected = {
            tag: expected_shadow(board.release_path, base, release_files(v.root))
            for tag, v in variants.items()
        }
        winners: set[int] = set()
        for round_ in range(ROUNDS):
            order = list(variants.values())
            random.Random(round_).shuffle(order)
            runs = await asyncio.gather(
                *(relsync(board, v.root, "-q", rw, "--lock-timeout", WAIT) for v in order)
            )
            assert [r.code for r in runs] == [0] * clients, runs
            winners.add(await version_of(board, expected))
            assert tmp_leftovers(board.rw_path) == [], f"round {round_}"
        # The next sync converges, and a second one finds nothing to do.
        last = variants[2]
        first = await relsync(board, last.root, "-q", rw, "--json")
        assert first.code == 0, first.err
        assert await version_of(board, expected) == 2
        again = await relsync(board, last.root, "-q", rw, "--json")
        assert again.code == 0 and again.report["changed"] == [] and again.report["added"] == []
        assert again.report["bytes_sent"] == 0

    with_board(demo_release, tmp_path / "board", body, mode)


def test_a_busy_board_waits_then_exits_7_untouched(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        holder = await open_target(board, mode)
        try:
            await holder.read(str(board.release_path), (), rw, lock="the test's other client")
            run = await relsync(board, v2.root, "-q", rw, "--lock-timeout", "1")
            assert run.code == 7, run
            assert "busy" in run.err and "the test's other client" in run.err
            assert "--lock-timeout" in run.err and run.err.count("\n") == 1
            assert tree(board.rw_path) == {}
            assert await call(board, "demo_counter", "version") == 1
            dry = await relsync(board, v2.root, "-q", rw, "--dry-run", "--lock-timeout", "0")
            assert dry.code == 0, dry.err  # a dry run reads only: no lock
        finally:
            await holder.close()  # its connection gone, the lock goes too
        run = await relsync(board, v2.root, "-q", rw, "--lock-timeout", "0")
        assert run.code == 0, run.err
        assert await call(board, "demo_counter", "version") == 2

    with_board(demo_release, tmp_path / "board", body, mode)


def test_overlapping_or_missing_destinations_are_refused(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        release = str(board.release_path)
        path_before = await call(board, "code", "get_path")
        for rw, how in ((release, "is the release"), (f"{release}/data", "is inside the release"),
                        (str(Path(release).parent), "contains the release")):  # fmt: skip
            run = await relsync(board, v2.root, "-q", rw)
            assert run.code == 2, run
            assert how in run.err and run.err.count("\n") == 1
        missing = board.rw_path / "no-such-release"  # writable, and allowed by relsyncd
        run = await relsync(board, v2.root, "-p", str(missing))
        assert run.code == 2, run
        assert "is not the release" in run.err and release in run.err  # where the VM booted
        assert "--force-path" in run.err and run.err.count("\n") == 1
        forced = await relsync(board, v2.root, "-p", str(missing), "--force-path")
        assert forced.code == 2, forced
        assert "no such directory" in forced.err and forced.err.count("\n") == 1
        assert not missing.exists()
        assert await call(board, "code", "get_path") == path_before
        assert await call(board, "demo_counter", "version") == 1

    with_board(demo_release, tmp_path / "board", body, mode)


def test_a_new_shadow_tree_takes_the_code_path_off_the_old_one(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)
    v3 = Variant(demo_release, tmp_path / "v3").counter_version(3)

    async def body(board: LocalBoard) -> None:
        first, second = board.rw_path / "one", board.rw_path / "two"
        assert (await relsync(board, v2.root, "-q", str(first))).code == 0
        run = await relsync(board, v3.root, "-q", str(second))
        assert run.code == 0, run.err
        path = [str(p) for p in await call(board, "code", "get_path")]  # type: ignore[union-attr]
        assert not [p for p in path if p.startswith(f"{first}/")]
        assert f"{second}/{APP_DIR}/ebin" in path
        assert await call(board, "demo_counter", "version") == 3
        which = await call(board, "code", "which", [Atom("demo_counter")])
        assert str(which).startswith(f"{second}/")

    with_board(demo_release, tmp_path / "board", body, mode)


def test_a_hook_that_stops_the_vm_exits_4_naming_it(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)
    hooks = tmp_path / "halting_hooks.erl"
    hooks.write_text(
        "-module(halting_hooks).\n-export([presync/0]).\npresync() -> erlang:halt(0).\n"
    )

    async def body(board: LocalBoard) -> None:
        run = await relsync(board, v2.root, "-q", str(board.rw_path), "-H", str(hooks))
        assert run.code == 4, run
        assert "presync hook halting_hooks:presync/0" in run.err and run.err.count("\n") == 1
        assert tree(board.rw_path) == {}

    with_board(demo_release, tmp_path / "board", body, mode)
