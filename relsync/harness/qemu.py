"""The ``qemu-arm`` board kind: a 32-bit ARM board (QEMU ``virt``, Cortex-A15) like a Beaglebone.

Read-only squashfs root, the release as a second read-only squashfs at ``/srv/erlang``, an ext4
data disk at ``/data`` kept across reboots, the node respawned by init. ``targets/qemu-arm``
builds the images (Debian armhf packages, no ARM code run at build time) and ``run.sh`` runs
QEMU; this class drives it with the same API as the other kinds. Ports are forwarded on
127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from relsync.erldist.etf import Charlist, Term
from relsync.erldist.node import call_once
from relsync.harness.bundle import harness_root
from relsync.harness.local import read_release_info
from relsync.harness.progress import phase
from relsync.harness.ready import (
    BoardError,
    cancel,
    parse_tree,
    run_command,
    tree_command,
    wait_ready,
)
from relsync.harness.relsyncd import SshAccess, ensure_key, start_relsyncd
from relsync.transports.ssh import DEFAULT_PORT as SSH_PORT

RELEASE_PATH = "/srv/erlang"
RW_PATH = "/data/relsync"
RELSYNCD_EBIN = "/opt/relsyncd/ebin"
#: The board's own OTP libraries (relsyncd's ssh and crypto beside a release without them).
BOARD_OTP_LIB = "/usr/lib/erlang/lib"
#: The initramfs prints this first: a new boot has begun (so an old node is not taken for it).
BOOT_MARKER = b"relsync-initramfs: loading modules"
#: relsync-node prints this when the node's VM (or the boot script before it) exited.
EXIT_MARKER = b"relsync-node: the node exited"
#: How often the console and QEMU are looked at while a boot goes on.
WATCH_INTERVAL = 0.2
READY_TIMEOUT = 180.0
CROSS_CC = "arm-linux-gnueabihf-gcc"
_STATUS = "relsync-exit-status="


def _recipe() -> Path:
    return harness_root() / "targets" / "qemu-arm"


async def _run(*argv: str | Path) -> str:
    env = {"PYTHON": sys.executable, **os.environ}  # run.sh's boardctl.py, with relsync in it
    return await run_command(*argv, env=env, split=True)


async def ensure_image() -> None:
    """Build the board's base image if needed (seconds when the .deb cache is warm)."""
    async with phase("building the qemu-arm image"):
        await _run(_recipe() / "build.sh")


async def example_release() -> Path:
    """The example release cross-built for armhf (its port program is an ARM binary)."""
    await ensure_image()
    await _run(_recipe() / "release.sh", "example")
    return _recipe() / "_build" / "example-src" / "demo" / "_build" / "default" / "rel" / "demo"


class QemuBoard:
    """A qemu-arm board; ``async with await QemuBoard.start(release, workdir=...) as board:``."""

    kind = "qemu-arm"
    release_path = RELEASE_PATH
    rw_path = RW_PATH
    otp = 25

    def __init__(self, state: Path, main_app: str, ssh: bool) -> None:
        env = dict(
            line.split("=", 1)
            for line in (state / "board.env").read_text().splitlines()
            if "=" in line
        )
        self.id = state.name
        self.state = state
        self.main_app = main_app
        self.node = env["NODE"]
        self.cookie = env["COOKIE"]
        self.epmd_port = int(env["EPMD_PORT"])
        self.ssh_port = int(env["SSH_PORT"])
        self.console_log = state / "console.log"
        self.has_ssh = ssh
        self.ssh: SshAccess | None = None

    @classmethod
    async def start(
        cls,
        release: Path,
        *,
        workdir: Path,
        ssh: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> QemuBoard:
        """Pack ``release`` (built for armhf) and boot a board on it; return when it answers.

        ``env``: variables the release's vm.args / sys.config use. A board that does not come
        up is removed (its state directory too): the error carries the end of its console.
        """
        await ensure_image()
        info = read_release_info(Path(release).resolve())
        state = (workdir / f"relsync-qemu-{secrets.token_hex(4)}").resolve()
        state.mkdir(parents=True)
        board: QemuBoard | None = None
        try:
            async with phase("packing the release for the ARM board"):
                image = await _run(
                    _recipe() / "release.sh", "pack", info.root, "-o", state / "release.squashfs"
                )
            (state / "main_app").write_text(info.main_app)
            (state / "ssh").mkdir()
            (state / "ssh" / "enabled").write_text("yes" if ssh else "no")
            variables = [arg for k, v in (env or {}).items() for arg in ("--env", f"{k}={v}")]
            await _run(
                _recipe() / "run.sh", "start", "--state", state, "--name", state.name,
                "--release", image.strip().splitlines()[-1], "--cookie", secrets.token_hex(12),
                *variables,
            )  # fmt: skip
            board = cls(state, info.main_app, ssh)
            await board._ready(after=0)
        except BaseException:
            if board is not None:
                await board.stop()
            shutil.rmtree(state, ignore_errors=True)
            raise
        return board

    @classmethod
    async def attach(cls, ident: str, workdir: Path) -> QemuBoard:
        """The board ``ident`` started by :meth:`start` with the same ``workdir``."""
        state = workdir / ident
        if not (state / "board.env").is_file():
            raise BoardError(f"no qemu-arm board {ident!r} in {workdir}")
        ssh = (state / "ssh" / "enabled").read_text() == "yes"
        board = cls(state, (state / "main_app").read_text(), ssh)
        if ssh:
            identity, _ = ensure_key(state / "ssh")
            board.ssh = SshAccess(
                board.ssh_port, "relsync", identity, state / "ssh" / "known_hosts"
            )
        return board

    def _log_size(self) -> int:
        try:
            return self.console_log.stat().st_size
        except OSError:
            return 0

    def _find(self, marker: bytes, after: int) -> int:
        """The offset of ``marker`` in the console past byte ``after``, or -1."""
        try:
            with open(self.console_log, "rb") as log:
                log.seek(after)
                found = log.read().find(marker)
        except OSError:
            return -1
        return -1 if found < 0 else after + found

    def _qemu_alive(self) -> bool:
        try:
            os.kill(int((self.state / "qemu.pid").read_text()), 0)
        except (OSError, ValueError):
            return False
        return True

    async def _died(self, after: int) -> int:
        """Return once the node exits (relsync-node says so past byte ``after`` of the
        console) or QEMU does; 1, the status wait_ready reports."""
        while self._qemu_alive() and self._find(EXIT_MARKER, after) < 0:
            await asyncio.sleep(WATCH_INTERVAL)
        return 1

    async def _ready(self, after: int) -> None:
        """Wait for a boot that began after byte ``after`` of the console, then for the node;
        fail within a second or so of the node (or QEMU) exiting."""
        async with phase(f"booting {self.id} (emulated ARM: kernel, init, the node)"):
            await self._wait_boot(after)

    async def _wait_boot(self, after: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while (boot := self._find(BOOT_MARKER, after)) < 0:
            if loop.time() > deadline or not self._qemu_alive():
                raise BoardError(f"{self.id} did not boot; {self._describe()}")
            await asyncio.sleep(WATCH_INTERVAL)
        died = asyncio.ensure_future(self._died(boot))
        try:
            await wait_ready(
                self.node, self.cookie, self.epmd_port, self.main_app,
                timeout=max(1.0, deadline - loop.time()), describe=self._describe, died=died,
            )  # fmt: skip
        finally:
            await cancel(died)
        if self.has_ssh:
            self.ssh = await start_relsyncd(
                self.rpc, key_dir=self.state / "ssh", ebin=RELSYNCD_EBIN,
                allowed_paths=[RELEASE_PATH, "/data"], host_key_dir="/data/relsyncd",
                port=SSH_PORT, listen_any=True, public_port=self.ssh_port,
                extra_libs=[BOARD_OTP_LIB],
            )  # fmt: skip

    def _describe(self) -> str:
        try:
            lines = self.console_log.read_text(errors="replace").splitlines()[-40:]
        except OSError:
            lines = ["(no console output)"]
        return "end of its console:\n" + "\n".join(lines)

    async def rpc(self, mod: str, fun: str, args: list[Term] | None = None) -> Term:
        """One ``mod:fun(args...)`` call on the board's node."""
        call = (mod, fun, args or [])
        return await call_once(self.node, self.cookie, self.epmd_port, call, timeout=60.0)

    async def exec(self, *command: str) -> str:
        """Run a command on the board (through the node's ``os:cmd``) and return its output
        (stdout and stderr); fails on a non-zero exit like the other kinds."""
        line = f'{shlex.join(command)} 2>&1; printf "\\n{_STATUS}%s" "$?"'
        out = await self.rpc("os", "cmd", [Charlist(line)])
        text = out if isinstance(out, str) else str(out)
        body, _, status = text.rpartition(f"\n{_STATUS}")
        if status.strip() != "0":
            raise BoardError(f"`{shlex.join(command)}` failed on {self.id} ({status!r}): {body}")
        return body

    async def tree(self, root: str) -> dict[str, str]:
        """Files and symlinks below ``root`` on the board: 'file:<sha256>' or 'link:<target>'."""
        return parse_tree(await self.exec("sh", "-c", tree_command(root)))

    async def _control(self, command: str) -> None:
        after = self._log_size()
        await _run(_recipe() / "run.sh", command, "--state", self.state)
        await self._ready(after)

    async def reboot(self) -> None:
        """A clean guest reboot; returns when the node (and relsyncd) answer again."""
        await self._control("reboot")

    async def power_cut(self) -> None:
        """QMP ``system_reset``: the guest loses its page cache like on a power cut."""
        await self._control("reset")

    async def stop(self) -> None:
        """Pull the plug (QEMU quits). Idempotent; the state directory is kept."""
        with contextlib.suppress(BoardError):  # already off
            await _run(_recipe() / "run.sh", "kill", "--state", self.state)

    async def __aenter__(self) -> QemuBoard:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
