"""Erlang External Term Format: explicit Python types, a scatter-list encoder, an offset decoder.

Mapping (Python -> Erlang):

* ``Atom`` -> atom; ``True``/``False`` -> ``true``/``false``; ``None`` -> ``undefined``
* ``int`` -> integer, ``float`` -> float
* ``bytes``/``bytearray``/``memoryview`` -> binary; ``str`` -> binary (UTF-8)
* ``Charlist`` -> list of character codes (an Erlang "string")
* ``tuple`` -> tuple, ``list`` -> proper list, ``ImproperList`` -> improper list, ``dict`` -> map
* ``Pid``, ``Reference``, ``Port``, ``BitBinary``, ``ExportFun``, ``OpaqueFun`` -> the same thing

Decoding gives back the explicit types: every atom is an ``Atom`` (also ``true``, ``false`` and
``undefined``), every binary is ``bytes``, a list written as ``STRING_EXT`` is a ``Charlist``.

>>> binary_to_term(term_to_binary((Atom("ok"), [1, 2], b"bin")))
(Atom('ok'), [1, 2], b'bin')
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from typing import TypeAlias

VERSION = 131

COMPRESSED = 80
NEW_FLOAT_EXT = 70
BIT_BINARY_EXT = 77
NEW_PID_EXT = 88
NEW_PORT_EXT = 89
NEWER_REFERENCE_EXT = 90
SMALL_INTEGER_EXT = 97
INTEGER_EXT = 98
FLOAT_EXT = 99
ATOM_EXT = 100
REFERENCE_EXT = 101
PORT_EXT = 102
PID_EXT = 103
SMALL_TUPLE_EXT = 104
LARGE_TUPLE_EXT = 105
NIL_EXT = 106
STRING_EXT = 107
LIST_EXT = 108
BINARY_EXT = 109
SMALL_BIG_EXT = 110
LARGE_BIG_EXT = 111
NEW_FUN_EXT = 112
EXPORT_EXT = 113
NEW_REFERENCE_EXT = 114
SMALL_ATOM_EXT = 115
MAP_EXT = 116
ATOM_UTF8_EXT = 118
SMALL_ATOM_UTF8_EXT = 119
V4_PORT_EXT = 120

#: Binaries at least this large are referenced by the scatter list instead of copied.
ZERO_COPY_MIN = 4096

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


class EtfError(ValueError):
    """A term could not be encoded or decoded."""


class Atom(str):
    """An Erlang atom (a ``str`` subclass, so it compares equal to its text)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


class Charlist(str):
    """An Erlang string: a list of character codes, written as text."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Charlist({str.__repr__(self)})"


@dataclass(frozen=True, slots=True)
class Pid:
    """An Erlang process identifier."""

    node: Atom
    id: int
    serial: int
    creation: int


@dataclass(frozen=True, slots=True)
class Reference:
    """An Erlang reference (up to 5 words since OTP 24)."""

    node: Atom
    creation: int
    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Port:
    """An Erlang port identifier."""

    node: Atom
    id: int
    creation: int


@dataclass(frozen=True, slots=True)
class BitBinary:
    """A bitstring whose last byte holds only ``bits`` (1-8) significant bits."""

    data: bytes
    bits: int


@dataclass(frozen=True, slots=True)
class ImproperList:
    """A list whose tail is not ``[]``."""

    items: tuple[Term, ...]
    tail: Term


@dataclass(frozen=True, slots=True)
class ExportFun:
    """``fun Module:Function/Arity``."""

    module: Atom
    function: Atom
    arity: int


@dataclass(frozen=True, slots=True)
class OpaqueFun:
    """A local fun, kept as its external encoding so it can be sent back unchanged."""

    raw: bytes


Term: TypeAlias = (
    Atom | Charlist | bool | int | float | str | bytes | bytearray | memoryview
    | tuple["Term", ...] | list["Term"] | dict["Term", "Term"]
    | Pid | Reference | Port | BitBinary | ImproperList | ExportFun | OpaqueFun | None
)  # fmt: skip

Buffer: TypeAlias = bytes | bytearray | memoryview

_B = struct.Struct(">B")
_H = struct.Struct(">H")
_I = struct.Struct(">I")
_i = struct.Struct(">i")
_Q = struct.Struct(">Q")
_d = struct.Struct(">d")
_BH = struct.Struct(">BH")
_BI = struct.Struct(">BI")
_Bi = struct.Struct(">Bi")
_BB = struct.Struct(">BB")
_BIB = struct.Struct(">BIB")


# ----------------------------------------------------------------------------------------------
# Encoding


class _Writer:
    """Accumulates small pieces in one bytearray and references large binaries in place."""

    __slots__ = ("buf", "parts")

    def __init__(self) -> None:
        self.parts: list[Buffer] = []
        self.buf = bytearray()

    def big(self, data: Buffer) -> None:
        if self.buf:
            self.parts.append(bytes(self.buf))
            self.buf = bytearray()
        self.parts.append(data if isinstance(data, memoryview) else memoryview(data))

    def finish(self) -> list[Buffer]:
        if self.buf:
            self.parts.append(bytes(self.buf))
        return self.parts


def encode(term: Term, *, version_byte: bool = True) -> list[Buffer]:
    """Encode ``term`` as a scatter list; large binaries are referenced, not copied."""
    w = _Writer()
    if version_byte:
        w.buf.append(VERSION)
    try:
        _encode(term, w)
    except struct.error as exc:  # a field out of range, e.g. Pid(id=-1)
        raise EtfError(f"cannot encode {type(term).__name__}: {exc}") from exc
    return w.finish()


def term_to_binary(term: Term) -> bytes:
    """Encode ``term`` into one ``bytes`` object (with the version byte)."""
    return b"".join(encode(term))


def _encode_atom(name: str, buf: bytearray) -> None:
    data = name.encode("utf-8")
    if len(name) > 255:
        raise EtfError(f"atom longer than 255 characters: {name[:20]!r}...")
    if len(data) < 256:
        buf += _BB.pack(SMALL_ATOM_UTF8_EXT, len(data))
    else:
        buf += _BH.pack(ATOM_UTF8_EXT, len(data))
    buf += data


def _encode_int(value: int, buf: bytearray) -> None:
    if 0 <= value <= 255:
        buf += _BB.pack(SMALL_INTEGER_EXT, value)
    elif _INT32_MIN <= value <= _INT32_MAX:
        buf += _Bi.pack(INTEGER_EXT, value)
    else:
        magnitude = -value if value < 0 else value
        digits = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
        sign = 1 if value < 0 else 0
        if len(digits) < 256:
            buf += bytes((SMALL_BIG_EXT, len(digits), sign))
        else:
            buf += _BIB.pack(LARGE_BIG_EXT, len(digits), sign)
        buf += digits


def _encode_binary(data: Buffer, w: _Writer) -> None:
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    w.buf += _BI.pack(BINARY_EXT, size)
    if size >= ZERO_COPY_MIN:
        w.big(data)
    else:
        w.buf += data


def _encode(term: Term, w: _Writer) -> None:
    buf = w.buf
    if isinstance(term, Atom):
        _encode_atom(term, buf)
    elif isinstance(term, Charlist):
        codes = [ord(c) for c in term]
        if len(codes) < 65536 and all(c < 256 for c in codes):
            buf += _BH.pack(STRING_EXT, len(codes))
            buf += bytes(codes)
        else:
            _encode_list(codes, w)
    elif isinstance(term, bool):
        _encode_atom("true" if term else "false", buf)
    elif term is None:
        _encode_atom("undefined", buf)
    elif isinstance(term, int):
        _encode_int(term, buf)
    elif isinstance(term, float):
        if not math.isfinite(term):
            raise EtfError(f"Erlang has no float {term!r}")
        buf.append(NEW_FLOAT_EXT)
        buf += _d.pack(term)
    elif isinstance(term, str):
        _encode_binary(term.encode("utf-8"), w)
    elif isinstance(term, bytes | bytearray | memoryview):
        _encode_binary(term, w)
    elif isinstance(term, tuple):
        if len(term) < 256:
            buf += _BB.pack(SMALL_TUPLE_EXT, len(term))
        else:
            buf += _BI.pack(LARGE_TUPLE_EXT, len(term))
        for item in term:
            _encode(item, w)
    elif isinstance(term, list):
        _encode_list(term, w)
    elif isinstance(term, dict):
        buf += _BI.pack(MAP_EXT, len(term))
        for key, value in term.items():
            _encode(key, w)
            _encode(value, w)
    else:
        _encode_special(term, w)


def _encode_list(items: list[Term] | list[int], w: _Writer, tail: Term | None = None) -> None:
    if not items and tail is None:
        w.buf.append(NIL_EXT)
        return
    w.buf += _BI.pack(LIST_EXT, len(items))
    for item in items:
        _encode(item, w)
    if tail is None:
        w.buf.append(NIL_EXT)
    else:
        _encode(tail, w)


def _encode_special(term: object, w: _Writer) -> None:
    buf = w.buf
    if isinstance(term, Pid):
        buf.append(NEW_PID_EXT)
        _encode_atom(term.node, buf)
        buf += struct.pack(">III", term.id, term.serial, term.creation)
    elif isinstance(term, Reference):
        buf += _BH.pack(NEWER_REFERENCE_EXT, len(term.ids))
        _encode_atom(term.node, buf)
        buf += _I.pack(term.creation)
        buf += struct.pack(f">{len(term.ids)}I", *term.ids)
    elif isinstance(term, Port):
        buf.append(V4_PORT_EXT)
        _encode_atom(term.node, buf)
        buf += _Q.pack(term.id) + _I.pack(term.creation)
    elif isinstance(term, ImproperList):
        if not term.items:
            raise EtfError("an improper list needs at least one element")
        _encode_list(list(term.items), w, term.tail)
    elif isinstance(term, BitBinary):
        if not term.data or not 1 <= term.bits <= 8:
            raise EtfError("a BitBinary needs data and 1-8 bits in its last byte")
        buf += _BIB.pack(BIT_BINARY_EXT, len(term.data), term.bits)
        buf += term.data
    elif isinstance(term, ExportFun):
        buf.append(EXPORT_EXT)
        _encode_atom(term.module, buf)
        _encode_atom(term.function, buf)
        _encode_int(term.arity, buf)
    elif isinstance(term, OpaqueFun):
        buf += term.raw
    else:
        raise EtfError(f"cannot encode a {type(term).__name__} as an Erlang term")


# ----------------------------------------------------------------------------------------------
# Decoding


def binary_to_term(data: Buffer) -> Term:
    """Decode a whole external term (starting with the version byte, maybe compressed)."""
    view = memoryview(data)
    if not view.nbytes or view[0] != VERSION:
        raise EtfError("not an external term (missing version byte 131)")
    if view.nbytes > 1 and view[1] == COMPRESSED:
        try:
            (size,) = _I.unpack_from(view, 2)
            view = memoryview(zlib.decompress(view[6:]))
        except (struct.error, zlib.error) as exc:
            raise EtfError(f"truncated or corrupt compressed term: {exc}") from exc
        if view.nbytes != size:
            raise EtfError("compressed term has the wrong uncompressed size")
        term, end = decode(view, 0)
    else:
        term, end = decode(view, 1)
    if end != view.nbytes:
        raise EtfError(f"{view.nbytes - end} trailing bytes after the term")
    return term


def decode(data: Buffer, offset: int = 0) -> tuple[Term, int]:
    """Decode one term (no version byte) at ``offset``; return it and the offset after it."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    try:
        return _decode(view, offset)
    except (struct.error, IndexError) as exc:
        raise EtfError(f"truncated term at offset {offset}") from exc


def _decode_atom_text(view: memoryview, pos: int, size: int, utf8: bool) -> tuple[Atom, int]:
    end = pos + size
    if end > view.nbytes:
        raise EtfError("truncated atom")
    raw = bytes(view[pos:end])
    try:
        return Atom(raw.decode("utf-8" if utf8 else "latin-1")), end
    except UnicodeDecodeError as exc:
        raise EtfError(f"atom is not valid UTF-8: {raw!r}") from exc


def _decode_atom(view: memoryview, pos: int) -> tuple[Atom, int]:
    term, pos = _decode(view, pos)
    if not isinstance(term, Atom):
        raise EtfError(f"expected an atom, got {type(term).__name__}")
    return term, pos


def _decode_items(view: memoryview, pos: int, count: int) -> tuple[list[Term], int]:
    items: list[Term] = []
    append = items.append
    for _ in range(count):
        item, pos = _decode(view, pos)
        append(item)
    return items, pos


def _decode(view: memoryview, pos: int) -> tuple[Term, int]:
    tag = view[pos]
    pos += 1
    if tag == SMALL_INTEGER_EXT:
        return view[pos], pos + 1
    if tag == INTEGER_EXT:
        return _i.unpack_from(view, pos)[0], pos + 4
    if tag in (SMALL_ATOM_UTF8_EXT, SMALL_ATOM_EXT):
        return _decode_atom_text(view, pos + 1, view[pos], tag == SMALL_ATOM_UTF8_EXT)
    if tag in (ATOM_UTF8_EXT, ATOM_EXT):
        return _decode_atom_text(view, pos + 2, _H.unpack_from(view, pos)[0], tag == ATOM_UTF8_EXT)
    if tag == BINARY_EXT:
        (size,) = _I.unpack_from(view, pos)
        pos += 4
        if pos + size > view.nbytes:
            raise EtfError("truncated binary")
        return bytes(view[pos : pos + size]), pos + size
    if tag == SMALL_TUPLE_EXT:
        items, pos = _decode_items(view, pos + 1, view[pos])
        return tuple(items), pos
    if tag == LARGE_TUPLE_EXT:
        items, pos = _decode_items(view, pos + 4, _I.unpack_from(view, pos)[0])
        return tuple(items), pos
    if tag == NIL_EXT:
        return [], pos
    if tag == STRING_EXT:
        (size,) = _H.unpack_from(view, pos)
        pos += 2
        if pos + size > view.nbytes:
            raise EtfError("truncated string")
        return Charlist(bytes(view[pos : pos + size]).decode("latin-1")), pos + size
    if tag == LIST_EXT:
        items, pos = _decode_items(view, pos + 4, _I.unpack_from(view, pos)[0])
        tail, pos = _decode(view, pos)
        if tail == [] and isinstance(tail, list):
            return items, pos
        return ImproperList(tuple(items), tail), pos
    if tag == MAP_EXT:
        (arity,) = _I.unpack_from(view, pos)
        pos += 4
        result: dict[Term, Term] = {}
        for _ in range(arity):
            key, pos = _decode(view, pos)
            value, pos = _decode(view, pos)
            try:
                result[key] = value
            except TypeError as exc:
                raise EtfError(f"map key of type {type(key).__name__} is not supported") from exc
        return result, pos
    if tag == NEW_FLOAT_EXT:
        return _d.unpack_from(view, pos)[0], pos + 8
    if tag in (SMALL_BIG_EXT, LARGE_BIG_EXT):
        if tag == SMALL_BIG_EXT:
            size, sign = view[pos], view[pos + 1]
            pos += 2
        else:
            size, sign = struct.unpack_from(">IB", view, pos)
            pos += 5
        if pos + size > view.nbytes:
            raise EtfError("truncated big integer")
        value = int.from_bytes(view[pos : pos + size], "little")
        return (-value if sign else value), pos + size
    return _decode_special(view, tag, pos)


def _decode_special(view: memoryview, tag: int, pos: int) -> tuple[Term, int]:
    if tag == NEW_PID_EXT:
        node, pos = _decode_atom(view, pos)
        ident, serial, creation = struct.unpack_from(">III", view, pos)
        return Pid(node, ident, serial, creation), pos + 12
    if tag == PID_EXT:
        node, pos = _decode_atom(view, pos)
        ident, serial, creation = struct.unpack_from(">IIB", view, pos)
        return Pid(node, ident, serial, creation), pos + 9
    if tag in (NEWER_REFERENCE_EXT, NEW_REFERENCE_EXT):
        (count,) = _H.unpack_from(view, pos)
        node, pos = _decode_atom(view, pos + 2)
        if tag == NEWER_REFERENCE_EXT:
            (creation,) = _I.unpack_from(view, pos)
            pos += 4
        else:
            creation = view[pos]
            pos += 1
        ids = struct.unpack_from(f">{count}I", view, pos)
        return Reference(node, creation, tuple(ids)), pos + 4 * count
    if tag == REFERENCE_EXT:
        node, pos = _decode_atom(view, pos)
        ident, creation = struct.unpack_from(">IB", view, pos)
        return Reference(node, creation, (ident,)), pos + 5
    if tag == V4_PORT_EXT:
        node, pos = _decode_atom(view, pos)
        ident, creation = struct.unpack_from(">QI", view, pos)
        return Port(node, ident, creation), pos + 12
    if tag == NEW_PORT_EXT:
        node, pos = _decode_atom(view, pos)
        ident, creation = struct.unpack_from(">II", view, pos)
        return Port(node, ident, creation), pos + 8
    if tag == PORT_EXT:
        node, pos = _decode_atom(view, pos)
        ident, creation = struct.unpack_from(">IB", view, pos)
        return Port(node, ident, creation), pos + 5
    if tag == BIT_BINARY_EXT:
        size, bits = struct.unpack_from(">IB", view, pos)
        pos += 5
        if pos + size > view.nbytes:
            raise EtfError("truncated bitstring")
        return BitBinary(bytes(view[pos : pos + size]), bits), pos + size
    if tag == EXPORT_EXT:
        module, pos = _decode_atom(view, pos)
        function, pos = _decode_atom(view, pos)
        arity, pos = _decode(view, pos)
        if not isinstance(arity, int):
            raise EtfError("export fun arity is not an integer")
        return ExportFun(module, function, arity), pos
    if tag == NEW_FUN_EXT:
        (size,) = _I.unpack_from(view, pos)
        end = pos + size
        if end > view.nbytes:
            raise EtfError("truncated fun")
        return OpaqueFun(bytes(view[pos - 1 : end])), end
    if tag == FLOAT_EXT:
        if pos + 31 > view.nbytes:
            raise EtfError("truncated float")
        text = bytes(view[pos : pos + 31]).split(b"\0", 1)[0]
        try:
            return float(text), pos + 31
        except ValueError as exc:
            raise EtfError(f"bad FLOAT_EXT text {text!r}") from exc
    raise EtfError(f"unsupported term tag {tag} at offset {pos - 1}")
