"""Running the real relsync command line against a board, as a user would (any board kind)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Protocol

from relsync.harness.relsyncd import SshAccess

#: Limit for one relsync run (a sync of the example release takes seconds, on ARM too).
RUN_TIMEOUT = 300.0


class Target(Protocol):
    """What the command line needs to know about a board, whatever its kind."""

    node: str
    cookie: str
    epmd_port: int
    ssh: SshAccess | None

    @property
    def release_path(self) -> Path | str: ...


class Run:
    """One relsync invocation's outcome: ``json`` is what ``--json`` printed (or {}),
    ``report`` its one board's report (``json["boards"][0]``; the whole object when it names
    several boards or none)."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err
        self.json: dict[str, Any] = json.loads(out) if out.startswith("{") else {}
        boards = self.json.get("boards", [])
        self.report: dict[str, Any] = boards[0] if len(boards) == 1 else self.json

    def __repr__(self) -> str:
        return f"Run(code={self.code}, err={self.err.strip()!r})"


def cli_argv(
    board: Target,
    local: Path,
    *args: str,
    mode: str,
    cookie: str | None = None,
    node: str | None = None,
) -> list[str]:
    """The ``python -m relsync.cli`` command line syncing ``local`` to ``board`` over ``mode``
    (``erl`` or ``ssh``), followed by ``args``."""
    if mode == "erl":
        target = ["-d", node or board.node, "-c", cookie or board.cookie,
                  "--epmd-port", str(board.epmd_port)]  # fmt: skip
    else:
        ssh = board.ssh
        if ssh is None:
            raise ValueError("ssh mode on a board without relsyncd")
        target = ["-M", "ssh", "-d", "127.0.0.1", "-P", str(ssh.port), "-u", ssh.user,
                  "-i", str(ssh.identity), "--known-hosts", str(ssh.known_hosts),
                  "--accept-new-host-key"]  # fmt: skip
    argv = [*target, "-p", str(board.release_path), "-l", str(local), *args]
    return [sys.executable, "-m", "relsync.cli", *argv]


async def run_relsync(
    board: Target,
    local: Path,
    *args: str,
    mode: str | None = None,
    cookie: str | None = None,
    node: str | None = None,
) -> Run:
    """Run the relsync command line against ``board`` to its end.

    ``mode`` defaults to ssh when the board has relsyncd (and no cookie or node is forced).
    """
    mode = mode or ("ssh" if board.ssh is not None and not (cookie or node) else "erl")
    argv = cli_argv(board, local, *args, mode=mode, cookie=cookie, node=node)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())
