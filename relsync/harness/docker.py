"""The ``docker-otp`` board kind: a container running a release like a board does.

Root filesystem read-only, the release bind-mounted read-only at ``/srv/erlang``, a named volume
at ``/data`` that survives restarts, ``/tmp`` a tmpfs. ``docker restart`` is a reboot,
``docker kill`` + ``docker start`` a power cut. Every port is published on 127.0.0.1 only; the
distribution port has the same number inside and out (EPMD hands it to the client). Images
come from ``targets/docker-otp/build.sh`` (Debian packages only, no registry).
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from types import TracebackType

from relsync.dist.etf import Term
from relsync.dist.node import connect
from relsync.harness.local import read_release_info
from relsync.harness.ready import BoardError, wait_ready
from relsync.harness.relsyncd import SshAccess, build_relsyncd, start_relsyncd
from relsync.transports.ssh import DEFAULT_PORT as SSH_PORT

REPO = Path(__file__).resolve().parents[2]
TARGET = REPO / "targets" / "docker-otp"
RELEASE_PATH = "/srv/erlang"
RW_PATH = "/data/relsync"
RELSYNCD_EBIN = "/opt/relsyncd/ebin"
READY_TIMEOUT = 90.0


async def _run(*argv: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if check and proc.returncode != 0:
        raise BoardError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {text.strip()}")
    return text


async def ensure_engine_and_image(otp: int) -> None:
    """Start the Docker engine if needed and build the board image for ``otp`` if missing."""
    await _run(str(REPO / "scripts" / "docker-engine.sh"))
    flavor = {25: "bookworm", 27: "trixie"}.get(otp)
    if flavor is None:
        raise BoardError(f"no docker-otp board for OTP {otp}; choose 25 or 27")
    await _run(str(TARGET / "build.sh"), flavor)


async def example_release(otp: int) -> Path:
    """The example release built against OTP ``otp`` (inside a builder image if need be)."""
    out = await _run(str(TARGET / "release.sh"), str(otp))
    return Path(out.strip().splitlines()[-1])


async def _free_ports(count: int) -> list[int]:
    servers = [await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0) for _ in range(count)]
    ports = [int(s.sockets[0].getsockname()[1]) for s in servers]
    for server in servers:
        server.close()
        await server.wait_closed()
    return ports


class DockerBoard:
    """A docker-otp board; ``async with await DockerBoard.start(release, otp=27) as board:``."""

    kind = "docker-otp"
    release_path = RELEASE_PATH
    rw_path = RW_PATH

    def __init__(
        self, *, name: str, otp: int, main_app: str, cookie: str, ports: list[int], log: Path
    ) -> None:
        self.id = name
        self.otp = otp
        self.main_app = main_app
        self.node = "board@127.0.0.1"
        self.cookie = cookie
        self.dist_port, self.epmd_port, self.ssh_port = ports
        self.console_log = log
        self.ssh: SshAccess | None = None
        self._key_dir = log.parent / "ssh"

    @classmethod
    async def start(
        cls, release: Path, *, otp: int = 27, workdir: Path, ssh: bool = True
    ) -> DockerBoard:
        """Create and start a board running ``release``; return when its node answers."""
        await ensure_engine_and_image(otp)
        info = read_release_info(Path(release).resolve())
        workdir.mkdir(parents=True, exist_ok=True)
        name = f"relsync-board-{secrets.token_hex(4)}"
        board = cls(
            name=name, otp=otp, main_app=info.main_app, cookie=secrets.token_hex(16),
            ports=await _free_ports(3), log=workdir / f"{name}.log",
        )  # fmt: skip
        argv = [
            "docker", "run", "-d", "--name", name, "--read-only",
            "--label", "relsync.board=docker-otp",
            "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m",
            "--mount", f"type=bind,src={info.root},dst={RELEASE_PATH},readonly",
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
        await _run(*argv, f"relsync/otp-board:{otp}")
        try:
            await board._ready(ssh)
        except BaseException:
            await board.stop()
            raise
        return board

    async def _ready(self, ssh: bool) -> None:
        try:
            await wait_ready(
                self.node, self.cookie, self.epmd_port, self.main_app, timeout=READY_TIMEOUT,
                describe=lambda: f"container {self.id}",
            )  # fmt: skip
        except BoardError as exc:
            await self.save_log()
            raise BoardError(f"{exc}; end of {self.console_log}:\n{self._log_tail()}") from exc
        if ssh:
            self.ssh = await start_relsyncd(
                self.rpc, key_dir=self._key_dir, ebin=RELSYNCD_EBIN,
                allowed_paths=[RELEASE_PATH, "/data"], host_key_dir="/data/relsyncd",
                port=SSH_PORT, listen_any=True, public_port=self.ssh_port,
            )  # fmt: skip

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return "(no log captured)"

    async def save_log(self) -> Path:
        """Write the container's console output to ``console_log``."""
        self.console_log.write_text(await _run("docker", "logs", self.id, check=False))
        return self.console_log

    async def rpc(self, mod: str, fun: str, args: list[Term] | None = None) -> Term:
        """One ``mod:fun(args...)`` call on the board's node."""
        conn = await connect(self.node, cookie=self.cookie, epmd_port=self.epmd_port)
        try:
            return await conn.call(mod, fun, list(args or []), timeout=30.0)
        finally:
            await conn.close()

    async def exec(self, *command: str) -> str:
        """Run a command inside the board and return its output (fails on a non-zero exit)."""
        return await _run("docker", "exec", self.id, *command)

    async def tree(self, root: str) -> dict[str, str]:
        """Files and symlinks below ``root`` on the board: 'file:<sha256>' or 'link:<target>'."""
        script = (
            f'cd "{root}" 2>/dev/null || exit 0; '
            "find . \\( -type f -o -type l \\) | sort | while read -r p; do "
            'if [ -L "$p" ]; then printf "%s link:%s\\n" "${p#./}" "$(readlink "$p")"; '
            'else printf "%s file:%s\\n" "${p#./}" "$(sha256sum < "$p" | cut -d" " -f1)"; fi; done'
        )
        out = await self.exec("sh", "-c", script)
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    async def reboot(self) -> None:
        """``docker restart``: a clean reboot; returns when the node (and relsyncd) answer."""
        await _run("docker", "restart", self.id)
        await self._ready(self.ssh is not None)

    async def power_cut(self) -> None:
        """``docker kill`` + ``docker start``: no clean shutdown; returns when it answers again."""
        await _run("docker", "kill", self.id)
        await _run("docker", "start", self.id)
        await self._ready(self.ssh is not None)

    async def stop(self) -> None:
        """Remove the container and its data volume (keeps the console log). Idempotent."""
        await self.save_log()
        await _run("docker", "rm", "-f", "-v", self.id, check=False)
        await _run("docker", "volume", "rm", "-f", f"{self.id}-data", check=False)

    async def __aenter__(self) -> DockerBoard:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
