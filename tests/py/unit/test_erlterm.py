"""``relsync.erlterm`` against ``erl`` itself: what ``file:consult/1`` reads, consult reads to the
same value; what it refuses, consult refuses naming the line.

One ``erl`` per module answers line requests on stdin (payloads hex-encoded): ``T`` a list of
terms as ETF -> the text ``~tp.`` and ``~w.`` print for each; ``C`` a path -> ETF of
``file:consult(Path)``; ``R`` a path -> ETF of ``systools_lib:read_term(Path)``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.etf_strategies import (
    binaries,
    bitbinaries,
    charlists,
    floats,
    integers,
    key_atoms,
    norm,
    texts,
)

from relsync.erldist.etf import (
    Atom,
    ExportFun,
    ImproperList,
    Term,
    binary_to_term,
    term_to_binary,
)
from relsync.erlterm import MAX_DEPTH, consult, decode, first_term

FIXTURES = Path(__file__).parent / "erlterm_fixtures"

ORACLE = r"""
Reply = fun(B) -> io:put_chars([binary:encode_hex(B), $\n]) end,
Arg = fun(Hex) -> binary:decode_hex(list_to_binary(string:trim(Hex))) end,
Loop = fun Loop() ->
    case io:get_line("") of
        eof -> halt(0);
        "T " ++ Hex ->
            Terms = binary_to_term(Arg(Hex)),
            Text = [io_lib:format("~tp.~n~w.~n", [T, T]) || T <- Terms],
            Reply(unicode:characters_to_binary(Text));
        "C " ++ Hex ->
            Reply(term_to_binary(file:consult(binary_to_list(Arg(Hex)))));
        "R " ++ Hex ->
            Reply(term_to_binary(systools_lib:read_term(binary_to_list(Arg(Hex)))))
    end,
    Loop()
end,
Loop().
"""


class Erl:
    """The oracle process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["erl", "-noshell", "-eval", ORACLE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def ask(self, command: str, payload: bytes) -> bytes:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{command} {payload.hex()}\n".encode())
        self.proc.stdin.flush()
        return bytes.fromhex(self.proc.stdout.readline().decode().strip())

    def printed(self, terms: list[Term]) -> str:
        """Each term as erl prints it with ``~tp.`` and then ``~w.``."""
        return self.ask("T", term_to_binary(terms)).decode()

    def consult(self, path: Path) -> Any:
        return binary_to_term(self.ask("C", str(path).encode()))

    def read_term(self, path: Path) -> Any:
        return binary_to_term(self.ask("R", str(path).encode()))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def erl() -> Iterator[Erl]:
    oracle = Erl()
    try:
        yield oracle
    finally:
        oracle.close()


# ----------------------------------------------------------------------------------------------
# Terms erl prints: consult reads them back to the same value

#: Everything a term file can hold (no pids, ports, references or local funs: those print as
#: ``<0.1.0>`` and friends, which no term file can hold).
#: (erlang:fun_to_list/1 prints a fun's non-ASCII atoms as UTF-8 bytes: ASCII names only.)
_ascii_atoms = st.text(st.characters(max_codepoint=127), max_size=10).map(Atom)
_export_funs = st.builds(ExportFun, _ascii_atoms, _ascii_atoms, st.integers(0, 255))
_leaves = st.one_of(
    integers, floats, key_atoms, binaries, texts, charlists, bitbinaries, _export_funs,
    st.sampled_from([True, False, None]),
)  # fmt: skip
_keys = st.recursive(
    st.one_of(integers, key_atoms, binaries),
    lambda inner: st.lists(inner, max_size=3).map(tuple),
    max_leaves=4,
)
_tails = st.one_of(integers, key_atoms, binaries, floats, st.tuples(integers))
file_terms = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=6).map(tuple),
        st.dictionaries(_keys, children, max_size=4),
        st.builds(ImproperList, st.lists(children, min_size=1, max_size=4).map(tuple), _tails),
    ),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(file_terms, min_size=1, max_size=8))
def test_what_erl_prints_reads_back_to_the_same_terms(erl: Erl, batch: list[Term]) -> None:
    text = erl.printed(batch)
    read = consult(text)
    assert [norm(t) for t in read] == [norm(t) for t in batch for _ in ("~tp", "~w")], text


# ----------------------------------------------------------------------------------------------
# Hand-written files: consult agrees with file:consult

VALID = {
    "chars": r"""[$a, $/, $\n, $\\, $\s, $\x{41}, $\x41, $\101, $\^A, $\e, $\d, $ , $', $"].""",
    "char_newline": "$\n.",
    "maps": '#{}. #{a => 1, <<"b">> => [x], {t} => #{}}. #{a => 1, a => 2}.',
    "binaries": r"""<<"a">>. <<1,2,3>>. <<"x"/utf8>>. <<"é"/utf8>>. <<1:16>>. <<>>. <<"">>.
        <<16#123:12/little>>. <<-1:16/signed>>. <<1.5/float>>. <<1:32/float-little>>.
        <<"ab":16>>. <<"é"/utf16-little>>. <<$a/utf32>>. <<(<<"ab">>)/binary, 5:3>>.
        << <<"abc">>:2/binary >>. <<1:8/unit:2>>. <<"a" "b">>. <<300, -1>>.""",
    "numbers": "1_000_000. 16#ff. 16#FF_ff. 2#1010. 36#zz. 1.5. 1.0e10. 2.5E-3. 1_0.2_5e1_0. "
    "-7. - 7. +7. -(7). -1.5. -$a. 123456789012345678901234567890.",
    "atoms": "a@b. 'Quoted atom'. 'a\\'b'. ok_Ok9. é. 'ü\\x{1F600}'. '\\x{41}'. 'fun'. 'end'. ''.",
    "strings": r""""a\101b". "\x41\x{1F600}". "\^A\^z". "tab\tnl\n". "adjacent" " strings"
        "on lines". "". "ünïcödé ☃". "q\"uote". "\z\q".""",
    "lists": '[]. [a|b]. [a,b|[c]]. [a|"bc"]. [[[]]]. [1|2.0]. {}. {{}}. ((a)).',
    "funs": "fun lists:map/2. fun 'Elixir.Mod':'f!'/0.",
    "comments_and_ws": "% comment\n{a, % inside\n b}.\r\n\t%% trailing\n",
    "dot_at_eof": "ok.",
    "empty": "",
    "only_comments": "% nothing here\n",
}


@pytest.mark.parametrize("name", [*VALID, *(p.name for p in sorted(FIXTURES.iterdir()))])
def test_files_erl_reads_are_read_to_the_same_terms(erl: Erl, tmp_path: Path, name: str) -> None:
    path = FIXTURES / name if name not in VALID else tmp_path / name
    if name in VALID:
        path.write_text(VALID[name], encoding="utf-8")
    verdict = erl.consult(path)
    assert verdict[0] == "ok", verdict
    assert norm(consult(path.read_text(encoding="utf-8"))) == norm(verdict[1])


ENCODED = {
    "latin1_comment": "%% -*- coding: latin-1 -*-\n{name, \"Jos\u00e9\", '\u00e5r'}.\n".encode(
        "latin-1"
    ),
    "latin1_second_line": '{a, 1}.\n% coding = Latin-1\n<<"\u00e9">>.\n'.encode("latin-1"),
    "utf8_comment": '%% coding: utf-8\n"\u00e9\u2603".\n'.encode(),
    "latin1_unhyphenated": '%% coding: latin1 (epp knows latin-1 only)\n"\u00e9".\n'.encode(),
    "utf8_default": "\"\u00e9\u2603\". '\u00e5'.\n".encode(),
    "latin1_too_late": '{a, 1}.\n\n%% coding: latin-1\n"\u00e9".\n'.encode(),
}


@pytest.mark.parametrize("name", ENCODED)
def test_a_files_bytes_are_decoded_as_its_coding_comment_says(
    erl: Erl, tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    path.write_bytes(ENCODED[name])
    verdict = erl.consult(path)
    assert verdict[0] == "ok", verdict
    assert norm(consult(decode(path.read_bytes()))) == norm(verdict[1])


INVALID = {
    "macro": "{relsync, [{mode, ?MODE}]}.",
    "variable": "{relsync, [{mode, Mode}]}.",
    "underscore": "{a, _}.",
    "record": "#state{a = 1}.",
    "reserved_word": "{a,\n end}.",
    "expression": "{a, 1 + 2}.",
    "call": "{a, self()}.",
    "missing_dot": "{a, b}",
    "missing_dot_newlines": "{a,\n b}\n\n% end\n",
    "unfinished_at_eof": "ok.\n{a,\n [\n\n",
    "missing_dot_then_term": "{a, b}\n{c, d}.",
    "missing_comma": "{a,\n b c}.",
    "unclosed_tuple": "{a, b.\n",
    "unclosed_string": '{a, "b}.\n',
    "unclosed_atom": "{a, 'b}.\n",
    "bad_escape": '"\\x{110000}".',
    "bad_hex_escape": '"\\xg".',
    "float_too_big": "1.0e400.",
    "base_37": "37#1.",
    "bad_digit": "2#102.",
    "double_sign": "- -1.",
    "sign_on_atom": "-a.",
    "map_update": "#{a => 1}#{a := 2}.",
    "map_exact": "#{a := 1}.",
    "map_trailing_comma": "#{a => 1,\n}.",
    "unicode_digit": "{a, \u0661}.",
    "binary_of_atom": "<<a>>.",
    "binary_float_int": "<<1.5>>.",
    "binary_string_binary": '<<"ab"/binary>>.',
    "binary_bits_as_binary": "<<(<<1:4>>)/binary>>.",
    "binary_unit_no_size": "<<1/unit:8>>.",
    "binary_utf_size": "<<1:8/utf8>>.",
    "binary_surrogate": "<<16#d800/utf8>>.",
    "binary_float_size": "<<1.0:8/float>>.",
    "binary_bad_type": "<<1/foo>>.",
    "binary_twice": "<<1/binary-bits>>.",
    "local_fun": "fun(X) -> X end.",
    "fun_variable": "fun M:f/1.",
    "list_two_tails": "[a|b|c].",
    "comma_dot": "{a,}.",
    "dot_inside": "{a.b}.",
    "atom_too_long": "'" + "a" * 256 + "'.",
    "char_at_eof": "$",
    "pid": "<0.1.0>.",
    "second_term_bad": "ok.\n\n{a, B}.",
}


@pytest.mark.parametrize("name", INVALID)
def test_files_erl_refuses_are_value_errors_naming_the_line(
    erl: Erl, tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    path.write_text(INVALID[name], encoding="utf-8")
    verdict = erl.consult(path)
    assert verdict[0] == "error", verdict
    with pytest.raises(ValueError, match=r"^line \d+: ") as caught:
        consult(INVALID[name])
    erl_line = verdict[1][0]
    assert str(caught.value).startswith(f"line {erl_line}:"), (str(caught.value), verdict)


def test_what_python_cannot_hold_is_a_value_error_naming_the_line() -> None:
    # erl reads both; a dict cannot hold a list key, int() takes at most 4300 digits.
    with pytest.raises(ValueError, match=r"^line 2: a map key that is a list or map"):
        consult("ok.\n#{[a] => 1}.")
    with pytest.raises(ValueError, match=r"^line 1: 1+ is not an integer relsync reads"):
        consult("1" * 5000 + ".")


# ----------------------------------------------------------------------------------------------
# Depth, and the first term alone


def test_deep_nesting_is_a_value_error_not_a_recursion_error() -> None:
    for opening, closing in (("[", "]"), ("{", "}"), ("(", ")"), ("#{a => ", "}"), ("-", "")):
        text = "\n" + opening * 10_000 + "1" + closing * 10_000 + "."
        with pytest.raises(ValueError, match=f"^line 2: nested deeper than {MAX_DEPTH} levels"):
            consult(text)
    deepest = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert len(repr(consult(deepest + ".")[0])) == len(deepest)
    with pytest.raises(ValueError, match="nested deeper"):
        consult(f"[{deepest}].")


def test_first_term_reads_what_systools_reads_and_nothing_after(erl: Erl, tmp_path: Path) -> None:
    path = tmp_path / "demo.appup"
    path.write_text('{"2", [{"1", []}], []}.\n{"1", [], []}.\n?WHATEVER (( <<', encoding="utf-8")
    assert norm(erl.read_term(path)) == norm((Atom("ok"), first_term(path.read_text("utf-8"))))
    with pytest.raises(ValueError, match=r"^line 3: '\?' is not a term"):
        consult(path.read_text(encoding="utf-8"))  # the whole file, as file:consult reads it
