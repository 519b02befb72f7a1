"""A Debian trixie root filesystem with OTP 27, and real OTP 27 nodes running inside it.

No Docker: ``mmdebstrap`` builds a minimal trixie tree once (``erlang-base`` and
``erlang-crypto`` only, about 30 s and 160 MiB), cached outside the repository in
``$XDG_CACHE_HOME/relsync/rootfs/trixie-otp`` (default ``~/.cache/...``). Nodes run as
``chroot DIR /usr/bin/erl ...``: same network namespace as the host, so 127.0.0.1 and the
tests' EPMD (``ERL_EPMD_PORT``) are shared. The VM needs neither /proc nor /dev mounted in
there (the tree carries its own /dev nodes), so nothing is mounted and nothing needs cleaning
up. Not root, an existing tree still runs through ``unshare --map-root-user chroot``.

    python tests/py/support/otp_rootfs.py     # build (as root) or print how to, then exit
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``support`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.erlnode import DEFAULT_COOKIE, ErlNode, unique_name

SUITE = "trixie"
PACKAGES = ("erlang-base", "erlang-crypto")
ROOTFS_NAME = "trixie-otp"
#: What a tree must hold to count as complete (besides the packages being installed).
_NEEDED = ("usr/bin/erl", "bin/sh", "dev/null", "tmp")
BUILD_TIMEOUT = 1800.0


class RootfsUnavailable(RuntimeError):
    """The OTP 27 tree is missing and cannot be built here; the message says how to build it."""


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/relsync/rootfs`` (default ``~/.cache/relsync/rootfs``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "relsync" / "rootfs"


def mmdebstrap_command(target: str | Path) -> list[str]:
    """The exact ``mmdebstrap`` call that builds the tree into ``target``."""
    return [
        "mmdebstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(target),
    ]


def manual_commands(path: Path) -> str:
    """Shell commands a non-root user runs once to build the tree at ``path``."""
    building = path.with_name(path.name + ".build")
    q = shlex.quote
    return "\n".join(
        [
            f"  mkdir -p {q(str(path.parent))}",
            "  sudo apt-get install -y mmdebstrap",
            f"  sudo rm -rf {q(str(building))} {q(str(path))}",
            f"  sudo {shlex.join(mmdebstrap_command(building))}",
            f"  sudo mv {q(str(building))} {q(str(path))}",
        ]
    )


def installed_versions(path: Path) -> dict[str, str]:
    """Versions of :data:`PACKAGES` installed in the tree (read from its dpkg database)."""
    admindir = path / "var" / "lib" / "dpkg"
    if not (admindir / "status").is_file():
        return {}
    done = subprocess.run(
        ["dpkg-query", f"--admindir={admindir}", "-W", "-f", "${Package} ${Status} ${Version}\n",
         *PACKAGES],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    versions = {}
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) == 5 and fields[1:4] == ["install", "ok", "installed"]:
            versions[fields[0]] = fields[4]
    return versions


def _complete(path: Path) -> dict[str, str] | None:
    if not all((path / p).exists() for p in _NEEDED):
        return None
    versions = installed_versions(path)
    return versions if set(versions) == set(PACKAGES) else None


def _du(path: Path) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[4] for line in lines if len(line.split()) > 4]
    return [p for p in points if (p + "/").startswith(prefix)]


def _remove_tree(path: Path) -> None:
    """rm -rf a (partial) tree, refusing if anything is mounted inside it."""
    if not path.exists() and not path.is_symlink():
        return
    mounted = _mounts_under(path)
    if mounted:
        raise RootfsUnavailable(f"refusing to delete {path}: still mounted there: {mounted}")
    shutil.rmtree(path)


def _run(argv: Sequence[str], log: Path, timeout: float) -> int:
    with open(log, "ab") as out:
        out.write(f"$ {shlex.join(argv)}\n".encode())
        out.flush()
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            timeout=timeout, check=False,
        )  # fmt: skip
    return done.returncode


def _tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def ensure_mmdebstrap(log: Path) -> str:
    """Path of ``mmdebstrap``, installing Debian's package first when missing (root only)."""
    found = shutil.which("mmdebstrap")
    if found:
        return found
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "mmdebstrap"]
    if _run(install, log, 900) != 0:  # maybe stale package lists: update once and retry
        _run(["apt-get", "update", "-q"], log, 900)
        _run(install, log, 900)
    found = shutil.which("mmdebstrap")
    if not found:
        raise RootfsUnavailable(
            f"could not install mmdebstrap with {shlex.join(install)}:\n{_tail(log)}"
        )
    return found


@dataclass(frozen=True)
class Rootfs:
    """A complete OTP tree: where it is, what is in it, and how to run commands inside it."""

    path: Path
    versions: dict[str, str]
    #: Filled in when this call built the tree; None when it came from the cache.
    build_seconds: float | None = None

    @property
    def erlang_version(self) -> str:
        """Debian version of ``erlang-base`` in the tree, e.g. ``1:27.3.4.1+dfsg-1+deb13u4``."""
        return self.versions["erlang-base"]

    @property
    def command_prefix(self) -> list[str]:
        """Prepend to a command (absolute paths inside the tree) to run it in there."""
        if os.geteuid() == 0:
            return ["chroot", str(self.path)]
        # Not root: a user namespace of our own (network namespace still shared).
        return ["unshare", "--map-root-user", "chroot", str(self.path)]

    def host_path(self, inside: str) -> Path:
        """Where the in-tree absolute path ``inside`` is on this side."""
        return self.path / inside.lstrip("/")

    @contextlib.contextmanager
    def scratch_dir(self, prefix: str = "relsync-") -> Iterator[str]:
        """A fresh directory under the tree's /tmp, as an in-tree path; removed afterwards."""
        host = Path(tempfile.mkdtemp(prefix=prefix, dir=self.host_path("/tmp")))
        try:
            yield "/tmp/" + host.name
        finally:
            shutil.rmtree(host, ignore_errors=True)


def ensure_rootfs(cache_root: Path | None = None) -> Rootfs:
    """The cached trixie/OTP tree, built first when missing or incomplete.

    Building needs root (it installs mmdebstrap when missing); otherwise this raises
    :class:`RootfsUnavailable` naming the commands to run. Parallel callers wait on a lock;
    the tree is built in a temporary directory and renamed into place, and the installed
    package versions (with build time and size) are recorded in ``trixie-otp.json`` beside it.
    """
    root = cache_root or default_cache_root()
    path = root / ROOTFS_NAME
    meta = root / f"{ROOTFS_NAME}.json"
    versions = _complete(path)
    if versions is not None:
        _record(meta, versions, None, path)
        return Rootfs(path, versions)
    if os.geteuid() != 0:
        raise RootfsUnavailable(
            f"no complete Debian {SUITE} tree with OTP at {path}, and building one needs root. "
            f"Run once:\n{manual_commands(path)}"
        )
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{ROOTFS_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        versions = _complete(path)  # built by someone else while we waited?
        if versions is not None:
            return Rootfs(path, versions)
        log = root / f"{ROOTFS_NAME}.log"
        log.write_text("")
        ensure_mmdebstrap(log)
        work = Path(tempfile.mkdtemp(prefix=f".{ROOTFS_NAME}.build-", dir=root))
        try:
            target = work / "rootfs"
            started = time.monotonic()
            code = _run(mmdebstrap_command(target), log, BUILD_TIMEOUT)
            seconds = time.monotonic() - started
            versions = _complete(target) if code == 0 else None
            if versions is None:
                raise RootfsUnavailable(
                    f"{shlex.join(mmdebstrap_command(target))} failed (exit {code}); "
                    f"log {log}:\n{_tail(log)}"
                )
            _remove_tree(path)  # an incomplete leftover
            target.rename(path)
        finally:
            _remove_tree(work)
        _record(meta, versions, seconds, path)
        return Rootfs(path, versions, seconds)


def _record(meta: Path, versions: dict[str, str], seconds: float | None, path: Path) -> None:
    """Write ``meta`` (atomically) unless it already says the same versions."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(meta.read_text()).get("packages") == versions and seconds is None:
            return
    info = {"suite": SUITE, "path": str(path), "packages": versions,
            "build_seconds": None if seconds is None else round(seconds, 1),
            "size_bytes": _du(path), "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    with contextlib.suppress(OSError):  # a tree built by root, read by a user: not fatal
        tmp = meta.with_name(f".{meta.name}.{os.getpid()}")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(meta)


@contextlib.contextmanager
def running_node(
    rootfs: Rootfs,
    *,
    epmd_port: int,
    workdir: Path,
    name: str | None = None,
    cookie: str = DEFAULT_COOKIE,
    **kwargs: object,
) -> Iterator[ErlNode]:
    """Run ``erl -name NAME@127.0.0.1`` inside ``rootfs``, ready to answer; stop it afterwards.

    Its HOME is a fresh directory under the tree's /tmp (so the VM reads no host dotfiles),
    removed at the end; the log is ``workdir/erl.log`` on this side. Other keywords go to
    :meth:`ErlNode.start`.
    """
    name = name or unique_name("otp")
    with rootfs.scratch_dir(f"home-{name}-") as home:
        node = ErlNode.start(
            epmd_port=epmd_port,
            name=name,
            cookie=cookie,
            workdir=workdir,
            erl="/usr/bin/erl",
            command_prefix=rootfs.command_prefix,
            env={"HOME": home},
            **kwargs,  # type: ignore[arg-type]
        )
        try:
            yield node
        finally:
            node.stop()


def main() -> int:
    """Build (or find) the cached tree and print what it holds."""
    try:
        fs = ensure_rootfs()
    except RootfsUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    took = "cached" if fs.build_seconds is None else f"built in {fs.build_seconds:.1f} s"
    size = _du(fs.path) / 2**20
    print(f"{fs.path}: erlang-base {fs.erlang_version}, {size:.0f} MiB, {took}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
