"""Unit and property tests for the External Term Format codec ``relsync.erldist.etf``."""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any

import erlang  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.etf_strategies import HAND_MADE_FUNS, norm, norm_erlpy, terms, to_erlpy

from relsync.erldist import etf
from relsync.erldist.etf import (
    ZERO_COPY_MIN,
    Atom,
    BitBinary,
    Charlist,
    EtfError,
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

NODE = Atom("relsync@host")


def roundtrip(term: Any) -> Any:
    return binary_to_term(term_to_binary(term))


def atom_bytes(name: str) -> bytes:
    """SMALL_ATOM_EXT (latin-1), as old encoders write atoms."""
    data = name.encode("latin-1")
    return bytes([etf.SMALL_ATOM_EXT, len(data)]) + data


# ----------------------------------------------------------------------------------------------
# Round trips, one per tag


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        (0, etf.SMALL_INTEGER_EXT),
        (255, etf.SMALL_INTEGER_EXT),
        (256, etf.INTEGER_EXT),
        (-1, etf.INTEGER_EXT),
        (2**31 - 1, etf.INTEGER_EXT),
        (-(2**31), etf.INTEGER_EXT),
        (2**31, etf.SMALL_BIG_EXT),
        (-(2**31) - 1, etf.SMALL_BIG_EXT),
        (2**64, etf.SMALL_BIG_EXT),
        (-(2**64), etf.SMALL_BIG_EXT),
        (256**255 - 1, etf.SMALL_BIG_EXT),  # 255 digit bytes: the largest SMALL_BIG
        (256**255, etf.LARGE_BIG_EXT),  # 256 digit bytes
        (-(256**255), etf.LARGE_BIG_EXT),
        (3**2000, etf.LARGE_BIG_EXT),
    ],
)
def test_integers_round_trip_with_the_expected_tag(value: int, tag: int) -> None:
    data = term_to_binary(value)
    assert data[0] == etf.VERSION
    assert data[1] == tag
    result = binary_to_term(data)
    assert type(result) is int
    assert result == value


def test_big_integer_wire_layout() -> None:
    assert term_to_binary(2**31) == bytes([131, 110, 4, 0, 0, 0, 0, 128])
    assert term_to_binary(-(2**31) - 1) == bytes([131, 110, 4, 1, 1, 0, 0, 128])
    assert term_to_binary(2**2048)[1:7] == bytes([111, 0, 0, 1, 1, 0])  # 257 bytes, positive


@pytest.mark.parametrize("value", [0.0, -0.0, 1.5, -2.25e-300, 5e-324, 1.7976931348623157e308])
def test_floats_round_trip(value: float) -> None:
    data = term_to_binary(value)
    assert data[1] == etf.NEW_FLOAT_EXT
    result = binary_to_term(data)
    assert type(result) is float
    assert result == value
    assert math.copysign(1.0, result) == math.copysign(1.0, value)


@pytest.mark.parametrize(
    "name", ["", "ok", "héllo", "日本語", "💥" * 10, "a" * 255, "é" * 255, "💥" * 255]
)
def test_atoms_round_trip(name: str) -> None:
    data = term_to_binary(Atom(name))
    expected_tag = etf.SMALL_ATOM_UTF8_EXT if len(name.encode()) < 256 else etf.ATOM_UTF8_EXT
    assert data[1] == expected_tag
    result = binary_to_term(data)
    assert type(result) is Atom
    assert result == name


def test_true_false_none_encode_as_atoms_and_decode_as_atoms() -> None:
    assert term_to_binary(True) == term_to_binary(Atom("true"))
    assert term_to_binary(False) == term_to_binary(Atom("false"))
    assert term_to_binary(None) == term_to_binary(Atom("undefined"))
    for value, name in [(True, "true"), (False, "false"), (None, "undefined")]:
        result = roundtrip(value)
        assert type(result) is Atom
        assert result == name


@pytest.mark.parametrize(
    "value", [b"", b"abc", bytes(range(256)), bytearray(b"xy"), memoryview(b"mv"), b"\0" * 5000]
)
def test_binaries_round_trip_as_bytes(value: bytes | bytearray | memoryview) -> None:
    result = roundtrip(value)
    assert type(result) is bytes
    assert result == bytes(value)


def test_str_encodes_as_utf8_binary() -> None:
    assert term_to_binary("hé") == term_to_binary("hé".encode())
    assert roundtrip("hé 日本") == "hé 日本".encode()


@pytest.mark.parametrize("text", ["", "hello", "\x00\xff", "x" * 70000])
def test_latin1_charlists_round_trip(text: str) -> None:
    data = term_to_binary(Charlist(text))
    result = binary_to_term(data)
    if len(text) < 65536:
        assert data[1] == etf.STRING_EXT
        assert type(result) is Charlist
        assert result == text
    else:  # too long for STRING_EXT: a list of integers
        assert data[1] == etf.LIST_EXT
        assert result == [ord(c) for c in text]


def test_charlist_with_wide_characters_is_a_list_of_codes() -> None:
    assert roundtrip(Charlist("aé日")) == [97, 233, 0x65E5]


def test_lists_round_trip() -> None:
    assert roundtrip([]) == []
    assert term_to_binary([]) == bytes([131, etf.NIL_EXT])
    assert roundtrip([1, [2, [3]], Atom("a")]) == [1, [2, [3]], Atom("a")]
    long = list(range(300))
    assert roundtrip(long) == long


def test_improper_lists_round_trip() -> None:
    term = ImproperList((1, Atom("b")), Atom("tail"))
    assert roundtrip(term) == term
    nested = ImproperList(([1, 2],), ImproperList((3,), b"t"))
    assert roundtrip(nested) == nested
    with pytest.raises(EtfError):
        term_to_binary(ImproperList((), 1))


@pytest.mark.parametrize("size", [0, 1, 255, 256, 1000])
def test_tuples_round_trip(size: int) -> None:
    term = tuple(range(size))
    data = term_to_binary(term)
    assert data[1] == (etf.SMALL_TUPLE_EXT if size < 256 else etf.LARGE_TUPLE_EXT)
    assert roundtrip(term) == term


def test_maps_round_trip() -> None:
    term = {
        Atom("a"): 1,
        b"k": [1, 2],
        (1, Atom("x")): {Atom("nested"): Charlist("v")},
        -(2**70): 1.5,
    }
    assert roundtrip(term) == term
    assert roundtrip({}) == {}


def test_map_with_an_unhashable_key_is_an_etf_error() -> None:
    data = bytes([131, etf.MAP_EXT, 0, 0, 0, 1, etf.LIST_EXT, 0, 0, 0, 1, 97, 1, 106, 97, 2])
    with pytest.raises(EtfError, match="map key"):
        binary_to_term(data)


@pytest.mark.parametrize(
    "term",
    [
        Pid(NODE, 0, 0, 0),
        Pid(NODE, 2**32 - 1, 2**32 - 1, 2**32 - 1),
        Pid(Atom("nonode@nohost"), 80, 0, 0),
        Reference(NODE, 3, (1, 2, 3)),
        Reference(NODE, 2**32 - 1, (1, 2, 3, 4, 2**32 - 1)),
        Port(NODE, 0, 0),
        Port(NODE, 2**64 - 1, 2**32 - 1),
        BitBinary(b"\xe0", 3),
        BitBinary(b"\x01\x02\xff", 8),
        ExportFun(Atom("lists"), Atom("map"), 2),
        ExportFun(Atom("mod"), Atom("fün"), 255),
        *HAND_MADE_FUNS,
    ],
    ids=repr,
)
def test_special_terms_round_trip(term: Any) -> None:
    assert roundtrip(term) == term
    assert roundtrip([term, (term,)]) == [term, (term,)]


def test_special_terms_use_the_current_tags() -> None:
    assert term_to_binary(Pid(NODE, 1, 2, 3))[1] == etf.NEW_PID_EXT
    assert term_to_binary(Reference(NODE, 1, (1, 2, 3)))[1] == etf.NEWER_REFERENCE_EXT
    assert term_to_binary(Port(NODE, 1, 2))[1] == etf.V4_PORT_EXT
    assert term_to_binary(BitBinary(b"\x80", 1))[1] == etf.BIT_BINARY_EXT
    assert term_to_binary(ExportFun(NODE, NODE, 1))[1] == etf.EXPORT_EXT
    fun = HAND_MADE_FUNS[1]
    assert term_to_binary(fun) == bytes([131]) + fun.raw  # sent back byte for byte


def test_invalid_bitbinary_is_rejected() -> None:
    for bad in (BitBinary(b"", 3), BitBinary(b"\x00", 0), BitBinary(b"\x00", 9)):
        with pytest.raises(EtfError):
            term_to_binary(bad)


def test_nested_mixed_term_round_trips() -> None:
    term = (
        Atom("ok"),
        [1, 2.5, b"bin", Charlist("str"), {Atom("k"): (Pid(NODE, 1, 2, 3),)}],
        ImproperList((Port(NODE, 1, 2),), Reference(NODE, 1, (1, 2, 3))),
        BitBinary(b"\xf0", 4),
        ExportFun(Atom("m"), Atom("f"), 0),
        -(2**100),
    )
    assert roundtrip(term) == term


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(terms())
def test_round_trip_preserves_the_normal_form(term: Any) -> None:
    assert norm(roundtrip(term)) == norm(term)


# ----------------------------------------------------------------------------------------------
# Older encodings Erlang may still send


def test_decode_atom_ext_and_small_atom_ext_latin1() -> None:
    assert binary_to_term(bytes([131, etf.ATOM_EXT, 0, 2]) + b"h\xe9") == Atom("hé")
    assert binary_to_term(bytes([131, etf.SMALL_ATOM_EXT, 2]) + b"h\xe9") == Atom("hé")
    assert type(binary_to_term(bytes([131]) + atom_bytes("true"))) is Atom


def test_decode_atom_utf8_ext_long_form() -> None:
    name = "ü" * 200  # 400 bytes
    data = bytes([131, etf.ATOM_UTF8_EXT]) + struct.pack(">H", 400) + name.encode()
    assert binary_to_term(data) == Atom(name)


def test_decode_pid_ext() -> None:
    data = bytes([131, etf.PID_EXT]) + atom_bytes("n@h") + struct.pack(">IIB", 38, 7, 2)
    assert binary_to_term(data) == Pid(Atom("n@h"), 38, 7, 2)


def test_decode_port_ext_and_new_port_ext() -> None:
    new = bytes([131, etf.NEW_PORT_EXT]) + atom_bytes("n@h") + struct.pack(">II", 9, 2**32 - 1)
    assert binary_to_term(new) == Port(Atom("n@h"), 9, 2**32 - 1)
    old = bytes([131, etf.PORT_EXT]) + atom_bytes("n@h") + struct.pack(">IB", 9, 3)
    assert binary_to_term(old) == Port(Atom("n@h"), 9, 3)


def test_decode_new_reference_ext_and_reference_ext() -> None:
    new = (
        bytes([131, etf.NEW_REFERENCE_EXT, 0, 3])
        + atom_bytes("n@h")
        + bytes([2])
        + struct.pack(">III", 1, 2, 3)
    )
    assert binary_to_term(new) == Reference(Atom("n@h"), 2, (1, 2, 3))
    old = bytes([131, etf.REFERENCE_EXT]) + atom_bytes("n@h") + struct.pack(">IB", 77, 1)
    assert binary_to_term(old) == Reference(Atom("n@h"), 1, (77,))


@pytest.mark.parametrize("value", [1.5, -0.1, 1e300, 5e-324, 0.0])
def test_decode_float_ext(value: float) -> None:
    text = f"{value:.20e}".encode().ljust(31, b"\0")
    assert binary_to_term(bytes([131, etf.FLOAT_EXT]) + text) == value


def test_decode_compressed_term() -> None:
    term: Any = [Atom("compressed"), list(range(100)), b"x" * 1000]
    inner = term_to_binary(term)[1:]
    data = bytes([131, etf.COMPRESSED]) + struct.pack(">I", len(inner)) + zlib.compress(inner)
    assert len(data) < len(inner)
    assert binary_to_term(data) == term


def test_compressed_term_with_the_wrong_size_is_rejected() -> None:
    inner = term_to_binary(list(range(50)))[1:]
    data = bytes([131, etf.COMPRESSED]) + struct.pack(">I", len(inner) + 1) + zlib.compress(inner)
    with pytest.raises(EtfError):
        binary_to_term(data)


def test_compressed_term_with_garbage_is_rejected() -> None:
    with pytest.raises(EtfError):
        binary_to_term(bytes([131, etf.COMPRESSED, 0, 0, 0, 3]) + b"garbage")


# ----------------------------------------------------------------------------------------------
# decode() at an offset


def test_decode_at_an_offset_inside_a_memoryview() -> None:
    first = term_to_binary((Atom("a"), 1))[1:]
    second = term_to_binary([b"payload", Charlist("xy"), 2**40])[1:]
    buf = bytearray(b"\xde\xad") + first + second + b"\xbe\xef"
    view = memoryview(buf)[1:]
    term1, end1 = decode(view, 1)
    assert term1 == (Atom("a"), 1)
    assert end1 == 1 + len(first)
    term2, end2 = decode(view, end1)
    assert term2 == [b"payload", Charlist("xy"), 2**40]
    assert end2 == end1 + len(second)
    assert bytes(view[end2:]) == b"\xbe\xef"
    # the decoded binary is a copy, not tied to the buffer
    buf[:] = b"\0" * len(buf)
    assert term2[0] == b"payload"


def test_decode_accepts_bytes_and_bytearray() -> None:
    data = b"??" + term_to_binary(Atom("x"))[1:]
    assert decode(data, 2) == (Atom("x"), len(data))
    assert decode(bytearray(data), 2) == (Atom("x"), len(data))


def test_encode_without_version_byte_feeds_decode() -> None:
    term: Any = {Atom("k"): [1, b"v" * 5000]}
    data = b"".join(encode(term, version_byte=False))
    assert data[0] == etf.MAP_EXT
    assert decode(data) == (term, len(data))


# ----------------------------------------------------------------------------------------------
# Zero copy scatter list


def test_large_bytes_are_referenced_not_copied() -> None:
    big = bytes(range(256)) * 4096  # 1 MiB
    parts = encode((Atom("data"), big, 7))
    views = [p for p in parts if isinstance(p, memoryview)]
    assert len(views) == 1
    assert views[0].obj is big
    assert views[0].nbytes == len(big)
    assert sum(len(bytes(p)) for p in parts) < len(big) + 64
    assert binary_to_term(b"".join(parts)) == (Atom("data"), big, 7)


def test_large_bytearray_mutation_shows_through_the_scatter_list() -> None:
    big = bytearray(1 << 20)
    parts = encode([big])
    big[0] = 0xAB
    big[-1] = 0xCD
    decoded = binary_to_term(b"".join(parts))
    assert decoded == [b"\xab" + bytes((1 << 20) - 2) + b"\xcd"]


def test_large_memoryview_is_passed_through() -> None:
    backing = bytearray(b"z" * (2 * ZERO_COPY_MIN))
    view = memoryview(backing)[ZERO_COPY_MIN // 2 :]
    parts = encode(view)
    assert any(p is view for p in parts)
    assert binary_to_term(b"".join(parts)) == bytes(view)


def test_large_binary_threshold_is_zero_copy_min() -> None:
    below = encode(b"a" * (ZERO_COPY_MIN - 1))
    at = encode(b"a" * ZERO_COPY_MIN)
    assert not any(isinstance(p, memoryview) for p in below)
    assert len(below) == 1
    assert any(isinstance(p, memoryview) for p in at)


def test_small_binaries_are_coalesced_into_one_part() -> None:
    parts = encode([b"a", b"bb", "ccc", (b"d" * 100, Atom("x"))])
    assert len(parts) == 1
    assert not isinstance(parts[0], memoryview)


def test_scatter_list_interleaves_copies_and_references() -> None:
    a, b = b"A" * 10000, b"B" * 20000
    parts = encode([a, 1, b, 2])
    refs = [p for p in parts if isinstance(p, memoryview)]
    assert [r.obj for r in refs] == [a, b]
    assert b"".join(parts) == term_to_binary([a, 1, b, 2])
    assert binary_to_term(b"".join(parts)) == [a, 1, b, 2]


# ----------------------------------------------------------------------------------------------
# Errors

TRUNCATION_SAMPLES = [
    (Atom("ok"), 1, 300, 2**31 - 1, -(2**40), 256**300, 1.5),
    [b"bin", Charlist("str"), "tëxt", [], ImproperList((1,), Atom("t"))],
    {Atom("k"): (Pid(NODE, 1, 2, 3), Reference(NODE, 4, (5, 6, 7)), Port(NODE, 8, 9))},
    (BitBinary(b"\xff\x80", 1), ExportFun(Atom("m"), Atom("f"), 3), HAND_MADE_FUNS[1]),
    Atom("ü" * 200),
    tuple(range(300)),
]


@pytest.mark.parametrize("term", TRUNCATION_SAMPLES, ids=lambda t: type(t).__name__)
def test_every_truncation_is_an_etf_error(term: Any) -> None:
    data = term_to_binary(term)
    for cut in range(len(data)):
        with pytest.raises(EtfError):
            binary_to_term(data[:cut])
        if cut >= 1:
            with pytest.raises(EtfError):
                decode(memoryview(data)[:cut], 1)


def test_truncated_old_encodings_are_etf_errors() -> None:
    inner = term_to_binary(list(range(40)))[1:]
    samples = [
        bytes([131, etf.FLOAT_EXT]) + b"1.50000000000000000000e+00".ljust(31, b"\0"),
        bytes([131, etf.PID_EXT]) + atom_bytes("n@h") + struct.pack(">IIB", 1, 2, 3),
        bytes([131, etf.NEW_REFERENCE_EXT, 0, 1]) + atom_bytes("n@h") + bytes([1, 0, 0, 0, 1]),
        bytes([131, etf.NEW_PORT_EXT]) + atom_bytes("n@h") + struct.pack(">II", 1, 2),
        bytes([131, etf.COMPRESSED]) + struct.pack(">I", len(inner)) + zlib.compress(inner),
    ]
    for data in samples:
        binary_to_term(data)  # complete: fine
        for cut in range(len(data)):
            with pytest.raises(EtfError):
                binary_to_term(data[:cut])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(terms(max_leaves=10), st.data())
def test_random_truncation_is_an_etf_error(term: Any, data: st.DataObject) -> None:
    encoded = term_to_binary(term)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(EtfError):
        binary_to_term(encoded[:cut])


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(EtfError, match="trailing"):
        binary_to_term(term_to_binary(Atom("ok")) + b"\0")
    inner = term_to_binary(1)[1:] + b"\0"
    compressed = bytes([131, etf.COMPRESSED]) + struct.pack(">I", len(inner)) + zlib.compress(inner)
    with pytest.raises(EtfError, match="trailing"):
        binary_to_term(compressed)


@pytest.mark.parametrize("data", [b"", b"\x00\x61\x01", b"\x82\x61\x01", b"\x61\x01"])
def test_bad_version_byte_is_rejected(data: bytes) -> None:
    with pytest.raises(EtfError, match="version"):
        binary_to_term(data)


@pytest.mark.parametrize("tag", [0, 82, 117, 121, 255])  # 117 FUN_EXT and 121 LOCAL_EXT too
def test_unknown_tag_is_rejected(tag: int) -> None:
    with pytest.raises(EtfError, match="tag"):
        binary_to_term(bytes([131, tag, 0, 0, 0, 0]))
    with pytest.raises(EtfError, match="tag"):
        binary_to_term(bytes([131, etf.SMALL_TUPLE_EXT, 2, 97, 1, tag, 0]))


def test_non_atom_where_an_atom_is_required() -> None:
    data = bytes([131, etf.NEW_PID_EXT, 97, 1]) + bytes(12)
    with pytest.raises(EtfError, match="atom"):
        binary_to_term(data)


def test_invalid_utf8_atom_is_an_etf_error() -> None:
    with pytest.raises(EtfError):
        binary_to_term(bytes([131, etf.SMALL_ATOM_UTF8_EXT, 2, 0xFF, 0xFE]))


def test_garbage_float_ext_is_an_etf_error() -> None:
    with pytest.raises(EtfError):
        binary_to_term(bytes([131, etf.FLOAT_EXT]) + b"not a float".ljust(31, b"\0"))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_cannot_be_encoded(value: float) -> None:
    with pytest.raises(EtfError):
        term_to_binary(value)
    with pytest.raises(EtfError):
        term_to_binary([1, (value,)])


def test_atom_longer_than_255_characters_is_rejected() -> None:
    term_to_binary(Atom("a" * 255))
    with pytest.raises(EtfError, match="255"):
        term_to_binary(Atom("a" * 256))
    with pytest.raises(EtfError):
        term_to_binary(Pid(Atom("n" * 256), 1, 2, 3))


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, frozenset(), 1j, type, Ellipsis, [1, object()], {Atom("k"): {1}}],
    ids=repr,
)
def test_unencodable_python_objects_are_rejected(value: Any) -> None:
    with pytest.raises(EtfError, match="cannot encode"):
        term_to_binary(value)


@pytest.mark.parametrize(
    "value",
    [
        Pid(NODE, -1, 0, 0),
        Pid(NODE, 2**32, 0, 0),
        Port(NODE, 2**64, 0),
        Reference(NODE, 2**32, (1,)),
        Reference(NODE, 0, (1,) * 70000),
    ],
    ids=lambda v: type(v).__name__,
)
def test_out_of_range_identifier_fields_are_etf_errors(value: Any) -> None:
    with pytest.raises(EtfError):
        term_to_binary(value)


# ----------------------------------------------------------------------------------------------
# erlang-py as an oracle (normal forms documented in support/etf_strategies.py)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(terms())
def test_erlang_py_decodes_what_we_encode(term: Any) -> None:
    assert norm_erlpy(erlang.binary_to_term(term_to_binary(term))) == norm(term)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(terms())
def test_we_decode_what_erlang_py_encodes(term: Any) -> None:
    assert norm(binary_to_term(erlang.term_to_binary(to_erlpy(term)))) == norm(term)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(terms())
def test_we_decode_what_erlang_py_compresses(term: Any) -> None:
    data = erlang.term_to_binary(to_erlpy(term), compressed=9)
    assert norm(binary_to_term(data)) == norm(term)


def test_normal_form_examples() -> None:
    """The mapping between the two libraries, spelled out on a few values."""
    assert norm_erlpy(erlang.binary_to_term(term_to_binary("é"))) == ("bin", b"\xc3\xa9")
    assert norm_erlpy(b"ab") == norm(Charlist("ab")) == norm([97, 98])
    assert norm_erlpy(True) == norm(Atom("true")) == norm(True)
    assert norm_erlpy(None) == norm(None) == ("atom", "undefined")
    assert norm(BitBinary(b"\xff", 3)) == norm(BitBinary(b"\xe0", 3))
    assert norm(BitBinary(b"\xff", 8)) == norm(b"\xff")
    assert norm(ImproperList((1,), [2])) == norm([1, 2])
    assert norm(OpaqueFun(HAND_MADE_FUNS[0].raw)) == ("fun", HAND_MADE_FUNS[0].raw)
