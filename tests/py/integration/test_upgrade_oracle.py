"""``relsync --upgrade`` against OTP's release_handler (DESIGN.md section 7): the same v1 release
upgraded to v2 on two boards, one by release_handler from a relup, one by relsync, must look the
same to a user (see support/upgrade_oracle.py for the scenario and what is observed); then the
same for ``--rollback --upgrade`` against release_handler's downgrade. Then what the oracle
cannot show: a failed upgrade's undo, a killed client, a killed sync resumed.

The scenario is built once (two rebar3 releases and a relup, ~4 s); release_handler's board
once; relsync's in each mode. About 150 s in all on this machine (2 cores).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.cli import cli_argv, relsync
from support.faults import kill_when_paused
from support.upgrade_oracle import (
    ACCEPTOR_V2,
    CONN,
    SRV,
    SRV_V2,
    SRV_V2_CRASH,
    STATS_V2,
    SUP_V2,
    V1,
    V2,
    build_release,
    install_tarball,
    scenario,
)

from relsync.erldist.etf import Atom, Charlist, Pid, Port, Reference, Term
from relsync.harness.local import LocalBoard

pytestmark = pytest.mark.integration

#: Where relsync may differ from release_handler, and why (README, "Upgrades"): none so far.
GOES_FURTHER: dict[str, str] = {}


@dataclass(frozen=True)
class Scenario:
    v1: Path
    v2: Path
    #: v2 with the appup release_handler's relup was made from.
    v2_appup: Path
    tarball: Path


@pytest.fixture(scope="module")
def orc(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return Scenario(*scenario(tmp_path_factory.mktemp("orc")))


def plain(term: Term) -> Any:
    """``term`` with what differs between two nodes anyway (pids, ports, refs) made equal."""
    if isinstance(term, Pid | Port | Reference):
        return type(term).__name__
    if isinstance(term, tuple):
        return tuple(plain(t) for t in term)
    if isinstance(term, list):
        return [plain(t) for t in term]
    if isinstance(term, dict):
        return {plain(k): plain(v) for k, v in term.items()}
    return term


def seen(before: dict[Atom, Any], after: dict[Atom, Any]) -> dict[str, Any]:
    """What a user sees after the upgrade, and what it kept from before."""

    def kept(pid: Term, old: set[Term]) -> str:
        return "none" if not isinstance(pid, Pid) else "kept" if pid in old else "new"

    old_pids = set(before[Atom("pids")].values()) | {
        c[1] for cs in before[Atom("children")].values() if isinstance(cs, list) for c in cs
    }
    orc = {m for m in after[Atom("md5")] if str(m).startswith("orc_")}
    common = set(before[Atom("md5")]) & set(after[Atom("md5")])
    out = {
        "pids": {str(n): kept(p, old_pids) for n, p in after[Atom("pids")].items()},
        "children": {
            str(s): sorted((plain(c[0]), kept(c[1], old_pids), str(c[2]), plain(c[3])) for c in cs)
            if isinstance(cs, list)
            else plain(cs)
            for s, cs in after[Atom("children")].items()
        },
        "orc_modules": sorted(str(m) for m in orc),
        "md5": {str(m): after[Atom("md5")][m] for m in sorted(orc | common, key=str)},
        "old_code": sorted(str(m) for m in after[Atom("old_code")] if str(m).startswith("orc")),
    }
    for key in ("states", "suspended", "inits", "vsn", "env", "config_change", "lib",
                "connections"):  # fmt: skip
        out[key] = plain(after[Atom(key)])
    return out


def differences(rh: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    found = []
    for key in rh:
        a, b = rh[key], ours[key]
        if isinstance(a, dict) and isinstance(b, dict):
            # Modules only one side loaded (release_handler's own, ssh mode's relsyncd)
            # are left out; orc_modules says the scenario's are the same.
            keys = a.keys() & b.keys() if key == "md5" else a.keys() | b.keys()
            for k in sorted(keys):
                if a.get(k) != b.get(k) and f"{key}.{k}" not in GOES_FURTHER:
                    found.append(f"{key}.{k}: release_handler {a.get(k)!r}, relsync {b.get(k)!r}")
        elif a != b and key not in GOES_FURTHER:
            found.append(f"{key}: release_handler {a!r}, relsync {b!r}")
    return found


@dataclass
class Client:
    """A TCP connection to the scenario's listener, open across the upgrade."""

    sock: socket.socket

    @classmethod
    async def open(cls, board: LocalBoard) -> Client:
        port = await board.rpc("persistent_term", "get", [Atom("orc_port")])
        assert isinstance(port, int)
        return cls(socket.create_connection(("127.0.0.1", port), timeout=10))

    def echo(self, line: bytes) -> bytes:
        try:
            self.sock.sendall(line + b"\n")
            return self.sock.makefile("rb").readline().rstrip(b"\n")
        except OSError as exc:
            return f"connection lost: {exc}".encode()


async def observe(board: LocalBoard) -> Any:
    result = await board.rpc("orc_probe", "observe", [])
    assert isinstance(result, dict), result
    return result


async def upgraded(board: LocalBoard, upgrade: Any) -> dict[str, Any]:
    """Upgrade ``board`` with the coroutine function ``upgrade``; what a user sees then."""
    await board.rpc("orc_srv", "hit", [])
    await board.rpc("gen_event", "notify", [Atom("orc_events"), Atom("tick")])
    await board.rpc("orc_conn", "count", [])
    client = await Client.open(board)
    assert client.echo(b"before") == b"before"
    before = await observe(board)
    await upgrade(board)
    after = await observe(board)
    out = seen(before, after)
    out["tcp"] = client.echo(b"after").decode()
    client.sock.close()
    return out


def with_board(release: Path, workdir: Path, body: Any, *, ssh: bool = False,
               writable: bool = False) -> Any:  # fmt: skip
    async def main() -> Any:
        async with await LocalBoard.start(release, workdir=workdir, writable=writable) as board:
            if ssh:
                await board.enable_ssh()
            return await body(board)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def release_handler_saw(
    orc: Scenario, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """v1 upgraded by release_handler, as OTP documents it (sasl runs on the node), then
    downgraded back to v1."""

    async def install(board: LocalBoard) -> None:
        install_tarball(board.release_path, orc.tarball)
        unpacked = await board.rpc("release_handler", "unpack_release", [Charlist("orc2")])
        assert unpacked == (Atom("ok"), "2"), unpacked
        installed = await board.rpc(
            "release_handler", "install_release", [Charlist("2")], timeout=60
        )
        assert isinstance(installed, tuple) and installed[0] == "ok", installed

    async def downgrade(board: LocalBoard) -> None:
        installed = await board.rpc(
            "release_handler", "install_release", [Charlist("1")], timeout=60
        )
        assert isinstance(installed, tuple) and installed[0] == "ok", installed

    async def body(board: LocalBoard) -> dict[str, dict[str, Any]]:
        return {"up": await upgraded(board, install), "down": await upgraded(board, downgrade)}

    workdir = tmp_path_factory.mktemp("rh")
    return with_board(orc.v1, workdir, body, writable=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize("appup", ["derived", "appup"])
def test_relsync_upgrade_and_rollback_are_what_release_handler_does(
    orc: Scenario,
    release_handler_saw: dict[str, dict[str, Any]],
    tmp_path: Path,
    mode: str,
    appup: str,
) -> None:
    """``--upgrade`` against release_handler's upgrade, then ``--rollback --upgrade`` against
    its downgrade (install_release of v1 again): with the steps relsync derives itself, and
    with the appup release_handler's relup was made from."""
    v2 = orc.v2 if appup == "derived" else orc.v2_appup

    async def sync(board: LocalBoard) -> None:
        run = await relsync(board, v2, "-q", str(board.rw_path), "--upgrade", "--json")
        assert run.code == 0, run
        applies = [s for s in run.report["upgrade"] if s.startswith("{apply, {supervisor,")]
        assert len(applies) == (3 if appup == "appup" else 0), run.report["upgrade"]

    async def rollback(board: LocalBoard) -> None:
        run = await relsync(
            board, v2, "-q", str(board.rw_path), "--rollback", "--upgrade", "--json"
        )
        assert run.code == 0, run

    async def body(board: LocalBoard) -> dict[str, dict[str, Any]]:
        return {"up": await upgraded(board, sync), "down": await upgraded(board, rollback)}

    ours = with_board(orc.v1, tmp_path / "board", body, ssh=mode == "ssh")
    found = [
        f"{phase}: {d}"
        for phase in ("up", "down")
        for d in differences(release_handler_saw[phase], ours[phase])
    ]
    assert not found, "\n".join(found)


def test_a_failed_upgrade_is_undone_without_killing_and_says_what_runs(
    orc: Scenario, tmp_path: Path, mode: str
) -> None:
    """A code_change that crashes undoes the steps before it (exit 8: the old code runs with
    the old state). When undoing a step would kill (a connection process still runs the code
    it replaced), that step is left done under --purge soft: the connection stays open and
    the exit code (9) says the new code runs."""
    crash = build_release(tmp_path / "crash", "2", {**V2, "orc_srv": SRV_V2_CRASH})
    stuck = build_release(
        tmp_path / "stuck", "2", {**V2, "orc_srv": SRV_V2_CRASH, "orc_acceptor": ACCEPTOR_V2}
    )

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        await board.rpc("orc_srv", "hit", [])
        client = await Client.open(board)
        assert client.echo(b"one") == b"one"
        before = await observe(board)

        run = await relsync(board, crash, "-q", rw, "--upgrade", "--json")
        assert run.code == 8, run
        assert "orc_srv" in run.report["error"] and "runs the code it ran before" in run.err
        after = await observe(board)
        for key in ("states", "md5", "vsn", "env", "suspended", "old_code"):
            assert plain(after[Atom(key)]) == plain(before[Atom(key)]), key
        assert client.echo(b"two") == b"two"

        run = await relsync(board, stuck, "-q", rw, "--upgrade", "--json")
        assert run.code == 9, run
        assert "orc_acceptor could not be undone" in run.err, run.err
        # Its load left the connection in its old code, and the report says so.
        assert any(w.startswith("orc_acceptor: <") for w in run.report["warnings"]), run.report
        assert run.err.count("\n") == 1
        after = await observe(board)
        assert after[Atom("states")][Atom("orc_srv")] == (Atom("v1"), 1)
        assert after[Atom("suspended")] == []
        assert client.echo(b"three") == b"three"  # not killed: still the code it ran
        assert after[Atom("connections")] == before[Atom("connections")]

        # --status names what still runs old code, and any process left suspended.
        status = await relsync(board, stuck, "-q", rw, "--status", "--json")
        assert "orc_acceptor" in status.report["old_code"], status.report
        assert status.report["suspended"] == []
        await board.rpc("sys", "suspend", [Atom("orc_conn")])
        status = await relsync(board, stuck, "-q", rw, "--status")
        assert "suspended (resume them" in status.out and "orc_conn" in status.out, status.out
        await board.rpc("sys", "resume", [Atom("orc_conn")])

    with_board(orc.v1, tmp_path / "board", body, ssh=mode == "ssh")


def test_an_undo_that_cannot_convert_a_process_back_keeps_its_new_code(
    orc: Scenario, tmp_path: Path, mode: str
) -> None:
    """The undo of a failed upgrade gives the old code back only with the old state: a process
    still busy at --upgrade-timeout, or whose code_change cannot convert back, keeps the new
    code with its state (exit 9, nothing left suspended); a supervisor is converted back once
    its old code is loaded (its old child specs); a later sync of the fixed release goes on."""
    busy = STATS_V2.replace(
        "code_change(_, {stats, M}, _) ->",
        "code_change(_, {stats, M}, _) -> gen_server:cast(self(), slow),",
    ).replace(
        "handle_cast(_, S) ->",
        "handle_cast(slow, S) -> timer:sleep(3000), {noreply, S};\nhandle_cast(_, S) ->",
    )
    v2busy = build_release(
        tmp_path / "busy", "2", {**V1, "orc_stats": busy, "orc_srv": SRV_V2_CRASH}
    )
    (v2busy / "lib" / "orc-2" / "ebin" / "orc.appup").write_text(
        '{"2", [{"1", [{update, orc_stats, {advanced, []}}, {update, orc_srv, {advanced, []}}]}],'
        ' [{"1", []}]}.\n'
    )
    up_only = SRV.replace("CODE_CHANGE", "code_change(_, {v1, N}, _) -> {ok, {v2, N, converted}}.")
    crash = CONN.replace("CODE_CHANGE", "system_code_change(S, _, _, _) -> error({cannot, S}).")
    appup = (
        '{"2", [{"1", [{add_module, orc_new}, {update, orc_srv, {advanced, []}}, '
        '{update, orc_sup, supervisor}, {update, orc_conn, {advanced, []}}]}], [{"1", []}]}.\n'
    )
    v2 = {**V1, "orc_new": V2["orc_new"], "orc_srv": up_only, "orc_sup": SUP_V2}
    releases = {}
    for name, conn in (("down", crash), ("fixed", V2["orc_conn"])):
        releases[name] = build_release(tmp_path / name, "2", {**v2, "orc_conn": conn})
        (releases[name] / "lib" / "orc-2" / "ebin" / "orc.appup").write_text(appup)

    async def stays_busy(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        run = await relsync(board, v2busy, "-q", rw, "--upgrade", "--upgrade-timeout", "1")
        assert run.code == 9, run
        assert "orc_stats could not be undone" in run.err and "busy" in run.err, run.err
        await asyncio.sleep(3)
        after = await observe(board)
        assert after[Atom("suspended")] == [], after
        assert after[Atom("states")][Atom("orc_stats")][0] == Atom("stats2")
        assert after[Atom("states")][Atom("orc_srv")] == (Atom("v1"), 0)

    async def no_way_back(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        await board.rpc("orc_srv", "hit", [])
        before = await observe(board)
        run = await relsync(board, releases["down"], "-q", rw, "--upgrade", "--json")
        assert run.code == 9, run
        assert "orc_srv could not be undone" in run.err and "convert the state back" in run.err
        after = await observe(board)
        assert after[Atom("states")][Atom("orc_srv")] == (Atom("v2"), 1, Atom("converted"))
        assert after[Atom("md5")][Atom("orc_srv")] != before[Atom("md5")][Atom("orc_srv")]
        for key in ("children", "suspended"):
            assert plain(after[Atom(key)]) == plain(before[Atom(key)]), key
        run = await relsync(board, releases["fixed"], "-q", rw, "--upgrade", "--json")
        assert run.code == 0, run
        after = await observe(board)
        assert after[Atom("states")][Atom("orc_srv")] == (Atom("v2"), 1, Atom("converted"))
        assert after[Atom("states")][Atom("orc_conn")][0] == Atom("conn2")

    with_board(orc.v1, tmp_path / "board", stays_busy, ssh=mode == "ssh")
    with_board(orc.v1, tmp_path / "board2", no_way_back, ssh=mode == "ssh")


def test_a_rollback_that_cannot_convert_back_stays_on_the_shadow_tree(
    orc: Scenario, tmp_path: Path, mode: str
) -> None:
    """``--rollback --upgrade`` whose down conversion fails (a code_change without a ``{down,
    _}`` clause) is undone: exit 8, the board back on the shadow tree's code and code path (the
    vsn bump renamed the application's directory: orc-2 there, orc-1 in the release), so a
    plain ``--rollback`` still has something to roll back."""
    up_only = SRV.replace("CODE_CHANGE", "code_change(_, {v1, N}, _) -> {ok, {v2, N, converted}}.")
    v2 = build_release(tmp_path / "v2", "2", {**V2, "orc_srv": up_only})

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        run = await relsync(board, v2, "-q", rw, "--upgrade")
        assert run.code == 0, run
        down = await relsync(board, v2, "-q", rw, "--rollback", "--upgrade")
        assert down.code == 8, down
        path = [str(p) for p in await board.rpc("code", "get_path", [])]
        assert f"{rw}/lib/orc-2/ebin" in path and f"{board.release_path}/lib/orc-1/ebin" not in path
        which = str(await board.rpc("code", "which", [Atom("orc_srv")]))
        assert which == f"{rw}/lib/orc-2/ebin/orc_srv.beam", which
        after = await observe(board)
        assert after[Atom("states")][Atom("orc_srv")] == (Atom("v2"), 0, Atom("converted"))
        again = await relsync(board, v2, "-q", rw, "--rollback", "--json")
        assert not [w for w in again.report["warnings"] if "nothing to roll back" in w], again
        which = str(await board.rpc("code", "which", [Atom("orc_srv")]))
        assert which == f"{board.release_path}/lib/orc-1/ebin/orc_srv.beam", which

    with_board(orc.v1, tmp_path / "board", body, ssh=mode == "ssh")


def test_a_rollback_converts_down_only_what_was_converted_up(
    orc: Scenario, tmp_path: Path, mode: str
) -> None:
    """A sync killed once the shadow tree's files were written loaded nothing: ``--rollback
    --upgrade`` then reloads the release's modules without converting any state."""

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        await board.rpc("orc_srv", "hit", [])
        await kill_when_paused(
            cli_argv(board, orc.v2, "-q", rw, "--upgrade", mode=mode), "files_replaced"
        )
        before = await observe(board)
        run = await relsync(board, orc.v2, "-q", rw, "--rollback", "--upgrade", "--json")
        assert run.code == 0, run
        assert not [s for s in run.report["upgrade"] if s.startswith("{update")], run.report
        converted = {e["module"] for e in run.report["processes"] if e["event"] == "converted"}
        assert converted <= {"orc_sup", "orc_dyn_sup"}, converted  # supervisors re-read specs
        after = await observe(board)
        for name in ("orc_srv", "orc_conn", "orc_events"):
            assert after[Atom("states")][Atom(name)] == before[Atom("states")][Atom(name)], name
        assert after[Atom("vsn")] == (Atom("ok"), "1")

    with_board(orc.v1, tmp_path / "board", body, ssh=mode == "ssh")


def test_an_application_new_in_the_rel_is_named_and_sys_config_applied(
    orc: Scenario, tmp_path: Path, mode: str
) -> None:
    """``--upgrade`` does not start an application the new ``.rel`` adds (release_handler's
    relup would): it says so; the release's changed sys.config is applied, not announced as
    waiting for a restart."""
    v2 = tmp_path / "orc"
    shutil.copytree(orc.v2, v2, symlinks=True)
    (v2 / "lib" / "orcx-1" / "ebin").mkdir(parents=True)
    (v2 / "lib" / "orcx-1" / "ebin" / "orcx.app").write_text(
        '{application, orcx, [{vsn, "1"}, {modules, []}, {applications, [kernel, stdlib]}]}.\n'
    )
    rel = v2 / "releases" / "2" / "orc.rel"
    text = rel.read_text()
    rel.write_text(re.sub(r'(\{orc,\s*"2"\})', r'\1, {orcx, "1"}', text))
    assert "orcx" in rel.read_text()
    config = v2 / "releases" / "2" / "sys.config"
    config.unlink()
    config.write_text("[{kernel, [{logger_level, notice}]}, {orc, [{level, 2}]}].\n")

    async def body(board: LocalBoard) -> None:
        run = await relsync(board, v2, "-q", str(board.rw_path), "--upgrade", "--json")
        assert run.code == 0, run
        warnings = run.report["warnings"]
        assert any(w.startswith("orcx: new in the release's .rel") for w in warnings), warnings
        assert not [w for w in warnings if "sys.config changed" in w], warnings

    with_board(orc.v1, tmp_path / "board", body, ssh=mode == "ssh")


async def wait_until(board: LocalBoard, name: str, function: tuple[str, str, int]) -> None:
    """Until the process registered as ``name`` runs ``function``."""
    while True:
        pid = await board.rpc("erlang", "whereis", [Atom(name)])
        info = await board.rpc("erlang", "process_info", [pid, Atom("current_function")])
        if info == (Atom("current_function"), tuple(Atom(p) if isinstance(p, str) else p
                                                    for p in function)):  # fmt: skip
            return
        await asyncio.sleep(0.05)


def test_the_board_finishes_an_upgrade_whose_client_was_killed(
    orc: Scenario, tmp_path: Path, mode: str
) -> None:
    """The upgrade is the board's transaction: a client killed while a code_change runs does
    not end it; the sync lock stays until it is over (a second client finds the board busy,
    exit 7), nothing is left suspended, the state is converted."""
    slow = SRV_V2.replace("orc_stats:bump(srv_up),", "orc_stats:bump(srv_up), timer:sleep(3000),")
    v2 = build_release(tmp_path / "slow", "2", {**V2, "orc_srv": slow})

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        argv = cli_argv(board, v2, "-q", rw, "--upgrade", mode=mode)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await asyncio.wait_for(wait_until(board, "orc_srv", ("timer", "sleep", 1)), 60)
        proc.kill()
        await proc.wait()
        busy = await relsync(board, v2, "-q", rw, "--upgrade", "--lock-timeout", "0")
        assert busy.code == 7, busy
        run = await relsync(board, v2, "-q", rw, "--upgrade", "--lock-timeout", "30", "--json")
        assert run.code == 0, run
        assert run.report["upgrade"] == []  # the first one's upgrade finished it all
        after = await observe(board)
        assert after[Atom("states")][Atom("orc_srv")] == (Atom("v2"), 0, Atom("converted"))
        assert after[Atom("suspended")] == []

    with_board(orc.v1, tmp_path / "board", body, ssh=mode == "ssh")


def test_an_upgrade_killed_after_the_files_were_replaced_is_resumed(
    orc: Scenario, tmp_path: Path, mode: str
) -> None:
    """In place, the beams the VM ran are replaced before the upgrade: the code the killed
    sync stashed is what the next --upgrade undoes to, so it runs the upgrade (it used to
    exit 8, saying the old code could not be undone)."""

    async def body(board: LocalBoard) -> None:
        await board.rpc("orc_srv", "hit", [])
        argv = cli_argv(board, orc.v2, "--upgrade", mode=mode)
        await kill_when_paused(argv, "files_replaced")
        run = await relsync(board, orc.v2, "--upgrade", "--json")
        assert run.code == 0, run
        after = await observe(board)
        assert after[Atom("states")][Atom("orc_srv")] == (Atom("v2"), 1, Atom("converted"))
        assert after[Atom("vsn")] == (Atom("ok"), "2")

    with_board(orc.v1, tmp_path / "board", body, ssh=mode == "ssh", writable=True)


def test_a_code_change_slower_than_the_timeout_keeps_the_new_code(
    orc: Scenario, tmp_path: Path, mode: str
) -> None:
    """A code_change still running at --upgrade-timeout goes on to the new state shape: its
    module keeps the new code (exit 9), so the state and the code fit (each of its processes
    converted); an apply that hangs is ended at --upgrade-timeout, the new code running (exit
    9); a supervisor whose new init/1 says ignore keeps what it has."""
    slow = SRV_V2.replace("orc_stats:bump(srv_up),", "orc_stats:bump(srv_up), timer:sleep(3000),")
    v2 = build_release(tmp_path / "slow", "2", {**V2, "orc_srv": slow})
    # ... and orc_dyn_sup's new init/1 says ignore: its supervisor keeps its specs, children.
    ignore = V2["orc_dyn_sup"].replace(
        "{ok, {#{strategy => one_for_one, intensity => 6, period => 60}, []}}", "ignore"
    )
    hang = build_release(tmp_path / "hang", "2", {**V2, "orc_dyn_sup": ignore})
    (hang / "lib" / "orc-2" / "ebin" / "orc.appup").write_text(
        '{"2", [{"1", [{apply, {timer, sleep, [60000]}}]}], [{"1", []}]}.\n'
    )

    async def body(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        await board.rpc("orc_srv", "hit", [])
        # A second orc_srv (outside the tree): converted too, as its module keeps the new code.
        started = await board.rpc("gen_server", "start", [Atom("orc_srv"), [], []])
        assert isinstance(started, tuple) and started[0] == "ok", started
        run = await relsync(board, v2, "-q", rw, "--upgrade", "--upgrade-timeout", "1")
        assert run.code == 9, run
        assert "orc_srv could not be undone" in run.err and "timed out" in run.err, run.err
        await board.rpc("orc_srv", "hit", [], timeout=30)  # answers once converted
        second = await board.rpc("sys", "get_state", [started[1], 30000], timeout=40)
        assert second == (Atom("v2"), 0, Atom("converted")), second
        after = await observe(board)
        assert after[Atom("states")][Atom("orc_srv")] == (Atom("v2"), 2, Atom("converted"))
        assert after[Atom("suspended")] == []
        assert after[Atom("states")][Atom("orc_stats")][0] == "stats"  # the rest was undone

    async def applies(board: LocalBoard) -> None:
        rw = str(board.rw_path)
        run = await relsync(board, hang, "-q", rw, "--upgrade", "--upgrade-timeout", "1")
        assert run.code == 9, run
        assert "apply of timer:sleep failed: timeout" in run.err, run.err
        after = await observe(board)
        assert after[Atom("states")][Atom("orc_srv")] == (Atom("v2"), 0, Atom("converted"))
        dyn = after[Atom("children")][Atom("orc_dyn_sup")]
        assert sorted(str(c[0]) for c in dyn) == ["orc_acceptor", "orc_listener"]

    with_board(orc.v1, tmp_path / "board", body, ssh=mode == "ssh")
    with_board(orc.v1, tmp_path / "board2", applies, ssh=mode == "ssh")
