"""The ``docker-otp`` board kind: a container running a release like a board does.

Root filesystem read-only, a snapshot of the release (taken when the board starts, so a rebuild
of the user's ``_build`` does not change it under the VM) bind-mounted read-only at
``/srv/erlang``, a named volume at ``/data`` that survives restarts, ``/tmp`` a tmpfs. A restart
is a reboot, kill + start a power cut. Every port is published on 127.0.0.1 only; the
distribution port has the same number inside and out (EPMD hands it to the client).

Containers are driven through the Docker SDK for Python, started with testcontainers
(:class:`~testcontainers.core.container.DockerContainer`, a wait strategy on the node's
readiness). Its reaper (Ryuk) is an image from a registry, which boards do without: it is
disabled, and boards are found and removed by their labels (``relsync target list/down``).
Images come from ``targets/docker-otp/build.sh`` (Debian packages only, no registry).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

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

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container
    from testcontainers.core.container import DockerContainer

RELEASE_PATH = "/srv/erlang"
RW_PATH = "/data/relsync"
RELSYNCD_EBIN = "/opt/relsyncd/ebin"
#: The board's own OTP libraries (relsyncd's ssh and crypto beside a release without them).
BOARD_OTP_LIB = "/usr/lib/erlang/lib"
READY_TIMEOUT = 90.0
#: How often a booting board's container is asked whether it still runs.
WATCH_INTERVAL = 0.2
#: The label every board carries (its value: the kind).
BOARD_LABEL = "relsync.board"
_NEEDS = "the docker-otp boards need the Docker SDK and testcontainers: pip install 'relsync[test]'"


@functools.cache
def _client() -> DockerClient:
    """A Docker SDK client for the local engine."""
    try:
        import docker
    except ImportError as exc:
        raise BoardError(_NEEDS) from exc
    try:
        return docker.from_env()
    except docker.errors.DockerException as exc:
        raise BoardError(f"no Docker engine answers ({exc}): run scripts/docker-engine.sh") from exc


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


async def _free_ports(count: int) -> list[int]:
    servers = [await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0) for _ in range(count)]
    ports = [int(s.sockets[0].getsockname()[1]) for s in servers]
    for server in servers:
        server.close()
        await server.wait_closed()
    return ports


def _container_spec(
    board: DockerBoard, otp: int, env: Mapping[str, str], more_ports: Mapping[int, int]
) -> DockerContainer:
    """The board's testcontainers ``DockerContainer``, ready to start (not started);
    ``more_ports``: container port -> host port, besides the board's own."""
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # no registry for Ryuk
    try:
        from testcontainers.core.config import testcontainers_config
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import WaitStrategy
    except ImportError as exc:
        raise BoardError(_NEEDS) from exc
    testcontainers_config.ryuk_disabled = True
    spec = DockerContainer(f"relsync/otp-board:{otp}", name=board.id)
    spec.with_envs(**env, RELSYNC_NODE=board.node, RELSYNC_COOKIE=board.cookie,
                   RELSYNC_DIST_PORT=str(board.dist_port))  # fmt: skip
    spec.with_volume_mapping(board.snapshot, RELEASE_PATH, "ro")
    spec.with_volume_mapping(f"{board.id}-data", "/data", "rw")
    spec.with_tmpfs_mount("/tmp", "rw,nosuid,nodev,size=64m")
    # 127.0.0.1 only; the distribution port keeps its number (EPMD hands it to the client).
    ports: dict[str, tuple[str, int]] = {
        f"{board.dist_port}/tcp": ("127.0.0.1", board.dist_port),
        "4369/tcp": ("127.0.0.1", board.epmd_port),
    }
    if board.has_ssh:
        ports[f"{SSH_PORT}/tcp"] = ("127.0.0.1", board.ssh_port)
    ports.update({f"{inside}/tcp": ("127.0.0.1", out) for inside, out in more_ports.items()})
    spec.ports = ports  # type: ignore[assignment]  # docker-py takes (address, port) too
    # The default bridge, whatever network testcontainers would guess for this machine.
    spec.with_kwargs(read_only=True, labels=board._labels(), network="bridge")

    class NodeReady(WaitStrategy):
        """The node answers with the release's main application started; a container that
        stops fails the wait at once, with the end of its console."""

        def wait_until_ready(self, container: Any) -> None:
            asyncio.run(board._wait_node())

    spec.waiting_for(NodeReady())
    return spec


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
        try:  # a failed start may still leave a created container, its volume, the snapshot
            await board._snapshot(info.root)
            variables, sshd_port = dict(env or {}), {}
            if openssh:
                (port,) = await _free_ports(1)
                identity, public = ensure_key(board.workdir / "openssh")
                board.openssh = SshAccess(port, "root", identity, identity.parent / "known_hosts")
                variables["RELSYNC_SSHD_KEY"], sshd_port = public, {22: port}
            spec = _container_spec(board, otp, variables, sshd_port)
            if ssh:
                spec.with_volume_mapping(await build_relsyncd(), RELSYNCD_EBIN, "ro")
            async with phase(f"booting {board.id}"):
                await asyncio.to_thread(spec.start)
            await board._start_relsyncd()
        except BaseException:
            await board.stop()
            raise
        return board

    @classmethod
    async def attach(cls, name: str) -> DockerBoard:
        """The board ``name``, as :meth:`start` described it in the container's labels."""
        try:
            labels = (await asyncio.to_thread(_client().containers.get, name)).labels
            board = cls(
                name=name, otp=int(labels["relsync.otp"]), main_app=labels["relsync.main_app"],
                cookie=labels["relsync.cookie"],
                ports=[int(p) for p in labels["relsync.ports"].split(",")],
                workdir=Path(labels["relsync.workdir"]), ssh=labels["relsync.ssh"] == "true",
            )  # fmt: skip
        except (ValueError, KeyError, TypeError, _not_found()) as exc:
            raise BoardError(f"no docker-otp board {name!r}; see relsync target list") from exc
        if board.has_ssh:
            identity, _ = ensure_key(board.workdir / "ssh")
            known = identity.parent / "known_hosts"
            board.ssh = SshAccess(board.ssh_port, "relsync", identity, known)
        return board

    @classmethod
    async def list_ids(cls) -> list[str]:
        """Names of every docker-otp board on this machine."""
        found = await asyncio.to_thread(
            _client().containers.list, all=True, filters={"label": f"{BOARD_LABEL}={cls.kind}"}
        )
        return sorted(str(c.name) for c in found)

    @property
    def snapshot(self) -> Path:
        """The board's own copy of the release (what it runs, read-only)."""
        return self.workdir / "release"

    async def _snapshot(self, release: Path) -> None:
        """Copy ``release`` to :attr:`snapshot`, links into the project resolved (dev mode)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        await run_command("cp", "-a", release, self.snapshot)
        copy_project_links(self.snapshot, release)

    def _labels(self) -> dict[str, str]:
        return {
            BOARD_LABEL: self.kind, "relsync.otp": str(self.otp),
            "relsync.main_app": self.main_app, "relsync.cookie": self.cookie,
            "relsync.ports": f"{self.dist_port},{self.epmd_port},{self.ssh_port}",
            "relsync.workdir": str(self.workdir), "relsync.ssh": str(self.has_ssh).lower(),
        }  # fmt: skip

    def _container(self) -> Container:
        return _client().containers.get(self.id)

    def _stream_console(self, container: Container) -> None:
        """Append the container's console to ``console_log`` (a thread, until it stops)."""
        self.console_log.parent.mkdir(parents=True, exist_ok=True)

        def follow() -> None:
            with open(self.console_log, "ab") as log, contextlib.suppress(Exception):
                for chunk in container.logs(stream=True, follow=True, since=container_started):
                    log.write(chunk)
                    log.flush()

        container_started = int(_started_at(container))
        threading.Thread(target=follow, name=f"console-{self.id}", daemon=True).start()

    async def _exited(self) -> int:
        """Wait for the container to stop; its exit status."""
        container = await asyncio.to_thread(self._container)
        while True:
            await asyncio.to_thread(container.reload)
            state = container.attrs["State"]
            if not state.get("Running") and not state.get("Restarting"):
                return int(state.get("ExitCode", -1))
            await asyncio.sleep(WATCH_INTERVAL)

    async def _wait_node(self) -> None:
        """Until the node answers with the main application started; fail within a moment of
        the container stopping, with the end of its console."""
        container = await asyncio.to_thread(self._container)
        self._stream_console(container)
        exited = asyncio.ensure_future(self._exited())
        try:
            await wait_ready(
                self.node, self.cookie, self.epmd_port, self.main_app, timeout=READY_TIMEOUT,
                died=exited, describe=lambda: f"container {self.id}",
            )  # fmt: skip
        except BoardError as exc:
            raise BoardError(f"{exc}; end of its console:\n{await self._log_tail()}") from exc
        finally:
            await cancel(exited)

    async def _start_relsyncd(self) -> None:
        if self.has_ssh:
            self.ssh = await start_relsyncd(
                self.rpc, key_dir=self.workdir / "ssh", ebin=RELSYNCD_EBIN,
                allowed_paths=[RELEASE_PATH, "/data"], host_key_dir="/data/relsyncd",
                port=SSH_PORT, listen_any=True, public_port=self.ssh_port,
                extra_libs=[BOARD_OTP_LIB],
            )  # fmt: skip

    async def _ready(self) -> None:
        async with phase(f"booting {self.id}"):
            await self._wait_node()
        await self._start_relsyncd()

    async def _log_tail(self) -> str:
        """The end of the container's console, straight from the engine."""
        try:
            out = await asyncio.to_thread(lambda: self._container().logs(tail=40))
        except Exception:  # gone already
            return "(no output)"
        return out.decode(errors="replace").rstrip() or "(no output)"

    async def rpc(self, mod: str, fun: str, args: list[Term] | None = None) -> Term:
        """One ``mod:fun(args...)`` call on the board's node."""
        return await call_once(self.node, self.cookie, self.epmd_port, (mod, fun, args or []))

    async def _exec(self, *command: str) -> tuple[int, bytes, bytes]:
        container = await asyncio.to_thread(self._container)
        code, output = await asyncio.to_thread(container.exec_run, list(command), demux=True)
        out, err = cast("tuple[bytes | None, bytes | None]", output)
        return int(code or 0), out or b"", err or b""

    async def exec(self, *command: str) -> str:
        """Run a command inside the board and return its output (fails on a non-zero exit)."""
        code, out, err = await self._exec(*command)
        text = (out + err).decode(errors="replace")
        if code != 0:
            raise BoardError(f"`{' '.join(command)}` failed on {self.id} (exit {code}): {text}")
        return text

    async def read_file(self, path: str) -> bytes:
        """The content of a file on the board."""
        code, out, err = await self._exec("cat", path)
        if code != 0:
            raise BoardError(f"cannot read {path} on {self.id}: {err.decode().strip()}")
        return out

    async def tree(self, root: str) -> dict[str, str]:
        """Files and symlinks below ``root`` on the board: 'file:<sha256>' or 'link:<target>'."""
        return parse_tree(await self.exec("sh", "-c", tree_command(root)))

    async def reboot(self) -> None:
        """A restart: a clean reboot; returns when the node (and relsyncd) answer."""
        container = await asyncio.to_thread(self._container)
        await asyncio.to_thread(container.restart)
        await self._ready()

    async def power_cut(self) -> None:
        """Kill + start: no clean shutdown; returns when it answers again."""
        container = await asyncio.to_thread(self._container)
        await asyncio.to_thread(container.kill)
        await asyncio.to_thread(container.start)
        await self._ready()

    async def stop(self) -> None:
        """Remove the container, its data volume and its snapshot of the release (keeps the
        console log). Idempotent."""

        def remove() -> None:
            client = _client()
            with contextlib.suppress(_not_found()):
                client.containers.get(self.id).remove(force=True, v=True)
            with contextlib.suppress(_not_found()):
                client.volumes.get(f"{self.id}-data").remove(force=True)

        await asyncio.to_thread(remove)
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


def _not_found() -> type[Exception]:
    from docker.errors import NotFound

    return NotFound


def _started_at(container: Container) -> float:
    """When the container's current run began (seconds since the epoch): its console from
    then on is this boot's."""
    from datetime import datetime

    stamp = str(container.attrs["State"].get("StartedAt", ""))
    try:
        return datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return 0.0
