"""The relsync command against a real board: the example release on a read-only bind mount.

Each test boots a ``local`` board (a node started by the release's own script from a read-only
copy), runs the real ``relsync`` command line as a user would, and checks the board. Tests taking
``mode`` run twice: over Erlang distribution, and over ssh through relsyncd started beside the
release.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from support.cli import relsync
from support.local_board import with_board

from relsync.erldist.etf import Atom, Term
from relsync.harness.example import APP_DIR, Variant
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration

COUNTER = f"{APP_DIR}/ebin/demo_counter.beam"


def tree(root: Path) -> dict[str, str]:
    """Every entry below root: 'file:<sha>' for files, 'link:<target>' for symlinks."""
    out: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files + [d for d in _dirs if Path(dirpath, d).is_symlink()]:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = f"link:{os.readlink(path)}"
            else:
                out[rel] = "file:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return out


async def call(
    board: LocalBoard, module: str, function: str, args: list[Term] | None = None
) -> Term:
    return await board.rpc(module, function, args or [])


def test_shadow_sync_reloads_changed_module_keeping_state(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        rw = board.rw_path
        before = tree(board.release_path)
        for _ in range(3):
            await call(board, "demo_counter", "bump")
        run = await relsync(board, v2.root, "-q", str(rw), "--json")
        assert run.code == 0, run.err
        assert run.report["changed"] == [COUNTER] and run.report["reload"] == ["demo_counter"]
        assert await call(board, "demo_counter", "version") == 2
        assert await call(board, "demo_counter", "value") == 3  # state kept across the reload
        # The shadow tree: the changed beam is a real file, everything else links to the original.
        shadow = tree(rw)
        original = tree(board.release_path)
        assert original == before  # the read-only release never changes
        assert shadow[COUNTER].startswith("file:") and shadow[COUNTER] != original[COUNTER]
        assert shadow.pop(".relsync-shadow") == f"link:{board.release_path}"  # the marker
        for rel, entry in shadow.items():
            if rel != COUNTER and not rel.startswith(("lib/kernel-", "lib/stdlib-", "lib/sasl-")):
                assert entry == f"link:{board.release_path}/{rel}", rel
        assert set(shadow) - {COUNTER} >= {r for r in original if r.startswith(APP_DIR)} - {COUNTER}
        which = await call(board, "code", "which", [Atom("demo_counter")])
        assert isinstance(which, str) and which.startswith(str(rw))
        path = await call(board, "code", "get_path")
        assert isinstance(path, list)
        ours = [p for p in path if str(board.release_path) in str(p) or str(rw) in str(p)]
        assert ours and all(str(p).startswith(str(rw)) for p in ours)

    with_board(demo_release, tmp_path / "board", body, mode)


def test_dry_run_then_noop_resync(demo_release: Path, tmp_path: Path, mode: str) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        rw = board.rw_path
        dry = await relsync(board, v2.root, "-q", str(rw), "--dry-run", "--json")
        assert dry.code == 0 and dry.report["dry_run"] is True
        assert dry.report["reload"] == ["demo_counter"] and dry.report["written"]
        assert tree(rw) == {} and await call(board, "demo_counter", "version") == 1
        text = await relsync(board, v2.root, "-q", str(rw), "--dry-run")
        assert "would reload: demo_counter" in text.out
        first = await relsync(board, v2.root, "-q", str(rw), "--json")
        assert first.code == 0 and first.report["bytes_sent"] > 0
        again = await relsync(board, v2.root, "-q", str(rw), "--json")
        assert again.code == 0
        r = again.report
        assert (r["added"], r["changed"], r["deleted"], r["written"], r["linked"]) == (
            [], [], [], [], [],
        )  # fmt: skip
        assert r["reload"] == [] and r["bytes_sent"] == 0

    with_board(demo_release, tmp_path / "board", body, mode)


def test_new_and_deleted_modules_in_embedded_mode(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    extra = "-module(demo_extra).\n-export([hello/0]).\nhello() -> world.\n"
    with_extra = Variant(demo_release, tmp_path / "v2").compile("demo_extra", extra)
    without = Variant(demo_release, tmp_path / "v3")

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        assert (await relsync(board, with_extra.root, "-q", rw)).code == 0
        assert await call(board, "demo_extra", "hello") == "world"
        run = await relsync(board, without.root, "-q", rw, "--json")
        assert run.code == 0, run.err
        assert run.report["deleted"] == [f"{APP_DIR}/ebin/demo_extra.beam"]
        statuses = {m["module"]: m["status"] for m in run.report["modules"]}
        assert statuses == {"demo_extra": "deleted"}
        assert await call(board, "code", "is_loaded", [Atom("demo_extra")]) == "false"
        assert f"{APP_DIR}/ebin/demo_extra.beam" not in tree(board.rw_path)

    with_board(demo_release, tmp_path / "board", body, mode)


def _hooks(tmp_path: Path, rw: Path, presync_body: str = "ok = application:stop(demo)") -> Path:
    probe = rw / COUNTER
    source = f"""-module(test_hooks).
-export([presync/0, postsync/0]).
presync() ->
    io:format("presync: shadow exists=~p~n", [filelib:is_file("{probe}")]),
    {presync_body}.
postsync() ->
    ok = application:start(demo),
    io:format("postsync: counter version ~p~n", [demo_counter:version()]).
"""
    path = tmp_path / "test_hooks.erl"
    path.write_text(source)
    return path


def test_port_update_with_hooks_in_order(demo_release: Path, tmp_path: Path, mode: str) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2).port_version("v2")

    async def body(board: LocalBoard) -> None:
        assert await call(board, "demo_port", "ask", [b"hi"]) == b"v1:hi"
        hooks = _hooks(tmp_path, board.rw_path)
        run = await relsync(board, v2.root, "-q", str(board.rw_path), "-H", str(hooks), "--json")
        assert run.code == 0, run.err
        assert f"{APP_DIR}/priv/demo_port" in run.report["changed"]
        assert run.report["hooks"]["presync"]["output"] == "presync: shadow exists=false\n"
        assert run.report["hooks"]["postsync"]["output"] == "postsync: counter version 2\n"
        assert await call(board, "demo_port", "ask", [b"hi"]) == b"v2:hi"
        text = await relsync(board, v2.root, "-q", str(board.rw_path), "-H", str(hooks))
        assert "| presync: shadow exists=true" in text.out  # hook output reaches the host

    with_board(demo_release, tmp_path / "board", body, mode)


def test_failing_presync_leaves_the_target_untouched(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        hooks = _hooks(tmp_path, board.rw_path, presync_body="erlang:error(not_ready)")
        run = await relsync(board, v2.root, "-q", str(board.rw_path), "-H", str(hooks))
        assert run.code == 4
        assert "presync" in run.err and "not_ready" in run.err and run.err.count("\n") == 1
        assert tree(board.rw_path) == {}
        assert await call(board, "demo_counter", "version") == 1

    with_board(demo_release, tmp_path / "board", body, mode)


def test_reboot_comes_back_pristine_and_next_sync_reconciles(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    extra = "-module(demo_extra).\n-export([hello/0]).\nhello() -> world.\n"
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2).compile("demo_extra", extra)
    v3 = Variant(demo_release, tmp_path / "v3").counter_version(3)

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        pristine = tree(board.release_path)
        assert (await relsync(board, v2.root, "-q", rw)).code == 0
        await board.reboot()
        assert await call(board, "demo_counter", "version") == 1
        assert await call(board, "code", "is_loaded", [Atom("demo_extra")]) == "false"
        assert tree(board.release_path) == pristine
        assert f"{APP_DIR}/ebin/demo_extra.beam" in tree(board.rw_path)  # stale shadow kept
        run = await relsync(board, v3.root, "-q", rw, "--json")
        assert run.code == 0, run.err
        assert run.report["reload"] == ["demo_counter"]
        assert await call(board, "demo_counter", "version") == 3
        shadow = tree(board.rw_path)
        assert f"{APP_DIR}/ebin/demo_extra.beam" not in shadow
        assert shadow[COUNTER].startswith("file:")

    with_board(demo_release, tmp_path / "board", body, mode)


def test_process_in_old_code_is_reported_not_killed(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    def loop(tag: int) -> str:
        return (
            "-module(demo_loop).\n-export([start/0, tag/0]).\n"
            f"tag() -> {tag}.\n"
            "start() -> register(demo_loop, spawn(fun() -> loop() end)), ok.\n"
            "loop() -> receive {From, tag} -> From ! tag(), loop() end.\n"
        )

    variants = [Variant(demo_release, tmp_path / f"v{i}").compile("demo_loop", loop(i))
                for i in (1, 2, 3)]  # fmt: skip

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        assert (await relsync(board, variants[0].root, "-q", rw)).code == 0
        assert await call(board, "demo_loop", "start") == "ok"
        pid = await call(board, "erlang", "whereis", [Atom("demo_loop")])
        second = await relsync(board, variants[1].root, "-q", rw, "--json")
        assert second.code == 6  # synced, but a process was left in the old code
        [loaded] = second.report["modules"]
        assert loaded["status"] == "loaded" and loaded["processes"]
        assert loaded["processes"][0].endswith("demo_loop")
        assert second.json["error"] == second.report["error"] and "demo_loop" in second.err
        assert "1 process" in second.report["error"] and second.err.count("\n") == 1
        third = await relsync(board, variants[2].root, "-q", rw, "--json")
        assert third.code == 6 and "NOT reloaded" in third.report["error"]
        [stuck] = third.report["modules"]
        assert stuck["status"] == "not_purged" and "demo_loop" in stuck["processes"][0]
        assert await call(board, "erlang", "whereis", [Atom("demo_loop")]) == pid  # not killed
        text = await relsync(board, variants[2].root, "-q", rw)
        assert text.code == 6 and "NOT reloaded" in text.out
        brutal = await relsync(board, variants[2].root, "-q", rw, "--purge", "brutal", "--json")
        assert brutal.code == 0 and brutal.report["modules"][0]["status"] == "loaded"
        assert await call(board, "demo_loop", "tag") == 3
        assert await call(board, "erlang", "whereis", [Atom("demo_loop")]) == "undefined"

    with_board(demo_release, tmp_path / "board", body, mode)


def test_old_code_left_by_an_earlier_sync_exits_6(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    """Back and forth between two versions: the last load finds its code already current and
    purges nothing, yet a process runs old code; that sync, and every later one, exits 6 (issue
    32), its JSON warnings naming the process."""

    def loop(tag: int) -> str:
        return (
            "-module(demo_loop).\n-export([start/0, tag/0]).\n"
            f"tag() -> {tag}.\n"
            "start() -> register(demo_loop, spawn(fun() -> loop() end)), ok.\n"
            "loop() -> receive {From, tag} -> From ! tag(), loop() end.\n"
        )

    w1, w2 = (Variant(demo_release, tmp_path / f"w{i}").compile("demo_loop", loop(i))
              for i in (1, 2))  # fmt: skip

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        assert (await relsync(board, w1.root, "-q", rw)).code == 0
        assert await call(board, "demo_loop", "start") == "ok"
        second = await relsync(board, w2.root, "-q", rw, "--json")
        assert second.code == 6
        assert any("demo_loop" in w for w in second.report["warnings"])  # "see the warnings"
        assert (await relsync(board, w1.root, "-q", rw)).code == 6
        for run in (w2, w2):  # the load, then a sync with nothing to do
            again = await relsync(board, run.root, "-q", rw, "--json")
            assert again.code == 6, again.out
            assert "old code of demo_loop" in again.report["error"]
            assert any("demo_loop" in w for w in again.report["warnings"])
        text = await relsync(board, w2.root, "-q", rw)
        assert text.code == 6 and "warning:" in text.out and "demo_loop" in text.out

    with_board(demo_release, tmp_path / "board", body, mode)


def test_bad_input_against_a_real_board(demo_release: Path, tmp_path: Path) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        pristine = tree(board.release_path)
        wrong = await relsync(board, v2.root, "-q", str(board.rw_path), cookie="not-the-cookie")
        assert wrong.code == 3 and wrong.err.count("\n") == 1
        assert "cookie" in wrong.err and "not-the-cookie" not in wrong.err + wrong.out
        assert board.cookie not in wrong.err
        read_only = await relsync(board, v2.root)  # no -q: writes into the read-only release
        assert read_only.code == 5 and read_only.err.count("\n") == 1
        assert "read-only" in read_only.err and "--destination-rw-path" in read_only.err
        assert "Traceback" not in read_only.err
        assert tree(board.release_path) == pristine
        assert await call(board, "demo_counter", "version") == 1
        unknown = await relsync(board, v2.root, "-q", str(board.rw_path), node="nosuch@127.0.0.1")
        assert unknown.code == 3 and board.node.split("@")[0] in unknown.err  # names known nodes
        fine = await relsync(board, v2.root, "-q", str(board.rw_path))
        assert fine.code == 0, fine.err  # the board itself is fine afterwards

    with_board(demo_release, tmp_path / "board", body)


def test_new_app_gets_its_ebin_on_the_code_path(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2")
    ebin = v2.root / "lib" / "extra-1.0" / "ebin"
    ebin.mkdir(parents=True)
    (ebin / "extra.app").write_text('{application, extra, [{vsn, "1.0"}, {modules, [extra]}]}.\n')
    src = tmp_path / "extra.erl"
    src.write_text("-module(extra).\n-export([hello/0]).\nhello() -> from_extra.\n")
    subprocess.run(["erlc", "-o", str(ebin), str(src)], check=True)

    async def body(board: LocalBoard) -> None:
        run = await relsync(board, v2.root, "-q", str(board.rw_path), "--json")
        assert run.code == 0, run.err
        assert await call(board, "extra", "hello") == "from_extra"
        path = await call(board, "code", "get_path")
        assert isinstance(path, list)
        assert str(board.rw_path / "lib/extra-1.0/ebin") in path
        assert await call(board, "code", "lib_dir", [Atom("extra")]) == str(
            board.rw_path / "lib/extra-1.0"
        )

    with_board(demo_release, tmp_path / "board", body, mode)


def test_hook_timeout(demo_release: Path, tmp_path: Path, mode: str) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)

    async def body(board: LocalBoard) -> None:
        hooks = _hooks(tmp_path, board.rw_path, presync_body="timer:sleep(60000)")
        run = await relsync(
            board, v2.root, "-q", str(board.rw_path), "-H", str(hooks), "--hook-timeout", "1"
        )
        assert run.code == 4 and "timeout" in run.err and run.err.count("\n") == 1
        assert tree(board.rw_path) == {}
        assert await call(board, "demo_counter", "version") == 1

    with_board(demo_release, tmp_path / "board", body, mode)


def test_running_port_program_is_reported_not_corrupted(
    demo_release: Path, tmp_path: Path, mode: str
) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").port_version("v2")

    async def body(board: LocalBoard) -> None:
        assert await call(board, "demo_port", "ask", [b"x"]) == b"v1:x"
        run = await relsync(board, v2.root, "-q", str(board.rw_path), "--json")
        assert run.code == 0, run.err
        [warning] = run.report["warnings"]
        assert warning.startswith(f"{APP_DIR}/priv/demo_port is running (OS pid ")
        assert await call(board, "demo_port", "ask", [b"x"]) == b"v1:x"  # still the old one
        shadow_port = board.rw_path / APP_DIR / "priv" / "demo_port"
        assert shadow_port.read_bytes() == (v2.root / APP_DIR / "priv" / "demo_port").read_bytes()
        owner = await call(board, "erlang", "whereis", [Atom("demo_port")])
        await call(board, "erlang", "exit", [owner, Atom("kill")])  # its supervisor restarts it
        for _ in range(100):
            if await call(board, "erlang", "whereis", [Atom("demo_port")]) not in (
                "undefined",
                owner,
            ):
                break
            await asyncio.sleep(0.05)
        assert await call(board, "demo_port", "ask", [b"x"]) == b"v2:x"
        text = await relsync(board, v2.root, "-q", str(board.rw_path))
        assert "is running" not in text.out  # nothing changed: nothing to warn about

    with_board(demo_release, tmp_path / "board", body, mode)


def test_many_files_at_once(demo_release: Path, tmp_path: Path, mode: str) -> None:
    v2 = Variant(demo_release, tmp_path / "v2").counter_version(2)
    names = [f"demo_many_{i}" for i in range(24)]
    for name in names:
        v2.compile(name, f"-module({name}).\n-export([n/0]).\nn() -> {len(name)}.\n")

    async def body(board: LocalBoard) -> None:
        run = await relsync(board, v2.root, "-q", str(board.rw_path), "--json")
        assert run.code == 0, run.err
        assert len(run.report["written"]) == 25
        for name in names:
            assert await call(board, name, "n") == len(name)
        shadow = tree(board.rw_path)
        for name in names:
            rel = f"{APP_DIR}/ebin/{name}.beam"
            digest = hashlib.sha256((v2.ebin / f"{name}.beam").read_bytes()).hexdigest()
            assert shadow[rel] == f"file:{digest}"

    with_board(demo_release, tmp_path / "board", body, mode)
