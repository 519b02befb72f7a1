"""The boards one relsync run syncs: ``-d`` given once or more, or a targets file.

A targets file (TOML) names boards with how to reach them; anything a board leaves out comes
from the command line::

    [[board]]
    node = "demo@192.0.2.7"          # erl mode
    cookie_env = "DEMO_COOKIE"        # the cookie's environment variable (never the cookie)
    epmd_port = 4369

    [[board]]
    mode = "ssh"
    host = "192.0.2.8"
    port = 2228
    identity = "~/.ssh/board_key"
    destination_rw_path = "/root/relsync"
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relsync.errors import UsageError

_KEYS = {"node", "host", "mode", "cookie_env", "epmd_port", "port", "user", "identity",
         "destination_path", "destination_rw_path"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Board:
    """One destination; ``None`` fields take the command line's value."""

    destination: str
    mode: str
    cookie: str | None = None
    epmd_port: int | None = None
    port: int | None = None
    user: str | None = None
    identity: str | None = None
    dest_path: str | None = None
    rw_path: str | None = None


def check_destination(board: Board) -> None:
    """A one-line UsageError when the destination does not fit the mode."""
    where = board.destination
    if board.mode == "erl":
        name, at, host = where.partition("@")
        if not (name and at and host) or not name.replace("_", "").replace("-", "").isalnum():
            raise UsageError(
                f"--destination-node {where!r} is not a node name; write it as name@host, "
                "e.g. demo@192.0.2.7 or demo@127.0.0.1"
            )
    elif "@" in where:
        raise UsageError(
            f"--mode ssh takes a host for --destination-node, not the node name {where!r}; "
            "e.g. -d 192.0.2.7"
        )
    for path in (board.dest_path, board.rw_path):
        if path is not None and not path.startswith("/"):
            raise UsageError(f"{where}: destination path {path!r} must be absolute")


def _int(entry: dict[str, Any], key: str, where: str) -> int | None:
    value = entry.get(key)
    if value is None or (type(value) is int and 0 < value < 65536):
        return value
    raise UsageError(f"{where}: {key} must be a port number (1-65535), not {value!r}")


def _str(entry: dict[str, Any], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is None or isinstance(value, str):
        return value
    raise UsageError(f'{where}: {key} must be a string ({key} = "..."), not {value!r}')


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file's tables; a missing, unreadable, not UTF-8 or invalid file is a one-line
    UsageError (``what`` names the file the way the user gave it)."""
    import tomllib  # here: ~10 ms of start-up that a run without TOML files does not need

    try:
        return tomllib.loads(path.read_bytes().decode())
    except OSError as exc:
        raise UsageError(f"{what}: {exc.strerror}; give an existing TOML file") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{what} is not valid TOML ({exc}); fix the file") from None


def boards_from_file(path: Path, default_mode: str) -> list[Board]:
    """The ``[[board]]`` entries of a targets file."""
    entries = read_toml(path, f"--targets {path}").get("board")
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"--targets {path} names no boards; add [[board]] tables")
    boards = []
    for number, entry in enumerate(entries, 1):
        where = f"{path} board {number}"
        if not isinstance(entry, dict):
            raise UsageError(f"{where}: {entry!r} is not a table; write each board as [[board]]")
        unknown = set(entry) - _KEYS
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        mode = entry.get("mode", default_mode)
        if mode not in ("erl", "ssh"):
            raise UsageError(f"{where}: mode must be erl or ssh, not {mode!r}")
        destination = entry.get("node" if mode == "erl" else "host")
        if not isinstance(destination, str):
            raise UsageError(f'{where}: give {"node" if mode == "erl" else "host"} = "..."')
        cookie = None
        if (variable := _str(entry, "cookie_env", where)) is not None:
            cookie = os.environ.get(variable)
            if cookie is None:
                raise UsageError(f"{where}: environment variable {variable} is not set")
        board = Board(
            destination, mode, cookie=cookie, epmd_port=_int(entry, "epmd_port", where),
            port=_int(entry, "port", where), user=_str(entry, "user", where),
            identity=_str(entry, "identity", where),
            dest_path=_str(entry, "destination_path", where),
            rw_path=_str(entry, "destination_rw_path", where),
        )  # fmt: skip
        check_destination(board)
        boards.append(board)
    return boards
