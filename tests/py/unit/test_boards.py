"""Targets files: boards with their own settings, and one-line errors for bad entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from relsync.boards import Board, boards_from_file
from relsync.errors import UsageError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relsync.toml"
    path.write_text(text)
    return path


def test_boards_with_their_own_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_COOKIE", "s3cret")
    path = write(
        tmp_path,
        """
[[board]]
node = "a@192.0.2.7"
cookie_env = "BENCH_COOKIE"
epmd_port = 4370

[[board]]
mode = "ssh"
host = "192.0.2.8"
port = 2229
identity = "~/.ssh/board"
destination_rw_path = "/root/relsync"
""",
    )
    assert boards_from_file(path, "erl") == [
        Board("a@192.0.2.7", "erl", cookie="s3cret", epmd_port=4370),
        Board("192.0.2.8", "ssh", port=2229, identity="~/.ssh/board", rw_path="/root/relsync"),
    ]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[[board]]\nnode = 'a@b'\ncolour = 'red'\n", "unknown key(s) colour"),
        ("[[board]]\nhost = 'x'\n", 'give node = "..."'),
        ("[[board]]\nmode = 'ftp'\nnode = 'a@b'\n", "mode must be erl or ssh"),
        ("[[board]]\nnode = 'a@b'\nepmd_port = 70000\n", "port number"),
        ("[[board]]\nnode = 'a@b'\ncookie_env = 'NO_SUCH_VAR_X'\n", "NO_SUCH_VAR_X is not set"),
        ("[[board]]\nnode = 'nohost'\n", "name@host"),
        ("[[board]]\nmode = 'ssh'\nhost = 'a@b'\n", "not the node name"),
        ("[[board]]\nnode = 'a@b'\ndestination_rw_path = 'rel'\n", "must be absolute"),
        ("title = 'no boards'\n", "names no boards"),
        ("[[board]\n", "not valid TOML"),
    ],
)
def test_bad_entries_are_one_line_errors(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(UsageError, match=None) as err:
        boards_from_file(write(tmp_path, text), "erl")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="give an existing TOML file"):
        boards_from_file(tmp_path / "none.toml", "erl")
