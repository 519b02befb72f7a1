"""Command line: original options and defaults, and one-line errors for bad input."""

from __future__ import annotations

import asyncio
import io
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support.fake_release import make_release

from relsync.cli import build_parser, main
from relsync.hooks import resolve_hook
from relsync.progress import ProgressBar


def test_defaults_match_the_original_except_where_it_misled() -> None:
    args = build_parser().parse_args([])
    # The original's node@other and /srv/erlang wrote to the wrong place: the node comes from
    # -d, --targets or the release's own files, the path from the board's running release.
    assert args.destination_node is None
    assert args.destination_path is None
    assert args.destination_rw_path == ""
    assert args.exclude_system_libs is True
    assert args.mode == "erl"
    assert args.user == "relsync"


def test_short_forms_match_the_original() -> None:
    args = build_parser().parse_args(
        [
            "-d",
            "a@b",
            "-p",
            "/x",
            "-q",
            "/y",
            "-l",
            "rel",
            "-H",
            "hooks.erl",
            "-E",
            "false",
            "-c",
            "k",
            "-s",
            "me",
            "-M",
            "erl",
            "-P",
            "2228",
            "-u",
            "bob",
        ]
    )
    assert (args.destination_node, args.destination_path, args.destination_rw_path) == (
        ["a@b"],
        "/x",
        "/y",
    )
    assert (args.local_path, args.hooks, args.exclude_system_libs) == ("rel", "hooks.erl", False)
    assert (args.cookie, args.sname, args.mode, args.port, args.user) == (
        "k",
        "me",
        "erl",
        2228,
        "bob",
    )
    assert build_parser().parse_args(["-n", "me@host"]).name == "me@host"
    assert build_parser().parse_args(["--exclude-system-libs"]).exclude_system_libs is True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["--mode", "ssh", "-d", "node@host"], 2, "not the node name"),
        (["--mode", "ftp"], 2, "invalid choice"),
        (["-E", "maybe"], 2, "true or false"),
        (["-P", "99999"], 2, "port"),
        (["-d", "nohost"], 2, "name@host"),
        (["-d", "a@b", "-p", "relative/path"], 2, "absolute path"),
        (["-d", "a@b", "--hook-timeout", "0"], 2, "hook-timeout"),
        (["-d", "a@b"], 2, "no release found"),
        (["-d", "a@b", "-l", "nowhere"], 2, "no such directory"),
        (["-d", "a@b", "--bogus"], 2, "unrecognized"),
    ],
)
def test_bad_input_is_one_line_with_exit_code(
    argv: list[str],
    code: int,
    needle: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("relsync: error: ") and needle in err


def test_hooks_that_do_not_compile_show_the_compiler_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_release(tmp_path / "_rel")
    (tmp_path / "bad_hooks.erl").write_text("-module(bad_hooks).\npresync() -> ok\n")
    monkeypatch.chdir(tmp_path)
    assert main(["-d", "a@127.0.0.1", "-H", "bad_hooks.erl"]) == 2
    err = capsys.readouterr().err
    assert "bad_hooks.erl does not compile" in err and "bad_hooks.erl:2" in err


def test_unreachable_epmd_is_a_connect_error_without_the_cookie(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_release(tmp_path / "_rel")
    monkeypatch.chdir(tmp_path)
    argv = ["-d", "t@127.0.0.1", "-c", "s3cr3t-cookie", "--epmd-port", str(_free_port())]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s3cr3t-cookie" not in err and "EPMD" in err


def test_help_documents_exit_codes() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "relsync.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "exit codes:" in out and "--destination-rw-path" in out and "-H MOD|FILE.erl" in out


def test_hooks_module_is_found_in_the_release(tmp_path: Path) -> None:
    root = make_release(tmp_path / "rel")
    beam = root / "lib/demo-0.1.0/ebin/my_hooks.beam"
    beam.write_bytes(b"FOR1 fake beam")
    hook = asyncio.run(resolve_hook("my_hooks", root, tmp_path))
    assert (hook.module, hook.beam) == ("my_hooks", b"FOR1 fake beam")
    (tmp_path / "other_hooks.erl").write_text("-module(other_hooks).\n-export([presync/0]).\n"
                                               "presync() -> ok.\n")  # fmt: skip
    compiled = asyncio.run(resolve_hook("other_hooks", root, tmp_path))
    assert compiled.module == "other_hooks" and compiled.beam.startswith(b"FOR1")


def test_progress_bar_draws_only_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = ProgressBar("board", stream)
        bar.start(2_000_000)
        bar.advance(1_000_000)
        bar.advance(1_000_000)
        bar.finish()
    assert "100%" in tty.getvalue() and "2.0/2.0 MB" in tty.getvalue()
    assert pipe.getvalue() == ""
