"""Options from relsync.toml, a --targets file's [relsync] and rebar.config's {relsync, [...]}:
the command line wins, then in that order; --show-config says where each came from."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import relsync
from relsync.cli import main

REBAR = (
    '{deps, []}.\n{relsync, [{mode, "ssh"}, {port, 2222}, {user, relsync}, {hooks, my_hooks}]}.\n'
)
TOML = '[relsync]\nport = 2300\nexclude-system-libs = false\ncookie = "s3cret"\n'
TARGETS = '[relsync]\nport = 2400\nuser = "ops"\ndestination_rw_path = "/data/t"\n'


def show(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, tuple[str, str]]:
    """--show-config's rows: option -> (value, source)."""
    assert main(["--show-config", *argv]) == 0
    rows = [re.split(r"\s{2,}", line.strip()) for line in capsys.readouterr().out.splitlines()]
    return {r[0]: (r[1], r[2]) if len(r) == 3 else ("", r[1]) for r in rows}


def test_the_command_line_wins_then_each_file_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rebar.config").write_text(REBAR)
    (tmp_path / "relsync.toml").write_text(TOML)
    (tmp_path / "boards.toml").write_text(TARGETS)
    sub = tmp_path / "src"
    sub.mkdir()
    monkeypatch.chdir(sub)  # the project is found from below, too
    rows = show(capsys, "--targets", str(tmp_path / "boards.toml"), "-u", "bob")
    assert rows["user"] == ("bob", "command line")
    assert rows["port"][0] == "2300" and "relsync.toml" in rows["port"][1]
    assert (
        rows["destination-rw-path"][0] == "/data/t"
        and "--targets" in rows["destination-rw-path"][1]
    )
    assert rows["mode"][0] == "ssh" and "rebar.config" in rows["mode"][1]
    assert rows["hooks"][0] == "my_hooks"
    assert rows["exclude-system-libs"][0] == "False"
    assert rows["destination-path"] == ("", "default")  # the release the board runs
    assert rows["cookie"][0] == "(set)"  # never the cookie itself


def test_the_cookie_is_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "relsync.toml").write_text(TOML)
    monkeypatch.chdir(tmp_path)
    assert main(["--show-config", "-c", "other-secret"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "other-secret" not in out


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[relsync]\nno_such = 1\n", "no option 'no_such'"),
        ("[relsync]\nport = 70000\n", "--port 70000"),
        ('[relsync]\nmode = "ftp"\n', "--mode must be one of erl, ssh"),
        ("[relsync]\ndry-run = 1\n", "--dry-run must be true or false"),
        ("[relsync\n", "is not valid TOML"),
        ('[relsnyc]\ndestination_rw_path = "/x"\n', "unknown key(s) 'relsnyc'"),
        ('destination_rw_path = "/x"\n', "unknown key(s) 'destination_rw_path'"),
    ],
)
def test_a_bad_file_is_one_line_naming_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    text: str,
    words: str,
) -> None:
    (tmp_path / "relsync.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert main(["--show-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "relsync.toml" in err, err


def test_a_real_rebar_config_with_maps_chars_and_binaries_gives_its_relsync_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fixture = Path(__file__).parent / "erlterm_fixtures" / "format_dialyzer_relx.rebar.config"
    (tmp_path / "rebar.config").write_text(fixture.read_text())
    monkeypatch.chdir(tmp_path)
    rows = show(capsys)
    assert rows["destination-rw-path"][0] == "/data/demo"
    assert "rebar.config" in rows["destination-rw-path"][1]
    assert rows["mode"][0] == "ssh" and rows["user"][0] == "ops"


def test_a_latin1_rebar_config_that_says_so_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = '%% -*- coding: latin-1 -*-\n{relsync, [{user, "jos\u00e9"}]}.\n'
    (tmp_path / "rebar.config").write_bytes(text.encode("latin-1"))
    monkeypatch.chdir(tmp_path)
    assert show(capsys)["user"][0] == "jos\u00e9"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{deps, []}.\n{relsync, [{destination_rw_path, ?RW}]}.\n", "line 2: '?' is not a term"),
        ("{relsync, [{mode, ssh}\n {user, ops}]}.\n", "line 2: expected ']', found '{'"),
        ("{relsync, [{mode, Mode}]}.\n", "line 1: 'Mode' is not a term; a variable"),
        ("{relsync, [{mode, ssh}]}\n", "line 1: expected '.', found the end of the file"),
        ("{relsync, [{mode, ssh}, mode]}.\n", "{relsync, [{mode,ssh},mode]} is not a list"),
        ("{relsync, {mode, ssh}}.\n", "{relsync, {mode,ssh}} is not a list"),
    ],
)
def test_a_rebar_config_relsync_cannot_read_is_one_line_naming_the_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    text: str,
    words: str,
) -> None:
    (tmp_path / "rebar.config").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert main(["--show-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "rebar.config" in err, err


def test_a_misspelled_table_of_a_targets_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "boards.toml").write_text('[relsnyc]\nport = 2400\n[[board]]\nnode = "a@b"\n')
    monkeypatch.chdir(tmp_path)
    assert main(["--show-config", "--targets", "boards.toml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "boards.toml" in err and "'relsnyc'" in err, err


@pytest.mark.parametrize(
    ("name", "text", "argv", "words"),
    [
        (
            "relsync.toml",
            '[relsync]\nconnect_timeout = "5"\n',
            [],
            "--connect-timeout must be a number",
        ),
        ("relsync.toml", "[relsync]\nconnect_timeout = true\n", [], "not True"),
        ("boards.toml", '[relsync]\nhook_timeout = "5"\n', [], "--hook-timeout must be a number"),
        ("rebar.config", '{relsync, [{hook_timeout, "5"}]}.\n', [], "--hook-timeout must be"),
        ("rebar.config", "{relsync, [{hook_timeout, inf}]}.\n", [], "--hook-timeout must be"),
        ("relsync.toml", "[relsync]\ntargets = 3\n", [], "--targets must be a string"),
        ("relsync.toml", "[relsync]\ndestination_rw_path = 5\n", ["-q", "/d"], "not 5"),
        ("relsync.toml", '[relsync]\nexclude_system_libs = "no"\n', [], "true or false"),
    ],
)
def test_every_value_from_a_file_is_type_checked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    text: str,
    argv: list[str],
    words: str,
) -> None:
    """Whatever overrides it, a value of the wrong type is exit 2 naming the file (issue 32)."""
    (tmp_path / name).write_text(text)
    (tmp_path / "rebar.config").touch()  # the project
    monkeypatch.chdir(tmp_path)
    targets = ["--targets", name] if name == "boards.toml" else []
    assert main(["--show-config", *targets, *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and name in err, err


def test_rebar_booleans_are_booleans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rebar.config").write_text(
        "{relsync, [{dry_run, true}, {exclude_system_libs, false}]}.\n"
    )
    monkeypatch.chdir(tmp_path)
    rows = show(capsys)
    assert rows["dry-run"][0] == "True" and rows["exclude-system-libs"][0] == "False"


def test_show_config_and_version_with_json_print_one_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """(issue 32)"""
    (tmp_path / "relsync.toml").write_text(TOML)
    monkeypatch.chdir(tmp_path)
    assert main(["--show-config", "--json"]) == 0
    options = json.loads(capsys.readouterr().out)["options"]
    assert options["port"] == {"value": 2300, "source": f"{tmp_path / 'relsync.toml'} ([relsync])"}
    assert options["cookie"]["value"] == "(set)" and options["dry-run"]["value"] is False
    assert main(["--version", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"version": relsync.__version__}
