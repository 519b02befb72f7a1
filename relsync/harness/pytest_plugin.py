"""pytest fixtures for emulated boards (registered as the ``relsync`` pytest plugin).

``docker_board(release, otp=27, ssh=True)`` starts a docker-otp board and removes it after the
test. Board methods open a fresh connection per call, so a test may use them from any event
loop: ``asyncio.run(board.rpc("erlang", "node", []))``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relsync.harness.docker import DockerBoard


@pytest.fixture
def docker_board(tmp_path: Path) -> Iterator[Callable[..., DockerBoard]]:
    """A factory of docker-otp boards, all removed when the test ends."""
    boards: list[DockerBoard] = []

    def start(release: Path, otp: int = 27, ssh: bool = True) -> DockerBoard:
        board = asyncio.run(
            DockerBoard.start(release, otp=otp, workdir=tmp_path / "boards", ssh=ssh)
        )
        boards.append(board)
        return board

    yield start
    for board in boards:
        asyncio.run(board.stop())
