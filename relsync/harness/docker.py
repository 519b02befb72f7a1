"""The ``docker-otp`` board kind: a container running a release like a board does.

Root filesystem read-only, a snapshot of the release (taken when the board starts, so a rebuild
of the user's ``_build`` does not change it under the VM) bind-mounted read-only at
``/srv/erlang``, a named volume
at ``/data`` that survives restarts, ``/tmp`` a tmpfs. ``docker restart`` is a reboot,
``docker kill`` + ``docker start`` a power cut. Every port is published on 127.0.0.1 only; the
distribution port has the same number inside and out (EPMD hands it to the client). Images
come from ``targets/docker-otp/build.sh`` (Debian packages only, no registry).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from relsync.erldist.etf import Term
from relsync.erldist.node import call_once
from relsync.harness.bundle import harness_root
from relsync.harness.local import copy_project_links, read_release_info
from relsync.harness.progress import phase
from relsync.harness.ready import (
    BoardError,
    cancel,
    parse_tree,
    run_command,
    tree_command,
    wait_ready,
)
from relsync.harness.relsyncd import SshAccess, build_relsyncd, ensure_key, start_relsyncd
from relsync.transports.ssh import DEFAULT_PORT as SSH_PORT

RELEASE_PATH = "/srv/erlang"
RW_PATH = "/data/relsync"
RELSYNCD_EBIN = "/opt/relsyncd/ebin"
#: The board's own OTP libraries (relsyncd's ssh and crypto beside a release without them).
BOARD_OTP_LIB = "/usr/lib/erlang/lib"
READY_TIMEOUT = 90.0


def _recipe() -> Path:
    return harness_root() / "targets" / "docker-otp"


async def ensure_engine_and_image(otp: int) -> None:
    """Start the Docker engine if needed and build the board image for ``otp`` if missing."""
    async with phase("starting the Docker engine"):
        await run_command(str(harness_root() / "scripts" / "docker-engine.sh"))
    flavor = {25: "bookworm", 27: "trixie"}.get(otp)
    if flavor is None:
        raise BoardError(f"no docker-otp board for OTP {otp}; choose 25 or 27")
    async with phase(f"building the OTP {otp} board image (first time only)"):
        await run_command(str(_recipe() / "build.sh"), flavor)


async def example_release(otp: int) -> Path:
    """The example release built against OTP ``otp`` (inside a builder image if need be)."""
    async with phase(f"building the example release for OTP {otp}"):
        out = await run_command(str(_recipe() / "release.sh"), str(otp))
    return Path(out.strip().splitlines()[-1])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def _free_ports(count: int) -> list[int]:
    servers = [await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0) for _ in range(count)]
    ports = [int(s.sockets[0].getsockname()[1]) for s in servers]
    for server in servers:
        server.close()
        await server.wait_closed()
    return ports


class DockerBoard:
    """A docker-otp board; ``async with await DockerBoard.start(release, otp=27) as board:``.

    Its description lives in the container's labels, so another process can find it again
    with :meth:`attach` (``relsync target reboot ID``).
    """

    kind = "docker-otp"
    release_path = RELEASE_PATH
    rw_path = RW_PATH

    def __init__(
        self,
        *,
        name: str,
        otp: int,
        main_app: str,
        cookie: str,
        ports: list[int],
        workdir: Path,
        ssh: bool,
    ) -> None:
        self.id = name
        self.otp = otp
        self.main_app = main_app
        self.node = "board@127.0.0.1"
        self.cookie = cookie
        self.dist_port, self.epmd_port, self.ssh_port = ports
        self.workdir = workdir
        self.console_log = workdir / "console.log"
        self.has_ssh = ssh
        self.ssh: SshAccess | None = None
        #: OpenSSH's sshd as root (``start(openssh=True)``), e.g. for rsync; not kept by attach.
        self.openssh: SshAccess | None = None

    @classmethod
    async def start(
        cls,
        release: Path,
        *,
        otp: int = 27,
        workdir: Path,
        ssh: bool = True,
        openssh: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> DockerBoard:
        """Create and start a board running a snapshot of ``release``; return when its node
        answers.

        ``workdir/<id>`` on this machine keeps the board's snapshot of the release, its ssh keys
        and console log. With ``openssh`` the board also runs OpenSSH's sshd for root, key only
        (:attr:`openssh`). ``env``: variables the release's vm.args / sys.config use.
        """
        await ensure_engine_and_image(otp)
        info = read_release_info(Path(release).resolve())
        name = f"relsync-board-{secrets.token_hex(4)}"
        board = cls(
            name=name, otp=otp, main_app=info.main_app, cookie=secrets.token_hex(16),
            ports=await _free_ports(3), workdir=(workdir / name).resolve(), ssh=ssh,
        )  # fmt: skip
        try:
            await board._snapshot(info.root)
        except BaseException:
            await board.stop()
            raise
        argv = ["docker", "run", "-d", "--name", name, "--read-only"]
        for key, value in board._labels().items():
            argv += ["--label", f"{key}={value}"]
        for key, value in (env or {}).items():
            argv += ["-e", f"{key}={value}"]
        argv += [
            "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m",
            "--mount", f"type=bind,src={board.snapshot},dst={RELEASE_PATH},readonly",
            "--mount", f"type=volume,src={name}-data,dst=/data",
            "-e", f"RELSYNC_NODE={board.node}", "-e", f"RELSYNC_COOKIE={board.cookie}",
            "-e", f"RELSYNC_DIST_PORT={board.dist_port}",
            "-p", f"127.0.0.1:{board.dist_port}:{board.dist_port}",
            "-p", f"127.0.0.1:{board.epmd_port}:4369",
        ]  # fmt: skip
        if ssh:
            ebin = await build_relsyncd()
            argv += ["--mount", f"type=bind,src={ebin},dst={RELSYNCD_EBIN},readonly",
                     "-p", f"127.0.0.1:{board.ssh_port}:{SSH_PORT}"]  # fmt: skip
        if openssh:
            (port,) = await _free_ports(1)
            identity, public = ensure_key(board.workdir / "openssh")
            board.openssh = SshAccess(port, "root", identity, identity.parent / "known_hosts")
            argv += ["-e", f"RELSYNC_SSHD_KEY={public}", "-p", f"127.0.0.1:{port}:22"]
        try:  # a failed `docker run` may still leave a created container and its volume
            await run_command(*argv, f"relsync/otp-board:{otp}")
            await board._follow_log()
            await board._ready()
        except BaseException:
            await board.stop()
            raise
        return board

    @property
    def snapshot(self) -> Path:
        """The board's own copy of the release (what it runs, read-only)."""
        return self.workdir / "release"

    async def _snapshot(self, release: Path) -> None:
        """Copy ``release`` to :attr:`snapshot`, links into the project resolved (dev mode)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        await run_command("cp", "-a", release, self.snapshot)
        copy_project_links(self.snapshot, release)

    @classmethod
    async def attach(cls, name: str) -> DockerBoard:
        """The board ``name``, as :meth:`start` described it in the container's labels."""
        out = await run_command(
            "docker", "inspect", "--format", "{{json .Config.Labels}}", name, check=False
        )  # fmt: skip
        try:
            labels = json.loads(out)
            board = cls(
                name=name, otp=int(labels["relsync.otp"]), main_app=labels["relsync.main_app"],
                cookie=labels["relsync.cookie"],
                ports=[int(p) for p in labels["relsync.ports"].split(",")],
                workdir=Path(labels["relsync.workdir"]), ssh=labels["relsync.ssh"] == "true",
            )  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            raise BoardError(f"no docker-otp board {name!r}; see relsync target list") from exc
        if board.has_ssh:
            identity, _ = ensure_key(board.workdir / "ssh")
            known = identity.parent / "known_hosts"
            board.ssh = SshAccess(board.ssh_port, "relsync", identity, known)
        return board

    @classmethod
    async def list_ids(cls) -> list[str]:
        """Names of every docker-otp board on this machine."""
        out = await run_command(
            "docker", "ps", "-a", "--filter", f"label=relsync.board={cls.kind}",
            "--format", "{{.Names}}",
        )  # fmt: skip
        return sorted(out.split())

    def _labels(self) -> dict[str, str]:
        return {
            "relsync.board": self.kind, "relsync.otp": str(self.otp),
            "relsync.main_app": self.main_app, "relsync.cookie": self.cookie,
            "relsync.ports": f"{self.dist_port},{self.epmd_port},{self.ssh_port}",
            "relsync.workdir": str(self.workdir), "relsync.ssh": str(self.has_ssh).lower(),
        }  # fmt: skip

    async def _follow_log(self, since: str = "") -> None:
        """Append the container's console to ``console_log`` until the container stops."""
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.console_log, "ab") as log:
            await asyncio.create_subprocess_exec(
                "docker", "logs", "-f", *(["--since", since] if since else []), self.id,
                stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    async def _exited(self) -> int:
        """Wait for the container to stop; its exit status."""
        out = await run_command("docker", "wait", self.id, check=False, split=True)
        return int(out.strip()) if out.strip().isdigit() else -1

    async def _ready(self) -> None:
        exited = asyncio.ensure_future(self._exited())
        try:
            async with phase(f"booting {self.id}"):
                await wait_ready(
                    self.node, self.cookie, self.epmd_port, self.main_app,
                    timeout=READY_TIMEOUT, died=exited, describe=lambda: f"container {self.id}",
                )  # fmt: skip
        except BoardError as exc:
            raise BoardError(f"{exc}; end of its console:\n{await self._log_tail()}") from exc
        finally:
            await cancel(exited)
        if self.has_ssh:
            self.ssh = await start_relsyncd(
                self.rpc, key_dir=self.workdir / "ssh", ebin=RELSYNCD_EBIN,
                allowed_paths=[RELEASE_PATH, "/data"], host_key_dir="/data/relsyncd",
                port=SSH_PORT, listen_any=True, public_port=self.ssh_port,
                extra_libs=[BOARD_OTP_LIB],
            )  # fmt: skip

    async def _log_tail(self) -> str:
        """The end of the container's console (straight from the engine: the follower may
        not have written the last lines yet)."""
        out = await run_command("docker", "logs", "--tail", "40", self.id, check=False)
        return out.rstrip() or "(no output)"

    async def rpc(self, mod: str, fun: str, args: list[Term] | None = None) -> Term:
        """One ``mod:fun(args...)`` call on the board's node."""
        return await call_once(self.node, self.cookie, self.epmd_port, (mod, fun, args or []))

    async def exec(self, *command: str) -> str:
        """Run a command inside the board and return its output (fails on a non-zero exit)."""
        return await run_command("docker", "exec", self.id, *command)

    async def read_file(self, path: str) -> bytes:
        """The content of a file on the board."""
        proc = await asyncio.create_subprocess_exec(
            "docker", "exec", self.id, "cat", path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise BoardError(f"cannot read {path} on {self.id}: {err.decode().strip()}")
        return out

    async def tree(self, root: str) -> dict[str, str]:
        """Files and symlinks below ``root`` on the board: 'file:<sha256>' or 'link:<target>'."""
        return parse_tree(await self.exec("sh", "-c", tree_command(root)))

    async def reboot(self) -> None:
        """``docker restart``: a clean reboot; returns when the node (and relsyncd) answer."""
        since = _now()
        await run_command("docker", "restart", self.id)
        await self._follow_log(since)  # the follower ended when the container stopped
        await self._ready()

    async def power_cut(self) -> None:
        """``docker kill`` + ``docker start``: no clean shutdown; returns when it answers again."""
        since = _now()
        await run_command("docker", "kill", self.id)
        await run_command("docker", "start", self.id)
        await self._follow_log(since)
        await self._ready()

    async def stop(self) -> None:
        """Remove the container, its data volume and its snapshot of the release (keeps the
        console log). Idempotent."""
        await run_command("docker", "rm", "-f", "-v", self.id, check=False)
        await run_command("docker", "volume", "rm", "-f", f"{self.id}-data", check=False)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(shutil.rmtree, self.snapshot)

    async def __aenter__(self) -> DockerBoard:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
