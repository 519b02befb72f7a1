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
        if path and not path.startswith("/"):
            raise UsageError(f"{where}: destination path {path!r} must be absolute")


def _int(entry: dict[str, Any], key: str, where: str) -> int | None:
    value = entry.get(key)
    if value is None or (isinstance(value, int) and 0 < value < 65536):
        return value
    raise UsageError(f"{where}: {key} must be a port number (1-65535), not {value!r}")


def boards_from_file(path: Path, default_mode: str) -> list[Board]:
    """The ``[[board]]`` entries of a targets file."""
    import tomllib  # here: ~10 ms of start-up that a run without --targets does not need

    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"--targets {path}: {exc.strerror}; give an existing TOML file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--targets {path} is not valid TOML ({exc}); fix the file") from exc
    entries = data.get("board")
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"--targets {path} names no boards; add [[board]] tables")
    boards = []
    for number, entry in enumerate(entries, 1):
        where = f"{path} board {number}"
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
        if "cookie_env" in entry:
            cookie = os.environ.get(entry["cookie_env"])
            if cookie is None:
                raise UsageError(f"{where}: environment variable {entry['cookie_env']} is not set")
        board = Board(
            destination, mode, cookie=cookie, epmd_port=_int(entry, "epmd_port", where),
            port=_int(entry, "port", where), user=entry.get("user"),
            identity=entry.get("identity"), dest_path=entry.get("destination_path"),
            rw_path=entry.get("destination_rw_path"),
        )  # fmt: skip
        check_destination(board)
        boards.append(board)
    return boards
