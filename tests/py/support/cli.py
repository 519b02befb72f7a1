"""Running the real relsync command line against a board, as a user would."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Protocol

from relsync.harness.relsyncd import SshAccess


class Board(Protocol):
    """What the command line needs to know about a board, whatever its kind."""

    node: str
    cookie: str
    epmd_port: int
    ssh: SshAccess | None

    @property
    def release_path(self) -> Path | str: ...


class Run:
    """One relsync invocation's outcome."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err
        self.report: dict[str, Any] = json.loads(out) if out.startswith("{") else {}


async def relsync(
    board: Board,
    local: Path,
    *args: str,
    mode: str | None = None,
    cookie: str | None = None,
    node: str | None = None,
) -> Run:
    """Run the relsync command line against ``board``.

    ``mode`` defaults to ssh when the board has relsyncd (and no cookie or node is forced).
    """
    mode = mode or ("ssh" if board.ssh is not None and not (cookie or node) else "erl")
    if mode == "erl":
        target = ["-d", node or board.node, "-c", cookie or board.cookie,
                  "--epmd-port", str(board.epmd_port)]  # fmt: skip
    else:
        ssh = board.ssh
        assert ssh is not None
        target = ["-M", "ssh", "-d", "127.0.0.1", "-P", str(ssh.port), "-u", ssh.user,
                  "-i", str(ssh.identity), "--known-hosts", str(ssh.known_hosts),
                  "--accept-new-host-key"]  # fmt: skip
    argv = [*target, "-p", str(board.release_path), "-l", str(local), *args]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relsync.cli", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())
