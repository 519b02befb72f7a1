"""rebar3's default (dev-mode) release, built in a project and run from ``_build`` itself, as
the README's first-run flow has it: the project, the node, and relsync run in the project.

The release links its application back into the project (``lib/myapp-0.1.0`` ->
``_build/default/lib/myapp``, whose ``src`` links to ``apps/myapp/src``) and its
``releases/0.1.0/sys.config``/``vm.args`` to ``config/``.
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

import relsync
from relsync.erldist.etf import Term
from relsync.erldist.node import call_once
from relsync.harness.local import host_otp_lib
from relsync.harness.ready import wait_ready
from relsync.harness.relsyncd import SshAccess, build_relsyncd, start_relsyncd
from relsync.release_node import release_cookie, release_node
from support.stock_projects import first_build, rebar3_env

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


def counter_source(version: int, code_change: str = KEEP) -> str:
    return COUNTER.replace("VERSION", str(version)).replace("CODE_CHANGE", code_change)


def dev_project(base: Path) -> Path:
    """``rebar3 new release myapp`` with a counter gen_server under its supervisor, built."""
    env = rebar3_env(base)
    subprocess.run(["rebar3", "new", "release", "myapp"], cwd=base, env=env, check=True,
                   capture_output=True)  # fmt: skip
    project = base / "myapp"
    src = project / "apps" / "myapp" / "src"
    (src / "myapp_counter.erl").write_text(counter_source(1))
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


async def run_in_project(
    project: Path, node: DevNode, *args: str
) -> tuple[int, dict[str, Any], str]:
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


def project_files(project: Path) -> dict[str, tuple[int, bytes]]:
    """Inode and content of every source and config file of the project."""
    return {
        str(p.relative_to(project)): (p.stat().st_ino, p.read_bytes())
        for top in ("apps", "config")
        for p in sorted((project / top).rglob("*"))
        if p.is_file()
    }


def dev_links(release: Path) -> dict[str, str]:
    """The dev-mode links of the release and of what it links to."""
    paths = [
        release / "lib" / "myapp-0.1.0",
        release / "releases" / "0.1.0" / "sys.config",
        release / "releases" / "0.1.0" / "vm.args",
        release.parents[1] / "lib" / "myapp" / "src",
    ]
    return {str(p): os.readlink(p) for p in paths}
