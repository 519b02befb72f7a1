"""Every board kind behind one small API, and a factory that starts a board of a given kind.

Kinds: ``local`` (this machine, :class:`~relsync.harness.local.LocalBoard`), ``docker-otp-25``
and ``docker-otp-27`` (:class:`~relsync.harness.docker.DockerBoard`; ``docker-otp`` picks the
OTP from the release), ``qemu-arm`` (:class:`~relsync.harness.qemu.QemuBoard`, OTP 25, armhf).
Every method opens fresh connections, so a board may be driven from any event loop.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from relsync.erldist.etf import Term
from relsync.errors import UsageError
from relsync.harness import docker, qemu
from relsync.harness.example import build_example_release
from relsync.harness.local import LocalBoard, read_release_info
from relsync.harness.ready import BoardError
from relsync.harness.relsyncd import SshAccess

#: The board kinds users pick from (``--relsync-target``, ``relsync validate --target``).
TARGETS = ("local", "docker-otp", "qemu-arm")
#: Those ``relsync target up`` leaves running after it exits (a local board ends with it).
STANDING = ("docker-otp", "qemu-arm")
#: Every kind the end-to-end suite runs on: docker-otp at each OTP it has an image for.
KINDS = ("local", "docker-otp-25", "docker-otp-27", "qemu-arm")
#: ERTS major version -> OTP release, to pick a board image matching a release.
ERTS_TO_OTP = {"13": 25, "14": 26, "15": 27}
#: The board options ``relsync validate`` (``--NAME``) and the pytest plugin
#: (``--relsync-NAME``) share: name -> keyword arguments of ``add_argument``/``addoption``.
BOARD_OPTIONS: dict[str, dict[str, Any]] = {
    "target": {"choices": TARGETS, "default": "local", "help": "board kind (default: local)"},
    "otp": {"type": int, "choices": (25, 27),
            "help": "docker-otp: the board's OTP (default: the release's)"},
    "mode": {"choices": ("erl", "ssh"), "default": "erl",
             "help": "how relsync reaches the board (default: erl)"},
    "env": {"action": "append", "default": [], "metavar": "NAME=VALUE",
            "help": "a variable the release's vm.args / sys.config use (${NAME}); repeatable"},
}  # fmt: skip


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``--env NAME=VALUE`` options as a dict (a pair without ``=`` is a usage error)."""
    env: dict[str, str] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name.isidentifier():
            raise UsageError(f"--env {pair}: expected NAME=VALUE")
        env[name] = value
    return env


class EmulatedBoard(Protocol):
    """What every emulated board kind offers."""

    kind: str
    node: str
    cookie: str
    epmd_port: int
    otp: int
    console_log: Path
    ssh: SshAccess | None

    @property
    def id(self) -> str: ...
    @property
    def main_app(self) -> str: ...
    @property
    def release_path(self) -> Path | str: ...
    @property
    def rw_path(self) -> Path | str: ...

    async def rpc(self, mod: str, fun: str, args: list[Term] | None = None) -> Term: ...
    async def exec(self, *command: str) -> str: ...
    async def tree(self, root: str) -> dict[str, str]: ...
    async def reboot(self) -> None: ...
    async def power_cut(self) -> None: ...
    async def stop(self) -> None: ...


def otp_of(release: Path) -> int:
    """The OTP release ``release`` was built with (from its ERTS version), one there are
    docker-otp boards for."""
    erts = read_release_info(release).erts_version.split(".")[0]
    otp = ERTS_TO_OTP.get(erts)
    if otp not in (25, 27):
        raise UsageError(
            f"{release} was built with ERTS {erts}; there are boards for OTP 25 and 27 only: "
            "rebuild it with one of those"
        )
    return otp


def check_otp(release: Path, kind: str, board_otp: int) -> None:
    """Refuse, before anything boots, a release built with another OTP than the board runs."""
    built = otp_of(release)
    if built != board_otp:
        raise UsageError(
            f"{release.name} was built with OTP {built} and the {kind} board runs OTP "
            f"{board_otp}: rebuild the release with OTP {board_otp}"
            + (f", or use a docker-otp board with --otp {built}" if kind != "qemu-arm" else "")
        )


def _docker_otp(kind: str, release: Path, otp: int | None) -> int:
    """The OTP of a docker-otp board: the kind's (``docker-otp-27``), ``otp``, or the release's."""
    return int(kind.rsplit("-", 1)[1]) if kind != "docker-otp" else otp or otp_of(release)


def check_release(kind: str, release: Path, otp: int | None = None) -> None:
    """Refuse a release a board of ``kind`` cannot run, before anything boots (one error)."""
    if kind.startswith("docker-otp"):
        check_otp(release, "docker-otp", _docker_otp(kind, release, otp))
    elif kind == "qemu-arm":
        check_otp(release, kind, qemu.QemuBoard.otp)


async def example_release(kind: str) -> Path:
    """The example release built for ``kind``: this machine's OTP for ``local`` and
    ``docker-otp-25``, OTP 27 in a builder image, armhf (cross-compiled port) for qemu-arm."""
    if kind in ("local", "docker-otp-25"):
        return build_example_release()
    if kind == "docker-otp-27":
        return await docker.example_release(27)
    if kind == "qemu-arm":
        return await qemu.example_release()
    raise BoardError(f"unknown board kind {kind!r}; choose one of {', '.join(KINDS)}")


def port_cc(kind: str) -> str:
    """The C compiler that builds port programs for ``kind``."""
    return qemu.CROSS_CC if kind == "qemu-arm" else "cc"


async def start_board(
    kind: str,
    release: Path,
    *,
    workdir: Path,
    ssh: bool = True,
    otp: int | None = None,
    env: Mapping[str, str] | None = None,
) -> EmulatedBoard:
    """Boot a board of ``kind`` running ``release`` read-only; return when it answers.

    ``ssh``: also start relsyncd beside the release (ssh mode). ``otp`` only matters for
    ``docker-otp`` (default: the release's own). ``env``: variables the release's vm.args /
    sys.config use (``${NAME}``). A release built with another OTP than the board's is refused
    before anything boots.
    """
    check_release(kind, release, otp)
    workdir.mkdir(parents=True, exist_ok=True)
    if kind == "local":
        where = workdir / f"relsync-local-{secrets.token_hex(4)}"
        board = await LocalBoard.start(release, workdir=where, env=env)
        if ssh:
            try:
                await board.enable_ssh()
            except BaseException:
                await board.stop()
                raise
        return board
    if kind.startswith("docker-otp"):
        return await docker.DockerBoard.start(
            release, otp=_docker_otp(kind, release, otp), workdir=workdir, ssh=ssh, env=env
        )
    if kind == "qemu-arm":
        return await qemu.QemuBoard.start(release, workdir=workdir, ssh=ssh, env=env)
    raise BoardError(f"unknown board kind {kind!r}; choose one of {', '.join(KINDS)}")
