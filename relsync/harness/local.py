"""The ``local`` board kind: a release running on this machine from a read-only copy.

Layout under ``workdir``::

    ro/srv/erlang/      the release, copied and then made read-only (``release_path``)
    data/relsync/       writable, kept across reboots: relsync's shadow tree (``rw_path``)
    data/run/           writable, wiped at every boot (like a tmpfs): the files the start script
                        generates (``RELX_OUT_FILE_PATH``), ``RUNNER_LOG_DIR``, crash dumps, HOME
    console.log         stdout/stderr of the node, appended across reboots (``console_log``)
    epmd.log            output of the epmd this board started, if any

The node is started with the release's own extended start script (``bin/<rel> foreground``) in
its own session, so the whole process group can be signalled. The release does not include
ERTS: the script runs ``erl`` from ``PATH`` to find ``code:root_dir()`` and uses the ERTS there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from relsync.erldist.etf import Atom, Term
from relsync.erldist.node import call_once
from relsync.harness.bundle import harness_root
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
from relsync.rel_file import ReleaseApp, RelFileError, find_rel_file, parse_rel_file
from relsync.release import OTP_APPS, project_of
from relsync.release_node import release_cookie, release_node

log = logging.getLogger(__name__)

#: How long a node may take to answer after it was started.
READY_TIMEOUT = 60.0
#: How long a node may take to shut down after SIGTERM before it is killed.
STOP_TIMEOUT = 20.0
#: Lines of the console log quoted in error messages.
LOG_TAIL_LINES = 40
#: Where a board kept for later commands records itself (:meth:`LocalBoard.keep`).
STATE_FILE = "board.json"

# Environment variables of the caller that would change how the start script behaves.
_SCRUBBED_ENV = (
    "RELX_COOKIE",
    "RELX_REPLACE_OS_VARS",
    "RELX_MULTI_NODE",
    "RELX_CONFIG_PATH",
    "VMARGS_PATH",
    "ERL_DIST_PORT",
    "CODE_LOADING_MODE",
    "ERL_CRASH_DUMP",
)


# --------------------------------------------------------------------------------------------
# The release on disk


@dataclass(frozen=True, slots=True)
class ReleaseInfo:
    """What the harness needs to know about a built release directory."""

    root: Path
    name: str
    version: str
    erts_version: str
    apps: tuple[ReleaseApp, ...]

    @property
    def start_script(self) -> Path:
        """The extended start script, ``bin/<name>``."""
        return self.root / "bin" / self.name

    @property
    def is_mix(self) -> bool:
        """Whether mix built it (``mix release``: ``releases/COOKIE``, ``releases/VSN/env.sh``),
        so its script starts it with ``start`` and takes the node from ``RELEASE_*``."""
        releases = self.root / "releases"
        return (releases / "COOKIE").is_file() and (releases / self.version / "env.sh").is_file()

    @property
    def main_app(self) -> str:
        """The application whose start means "the release is up".

        The application named like the release if there is one, else the last started,
        non-OTP application of the ``.rel`` file, else its last application.
        """
        names = [app.name for app in self.apps]
        if self.name in names:
            return self.name
        started = [
            app.name
            for app in self.apps
            if app.name not in OTP_APPS and app.start_type not in ("load", "none")
        ]
        if started:
            return started[-1]
        if names:
            return names[-1]
        raise BoardError(f"release {self.name} {self.version} lists no applications")


def read_release_info(root: Path) -> ReleaseInfo:
    """Finds the name, version and applications of the release built into ``root`` (see
    :func:`relsync.rel_file.find_rel_file`); it must have its start script."""
    try:
        version, rel_file = find_rel_file(root)
        name, declared, erts_vsn, apps = parse_rel_file(rel_file.read_text())
    except RelFileError as exc:
        raise BoardError(str(exc)) from exc
    if declared != version:
        log.warning("%s says version %s, expected %s", rel_file, declared, version)
    info = ReleaseInfo(root=root, name=name, version=version, erts_version=erts_vsn, apps=apps)
    if not info.start_script.is_file():
        raise BoardError(f"{root}: no start script bin/{name}")
    return info


# --------------------------------------------------------------------------------------------
# Small helpers


def copy_project_links(root: Path, release: Path) -> None:
    """In ``root``, a copy of ``release``, replace the symlinks that lead into the project the
    release was built in (how rebar3's and mix's dev-mode releases link their applications)
    by copies, as a board gets them; dangling links (a missing ``priv``) are left out."""
    project = project_of(release.resolve())
    if project is None:
        return
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top) / name
            real = os.path.realpath(path)
            if not path.is_symlink() or not (real + "/").startswith(project.rstrip("/") + "/"):
                continue
            path.unlink()
            if os.path.exists(real):
                _copy_resolved(real, path)


def _copy_resolved(source: str, dest: Path) -> None:
    """Copy ``source`` to ``dest`` following every symlink, leaving dangling ones out."""
    if not os.path.isdir(source):
        shutil.copy2(source, dest)
        return
    dest.mkdir()
    shutil.copystat(source, dest)
    for name in sorted(os.listdir(source)):
        child = os.path.join(source, name)
        if os.path.exists(child):
            _copy_resolved(os.path.realpath(child), dest / name)


def host_otp_lib() -> Path:
    """This machine's OTP libraries (``/usr/lib/erlang/lib`` beside the ``erl`` on PATH)."""
    erl = shutil.which("erl")
    if erl is None:
        raise BoardError("erl is not installed: apt-get install erlang-nox")
    return Path(os.path.realpath(erl)).parents[1] / "lib"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _port_open(port: int) -> bool:
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout=2.0
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def mount_points() -> set[Path]:
    """The mount points of this process's mount namespace."""
    points: set[Path] = set()
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 4:
                # Spaces and the like are octal-escaped (\040).
                raw = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
                points.add(Path(raw))
    return points


def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except OSError:
        return None
    # The command name is in parentheses and may contain anything: split after the last ')'.
    rest = data[data.rfind(")") + 2 :].split()
    return int(rest[1]), rest[0], int(rest[19])


def _descendants(root_pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every process below ``root_pid``, found through /proc."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append((int(entry), stat[2]))
    found: list[tuple[int, int]] = []
    todo = [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _alive(pid: int, start_time: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[2] == start_time and stat[1] not in ("Z", "X")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _find_epmd() -> str:
    found = shutil.which("epmd")
    if found:
        return found
    erl = shutil.which("erl")
    if erl:
        root = Path(erl).resolve().parent.parent
        for candidate in sorted(root.glob("erts-*/bin/epmd"), reverse=True):
            return str(candidate)
    raise BoardError("epmd not found on PATH nor next to erl: is Erlang/OTP installed?")


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file ("" when it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class _Process(Protocol):
    """What the board uses of a process: a :class:`subprocess.Popen`, or one it adopted."""

    pid: int

    def poll(self) -> int | None: ...
    def send_signal(self, sig: int) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


class _Adopted:
    """A process another ``relsync target`` command started (a standing board's node or
    epmd), known by its pid and start time (so a recycled pid is never signalled)."""

    def __init__(self, pid: int, start_time: int) -> None:
        self.pid, self.start_time = pid, start_time

    @classmethod
    def of(cls, proc: _Process | None) -> _Adopted | None:
        """The running ``proc`` as something to find again, or None."""
        stat = _proc_stat(proc.pid) if proc is not None and proc.poll() is None else None
        return None if proc is None or stat is None else cls(proc.pid, stat[2])

    def poll(self) -> int | None:
        return None if _alive(self.pid, self.start_time) else 0

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# The board


class LocalBoard:
    """A release running on this machine from a read-only path, with a writable rw path.

    Use ``board = await LocalBoard.start(release, workdir=...)`` and ``await board.stop()``, or
    ``async with await LocalBoard.start(...) as board: ...``. Its paths are this machine's, so
    ``release_path`` and ``rw_path`` are :class:`Path` objects (``str()`` them to compare with
    the other kinds).
    """

    kind = "local"

    def __init__(
        self,
        *,
        info: ReleaseInfo,
        workdir: Path,
        node: str,
        cookie: str,
        epmd_port: int,
        ready_timeout: float,
    ) -> None:
        self.info = info
        self.workdir = workdir
        self.release_path = workdir / "ro" / "srv" / "erlang"
        self.rw_path = workdir / "data" / "relsync"
        self.run_dir = workdir / "data" / "run"
        self.console_log = workdir / "console.log"
        self.node = node
        self.cookie = cookie
        self.epmd_port = epmd_port
        self.ready_timeout = ready_timeout
        #: Variables the release's vm.args / sys.config use (``relsync target up --env``).
        self.extra_env: dict[str, str] = {}
        #: "bind-mount" (read-only bind mount) or "chmod" (chmod -R a-w; root may still write).
        self.read_only_mode = ""
        #: Whether the release was left writable (see :meth:`start`).
        self.writable = False
        #: The OTP release the node runs (this machine's Erlang), known once it booted.
        self.otp = 0
        # Plain Popen objects (not asyncio ones): the board may be driven from one event loop
        # after another (``asyncio.run`` per call), like the other kinds.
        self._proc: _Process | None = None
        self._epmd: _Process | None = None
        self._mounted = False
        self._stopped = False
        #: Whether the board outlives this process (:meth:`keep`).
        self._kept = False
        #: relsyncd beside the release, once :meth:`enable_ssh` was called.
        self.ssh: SshAccess | None = None

    # -- public API ---------------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        release: Path,
        *,
        workdir: Path,
        node: str | None = None,
        cookie: str | None = None,
        epmd_port: int | None = None,
        ready_timeout: float = READY_TIMEOUT,
        writable: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> LocalBoard:
        """Copies ``release`` into ``workdir``, makes it read-only (unless ``writable``: for
        syncs in place), starts it and waits until the node answers an RPC with the release's
        main application started."""
        release = Path(release).resolve()
        info = read_release_info(release)
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        # A stock release names its node and cookie (relx: vm.args ``-sname myapp``; mix: the
        # release's name, ``releases/COOKIE``): it answers under them, on this board's EPMD.
        board = cls(
            info=info,
            workdir=workdir,
            node=node or release_node(release) or f"board_{secrets.token_hex(4)}@127.0.0.1",
            cookie=cookie or release_cookie(release) or secrets.token_hex(16),
            epmd_port=epmd_port or _free_port(),
            ready_timeout=ready_timeout,
        )
        # The copy is what the node runs: from here on `info` describes the read-only copy.
        board.info = ReleaseInfo(
            root=board.release_path,
            name=info.name,
            version=info.version,
            erts_version=info.erts_version,
            apps=info.apps,
        )
        board.writable = writable
        board.extra_env = dict(env or {})
        try:
            await board._install(release)
            await board._ensure_epmd()
            await board._boot("start")
            otp = await board.rpc("erlang", "system_info", [Atom("otp_release")])
            board.otp = int(str(otp))
        except BaseException:
            await board.stop()
            raise
        return board

    @property
    def id(self) -> str:
        """The board's name: its workdir's."""
        return self.workdir.name

    @property
    def main_app(self) -> str:
        """The application whose start means the release is up."""
        return self.info.main_app

    @property
    def pid(self) -> int | None:
        """OS pid of the running node (the start script execs into beam), None when stopped."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    async def rpc(
        self, mod: str, fun: str, args: list[Term] | None = None, *, timeout: float = 30.0
    ) -> Term:
        """One ``mod:fun(args...)`` call on the node over a fresh distribution connection."""
        call = (mod, fun, args or [])
        return await call_once(self.node, self.cookie, self.epmd_port, call, timeout=timeout)

    async def reboot(self) -> None:
        """Stops the node and starts it again from the untouched read-only release.

        The rw path is kept, ``data/run`` is wiped (like a tmpfs); returns when the node answers
        (and, once ssh was enabled, relsyncd answers on the same port again).
        """
        if self._stopped:
            raise BoardError("board is stopped; start a new one")
        await self._stop_node()
        await self._ensure_epmd()
        await self._boot("reboot")
        if self.ssh is not None:
            await self.enable_ssh(port=self.ssh.port)
        if self._kept:
            self.keep()

    async def power_cut(self) -> None:
        """SIGKILLs the node (no clean shutdown, port programs included) and boots it again."""
        if self._stopped:
            raise BoardError("board is stopped; start a new one")
        await self._stop_node(clean=False)
        await self._ensure_epmd()
        await self._boot("power cut")
        if self.ssh is not None:
            await self.enable_ssh(port=self.ssh.port)
        if self._kept:
            self.keep()

    async def exec(self, *command: str) -> str:
        """Runs a command on the board (this machine) and returns its output."""
        return await run_command(*command)

    async def tree(self, root: str | Path) -> dict[str, str]:
        """Files and symlinks below ``root``: 'file:<sha256>' or 'link:<target>'."""
        return parse_tree(await self.exec("sh", "-c", tree_command(str(root))))

    async def enable_ssh(self, port: int = 0) -> SshAccess:
        """Start relsyncd beside the release (which does not include it); see ``self.ssh``."""
        self.ssh = await start_relsyncd(
            self.rpc,
            key_dir=self.workdir / "ssh",
            ebin=str(await build_relsyncd()),
            allowed_paths=[str(self.release_path), str(self.rw_path)],
            host_key_dir=str(self.workdir / "data" / "relsyncd"),
            port=port,
            extra_libs=[str(host_otp_lib())],  # the board runs on this machine
        )
        return self.ssh

    def keep(self) -> None:
        """Let the board outlive this process (``relsync target up local``): its processes,
        mount and ssh port go to ``workdir/board.json``, where :meth:`attach` finds them."""
        pids = {
            name: [found.pid, found.start_time]
            for name, proc in (("node", self._proc), ("epmd", self._epmd))
            if (found := _Adopted.of(proc)) is not None
        }
        state = {
            "node": self.node, "cookie": self.cookie, "epmd_port": self.epmd_port,
            "otp": self.otp, "mounted": self._mounted, "read_only_mode": self.read_only_mode,
            "pids": pids, "ssh_port": self.ssh.port if self.ssh else None, "env": self.extra_env,
        }  # fmt: skip
        (self.workdir / STATE_FILE).write_text(json.dumps(state))
        self._kept = True

    @classmethod
    def attach(cls, workdir: Path) -> LocalBoard:
        """The board :meth:`keep` recorded in ``workdir`` (another process started it)."""
        try:
            state = json.loads((workdir / STATE_FILE).read_text())
            board = cls(
                info=read_release_info(workdir / "ro" / "srv" / "erlang"), workdir=workdir,
                node=state["node"], cookie=state["cookie"], epmd_port=state["epmd_port"],
                ready_timeout=READY_TIMEOUT,
            )  # fmt: skip
            board.otp, board.extra_env = state["otp"], state["env"]
            board._mounted, board.read_only_mode = state["mounted"], state["read_only_mode"]
            pids = state["pids"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BoardError(f"no local board in {workdir}; see relsync target list") from exc
        board._proc = _Adopted(*pids["node"]) if "node" in pids else None
        board._epmd = _Adopted(*pids["epmd"]) if "epmd" in pids else None
        if state["ssh_port"]:
            identity, _ = ensure_key(workdir / "ssh")
            board.ssh = SshAccess(state["ssh_port"], "relsync", identity,
                                  identity.parent / "known_hosts")  # fmt: skip
        board._kept = True
        return board

    async def stop(self) -> None:
        """Stops the node (and the epmd this board started) and removes the mount. Idempotent."""
        self._stopped = True
        try:
            await self._stop_node()
        finally:
            try:
                await self._release_read_only()
            finally:
                await self._stop_epmd()

    async def __aenter__(self) -> LocalBoard:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The end of the console log, for error messages."""
        return tail(self.console_log, lines)

    # -- read-only release ---------------------------------------------------------------------

    async def _install(self, release: Path) -> None:
        target = self.release_path
        if target in mount_points():
            await run_command("umount", target)
        if target.exists() or target.is_symlink():
            await run_command("chmod", "-R", "u+w", target)
            await run_command("rm", "-rf", target)
        target.parent.mkdir(parents=True, exist_ok=True)
        await run_command("cp", "-a", release, target)
        copy_project_links(target, release)
        if not self.writable:
            await self._make_read_only()

    async def _make_read_only(self) -> None:
        target = self.release_path
        if os.geteuid() == 0:
            try:
                await run_command("mount", "--bind", target, target)
            except BoardError as exc:
                log.warning(
                    "cannot bind-mount %s (%s): falling back to chmod -R a-w, which does not "
                    "stop root from writing into the release",
                    target,
                    exc,
                )
            else:
                self._mounted = True
                await run_command("mount", "-o", "remount,bind,ro", target)
                self.read_only_mode = "bind-mount"
                log.info("release at %s is a read-only bind mount", target)
                return
        else:
            log.info("not root: making %s read-only with chmod -R a-w (no bind mount)", target)
        await run_command("chmod", "-R", "a-w", target)
        self.read_only_mode = "chmod"

    async def _release_read_only(self) -> None:
        target = self.release_path
        if self._mounted:
            last: BoardError | None = None
            for _attempt in range(50):
                try:
                    await run_command("umount", target)
                    break
                except BoardError as exc:
                    if target not in mount_points():
                        break
                    last = exc
                    await asyncio.sleep(0.1)  # busy: something still has a file open
            else:
                log.warning("umount %s keeps failing (%s): lazy unmount", target, last)
                await run_command("umount", "-l", target)
            self._mounted = False
        elif self.read_only_mode == "chmod" and target.exists():
            # Let whoever cleans up workdir delete the copy.
            await run_command("chmod", "-R", "u+w", target)
            self.read_only_mode = ""

    # -- epmd ------------------------------------------------------------------------------------

    async def _ensure_epmd(self) -> None:
        if await _port_open(self.epmd_port):
            return
        if self._epmd is not None and self._epmd.poll() is None:
            self._epmd.kill()
            await _exit_status(self._epmd)
        epmd_log = self.workdir / "epmd.log"
        env = dict(os.environ, ERL_EPMD_ADDRESS="127.0.0.1")
        with open(epmd_log, "ab") as out:
            self._epmd = subprocess.Popen(
                [_find_epmd(), "-port", str(self.epmd_port)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while not await _port_open(self.epmd_port):
            if self._epmd.poll() is not None or loop.time() > deadline:
                raise BoardError(
                    f"epmd on port {self.epmd_port} did not come up:\n{tail(epmd_log)}"
                )
            await asyncio.sleep(0.05)
        log.info("started epmd on 127.0.0.1:%d", self.epmd_port)

    async def _stop_epmd(self) -> None:
        proc, self._epmd = self._epmd, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(_exit_status(proc), timeout=5.0)
        except TimeoutError:
            proc.kill()
            await _exit_status(proc)

    # -- the node --------------------------------------------------------------------------------

    def _node_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _SCRUBBED_ENV and not k.startswith(("RELSYNC_", "RELEASE_"))
        }
        run = self.run_dir
        zflags = env.get("ERL_ZFLAGS", "")
        env.update(self.extra_env)
        env.update(
            RELSYNC_NODE=self.node,
            RELSYNC_COOKIE=self.cookie,
            RELSYNC_EPMD_PORT=str(self.epmd_port),
            RELSYNC_RELEASE_DIR=str(self.release_path),
            RELSYNC_RUN_DIR=str(run),
            RELSYNC_DATA_DIR=str(self.workdir / "data"),
            # The script cd's into the release root, where a crash dump would go by default.
            ERL_CRASH_DUMP=str(run / "erl_crash.dump"),
            HOME=str(run / "home"),
            # Distribution only on loopback.
            ERL_ZFLAGS=f"{zflags} -kernel inet_dist_use_interface {{127,0,0,1}}".strip(),
        )
        return env

    async def _boot(self, why: str) -> None:
        run = self.run_dir
        if run.exists():
            await run_command("rm", "-rf", run)
        for d in (run / "out", run / "log", run / "home", self.rw_path):
            d.mkdir(parents=True, exist_ok=True)
        # For releases whose vm.args has no -setcookie: the VM then reads $HOME/.erlang.cookie.
        cookie_file = run / "home" / ".erlang.cookie"
        cookie_file.write_text(self.cookie)
        cookie_file.chmod(0o400)
        script = self.info.start_script
        with open(self.console_log, "ab") as out:
            out.write(
                f"==== relsync local board {why}: {script} "
                f"(node {self.node}, epmd port {self.epmd_port}) ====\n".encode()
            )
            out.flush()
            # The boards' shared boot script: the node's name and cookie are the board's, the
            # release's ${VARIABLES} come from the environment; it execs the start script.
            self._proc = subprocess.Popen(
                [str(harness_root() / "targets" / "common" / "relsync-boot")],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self._node_env(), cwd=str(run), start_new_session=True,
            )  # fmt: skip
        exited = asyncio.ensure_future(_exit_status(self._proc))
        try:
            async with phase(f"booting {self.id}"):
                await wait_ready(
                    self.node, self.cookie, self.epmd_port, self.info.main_app,
                    timeout=self.ready_timeout, died=exited,
                    describe=lambda: f"end of {self.console_log}:\n{self.log_tail()}",
                )  # fmt: skip
        finally:
            await cancel(exited)

    async def _stop_node(self, *, clean: bool = True) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pid = proc.pid
        # Port programs may run in sessions of their own: remember them to kill stragglers.
        tree = _descendants(pid) if proc.poll() is None else []
        if proc.poll() is None and not clean:
            _signal_group(pid, signal.SIGKILL)
            for child, _start in tree:  # port programs in sessions of their own
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(child, signal.SIGKILL)
            await _exit_status(proc)
        if proc.poll() is None:
            # The VM handles SIGTERM as init:stop(): a clean shutdown that closes its ports.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(_exit_status(proc), timeout=STOP_TIMEOUT)
            except TimeoutError:
                log.warning("node %s ignored SIGTERM for %gs: killing it", self.node, STOP_TIMEOUT)
                _signal_group(pid, signal.SIGKILL)
                await _exit_status(proc)
        _signal_group(pid, signal.SIGKILL)
        await _reap(tree)


async def _exit_status(proc: _Process) -> int:
    """Waits for a process started with Popen to exit (from any event loop); its status."""
    while (status := proc.poll()) is None:
        await asyncio.sleep(0.05)
    return status


async def _reap(processes: Iterable[tuple[int, int]]) -> None:
    """Waits (bounded) for former descendants to go; SIGKILLs those that stay."""
    left = list(processes)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    while left and loop.time() < deadline:
        left = [p for p in left if _alive(*p)]
        if left:
            await asyncio.sleep(0.05)
    for pid, start_time in left:
        if _alive(pid, start_time):
            log.warning("killing leftover process %d of the board", pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
