"""What a user reads when the target says something unexpected, and the facts relsync reads
off beams and Erlang term files to decide before anything is sent."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from relsync.beam import compiler_version, otp_of_compiler
from relsync.erldist.errors import BadRpc
from relsync.erldist.etf import Atom, Charlist
from relsync.erlterm import consult


def test_a_missing_function_is_one_line_naming_it() -> None:
    stack = [(Atom("crypto"), Atom("hash_init"), [Atom("sha256")], []),
             (Atom("relsync_target"), Atom("hash_file"), 1, [(Atom("line"), 712)])]  # fmt: skip
    error = BadRpc("b@h", "relsync_target:sync_state/4", (Atom("EXIT"), (Atom("undef"), stack)))
    text = str(error)
    assert "\n" not in text and "crypto:hash_init/1 is not on the board" in text
    assert "relsync_target" not in text.split("failed:")[1]  # the stack is for -v
    assert "hash_file" in error.detail


def test_a_crash_names_its_reason_and_place() -> None:
    reason = (Atom("EXIT"), (Atom("badarg"), [(Atom("m"), Atom("f"), 2, [])]))
    assert "badarg in m:f/2" in str(BadRpc("b@h", "m:f/2", reason))


def test_compiler_versions_name_their_otp(tmp_path: Path) -> None:
    (tmp_path / "m.erl").write_text("-module(m).\n")
    subprocess.run(["erlc", "-o", str(tmp_path), str(tmp_path / "m.erl")], check=True)
    version = compiler_version((tmp_path / "m.beam").read_bytes())
    assert version is not None and otp_of_compiler(version) == 25  # this machine's erlc
    assert otp_of_compiler("8.6.1") == 27 and otp_of_compiler("8.2.6") == 25
    assert otp_of_compiler("12.0") == 29 and otp_of_compiler("x") is None


def test_consult_reads_an_appup() -> None:
    text = (
        '%% comment\n{"2", [{"1", [{update, m, {advanced, [x, "s", 16#ff]}}]},\n'
        ' {<<"1\\\\..*">>, []}], [{"1", [{apply, {\'Elixir.M\', f, []}}]}]}.\n'
    )
    [term] = consult(text)
    assert term == (
        Charlist("2"),
        [(Charlist("1"), [(Atom("update"), Atom("m"), (Atom("advanced"), [Atom("x"), "s", 255]))]),
         (b"1\\..*", [])],
        [(Charlist("1"), [(Atom("apply"), (Atom("Elixir.M"), Atom("f"), []))])],
    )  # fmt: skip
    with pytest.raises(ValueError, match="line 2"):
        consult("{a,\n b c}.")
