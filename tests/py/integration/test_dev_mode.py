"""rebar3's default (dev-mode) release, run from ``_build`` and synced by ``relsync --build``
in the project, as the README's first-run flow has it.

The release links its application back into the project (``lib/myapp-0.1.0`` ->
``_build/default/lib/myapp``, whose ``src`` links to ``apps/myapp/src``) and its
``releases/0.1.0/sys.config``/``vm.args`` to ``config/``. The node runs that very directory, so
a sync has nothing to copy: it reloads what the build changed, writes nothing (the project's
sources keep their inodes, the links stay links), and a second sync does nothing at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.stock_projects import first_build, rebar3_env

import relsync
from relsync.erldist.etf import Atom, Term
from relsync.erldist.node import call_once
from relsync.harness.local import host_otp_lib
from relsync.harness.ready import wait_ready
from relsync.harness.relsyncd import SshAccess, build_relsyncd, start_relsyncd
from relsync.release_node import release_cookie, release_node

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The directory holding the relsync package this test imports.
RELSYNC_ROOT = str(Path(relsync.__file__).resolve().parents[1])

COUNTER = """-module(myapp_counter).
-behaviour(gen_server).
-export([start_link/0, bump/0, version/0]).
-export([init/1, handle_call/3, handle_cast/2, code_change/3]).

version() -> VERSION.
start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).
bump() -> gen_server:call(?MODULE, bump).

init([]) -> {ok, {count, 0}}.
handle_call(bump, _From, {count, N}) -> {reply, N + 1, {count, N + 1}};
handle_call(bump, _From, {count, N, T}) -> {reply, N + 1, {count, N + 1, T}}.
handle_cast(_, S) -> {noreply, S}.
CODE_CHANGE
"""
KEEP = "code_change(_Old, State, _Extra) -> {ok, State}."
TAG = "code_change(_Old, {count, N}, _Extra) -> {ok, {count, N, upgraded}}."
REFUSE = "code_change(_Old, _State, _Extra) -> erlang:error(refused)."


def _counter(version: int, code_change: str = KEEP) -> str:
    return COUNTER.replace("VERSION", str(version)).replace("CODE_CHANGE", code_change)


def _dev_project(base: Path) -> Path:
    """``rebar3 new release myapp`` with a counter gen_server under its supervisor, built."""
    env = rebar3_env(base)
    subprocess.run(["rebar3", "new", "release", "myapp"], cwd=base, env=env, check=True,
                   capture_output=True)  # fmt: skip
    project = base / "myapp"
    src = project / "apps" / "myapp" / "src"
    (src / "myapp_counter.erl").write_text(_counter(1))
    sup = src / "myapp_sup.erl"
    child = "ChildSpecs = [#{id => myapp_counter, start => {myapp_counter, start_link, []}}],"
    sup.write_text(sup.read_text().replace("ChildSpecs = [],", child))
    first_build(["rebar3", "release"], project, env, project / "_build" / "default" / "lib")
    return project


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _listening(port: int) -> None:
    """Return once something accepts connections on ``port`` (within 10 s)."""
    for _ in range(200):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class DevNode:
    """The release running from ``_build`` itself (``bin/myapp foreground``), on an EPMD of
    its own."""

    def __init__(self, release: Path, home: Path) -> None:
        self.release = release
        self.node = release_node(release) or ""
        self.cookie = release_cookie(release) or ""
        self.epmd_port = _free_port()
        self.home = home
        self.ssh: SshAccess | None = None

    def env(self) -> dict[str, str]:
        """A user's environment: this node's EPMD, no cookie but the release's own, and this
        relsync (the one the test imports, whatever is installed)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RELSYNC_", "RELX_"))}
        return {
            **env,
            "HOME": str(self.home),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "PYTHONPATH": RELSYNC_ROOT,
        }

    async def rpc(self, mod: str, fun: str, args: list[Term]) -> Term:
        """``mod:fun(args...)`` on the node."""
        return await call_once(self.node, self.cookie, self.epmd_port, (mod, fun, args))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[DevNode]:
        """Start EPMD and the node, wait until ``myapp`` is up; stop both after."""
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "console.log", "ab")  # noqa: SIM115 (closed below)
        epmd = subprocess.Popen(
            ["epmd", "-port", str(self.epmd_port)], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "ERL_EPMD_ADDRESS": "127.0.0.1"}, start_new_session=True,
        )  # fmt: skip
        node: subprocess.Popen[bytes] | None = None
        try:
            await _listening(self.epmd_port)  # the node gives up when it finds no EPMD
            node = subprocess.Popen(
                [str(self.release / "bin" / "myapp"), "foreground"], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.home,
                start_new_session=True,
            )  # fmt: skip
            await wait_ready(
                self.node, self.cookie, self.epmd_port, "myapp", timeout=60,
                describe=lambda: (self.home / "console.log").read_text(errors="replace"),
            )  # fmt: skip
            yield self
        finally:
            for proc in (node, epmd):
                if proc is not None and proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
            log.close()

    async def enable_ssh(self) -> None:
        """relsyncd beside the release, allowed to touch nothing but the project: relsyncd
        resolves a path whole, and the release's links lead into the project (the beams the
        VM loads are in ``_build/default/lib``, its sys.config in ``config/``)."""
        self.ssh = await start_relsyncd(
            self.rpc,
            key_dir=self.home / "ssh",
            ebin=str(await build_relsyncd()),
            allowed_paths=[str(self.release.parents[3])],
            host_key_dir=str(self.home / "relsyncd"),
            extra_libs=[str(host_otp_lib())],
        )


async def _relsync(project: Path, node: DevNode, *args: str) -> tuple[int, dict[str, Any], str]:
    """``relsync ARGS --json`` in the project, as the user would run it (over ssh when the
    node has relsyncd); the exit code, the board's report and stderr."""
    ssh = node.ssh
    target = [] if ssh is None else [
        "-M", "ssh", "-d", "127.0.0.1", "-P", str(ssh.port), "-u", ssh.user,
        "-i", str(ssh.identity), "--known-hosts", str(ssh.known_hosts), "--accept-new-host-key",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relsync", *target, *args, "--json", cwd=project, env=node.env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=300)
    assert proc.returncode is not None and out.strip(), err.decode()
    boards = json.loads(out.decode().splitlines()[-1])["boards"]
    return proc.returncode, boards[0] if boards else {}, err.decode()


def _project_files(project: Path) -> dict[str, tuple[int, bytes]]:
    """Inode and content of every source and config file of the project."""
    return {
        str(p.relative_to(project)): (p.stat().st_ino, p.read_bytes())
        for top in ("apps", "config")
        for p in sorted((project / top).rglob("*"))
        if p.is_file()
    }


def _links(release: Path) -> dict[str, str]:
    """The dev-mode links of the release and of what it links to."""
    paths = [
        release / "lib" / "myapp-0.1.0",
        release / "releases" / "0.1.0" / "sys.config",
        release / "releases" / "0.1.0" / "vm.args",
        release.parents[1] / "lib" / "myapp" / "src",
    ]
    return {str(p): os.readlink(p) for p in paths}


@pytest.mark.parametrize("mode", ["erl", "ssh"])
def test_a_dev_mode_release_run_from_build(tmp_path: Path, mode: str) -> None:
    project = _dev_project(tmp_path)
    release = project / "_build" / "default" / "rel" / "myapp"
    counter = project / "apps" / "myapp" / "src" / "myapp_counter.erl"
    links = _links(release)

    async def body() -> None:
        async with DevNode(release, tmp_path / "home").running() as node:
            if mode == "ssh":
                await node.enable_ssh()
            for _ in range(3):
                await node.rpc("myapp_counter", "bump", [])
            counter.write_text(_counter(2))
            before = _project_files(project)

            code, report, err = await _relsync(project, node, "--build")
            assert code == 0, err
            assert report["reload"] == ["myapp_counter"], report
            assert report["written"] == [] and report["added"] == [] and report["changed"] == []
            assert await node.rpc("myapp_counter", "version", []) == 2
            assert await node.rpc("sys", "get_state", [Atom("myapp_counter")]) == (Atom("count"), 3)
            assert _project_files(project) == before
            assert _links(release) == links

            code, report, err = await _relsync(project, node)
            assert code == 0, err
            assert report["reload"] == [] and report["written"] == [], report
            assert report["modules"] == []

            counter.write_text(_counter(3, TAG))
            before = _project_files(project)
            code, report, err = await _relsync(project, node, "--build", "--upgrade")
            assert code == 0, (err, report)
            assert report["reload"] == ["myapp_counter"], report
            assert await node.rpc("myapp_counter", "version", []) == 3
            assert await node.rpc("sys", "get_state", [Atom("myapp_counter")]) == (
                Atom("count"),
                3,
                Atom("upgraded"),
            )
            assert any("cannot be undone" in w for w in report["warnings"]), report
            assert _project_files(project) == before
            assert _links(release) == links

            # The old code is gone: a step that fails cannot be undone, and says so.
            counter.write_text(_counter(4, REFUSE))
            code, report, err = await _relsync(project, node, "--build", "--upgrade")
            assert code == 9, (err, report)
            line = err.splitlines()[-1]  # after the build's output
            assert "relsync: error: upgrade failed: process" in line, err
            assert "could not be undone for myapp_counter: the build replaced" in line
            assert await node.rpc("myapp_counter", "version", []) == 4  # kept, as it says
            assert _links(release) == links

    asyncio.run(body())


def test_a_copy_of_a_dev_mode_release_gets_real_files_and_the_project_is_left_alone(
    tmp_path: Path,
) -> None:
    """The board runs a copy (``cp -a``: its links still lead into the project): the sync
    replaces the links by what they lead to, in the copy, and writes nothing through them."""
    project = _dev_project(tmp_path)
    built = project / "_build" / "default" / "rel" / "myapp"
    copy = tmp_path / "board" / "myapp"
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", str(built), str(copy)], check=True)
    counter = project / "apps" / "myapp" / "src" / "myapp_counter.erl"
    links = _links(built)

    async def body() -> None:
        async with DevNode(copy, tmp_path / "home").running() as node:
            await node.rpc("myapp_counter", "bump", [])
            counter.write_text(_counter(2))
            before = _project_files(project)
            code, report, err = await _relsync(project, node, "--build")
            assert code == 0, err
            assert report["root"] == str(copy) and "myapp_counter" in report["reload"]
            assert await node.rpc("myapp_counter", "version", []) == 2
            assert await node.rpc("sys", "get_state", [Atom("myapp_counter")]) == (Atom("count"), 1)
            assert _project_files(project) == before and _links(built) == links
            app = copy / "lib" / "myapp-0.1.0"
            assert app.is_dir() and not app.is_symlink()
            assert (app / "src" / "myapp_counter.erl").read_text() == _counter(2)
            config = copy / "releases" / "0.1.0" / "sys.config"
            assert config.is_file() and not config.is_symlink()
            code, report, err = await _relsync(project, node)
            assert code == 0, err
            assert report["written"] == report["reload"] == [], report

    asyncio.run(body())
