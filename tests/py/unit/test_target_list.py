"""``relsync target list`` without the Docker SDK (issue 32)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relsync import board_command
from relsync.harness.docker import DockerBoard
from relsync.harness.ready import BoardError


def test_list_without_docker_lists_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def no_sdk() -> list[str]:
        raise BoardError("the docker-otp boards need the Docker SDK")

    monkeypatch.setattr(DockerBoard, "list_ids", no_sdk)
    monkeypatch.setattr(board_command, "BOARDS_DIR", tmp_path)  # no board of the other kinds
    assert board_command.main(["list", "--json"]) == 0
    out, err = capsys.readouterr()
    assert out == "[]\n" and err.count("\n") == 1 and "docker boards not listed" in err
