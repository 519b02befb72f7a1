"""One scenario suite over every board kind and both transports.

Kinds: ``local`` (this machine, read-only bind mount), ``docker-otp-25``, ``docker-otp-27``,
``qemu-arm`` (32-bit ARM under QEMU); modes: ``erl`` and ``ssh``. Each (kind, mode) boots ONE
board (module-scoped fixture; pytest groups the tests by it) and runs the scenarios in order:

a. the shadow tree after each of several syncs mirrors the release exactly; the original never
   changes;
b. module reloads: changed, new, deleted; a gen_server keeps its state; a process lingering in
   old code is reported, not killed;
c. a port program restarted by hooks answers with the new binary; without the hook the report
   warns that it is running; --upgrade converts a record state and starts a supervisor's new
   child, --status sees it, --rollback --upgrade --clean converts back and removes the tree;
d. a reboot and a power cut both come back on the pristine release; the next sync converges;
e. faults: the client SIGKILLed at cut points spread over a sync; the board's power cut in the
   middle of a sync (it boots pristine, the next sync converges); the rw path's disk full.

Every scenario states its expectations against the board's base release, so it does not depend
on what an earlier one left behind. Each run prints what it did (``-rP`` shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.faults import (
    check_tree,
    cli_argv,
    cut_offsets,
    expected_shadow,
    is_temp,
    phase,
    release_files,
    run_and_kill,
    timed,
)
from support.upgrade_sources import STORE_V2_CRASH, v2_release

from relsync.erldist.etf import Atom, Term
from relsync.harness.client import Run, run_relsync
from relsync.harness.example import APP_DIR, Variant
from relsync.harness.kinds import KINDS, EmulatedBoard, example_release, port_cc, start_board
from relsync.harness.local import LocalBoard

REPO = Path(__file__).resolve().parents[3]
HOOKS = REPO / "examples" / "demo_hooks.erl"
COUNTER = f"{APP_DIR}/ebin/demo_counter.beam"
EXTRA = f"{APP_DIR}/ebin/demo_extra.beam"
PORT = f"{APP_DIR}/priv/demo_port"
EXTRA_SRC = "-module(demo_extra).\n-export([hello/0]).\nhello() -> world.\n"
GEN_MODULES = [f"demo_gen{i}" for i in range(6)]

#: Client kills per (kind, mode), and power cuts in the middle of a sync per (kind, mode).
#: Emulated ARM is ~10x slower: fewer there (still >= 5 power cuts per kind over both modes).
CLIENT_KILLS = {"local": 20, "docker-otp-25": 20, "docker-otp-27": 20, "qemu-arm": 3}
POWER_CUTS = {"local": 3, "docker-otp-25": 3, "docker-otp-27": 3, "qemu-arm": 3}
#: Longest a client may take to notice that the board lost power under it.
CLIENT_GONE_TIMEOUT = 120.0
#: Priv data of the fault variants: enough for the writes to last a good share of the sync, so
#: the cut points land in them too (a docker board writes 3 MB in some 40 ms).
PRIV_BYTES = {"local": 3_000_000, "docker-otp-25": 24_000_000, "docker-otp-27": 24_000_000,
              "qemu-arm": 3_000_000}  # fmt: skip

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]


def _cases(kinds: tuple[str, ...] = KINDS) -> list[object]:
    cases: list[object] = []
    for kind in kinds:
        marks = [pytest.mark.arm] if kind == "qemu-arm" else []
        for mode in ("erl", "ssh"):
            cases.append(pytest.param((kind, mode), id=f"{kind}-{mode}", marks=marks))
    return cases


#: Disk full needs a small filesystem mounted over the rw path inside the board: root on this
#: machine (local), root in the guest (qemu-arm). The docker engine here refuses privileged
#: execs ("unable to apply caps"), and a tmpfs /data would not survive reboots, so docker-otp
#: boards have no disk-full scenario (generated for the other kinds only, not skipped).
DISK_FULL_KINDS = ("local", "qemu-arm")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        kinds = DISK_FULL_KINDS if metafunc.function.__name__ == "test_e3_disk_full" else KINDS
        metafunc.parametrize("case", _cases(kinds), indirect=True, scope="module")


@pytest.fixture(scope="module")
def case(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(board kind, mode) of the module-scoped board."""
    kind, mode = request.param
    return str(kind), str(mode)


@dataclass
class Env:
    """One booted board of a kind, driven over one mode, with its example release."""

    kind: str
    mode: str
    board: EmulatedBoard
    release: Path
    tmp: Path
    base: dict[str, str] = field(default_factory=dict)
    pristine: dict[str, str] = field(default_factory=dict)
    #: The two big variants of the fault scenarios and their (start-up, full sync) seconds.
    big: dict[int, Variant] = field(default_factory=dict)
    timings: tuple[float, float] = (0.0, 0.0)
    _n: int = 0

    @property
    def rp(self) -> str:
        return str(self.board.release_path)

    @property
    def rw(self) -> str:
        return str(self.board.rw_path)

    def variant(self) -> Variant:
        self._n += 1
        return Variant(self.release, self.tmp / f"v{self._n}")

    def sync(self, local: Path, *args: str) -> Run:
        return asyncio.run(
            run_relsync(self.board, local, "-q", self.rw, "--json", *args, mode=self.mode)
        )

    def argv(self, local: Path, *args: str) -> list[str]:
        return cli_argv(self.board, local, "-q", self.rw, "--quiet", *args, mode=self.mode)

    def call(self, mod: str, fun: str, args: list[Term] | None = None) -> Term:
        return asyncio.run(self.board.rpc(mod, fun, args))

    def tree(self, root: str) -> dict[str, str]:
        return asyncio.run(self.board.tree(root))

    def expected(self, local: Path) -> dict[str, str]:
        out = expected_shadow(self.rp, self.base, release_files(local))
        # An ERTS the board's release carries (qemu-arm packs one) is one directory link.
        for erts in {rel.split("/")[0] for rel in self.pristine if rel.startswith("erts-")}:
            out[erts] = f"link:{self.rp}/{erts}"
        return out

    def assert_mirrors(self, local: Path, when: str) -> dict[str, str]:
        """The shadow tree is exactly what ``local`` asks for; the original is untouched."""
        shadow = self.tree(self.rw)
        assert shadow == self.expected(local), f"{when}: shadow tree differs from {local.name}"
        assert self.tree(self.rp) == self.pristine, f"{when}: the read-only release changed"
        return shadow


@pytest.fixture(scope="module")
def env(case: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    kind, mode = case
    tmp = tmp_path_factory.mktemp(f"{kind}-{mode}")
    release = asyncio.run(example_release(kind))
    board = asyncio.run(start_board(kind, release, workdir=tmp / "boards", ssh=mode == "ssh"))
    try:
        e = Env(kind, mode, board, release, tmp)
        e.base = release_files(release)
        e.pristine = e.tree(e.rp)
        yield e
    finally:
        asyncio.run(board.stop())


# --------------------------------------------------------------------------------------------
# (a) the shadow tree


def test_a_shadow_tree_mirrors_each_sync(env: Env) -> None:
    with_extra = env.variant().counter_version(2).compile("demo_extra", EXTRA_SRC)
    changed = env.variant().counter_version(3)
    (changed.root / APP_DIR / "priv" / "notes.txt").write_text("added\n")
    back = env.variant()  # the base release again: nothing but links
    for local, version, present in ((with_extra.root, 2, True), (changed.root, 3, False),
                                    (back.root, 1, False), (with_extra.root, 2, True)):  # fmt: skip
        run = env.sync(local)
        assert run.code == 0, run
        shadow = env.assert_mirrors(local, f"after syncing {local.name}")
        assert shadow[COUNTER] == (
            f"link:{env.rp}/{COUNTER}" if version == 1 else f"file:{release_files(local)[COUNTER]}"
        )
        assert (EXTRA in shadow) == present  # deleted files leave nothing behind
        assert env.call("demo_counter", "version") == version
    print(f"\n{env.kind}/{env.mode}: 4 syncs, each shadow tree exact, release untouched")


# --------------------------------------------------------------------------------------------
# (b) module reloads


def _loop_source(tag: int) -> str:
    return (
        "-module(demo_loop).\n-export([start/0, tag/0]).\n"
        f"tag() -> {tag}.\n"
        "start() -> register(demo_loop, spawn(fun() -> loop() end)), ok.\n"
        "loop() -> receive {From, tag} -> From ! tag(), loop() end.\n"
    )


def test_b_module_reloads(env: Env) -> None:
    without = env.variant().counter_version(4)
    added = env.variant().counter_version(5).compile("demo_extra", EXTRA_SRC)
    removed = env.variant().counter_version(5)
    assert env.sync(without.root).code == 0  # whatever ran before: no demo_extra now
    value = env.call("demo_counter", "value")
    assert isinstance(value, int)
    for _ in range(3):
        env.call("demo_counter", "bump")
    run = env.sync(added.root)
    assert run.code == 0, run
    statuses = {m["module"]: m["status"] for m in run.report["modules"]}
    assert statuses.get("demo_extra") == "loaded", statuses
    assert env.call("demo_extra", "hello") == "world"  # new module, loaded in embedded mode
    assert env.call("demo_counter", "version") == 5
    assert env.call("demo_counter", "value") == value + 3  # the gen_server kept its state

    run = env.sync(removed.root)
    assert run.code == 0, run
    assert run.report["deleted"] == [EXTRA]
    assert {m["module"]: m["status"] for m in run.report["modules"]} == {"demo_extra": "deleted"}
    assert env.call("code", "is_loaded", [Atom("demo_extra")]) == "false"

    loops = [env.variant().compile("demo_loop", _loop_source(i)) for i in (1, 2, 3)]
    assert env.sync(loops[0].root).code == 0
    assert env.call("demo_loop", "start") == "ok"
    pid = env.call("erlang", "whereis", [Atom("demo_loop")])
    second = env.sync(loops[1].root)
    assert second.code == 6, second  # synced, a process left in the old code
    third = env.sync(loops[2].root)
    assert third.code == 6, third  # synced, but a process still runs old code
    [stuck] = [m for m in third.report["modules"] if m["module"] == "demo_loop"]
    assert stuck["status"] == "not_purged" and "demo_loop" in stuck["processes"][0], stuck
    assert env.call("erlang", "whereis", [Atom("demo_loop")]) == pid  # reported, not killed
    brutal = env.sync(loops[2].root, "--purge", "brutal")
    assert brutal.code == 0, brutal
    assert env.call("demo_loop", "tag") == 3
    assert env.call("erlang", "whereis", [Atom("demo_loop")]) == "undefined"
    env.assert_mirrors(loops[2].root, "after the brutal purge")


# --------------------------------------------------------------------------------------------
# (c) port programs


def test_c_port_restart_via_hooks(env: Env) -> None:
    cc = port_cc(env.kind)
    hooked = env.variant().port_version("c1", cc)
    unhooked = env.variant().port_version("c2", cc)
    run = env.sync(hooked.root, "-H", str(HOOKS))
    assert run.code == 0, run
    assert PORT in run.report["changed"]
    assert "demo_port restarted" in run.report["hooks"]["postsync"]["output"]
    assert env.call("demo_port", "ask", [b"x"]) == b"c1:x"  # the new binary answers
    assert not [w for w in run.report["warnings"] if "demo_port" in w], run.report["warnings"]

    run = env.sync(unhooked.root)
    assert run.code == 0, run
    assert any("demo_port" in w and "running" in w for w in run.report["warnings"]), run.report
    assert env.call("demo_port", "ask", [b"x"]) == b"c1:x"  # the old program still runs
    shadow = env.assert_mirrors(unhooked.root, "after the port change without hook")
    assert shadow[PORT] == f"file:{release_files(unhooked.root)[PORT]}"


def test_c2_upgrade_status_and_rollback(env: Env) -> None:
    v2 = v2_release(env.release, env.tmp / "upgrade-v2")
    crash = v2_release(env.release, env.tmp / "upgrade-crash", store=STORE_V2_CRASH)
    plain = env.variant().counter_version(9)
    assert env.sync(env.variant().root).code == 0  # from the base release
    env.call("demo_store", "put", [Atom("k"), 7])
    fsm = env.call("sys", "get_state", [Atom("demo_fsm")])
    # A code_change that crashes, a process that does not suspend: undone, all resumed.
    failed = env.sync(crash.root, "--upgrade")
    assert failed.code == 8 and "refused code_change" in failed.report["error"], failed
    assert env.call("sys", "get_state", [Atom("demo_fsm")]) == fsm  # converted back
    env.call("demo_store", "busy", [3000])
    stuck = env.sync(v2.root, "--upgrade", "--upgrade-timeout", "1")
    assert stuck.code == 8 and "did not suspend" in stuck.report["error"], stuck
    # Once its long call is over it answers again: not left suspended.
    assert env.call("gen_server", "call", [Atom("demo_store"), (Atom("get"), Atom("k")), 9000]) == 7

    run = env.sync(v2.root, "--upgrade")
    assert run.code == 0, run
    events = {(e["event"], e["module"]) for e in run.report["processes"]}
    assert {("converted", "demo_store"), ("started_child", "demo_sup")} <= events, events
    assert env.call("sys", "get_state", [Atom("demo_store")]) == (Atom("state"), {Atom("k"): 7}, 0)
    status = env.sync(v2.root, "--status")
    assert status.code == 0 and status.report["shadow_active"] is True, status
    assert "demo_store" in status.report["against_pristine"]["changed"]
    back = env.sync(v2.root, "--rollback", "--upgrade", "--clean")
    assert back.code == 0, back
    assert env.call("sys", "get_state", [Atom("demo_store")]) == (Atom("state"), {Atom("k"): 7})
    assert env.call("erlang", "whereis", [Atom("demo_extra")]) == "undefined"
    assert env.call("code", "is_loaded", [Atom("demo_extra")]) == "false"
    assert env.tree(env.rw) == {}
    assert env.tree(env.rp) == env.pristine

    # A plain sync, rolled back plainly; then syncs go on as before.
    assert env.sync(plain.root).code == 0 and env.call("demo_counter", "version") == 9
    undo = env.sync(plain.root, "--rollback")
    assert undo.code == 0 and undo.report["reload"] == ["demo_counter"], undo
    assert env.call("demo_counter", "version") == 1
    assert env.sync(plain.root).code == 0 and env.call("demo_counter", "version") == 9
    print(f"\n{env.kind}/{env.mode}: upgrade refused twice and undone, then converted "
          f"({len(events)} process events), rolled back; plain sync rolled back")  # fmt: skip


# --------------------------------------------------------------------------------------------
# (d) recovery


def _assert_pristine(env: Env, when: str) -> None:
    assert env.call("demo_counter", "version") == 1, when
    assert env.call("demo_counter", "value") == 0, when  # a fresh boot
    assert env.call("demo_port", "ask", [b"x"]) == b"v1:x", when
    assert env.call("code", "is_loaded", [Atom("demo_extra")]) == "false", when
    assert env.tree(env.rp) == env.pristine, when


def test_d_reboot_and_power_cut_come_back_pristine(env: Env) -> None:
    v5 = env.variant().counter_version(5).compile("demo_extra", EXTRA_SRC)
    v6 = env.variant().counter_version(6).port_version("d6", port_cc(env.kind))
    for how, local in (("reboot", v5.root), ("power cut", v6.root)):
        before = env.sync(local, "-H", str(HOOKS))
        assert before.code == 0, before
        stale = env.tree(env.rw)
        asyncio.run(env.board.reboot() if how == "reboot" else env.board.power_cut())
        _assert_pristine(env, f"after the {how}")
        if how == "reboot":  # a power cut may lose the last writes; a clean reboot may not
            assert env.tree(env.rw) == stale
        run = env.sync(local, "-H", str(HOOKS))
        assert run.code == 0, run
        version = 5 if local == v5.root else 6
        assert env.call("demo_counter", "version") == version
        assert "demo_counter" in run.report["reload"]
        env.assert_mirrors(local, f"after the {how} and a sync")
    assert env.call("demo_port", "ask", [b"x"]) == b"d6:x"


# --------------------------------------------------------------------------------------------
# (e) faults


def _big_variant(env: Env, tag: int) -> Variant:
    """demo_counter at ``tag``, 6 new modules and priv data (different for each tag)."""
    variant = env.variant().counter_version(tag)
    for module in GEN_MODULES:
        variant.compile(module, f"-module({module}).\n-export([tag/0]).\ntag() -> {tag}.\n")
    data = random.Random(tag).randbytes(PRIV_BYTES[env.kind])
    (variant.root / APP_DIR / "priv" / "big.bin").write_bytes(data)
    return variant


def _converge(env: Env, local: Path, tag: int, when: str) -> None:
    """An uninterrupted sync converges to exactly the clean sync's tree, code loaded."""
    code, _, err = asyncio.run(timed(env.argv(local)))
    assert code == 0, f"{when}: converging sync failed: {err}"
    shadow = env.tree(env.rw)
    leftovers = [r for r in shadow if is_temp(r)]
    assert not leftovers, f"{when}: temporary files left after a converging sync: {leftovers}"
    assert shadow == env.expected(local), f"{when}: shadow tree differs from a clean sync"
    assert env.call("demo_counter", "version") == tag, when
    for module in GEN_MODULES:
        assert env.call(module, "tag") == tag, when


def _big_variants(env: Env) -> dict[int, Variant]:
    """The fault scenarios' variants 2 and 3, synced cleanly once and timed (``env.timings``);
    the board runs variant 3 afterwards."""
    if not env.big:
        env.big = {t: _big_variant(env, t) for t in (2, 3)}
    env.timings = _timings(env, env.big)
    return env.big


def _timings(env: Env, variants: dict[int, Variant]) -> tuple[float, float]:
    """(start-up, full sync) seconds, from clean syncs."""
    fulls = []
    for tag in (2, 3, 2):
        code, seconds, err = asyncio.run(timed(env.argv(variants[tag].root)))
        assert code == 0, err
        fulls.append(seconds)
    code, startup, err = asyncio.run(timed(env.argv(variants[3].root, "--dry-run")))
    assert code == 0, err
    _converge(env, variants[3].root, 3, "clean sync")
    return startup, min(fulls)


def test_e1_client_killed_at_cut_points(env: Env) -> None:
    variants = _big_variants(env)
    contents = [env.base] + [release_files(v.root) for v in variants.values()]
    startup, full = env.timings
    current, phases = 3, Counter[str]()
    offsets = cut_offsets(CLIENT_KILLS[env.kind], 0.9 * startup, full)
    for i, offset in enumerate(offsets):
        new = 2 if current == 3 else 3
        when = f"cut {i} at {offset:.2f} s ({current} -> {new})"
        killed, _ = asyncio.run(run_and_kill(env.argv(variants[new].root), offset))
        version = env.call("demo_counter", "version")  # the node answers, either version
        assert version in (current, new), when
        shadow = env.tree(env.rw)
        check_tree(shadow, env.rp, contents, when)  # nothing half-written
        assert env.tree(env.rp) == env.pristine, when
        target = env.expected(variants[new].root)
        before = env.expected(variants[current].root)
        written = sum(
            1
            for rel, entry in target.items()
            if entry.startswith("file:") and entry != before.get(rel) and shadow.get(rel) == entry
        )
        phases[phase(killed, version == new, written)] += 1
        _converge(env, variants[new].root, new, when)
        current = new
    print(f"\n{env.kind}/{env.mode}: {len(offsets)} client kills over "
          f"{startup:.2f}..{full:.2f} s: {dict(phases)}")  # fmt: skip


async def _cut_power_during(env: Env, argv: list[str], offset: float) -> tuple[str, int, str]:
    """Start the client, cut the board's power ``offset`` s later; (phase, client's exit code,
    its stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    err = asyncio.ensure_future(proc.stderr.read())
    try:
        await asyncio.wait_for(asyncio.shield(err), offset)
        where = "finished before the cut"
    except TimeoutError:
        where = "cut during the sync"
    try:
        await env.board.power_cut()
        await asyncio.wait_for(proc.wait(), CLIENT_GONE_TIMEOUT)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()
    assert proc.returncode is not None
    return where, proc.returncode, (await err).decode(errors="replace")


def test_e2_power_cut_mid_sync(env: Env) -> None:
    variants = _big_variants(env)
    startup, full = env.timings
    current, phases, codes, crashes = 3, Counter[str](), Counter[int](), []
    offsets = cut_offsets(POWER_CUTS[env.kind], 0.9 * startup, full)
    for i, offset in enumerate(offsets):
        new = 2 if current == 3 else 3
        when = f"power cut {i} at {offset:.2f} s ({current} -> {new})"
        where, code, err = asyncio.run(_cut_power_during(env, env.argv(variants[new].root), offset))
        phases[where] += 1
        codes[code] += 1
        # Exit codes of a board gone mid-sync: 3 (connection lost), 5 (a file operation
        # failed); 0 when it finished first. Never a crash (checked after every cut ran).
        if code not in (0, 3, 5) or "Traceback" in err:
            crashes.append(f"{when}: exit {code}: {err.strip().splitlines()[-1:]}")
        assert env.call("demo_counter", "version") == 1, when  # booted the pristine release
        assert env.tree(env.rp) == env.pristine, when
        _converge(env, variants[new].root, new, when)
        current = new
    print(f"\n{env.kind}/{env.mode}: {len(offsets)} power cuts over {startup:.2f}..{full:.2f} s:"
          f" {dict(phases)}; client exit codes {dict(codes)}")  # fmt: skip
    assert not crashes, "the client crashed instead of a one-line error:\n" + "\n".join(crashes)


def _as_root(env: Env, *command: str) -> None:
    """Run a command with the rights to mount, in the board's own mount namespace."""
    if isinstance(env.board, LocalBoard):
        subprocess.run(command, check=True, capture_output=True)
    else:  # qemu-arm: the node runs as root in the guest
        asyncio.run(env.board.exec(*command))


def test_e3_disk_full(env: Env) -> None:
    local = env.variant().counter_version(7)
    (local.root / APP_DIR / "priv" / "data.bin").write_bytes(random.Random(7).randbytes(5_000_000))
    new = release_files(local.root)
    _as_root(env, "mount", "-t", "tmpfs", "-o", "size=3m", "relsync-full", env.rw)
    try:
        run = env.sync(local.root)
        assert run.code == 5, run
        assert run.err.count("\n") == 1 and "Traceback" not in run.err, run.err
        assert "disk is full" in run.err and "free space" in run.err, run.err
        assert env.tree(env.rp) == env.pristine
        check_tree(env.tree(env.rw), env.rp, [env.base, new], "after ENOSPC")
        assert env.call("demo_counter", "version") != 7
        _as_root(env, "mount", "-o", "remount,size=64m", env.rw)
        again = env.sync(local.root)
        assert again.code == 0, again
        env.assert_mirrors(local.root, "after freeing space")
        assert env.call("demo_counter", "version") == 7
    finally:
        _as_root(env, "umount", env.rw)
    print(f"\n{env.kind}/{env.mode}: disk full -> {run.err.strip()}")
