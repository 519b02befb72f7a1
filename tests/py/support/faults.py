"""Fault injection around the real relsync command line: start it as a process that a test can
SIGKILL at a chosen moment, spread such moments over a sync, and tell what a shadow tree should
hold (``expected_shadow``) and whether one holds only complete files (``check_tree``). Shared by
``integration/test_faults.py`` (local board) and ``e2e/test_scenarios.py`` (every board kind)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from pathlib import Path

from relsync.harness.client import cli_argv
from relsync.plan import SHADOW_MARKER, is_temp
from relsync.release import OTP_APPS
from relsync.target import TEMP_PREFIX as TMP_PREFIX

__all__ = ["TMP_PREFIX", "cli_argv", "is_temp"]

#: Share of the cut points spread over the start of the command (before it touches the target).
EARLY_SHARE = 0.1
#: Cut points reach this far past the start of the sync, relative to its clean duration.
OVERRUN = 1.15


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


async def kill_when_paused(argv: list[str], point: str) -> str:
    """Run ``argv`` with ``RELSYNC_PAUSE_AT=point``; SIGKILL it once it says it paused there.
    Returns its stderr up to then (it fails the test when it ends without pausing)."""
    env = {**os.environ, "RELSYNC_PAUSE_AT": point}
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    said = b""
    while f"relsync: paused at {point}\n".encode() not in said:
        line = await asyncio.wait_for(proc.stderr.readline(), timeout=120)
        assert line, f"relsync ended (exit {await proc.wait()}) without pausing: {said!r}"
        said += line
    proc.kill()
    await proc.wait()
    return said.decode()


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


def tree(root: Path) -> dict[str, str]:
    """Every entry below root on this machine: 'file:<sha>' for files, 'link:<target>' for
    symlinks, 'tmp' for relsync's temporary files. The board may still be writing: what
    vanishes is left out."""
    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if Path(dirpath, d).is_symlink()]:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if name.startswith(TMP_PREFIX):
                out[rel] = "tmp"
                continue
            with contextlib.suppress(FileNotFoundError):
                out[rel] = f"link:{os.readlink(path)}" if path.is_symlink() else f"file:{sha(path)}"
    return out


def without_tmp(entries: dict[str, str]) -> dict[str, str]:
    """A tree (from :func:`tree` or a board's ``tree()``) without relsync's temporary files."""
    return {r: e for r, e in entries.items() if e != "tmp" and not is_temp(r)}


def system_lib(rel: str) -> str | None:
    """``lib/<otp app>-<vsn>`` when ``rel`` lies in one of OTP's own libraries."""
    parts = rel.split("/")
    if parts[0] == "lib" and len(parts) > 2 and parts[1].rsplit("-", 1)[0] in OTP_APPS:
        return "/".join(parts[:2])
    return None


def expected_shadow(
    release: Path | str, base: dict[str, str], new: dict[str, str]
) -> dict[str, str]:
    """The shadow tree a clean sync of ``new`` builds over the board's ``base`` release (the
    plan's rules: changed and added files are real, unchanged ones and files outside lib/ that
    the new release lacks are links, each excluded system lib is one directory link;
    relsync's marker links to the release)."""
    out: dict[str, str] = {SHADOW_MARKER: f"link:{release}"}
    for rel in new.keys() | {r for r in base if not r.startswith("lib/")}:
        if (lib := system_lib(rel)) is not None:
            out[lib] = f"link:{release}/{lib}"
        elif rel not in new or base.get(rel) == new[rel]:
            out[rel] = f"link:{release}/{rel}"
        else:
            out[rel] = f"file:{new[rel]}"
    return out


def check_tree(
    entries: dict[str, str], release: Path | str, known: list[dict[str, str]], when: str
) -> None:
    """No half-written file in a shadow tree: every file is byte-identical to one of the
    ``known`` versions of its path, every link points at that path in the release."""
    for rel, entry in without_tmp(entries).items():
        kind, _, value = entry.partition(":")
        if kind == "link":
            want = str(release) if rel == SHADOW_MARKER else f"{release}/{rel}"
            assert value == want, f"{when}: {rel} -> {value}"
        else:
            assert value in {k.get(rel) for k in known}, (
                f"{when}: {rel} in the shadow tree is no known version (half-written?)"
            )


def cut_offsets(count: int, start: float, end: float) -> list[float]:
    """``count`` kill times: a few over the command's start-up (``0..start``), the rest evenly
    over the sync itself (``start..end``) and a little past its usual end, as files are
    renamed into place and modules reloaded in its last milliseconds."""
    early = max(1, round(count * EARLY_SHARE))
    late = count - early
    end = start + (end - start) * OVERRUN
    return [start * (i + 0.5) / early for i in range(early)] + [
        start + (end - start) * (i + 0.5) / late for i in range(late)
    ]


def phase(killed: bool, reloaded: bool, written: int) -> str:
    """Where a kill hit the sync, for the summary a fault test prints."""
    if not killed:
        return "finished before the kill"
    if reloaded:
        return "killed after the reload"
    return "killed before a file was replaced" if written == 0 else "killed after replacing files"
