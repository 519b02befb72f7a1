"""Start real local Erlang nodes (and their EPMD) for tests and benchmarks.

Everything listens on 127.0.0.1 only. Readiness is a real signal — the node registered with
EPMD *and* answered an RPC over our own distribution client — never a fixed sleep.

>>> # with Epmd.start() as epmd, ErlNode.start(epmd_port=epmd.port) as node:
>>> #     asyncio.run(node.call("erlang", "node", []))
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from relsync.erldist.connection import Connection
from relsync.erldist.epmd import names
from relsync.erldist.errors import DistError
from relsync.erldist.etf import Term
from relsync.erldist.node import connect

DEFAULT_COOKIE = "relsync-test-cookie"
#: Keep idle schedulers from spinning: tests share a 2-core machine.
QUIET_VM_ARGS = ("+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none")
_seq = itertools.count(1)
T = TypeVar("T")


class ErlNodeError(RuntimeError):
    """A test node or EPMD could not be started."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def short_hostname() -> str:
    """The host part ``-sname`` nodes get on this machine."""
    return socket.gethostname().split(".")[0]


def unique_name(prefix: str = "t") -> str:
    """A node name (before ``@``) unique within this process and among parallel test runs."""
    return f"{prefix}{os.getpid()}_{next(_seq)}"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ErlNodeError(f"epmd on port {port} exited with status {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise ErlNodeError(f"epmd did not listen on port {port} within {timeout} s")


class Epmd:
    """An ``epmd`` of our own on a free port (``-relaxed_command_check`` off, loopback only)."""

    def __init__(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.proc = proc

    @classmethod
    def start(cls, port: int | None = None, timeout: float = 30.0) -> Self:
        """Start epmd in the foreground on ``port`` (a free one if None); wait until it listens."""
        epmd = shutil.which("epmd")
        if epmd is None:
            raise ErlNodeError("epmd not found on PATH: install Erlang/OTP")
        for _ in range(5):
            chosen = port or free_port()
            env = {**os.environ, "ERL_EPMD_ADDRESS": "127.0.0.1"}
            proc = subprocess.Popen(
                [epmd, "-port", str(chosen)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                _wait_port(chosen, proc, timeout)
            except ErlNodeError:
                proc.kill()
                proc.wait()
                if port is not None:
                    raise
                continue  # lost a race for the port: pick another
            return cls(chosen, proc)
        raise ErlNodeError("could not start epmd on a free port")

    def stop(self) -> None:
        """Kill this epmd (only the process we started)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ErlNode:
    """One ``erl`` node started as a child process; see :meth:`start`."""

    def __init__(
        self,
        node: str,
        cookie: str,
        epmd_port: int,
        proc: subprocess.Popen[bytes],
        workdir: Path,
    ) -> None:
        self.node = node
        self.cookie = cookie
        self.epmd_port = epmd_port
        self.proc = proc
        self.workdir = workdir
        self.log = workdir / "erl.log"

    @property
    def name(self) -> str:
        """The part before ``@``."""
        return self.node.partition("@")[0]

    @property
    def host(self) -> str:
        """The part after ``@``."""
        return self.node.partition("@")[2]

    @classmethod
    def start(
        cls,
        *,
        epmd_port: int,
        name: str | None = None,
        short: bool = False,
        host: str = "127.0.0.1",
        cookie: str = DEFAULT_COOKIE,
        net_ticktime: int | None = None,
        code_paths: Sequence[str | Path] = (),
        extra_args: Sequence[str] = (),
        workdir: str | Path | None = None,
        wait: bool = True,
        ready_timeout: float = 60.0,
        erl: str | None = None,
        command_prefix: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> Self:
        """Start ``erl -name name@host`` (or ``-sname name`` if ``short``) and wait until ready.

        ``net_ticktime`` None keeps the OTP default (60 s). ``extra_args`` go to ``erl`` as is.
        The node listens on 127.0.0.1 only and never starts an EPMD of its own.

        To run another ``erl`` than the one on PATH (another OTP, e.g. inside a chroot), give
        ``erl`` (used as is, not looked up) and ``command_prefix`` (e.g. ``["chroot", DIR]``),
        and override environment entries with ``env`` (e.g. a ``HOME`` that exists in there).
        The log stays in ``workdir`` on this side either way.
        """
        if erl is None:
            erl = shutil.which("erl")
            if erl is None:
                raise ErlNodeError("erl not found on PATH: install Erlang/OTP")
        name = name or unique_name()
        node = f"{name}@{short_hostname()}" if short else f"{name}@{host}"
        wd = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"erl_{name}_"))
        wd.mkdir(parents=True, exist_ok=True)
        args = [
            *command_prefix,
            erl,
            "-noshell",
            "-noinput",
            "-sname" if short else "-name",
            name if short else node,
        ]
        args += ["-setcookie", cookie, "-start_epmd", "false"]
        args += ["-kernel", "inet_dist_use_interface", "{127,0,0,1}"]
        if net_ticktime is not None:
            args += ["-kernel", "net_ticktime", str(net_ticktime)]
        for path in code_paths:
            args += ["-pa", str(path)]
        args += [*QUIET_VM_ARGS, *extra_args]
        full_env = {**os.environ, "ERL_EPMD_PORT": str(epmd_port), "HOME": str(wd), **(env or {})}
        with open(wd / "erl.log", "wb") as log:
            proc = subprocess.Popen(
                args, cwd=wd, env=full_env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self = cls(node, cookie, epmd_port, proc, wd)
        if wait:
            try:
                self.wait_ready(ready_timeout)
            except BaseException:
                self.kill()
                raise
        return self

    # -- readiness and control

    async def wait_ready_async(self, timeout: float = 60.0) -> None:
        """Wait until the node is registered with EPMD and answers ``erlang:node()``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: object = "not registered with EPMD yet"
        delay = 0.02
        while loop.time() < deadline:
            if self.proc.poll() is not None:
                raise ErlNodeError(
                    f"node {self.node} exited with status {self.proc.returncode}:\n"
                    f"{_tail(self.log)}"
                )
            try:
                if self.name in await names("127.0.0.1", self.epmd_port, timeout=5.0):
                    async with await self.connect() as conn:
                        if await conn.call("erlang", "node", [], timeout=10.0) == self.node:
                            return
            except (DistError, OSError) as exc:
                last = exc
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        raise ErlNodeError(f"node {self.node} not ready after {timeout} s: {last}")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Blocking :meth:`wait_ready_async` (for fixtures outside an event loop)."""
        asyncio.run(self.wait_ready_async(timeout))

    async def connect(self, *, timeout: float = 10.0, **kwargs: object) -> Connection:
        """A new distribution connection to this node with its cookie and EPMD port."""
        return await connect(
            self.node,
            cookie=self.cookie,
            epmd_port=self.epmd_port,
            timeout=timeout,
            **kwargs,  # type: ignore[arg-type]
        )

    async def call(self, module: str, function: str, args: list[Term]) -> Term:
        """One RPC on a short-lived connection."""
        async with await self.connect() as conn:
            return await conn.call(module, function, args)

    @property
    def alive(self) -> bool:
        """True while the OS process runs."""
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the node (a crash, as far as its peers can tell) and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the node (SIGTERM: OTP 25 runs init:stop), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ErlNode {self.node} pid={self.proc.pid} alive={self.alive}>"


def compile_erl(source: str | Path, outdir: str | Path) -> Path:
    """Compile one ``.erl`` file with ``erlc`` into ``outdir``; return the ``.beam`` path."""
    src, out = Path(source), Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["erlc", "-o", str(out), str(src)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise ErlNodeError(f"erlc {src} failed:\n{result.stdout}{result.stderr}")
    return out / (src.stem + ".beam")


def run_async(coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
    """Run ``coro`` in a fresh event loop, bounded by ``timeout`` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())
