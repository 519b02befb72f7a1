"""Releases the project did not write, booted as a new user would: ``rebar3 new release`` with
relx's variable-style vm.args (``-name ${RELX_NODE_NAME}``, ``-setcookie ${RELX_COOKIE}``), a
``${GREETING}`` in sys.config, built with ``rebar3 as prod release`` (ERTS included, no
crypto), on every board kind. One good boot a kind, and boot failures that must be reported
within seconds (a bound on a hang, far below the boards' ready timeouts), leaving no board.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import docker as docker_sdk
import pytest
from support.stock_projects import first_build, mix_release, rebar3_env

from relsync.erldist.etf import Atom
from relsync.errors import UsageError
from relsync.harness import docker, qemu
from relsync.harness.kinds import start_board
from relsync.harness.ready import BoardError

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

VM_ARGS = "-name ${RELX_NODE_NAME}\n\n-setcookie ${RELX_COOKIE}\n\n+K true\n+A30\n"
SYS_CONFIG = '[{myapp, [{greeting, "${GREETING}"}]}].\n'
#: What the harness gets: a boot that fails in its first seconds must not wait for the boards'
#: ready timeouts (60-180 s). A bound on a hang, not a speed assertion.
FAILS_WITHIN = {"local": 20.0, "docker-otp": 30.0, "qemu-arm": 90.0}


def variable_style_release(base: Path) -> Path:
    """``rebar3 new release myapp``, its vm.args and sys.config in the variable style,
    built with ``rebar3 as prod release``; the release's path."""
    env = rebar3_env(base)
    subprocess.run(["rebar3", "new", "release", "myapp"], cwd=base, env=env, check=True,
                   capture_output=True)  # fmt: skip
    project = base / "myapp"
    (project / "config" / "vm.args").write_text(VM_ARGS)
    (project / "config" / "sys.config").write_text(SYS_CONFIG)
    first_build(["rebar3", "as", "prod", "release"], project, env,
                project / "_build" / "prod" / "lib")  # fmt: skip
    release = project / "_build" / "prod" / "rel" / "myapp"
    assert any(release.glob("erts-*")) and not any(release.glob("lib/crypto-*"))
    return release


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return variable_style_release(tmp_path_factory.mktemp("user"))


async def _greeting(board: object) -> object:
    rpc = board.rpc  # type: ignore[attr-defined]
    return await rpc("application", "get_env", [Atom("myapp"), Atom("greeting")])


def _fails_fast(
    kind: str, release: Path, workdir: Path, match: str, env: dict[str, str] | None = None
) -> BoardError:
    started = time.monotonic()
    with pytest.raises(BoardError, match=match) as failed:
        asyncio.run(start_board(kind, release, workdir=workdir, ssh=False, env=env))
    bound = FAILS_WITHIN[kind.removesuffix("-25")]
    assert time.monotonic() - started < bound, f"the failure took more than {bound:g} s"
    return failed.value


def _docker_boards() -> list[str]:
    return asyncio.run(docker.DockerBoard.list_ids())


@pytest.mark.parametrize("kind", ["local", "docker-otp"])
def test_variable_style_prod_release_boots(kind: str, release: Path, tmp_path: Path) -> None:
    """The board names the node and gives the cookie whatever vm.args says; ${GREETING} comes
    from the board's environment; ssh mode works without crypto in the release (docker-otp).
    docker-otp runs a snapshot: a rebuild of the user's release does not reach the board."""

    async def scenario() -> None:
        board = await start_board(kind, release, workdir=tmp_path, ssh=kind != "local",
                                  env={"GREETING": "hello"})  # fmt: skip
        try:
            assert await board.rpc("erlang", "node") == board.node
            assert await _greeting(board) == ("ok", "hello")
            if kind == "docker-otp":
                container = docker_sdk.from_env().containers.get(board.id)
                bound = [b for found in container.ports.values() if found for b in found]
                assert bound and {b["HostIp"] for b in bound} == {"127.0.0.1"}, bound
                assert container.labels["org.testcontainers"] == "true"  # started with it
                assert board.ssh is not None
                before = await board.tree(str(board.release_path))
                (release / "releases" / "rebuilt").write_text("the user's next build")
                assert await board.tree(str(board.release_path)) == before
        finally:
            await board.stop()
            (release / "releases" / "rebuilt").unlink(missing_ok=True)

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["local", "docker-otp"])
def test_unset_variable_fails_within_seconds(kind: str, release: Path, tmp_path: Path) -> None:
    before = set(_docker_boards())
    failed = _fails_fast(kind, release, tmp_path, r"sys\.config uses \$\{GREETING\}")
    assert "--env GREETING=VALUE" in str(failed)
    assert set(_docker_boards()) == before  # the failed board is gone
    assert not list(tmp_path.glob("relsync-board-*/release"))  # and its snapshot


def test_vm_exit_in_first_second_fails_within_seconds(release: Path, tmp_path: Path) -> None:
    """A release whose VM stops at once (no vm.args): the error comes with the console."""
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-a", str(release), str(broken)], check=True)
    (broken / "releases" / "0.1.0" / "vm.args").unlink()
    before = set(_docker_boards())
    failed = _fails_fast("docker-otp", broken, tmp_path / "boards", "exited with status",
                         env={"GREETING": "hello"})  # fmt: skip
    assert "releases/0.1.0/vm.args: No such file" in str(failed)  # the console's last lines
    assert set(_docker_boards()) == before  # the failed board is gone


def test_otp_mismatch_is_refused_before_booting(release: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="built with OTP 25 and the docker-otp board runs OTP 27"):
        asyncio.run(start_board("docker-otp", release, workdir=tmp_path, otp=27))
    assert not list(tmp_path.iterdir())


@pytest.mark.arm
@pytest.mark.slow
def test_qemu_arm_boots_an_erts_carrying_release(release: Path, tmp_path: Path) -> None:
    """The release's x86 ERTS is replaced by the board's at pack time; the variables are the
    board's; a boot that fails is reported within seconds and leaves no board."""

    async def scenario() -> None:
        board = await start_board("qemu-arm", release, workdir=tmp_path, ssh=False,
                                  env={"GREETING": "arm"})  # fmt: skip
        try:
            assert await board.rpc("erlang", "node") == board.node
            assert await _greeting(board) == ("ok", "arm")
        finally:
            await board.stop()

    asyncio.run(scenario())
    failed = _fails_fast("qemu-arm", release, tmp_path / "failing", r"\$\{GREETING\}")
    assert "relsync-node: the node exited" in str(failed)
    assert not list((tmp_path / "failing").glob("relsync-qemu-*"))
    assert qemu.QemuBoard.otp == 25


@pytest.mark.arm
@pytest.mark.slow
def test_qemu_arm_boots_a_stock_mix_release(tmp_path: Path) -> None:
    """``mix new --sup`` + ``MIX_ENV=prod mix release``, unedited: its ERTS is replaced by the
    board's, and the board names the node (``bin/myex start``)."""
    release = mix_release(tmp_path) / "_build" / "prod" / "rel" / "myex"

    async def scenario() -> None:
        board = await start_board("qemu-arm", release, workdir=tmp_path / "b", ssh=False)
        try:
            assert await board.rpc("erlang", "node") == board.node
            apps = await board.rpc("application", "which_applications")
            assert "myex" in str(apps)
        finally:
            await board.stop()

    asyncio.run(scenario())
