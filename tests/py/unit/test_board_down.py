"""``relsync target down`` removes a docker-otp board's files on this machine with it (its
snapshot of the release, its keys, its console log), not only the container."""

from __future__ import annotations

from pathlib import Path

import pytest

from relsync import board_command
from relsync.harness.docker import DockerBoard


def test_down_removes_a_docker_boards_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "boards" / "relsync-docker-1"
    (workdir / "ssh").mkdir(parents=True)
    (workdir / "console.log").write_text("booted\n")
    board = DockerBoard(name="relsync-docker-1", otp=27, main_app="demo", cookie="c",
                        ports=[1, 2, 3], workdir=workdir, ssh=True)  # fmt: skip
    stopped: list[str] = []

    async def found(ident: str) -> DockerBoard:
        return board

    async def stop() -> None:  # no Docker engine here: the container part is not under test
        stopped.append(board.id)

    monkeypatch.setattr(board_command, "_find", found)
    monkeypatch.setattr(board, "stop", stop)
    assert board_command.main(["down", "relsync-docker-1"]) == 0
    assert stopped == ["relsync-docker-1"] and not workdir.exists()
    assert "removed" in capsys.readouterr().out
