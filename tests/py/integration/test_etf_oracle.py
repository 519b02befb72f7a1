"""Property tests of ``relsync.erldist.etf`` against a real Erlang VM.

One ``erl`` per module runs a small echo program on a ``{packet, 4}`` port over its
stdin/stdout.  Each request is one command byte followed by a payload:

* 0-3: the payload is an external term; the VM replies ``term_to_binary(binary_to_term(P), O)``
  with ``O`` = default options, ``[{minor_version, 0}]`` (FLOAT_EXT, latin-1 atoms),
  ``[{minor_version, 2}]`` (UTF-8 atoms) or ``[{compressed, 9}]``;
* 4: the payload is an Erlang expression; the VM replies with ``term_to_binary`` of its value;
* 5: the payload is ``{Fun, Args}``; the VM replies with ``term_to_binary(apply(Fun, Args))``.

Failures come back as ``{echo_error, Class, Reason}``.
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.etf_strategies import HAND_MADE_FUNS, norm, terms

from relsync.erldist.etf import (
    COMPRESSED,
    FLOAT_EXT,
    NEW_FUN_EXT,
    VERSION,
    Atom,
    BitBinary,
    Charlist,
    ExportFun,
    ImproperList,
    OpaqueFun,
    Pid,
    Port,
    Reference,
    binary_to_term,
    decode,
    encode,
    term_to_binary,
)

pytestmark = pytest.mark.integration

ECHO_PROGRAM = r"""
logger:set_primary_config(level, none),
Eval = fun(Text) ->
    {ok, Tokens, _} = erl_scan:string(unicode:characters_to_list(Text)),
    {ok, Exprs} = erl_parse:parse_exprs(Tokens),
    {value, Value, _} = erl_eval:exprs(Exprs, []),
    Value
end,
Handle = fun
    (0, B) -> term_to_binary(binary_to_term(B));
    (1, B) -> term_to_binary(binary_to_term(B), [{minor_version, 0}]);
    (2, B) -> term_to_binary(binary_to_term(B), [{minor_version, 2}]);
    (3, B) -> term_to_binary(binary_to_term(B), [{compressed, 9}]);
    (4, B) -> term_to_binary(Eval(B));
    (5, B) -> {F, Args} = binary_to_term(B), term_to_binary(apply(F, Args))
end,
Loop = fun Loop(Port) ->
    receive
        {Port, {data, <<Cmd, Body/binary>>}} ->
            Reply = try Handle(Cmd, Body)
                    catch Class:Reason -> term_to_binary({echo_error, Class, Reason})
                    end,
            Port ! {self(), {command, Reply}},
            Loop(Port);
        {Port, eof} ->
            halt(0)
    end
end,
Loop(open_port({fd, 0, 1}, [binary, {packet, 4}, eof])).
"""

ECHO, ECHO_MINOR0, ECHO_MINOR2, ECHO_COMPRESSED, EVAL, APPLY = range(6)
ECHO_MODES = [ECHO, ECHO_MINOR0, ECHO_MINOR2, ECHO_COMPRESSED]


class EchoVM:
    """A client for the echo program; one request at a time."""

    def __init__(self, workdir: Path) -> None:
        self.stderr_path = workdir / "erl.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            ["erl", "-noshell", "-noinput", "-eval", ECHO_PROGRAM],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=workdir,
        )

    def request(self, cmd: int, payload: bytes | list[Any]) -> bytes:
        """Send one packet (``payload`` may be a scatter list) and return the reply packet."""
        parts = payload if isinstance(payload, list) else [payload]
        size = 1 + sum(memoryview(p).nbytes for p in parts)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(struct.pack(">IB", size, cmd))
        for part in parts:
            self.proc.stdin.write(part)
        self.proc.stdin.flush()
        header = self.proc.stdout.read(4)
        if len(header) != 4:
            raise RuntimeError(f"erl died: {self.stderr_path.read_text(errors='replace')}")
        (length,) = struct.unpack(">I", header)
        reply = self.proc.stdout.read(length)
        assert len(reply) == length
        return reply

    def checked(self, reply: bytes) -> Any:
        term = binary_to_term(reply)
        if isinstance(term, tuple) and term[:1] == (Atom("echo_error"),):
            raise AssertionError(f"Erlang raised {term[1]!r}:{term[2]!r}")
        return term

    def echo(self, term: Any, mode: int = ECHO) -> Any:
        """Our encoding -> Erlang decodes and re-encodes -> our decoding."""
        return self.checked(self.request(mode, encode(term)))

    def eval(self, expression: str) -> Any:
        return self.checked(self.request(EVAL, expression.encode("utf-8")))

    def eval_raw(self, expression: str) -> bytes:
        return self.request(EVAL, expression.encode("utf-8"))

    def apply(self, fun: Any, args: list[Any]) -> Any:
        return self.checked(self.request(APPLY, term_to_binary((fun, args))))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the port sees eof and the VM halts
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoVM]:
    echo_vm = EchoVM(tmp_path_factory.mktemp("erl_echo"))
    try:
        assert echo_vm.eval("ok.") == Atom("ok")
        yield echo_vm
    finally:
        echo_vm.close()


@pytest.fixture(scope="module")
def vm_identifiers(vm: EchoVM) -> list[Any]:
    """Real identifiers made by the VM: its pids, a fresh reference and its ports."""
    pids, ref, ports = vm.eval("{processes(), make_ref(), erlang:ports()}.")
    assert pids and ports
    assert all(isinstance(p, Pid) for p in pids)
    assert isinstance(ref, Reference)
    assert all(isinstance(p, Port) for p in ports)
    return [*pids[:10], ref, *ports]


# ----------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(term=terms(max_leaves=20), mode=st.sampled_from(ECHO_MODES))
def test_erlang_echoes_generated_terms(vm: EchoVM, term: Any, mode: int) -> None:
    assert norm(vm.echo(term, mode)) == norm(term)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_erlang_echoes_terms_with_live_identifiers(
    vm: EchoVM, vm_identifiers: list[Any], data: st.DataObject
) -> None:
    term = data.draw(terms(extra_leaves=st.sampled_from(vm_identifiers), max_leaves=10))
    assert norm(vm.echo(term)) == norm(term)


def test_live_identifiers_round_trip_exactly(vm: EchoVM, vm_identifiers: list[Any]) -> None:
    for ident in vm_identifiers:
        for mode in ECHO_MODES:
            assert vm.echo(ident, mode) == ident
    # and Erlang recognises them as its own: the pid is alive, the ref equals itself
    me = vm.eval("self().")
    assert vm.apply(ExportFun(Atom("erlang"), Atom("is_process_alive"), 1), [me]) == Atom("true")
    assert vm.apply(ExportFun(Atom("erlang"), Atom("node"), 1), [me]) == Atom("nonode@nohost")


def test_synthesised_nonode_identifiers(vm: EchoVM) -> None:
    node = Atom("nonode@nohost")
    for term in [
        Pid(node, 4711, 0, 0),
        Pid(node, 2**32 - 1, 2**32 - 1, 7),
        Reference(node, 9, (1, 2, 3)),
        Reference(node, 9, (1, 2, 3, 4, 5)),
        Port(node, 2**64 - 1, 3),
    ]:
        assert vm.echo(term) == term


# ----------------------------------------------------------------------------------------------
# Specific shapes


@pytest.mark.parametrize("mode", ECHO_MODES)
def test_erlang_normalises_as_the_normal_form_predicts(vm: EchoVM, mode: int) -> None:
    assert vm.echo([1, 2, 255], mode) == Charlist("\x01\x02\xff")  # STRING_EXT
    assert vm.echo(Charlist(""), mode) == []
    assert vm.echo(Charlist("日本"), mode) == [0x65E5, 0x672C]
    assert vm.echo(ImproperList((1,), [2, 3]), mode) == Charlist("\x01\x02\x03")
    assert vm.echo(BitBinary(b"\xff", 3), mode) == BitBinary(b"\xe0", 3)
    assert vm.echo(BitBinary(b"ab", 8), mode) == b"ab"
    assert vm.echo("tëxt", mode) == "tëxt".encode()
    assert vm.echo((True, False, None), mode) == (Atom("true"), Atom("false"), Atom("undefined"))


@pytest.mark.parametrize("mode", ECHO_MODES)
def test_erlang_echoes_boundary_values(vm: EchoVM, mode: int) -> None:
    values = [
        0, 255, 256, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**64, 256**255 - 1,
        256**255, -(256**300), 0.0, -0.0, 5e-324, 1.7976931348623157e308, -1.5,
        Atom(""), Atom("a" * 255), Atom("é" * 255), Atom("💥" * 255), Atom("true"),
        b"", b"\x00" * 300, tuple(range(256)), list(range(1000)), {}, [],
        {Atom("k"): 1, b"k": 2, (1, 2): [3], 7: {8: 9}},
        ExportFun(Atom("lists"), Atom("map"), 2), ExportFun(Atom("no_such"), Atom("f"), 255),
    ]  # fmt: skip
    for value in values:
        result = vm.echo(value, mode)
        assert norm(result) == norm(value), value
        if isinstance(value, float):
            assert str(result) == str(value)  # keeps the sign of -0.0


def test_erlang_reads_a_large_zero_copy_binary(vm: EchoVM) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB, sent as a memoryview part of the scatter list
    parts = encode((Atom("blob"), big))
    assert any(isinstance(p, memoryview) and p.obj is big for p in parts)
    assert vm.echo((Atom("blob"), big)) == (Atom("blob"), big)
    size = vm.apply(ExportFun(Atom("erlang"), Atom("byte_size"), 1), [big])
    assert size == len(big)


# ----------------------------------------------------------------------------------------------
# Terms only Erlang makes


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("fun lists:map/2.", ExportFun(Atom("lists"), Atom("map"), 2)),
        ("<<1:3>>.", BitBinary(b"\x20", 3)),
        ("<<255, 7:4>>.", BitBinary(b"\xff\x70", 4)),
        ("<<1,2,3>>.", b"\x01\x02\x03"),
        ("1 bsl 2000.", 2**2000),
        ("-(1 bsl 2100).", -(2**2100)),
        ("(1 bsl 31) - 1.", 2**31 - 1),
        ("-(1 bsl 31) - 1.", -(2**31) - 1),
        ("3.25.", 3.25),
        ("'héllo'.", Atom("héllo")),
        ("'日本'.", Atom("日本")),
        ('"hello".', Charlist("hello")),
        ("[1, 2 | 3].", ImproperList((1, 2), 3)),
        ("list_to_tuple(lists:seq(1, 300)).", tuple(range(1, 301))),
        (
            '#{a => 1, <<"b">> => [1, 2], {c} => #{}}.',
            {Atom("a"): 1, b"b": Charlist("\x01\x02"), (Atom("c"),): {}},
        ),
        ("{true, false, undefined}.", (Atom("true"), Atom("false"), Atom("undefined"))),
    ],
)
def test_decode_terms_erlang_encodes(vm: EchoVM, expression: str, expected: Any) -> None:
    result = vm.eval(expression)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("lists:seq(1, 1000)", list(range(1, 1001))),
        ('lists:duplicate(2000, {a, <<"bin">>, 1.5})', [(Atom("a"), b"bin", 1.5)] * 2000),
        (
            "[1 bsl 3000, fun erlang:abs/1, <<5:5>>]",
            [2**3000, ExportFun(Atom("erlang"), Atom("abs"), 1), BitBinary(b"\x28", 5)],
        ),
    ],
)
def test_decode_compressed_terms_erlang_encodes(vm: EchoVM, expression: str, expected: Any) -> None:
    data = vm.eval(f"term_to_binary({expression}, [compressed]).")
    assert isinstance(data, bytes)
    assert data[:2] == bytes([VERSION, COMPRESSED])
    assert binary_to_term(data) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.1", 0.1),
        ("-2.5e-300", -2.5e-300),
        ("1.0e300", 1e300),
        ("-0.0", -0.0),
        ("4.9406564584124654e-324", 5e-324),
        ("1.7976931348623157e308", 1.7976931348623157e308),
    ],
)
def test_decode_float_ext_erlang_encodes(vm: EchoVM, text: str, value: float) -> None:
    data = vm.eval(f"term_to_binary({text}, [{{minor_version, 0}}]).")
    assert data[1] == FLOAT_EXT
    result = binary_to_term(data)
    assert result == value
    assert str(result) == str(value)


def test_decode_a_term_erlang_encodes_at_an_offset(vm: EchoVM) -> None:
    data = vm.eval('term_to_binary({a, [1, 2, 3], <<"x">>}).')
    view = memoryview(b"prefix" + data[1:] + b"suffix")
    assert decode(view, 6) == ((Atom("a"), Charlist("\x01\x02\x03"), b"x"), len(view) - 6)


def test_local_funs_survive_a_trip_through_python(vm: EchoVM) -> None:
    raw = vm.eval_raw("begin N = 41, fun(X) -> X + N end end.")
    fun = binary_to_term(raw)
    assert isinstance(fun, OpaqueFun)
    assert fun.raw[0] == NEW_FUN_EXT
    assert term_to_binary(fun) == raw  # byte for byte
    # sent back inside other terms, Erlang can still call it
    assert vm.apply(fun, [1]) == 42
    echoed = vm.echo([fun, (fun,)])
    assert echoed == [fun, (fun,)]
    assert vm.apply(echoed[1][0], [-41]) == 0


def test_hand_made_funs_are_accepted_by_erlang(vm: EchoVM) -> None:
    for fun in HAND_MADE_FUNS:
        # minor_version 2 writes atoms as UTF-8, as we do, so the bytes come back unchanged
        assert vm.echo(fun, ECHO_MINOR2) == fun
        assert isinstance(vm.echo(fun), OpaqueFun)
