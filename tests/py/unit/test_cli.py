"""Command line: original options and defaults, and one-line errors for bad input."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support.fake_release import make_release

import relsync
from relsync.cli import build_parser, main
from relsync.hooks import resolve_hook
from relsync.progress import ProgressBar


def test_defaults_match_the_original_except_where_it_misled() -> None:
    args = build_parser().parse_args([])
    # The original's node@other and /srv/erlang wrote to the wrong place: the node comes from
    # -d, --targets or the release's own files, the path from the board's running release.
    assert args.destination_node is None
    assert args.destination_path is None
    assert args.destination_rw_path is None  # the original's "" (in place) is refused
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


def test_an_unreadable_rebar_config_stops_the_run_before_it_connects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Read past, its destination_rw_path would vanish and the sync write into the release.
    make_release(tmp_path / "_rel")
    (tmp_path / "rebar.config").write_text(
        '{deps, []}.\n{relsync, [{destination_rw_path, "/data/rw"},\n  {mode, ?MODE}]}.\n'
    )
    monkeypatch.chdir(tmp_path)
    assert main(["-d", "t@127.0.0.1", "--epmd-port", str(_free_port())]) == 2  # not 3: no EPMD
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rebar.config, line 3: '?' is not a term" in err, err


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

    tty, pipe, small = Tty(), io.StringIO(), Tty()
    for stream, total in ((tty, 2_000_000), (pipe, 2_000_000), (small, 3_000)):
        bar = ProgressBar("board", stream)
        bar.start(total)
        bar.advance(total // 2)
        bar.advance(total - total // 2)
        bar.finish()
    assert "100%" in tty.getvalue() and "2.0 MB/2.0 MB" in tty.getvalue()
    assert pipe.getvalue() == ""
    assert "3.0 kB/3.0 kB" in small.getvalue()  # not 0.0/0.0 MB


NOT_UTF8 = b'[relsync]\nhooks = "caf\xe9"\n'


@pytest.mark.parametrize(
    ("files", "argv", "needle"),
    [
        ({"relsync.toml": NOT_UTF8}, [], "relsync.toml is not UTF-8"),
        ({"t.toml": NOT_UTF8}, ["--targets", "t.toml"], "t.toml is not UTF-8"),
        ({"t.toml": b"board = [1, 2]\n"}, ["--targets", "t.toml"], "not a table"),
        (
            {"t.toml": b'[[board]]\nnode = "a@b"\ndestination_rw_path = 5\n'},
            ["--targets", "t.toml"],
            "destination_rw_path must be a string",
        ),
        (
            {"relsync.toml": b"[relsync]\ndestination_rw_path = 5\n"},
            [],
            "--destination-rw-path must be a string",
        ),
        (
            {"t.toml": b'[[board]]\nnode = "a@b"\nepmd_port = true\n'},
            ["--targets", "t.toml"],
            "epmd_port must be a port number",
        ),
        ({}, ["--hook-timeout", "inf"], "--hook-timeout inf"),
        ({}, ["--upgrade", "--upgrade-timeout", "nan"], "--upgrade-timeout nan"),
        ({}, ["--upgrade", "--upgrade-timeout", "inf"], "--upgrade-timeout inf"),
        ({}, ["--upgrade", "--upgrade-timeout", "1e-9"], "--upgrade-timeout 1e-09"),
        ({}, ["--connect-timeout", "-1"], "--connect-timeout -1"),
        ({}, ["--lock-timeout", "nan"], "--lock-timeout nan"),
        ({"relsync.toml": b"[relsync]\nlock_timeout = -1\n"}, [], "relsync.toml ([relsync]): --"),
        (
            {"relsync.toml": b"[relsync]\nlock_timeout = inf\n"},
            ["--show-config"],
            "relsync.toml ([relsync]): --lock-timeout inf",
        ),
        ({}, ["-q", ""], "--destination-rw-path is empty"),
        ({"relsync.toml": b'[relsync]\ndestination_rw_path = ""\n'}, [], "is empty"),
        ({}, ["--build"], "--build builds the project's own release"),
    ],
)
def test_bad_values_are_refused_before_anything_is_sent(
    files: dict[str, bytes],
    argv: list[str],
    needle: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_release(tmp_path / "_rel")
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    monkeypatch.chdir(tmp_path)
    epmd = ["--epmd-port", str(_free_port())]  # what old code reached: exit 3, not 2
    target = [] if "--targets" in argv else ["-d", "a@127.0.0.1"]
    assert main([*target, *epmd, "-l", "_rel", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("relsync: error: ") and needle in err, err


def test_help_names_the_cookie_relsync_uses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "$RELSYNC_COOKIE, else the release's" in help_text
    assert "~/.erlang.cookie" in help_text


#: The environment of a relsync run in another directory: this checkout's relsync, whatever
#: the interpreter has installed.
HERE = {**os.environ, "PYTHONPATH": str(Path(relsync.__file__).parents[1])}


def _json_run(argv: list[str], cwd: Path) -> tuple[int, dict[str, object], str]:
    done = subprocess.run(
        [sys.executable, "-m", "relsync.cli", *argv], cwd=cwd, env=HERE,
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.stdout.count("\n") == 1, done.stdout  # one object, on one line
    return done.returncode, json.loads(done.stdout), done.stderr


@pytest.mark.parametrize("action", [[], ["--status"], ["--rollback"]])
def test_json_when_the_board_is_down_is_one_object(action: list[str], tmp_path: Path) -> None:
    make_release(tmp_path / "_rel")
    argv = ["-d", "a@127.0.0.1", "--epmd-port", str(_free_port()), "-q", "/data/relsync"]
    code, out, err = _json_run([*argv, "--json", *action], tmp_path)
    assert code == 3 and out["exit_code"] == 3 and out["ok"] is False
    assert "EPMD" in str(out["error"]) and err.count("\n") == 1
    [board] = out["boards"]  # type: ignore[misc]
    assert board["target"] == "a@127.0.0.1" and board["exit_code"] == 3
    if action != ["--status"]:
        assert board["action"] == ("rollback" if action else "sync")


@pytest.mark.parametrize(
    ("sig", "action"),
    [(signal.SIGINT, []), (signal.SIGTERM, []), (signal.SIGINT, ["--rollback", "-q", "/r"])],
)
def test_ctrl_c_with_json_prints_one_object(
    sig: signal.Signals, action: list[str], tmp_path: Path
) -> None:
    """SIGTERM as Ctrl-C; the board stopped is in the object, with its action (issue 32)."""
    make_release(tmp_path / "_rel")
    with socket.socket() as epmd:  # accepts the connection, never answers
        epmd.bind(("127.0.0.1", 0))
        epmd.listen()
        argv = ["-d", "a@127.0.0.1", "--epmd-port", str(epmd.getsockname()[1]), "--json",
                "--connect-timeout", "120", *action]  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "relsync.cli", *argv], cwd=tmp_path, env=HERE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        conn, _ = epmd.accept()  # relsync is waiting for the board now
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        conn.close()
    assert proc.returncode == 5 and out.count("\n") == 1, (out, err)
    result = json.loads(out)
    assert result["exit_code"] == 5 and "interrupted" in result["error"]
    assert err.count("\n") == 1 and "Traceback" not in err
    [board] = result["boards"]
    assert board["target"] == "a@127.0.0.1" and board["exit_code"] == 5
    assert board["action"] == ("rollback" if action else "sync")


@pytest.mark.parametrize(
    ("argv", "words"),
    [(["--hook-timeout", "1_0"], "'1_0'"), (["--connect-timeout", "-1"], "--connect-timeout -1:")],
)
def test_time_limits_are_numbers_as_written(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """(issue 32)"""
    assert main(["-d", "a@127.0.0.1", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


def test_output_that_cannot_be_written_ends_quietly(tmp_path: Path) -> None:
    """A reader that left: 141 and nothing on stderr; a full disk: one line (issue 32)."""
    argv = [sys.executable, "-m", "relsync.cli", "--show-config", "-v"]
    read, write = os.pipe()
    os.close(read)  # the reader left before relsync printed
    gone = subprocess.run(argv, cwd=tmp_path, env=HERE, stdout=write, stderr=subprocess.PIPE)
    os.close(write)
    assert gone.returncode == 141 and gone.stderr == b"", gone.stderr
    with open("/dev/full", "wb") as full:
        done = subprocess.run(argv, cwd=tmp_path, env=HERE, stdout=full, stderr=subprocess.PIPE)
    assert done.returncode == 1 and done.stderr.count(b"\n") == 1, done.stderr
    assert b"cannot write the output" in done.stderr


def test_a_failed_ssh_board_has_the_label_of_a_synced_one(tmp_path: Path) -> None:
    """user@host:port, failed or not (issue 32)."""
    make_release(tmp_path / "_rel")
    port = _free_port()
    argv = ["-M", "ssh", "-d", "127.0.0.1", "-P", str(port), "-q", "/d", "--json"]
    code, out, _ = _json_run(argv, tmp_path)
    assert code == 3
    [board] = out["boards"]  # type: ignore[misc]
    assert board["target"] == f"relsync@127.0.0.1:{port}"
