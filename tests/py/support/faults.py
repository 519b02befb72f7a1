"""Fault injection around the real relsync command line: start it as a process that a test can
SIGKILL at a chosen moment, and look at a board's files the way its VM would see them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
from pathlib import Path

from support.cli import Board

TMP_PREFIX = ".relsync-tmp."


def cli_argv(board: Board, local: Path, *args: str, mode: str) -> list[str]:
    """The ``python -m relsync.cli`` command line that :func:`support.cli.relsync` runs."""
    if mode == "erl":
        target = ["-d", board.node, "-c", board.cookie, "--epmd-port", str(board.epmd_port)]
    else:
        ssh = board.ssh
        assert ssh is not None
        target = ["-M", "ssh", "-d", "127.0.0.1", "-P", str(ssh.port), "-u", ssh.user,
                  "-i", str(ssh.identity), "--known-hosts", str(ssh.known_hosts),
                  "--accept-new-host-key"]  # fmt: skip
    argv = [*target, "-p", str(board.release_path), "-l", str(local), *args]
    return [sys.executable, "-m", "relsync.cli", *argv]


async def run_and_kill(argv: list[str], after: float) -> tuple[bool, float]:
    """Run ``argv``; SIGKILL it ``after`` seconds after it was started, unless it ended first.

    Returns (killed, seconds it ran).
    """
    loop = asyncio.get_running_loop()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    started = loop.time()
    try:
        await asyncio.wait_for(proc.wait(), after)
        return False, loop.time() - started
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):  # it may end just as the timer fires
            proc.kill()
        await proc.wait()
        return True, loop.time() - started


async def timed(argv: list[str]) -> tuple[int, float, str]:
    """Run ``argv`` to the end: (exit code, seconds, stderr)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, loop.time() - started, err.decode()


def sha(path: Path) -> str:
    """SHA-256 of a file's bytes (following symlinks)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def release_files(root: Path) -> dict[str, str]:
    """Every regular file of a local release below lib/, releases/ and bin/: rel -> sha256."""
    out: dict[str, str] = {}
    for top in ("lib", "releases", "bin"):
        for dirpath, _dirs, files in os.walk(root / top):
            for name in files:
                path = Path(dirpath, name)
                if not path.is_symlink():
                    out[path.relative_to(root).as_posix()] = sha(path)
    return out


def tmp_leftovers(root: Path) -> list[str]:
    """Relative paths of relsync's temporary files below ``root``."""
    return sorted(
        Path(dirpath, name).relative_to(root).as_posix()
        for dirpath, dirs, files in os.walk(root)
        for name in files + dirs
        if name.startswith(TMP_PREFIX)
    )


def port_programs(under: Path) -> dict[int, str]:
    """Running processes whose executable lies below ``under``: pid -> /proc/pid/exe text."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                exe = os.readlink(f"/proc/{entry}/exe")
            except OSError:
                continue
            if exe.startswith(f"{under}/"):
                found[int(entry)] = exe
    return found
