"""Reading Erlang terms written as text, as ``file:consult/1`` does (``rebar.config``, ``.rel``,
``APP.appup``).

What ``erl_parse:parse_term/1`` accepts: atoms, strings (adjacent ones joined), ``$c`` chars,
integers (``16#ff``, ``1_000``), floats, a sign before a number, tuples, lists (``[H|T]``), maps,
binaries of literal segments (``<<"a"/utf8, 1:16/little>>``), ``fun M:F/A``; ``%`` comments.
:func:`decode` gives a file's text as ``file:consult`` reads its bytes.
Values are the :mod:`relsync.erldist.etf` types: ``Atom``; ``Charlist`` for a string; ``int``
for a char; ``bytes`` (``BitBinary`` when not whole bytes); ``dict``; ``ImproperList``;
``ExportFun``. A macro, variable, record, expression or syntax error is a ``ValueError`` naming
the line, and so is nesting deeper than :data:`MAX_DEPTH` or a map key Python cannot hash (a
list or map).
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Iterator
from typing import NamedTuple

from relsync.erldist.etf import Atom, BitBinary, Charlist, ExportFun, ImproperList, Term

#: Brackets nested deeper than this are refused (no configuration file comes close).
MAX_DEPTH = 100

_WS = "\x00-\x20\x80-\xa0"
_NAME = "a-zA-Z0-9_@\xc0-\xd6\xd8-\xf6\xf8-\xff"
_DIGITS = r"[0-9](?:_?[0-9])*"
_TOKEN = re.compile(
    rf"""(?P<skip>[{_WS}]+|%[^\n]*)
    |(?P<float>{_DIGITS}\.{_DIGITS}(?:[eE][-+]?{_DIGITS})?)
    |(?P<int>{_DIGITS}(?:\#[0-9a-zA-Z]+(?:_[0-9a-zA-Z]+)*)?)
    |(?P<char>\$(?:\\(?:x\{{[0-9a-fA-F]*\}}|x[0-9a-fA-F]{{2}}|[0-7]{{1,3}}|\^.|.)|.))
    |(?P<atom>[a-z\xdf-\xf6\xf8-\xff][{_NAME}]*)
    |(?P<var>[A-Z_\xc0-\xd6\xd8-\xde][{_NAME}]*)
    |(?P<qatom>'(?:[^'\\]|\\.)*')
    |(?P<string>"(?:[^"\\]|\\.)*")
    |(?P<dot>\.(?=[{_WS}%]|\Z))
    |(?P<punct><<|>>|=>|[{{}}\[\](),|\#:/+\-])
    |(?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPE = re.compile(
    r"\\(?:x\{([0-9a-fA-F]*)\}|x([0-9a-fA-F]{2})|([0-7]{1,3})|\^(.)|(.))", re.DOTALL
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "v": "\v", "b": "\b", "f": "\f"}
_ESCAPES |= {"e": "\x1b", "s": " ", "d": "\x7f"}
_RESERVED = frozenset(
    ("after", "and", "andalso", "band", "begin", "bnot", "bor", "bsl", "bsr", "bxor", "case",
     "catch", "cond", "div", "end", "fun", "if", "let", "not", "of", "or", "orelse", "receive",
     "rem", "try", "when", "xor")
)  # fmt: skip
_SEGMENT_TYPES = {
    "integer": "integer", "float": "float", "binary": "binary", "bytes": "binary",
    "bitstring": "bitstring", "bits": "bitstring", "utf8": "utf8", "utf16": "utf16",
    "utf32": "utf32",
}  # fmt: skip
_FLOATS = {16: "e", 32: "f", 64: "d"}


_CODING = re.compile(rb"%.*?coding *[:=] *([a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*)")


def decode(data: bytes) -> str:
    """The text of a term file's bytes: Latin-1 when a ``%`` comment on its first two lines
    says ``coding: latin-1``, else UTF-8 (``epp:set_encoding/1``, as ``file:consult`` reads)."""
    for line in data.split(b"\n", 2)[:2]:
        if coding := _CODING.search(line):
            if coding.group(1).lower().split(b"-")[:2] == [b"latin", b"1"]:
                return data.decode("latin-1")
            break
    return data.decode("utf-8")


class _Token(NamedTuple):
    kind: str
    text: str
    line: int


def _unicode(code: int) -> bool:
    return 0 <= code < 0xD800 or 0xDFFF < code < 0xFFFE or 0xFFFF < code <= 0x10FFFF


def _unescape(body: str, line: int) -> str:
    """The text of a quoted atom, string or char body, its ``\\`` escapes replaced."""

    def one(match: re.Match[str]) -> str:
        braced, hex2, octal, control, plain = match.groups()
        if braced is not None:
            if not braced or not _unicode(int(braced, 16)):
                raise ValueError(f"line {line}: \\x{{{braced}}} is not a character")
            return chr(int(braced, 16))
        if hex2 is not None or octal is not None:
            return chr(int(hex2, 16) if hex2 is not None else int(octal, 8))
        if control is not None:
            return chr(ord(control) & 31)
        if plain == "x":
            raise ValueError(f"line {line}: \\x needs two hex digits or {{...}}")
        return _ESCAPES.get(plain, plain)

    return _ESCAPE.sub(one, body)


def _tokens(text: str) -> Iterator[_Token]:
    """The tokens of ``text``, read as they are asked for; then one ``end`` token, on the line
    of the last one (where an unfinished term is, as erl says)."""
    pos, line, last = 0, 1, 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        assert match is not None and match.lastgroup is not None  # (?P<other>.) takes the rest
        if match.lastgroup != "skip":
            yield _Token(match.lastgroup, match.group(), line)
            last = line
        line += match.group().count("\n")
        pos = match.end()
    yield _Token("end", "", last)


def _number(token: _Token) -> int | float:
    """The value of an ``int`` or ``float`` token (``1_000``, ``16#ff``, ``2.5e-3``)."""
    digits = token.text.replace("_", "")
    if token.kind == "float":
        value = float(digits)
        if value == float("inf"):
            raise ValueError(f"line {token.line}: {token.text} is too large for a float")
        return value
    base, _, based = digits.partition("#")
    try:
        if not based:
            return int(base)
        if 2 <= int(base) <= 36:
            return int(based, int(base))
    except ValueError:  # a digit the base has not, or more digits than Python converts
        pass
    raise ValueError(f"line {token.line}: {token.text[:40]} is not an integer relsync reads")


def _cons(items: list[Term], tail: Term) -> Term:
    """``[items | tail]`` as a list, or an ``ImproperList`` when the tail is not a list."""
    if isinstance(tail, Charlist):
        return items + [ord(c) for c in tail]
    if isinstance(tail, list):
        return items + tail
    if isinstance(tail, ImproperList):
        return ImproperList((*items, *tail.items), tail.tail)
    return ImproperList(tuple(items), tail)


class _Bits(NamedTuple):
    """A bitstring being built: its bits as one big-endian number, and how many there are."""

    value: int
    size: int

    def then(self, other: _Bits) -> _Bits:
        return _Bits(self.value << other.size | other.value, self.size + other.size)

    def term(self) -> bytes | BitBinary:
        pad = -self.size % 8
        data = (self.value << pad).to_bytes((self.size + pad) // 8, "big")
        return BitBinary(data, 8 - pad) if pad else data


def _bytes(data: bytes) -> _Bits:
    return _Bits(int.from_bytes(data, "big"), 8 * len(data))


def _bitstring(term: Term) -> _Bits | None:
    if isinstance(term, bytes):
        return _bytes(term)
    if isinstance(term, BitBinary):
        pad = 8 - term.bits
        return _Bits(int.from_bytes(term.data, "big") >> pad, 8 * len(term.data) - pad)
    return None


def _segment(value: Term, string: bool, size: int | None, specs: list[str], line: int) -> _Bits:
    """One ``Value:Size/Specs`` segment of a binary, as ``eval_bits`` builds it."""
    kind, endian, unit = "integer", "big", None
    seen: set[str] = set()
    for spec in specs:
        name, _, number = spec.partition(":")
        if name in _SEGMENT_TYPES:
            group, kind = "type", _SEGMENT_TYPES[name]
        elif name in ("signed", "unsigned"):
            group = "sign"  # built the same either way
        elif name in ("big", "little", "native"):
            group, endian = "endian", sys.byteorder if name == "native" else name
        elif name == "unit" and number and 1 <= int(number) <= 256:
            group, unit = "unit", int(number)
        else:
            raise ValueError(f"line {line}: {spec} is not a binary segment type")
        if group in seen:
            raise ValueError(f"line {line}: a binary segment has two {group}s")
        seen.add(group)
    if string:
        assert isinstance(value, str)
        if kind in ("binary", "bitstring"):
            raise ValueError(f"line {line}: a string segment cannot be {kind}")
        bits = _Bits(0, 0)
        for char in value:
            bits = bits.then(_segment(ord(char), False, size, specs, line))
        return bits
    if kind.startswith("utf"):
        if size is not None or unit is not None or not isinstance(value, int):
            raise ValueError(f"line {line}: a {kind} segment is a character, without a size")
        if not _unicode(value):
            raise ValueError(f"line {line}: {value} is not a character for {kind}")
        order = "" if kind == "utf8" else "-le" if endian == "little" else "-be"
        codec = f"utf-{kind[3:]}{order}"
        return _bytes(chr(value).encode(codec))
    if unit is not None and size is None:
        raise ValueError(f"line {line}: a binary segment's unit needs a size")
    if kind in ("binary", "bitstring"):
        given = _bitstring(value)
        if given is None:
            raise ValueError(f"line {line}: a {kind} segment's value must be a binary")
        bits = given
        if size is not None:
            wanted = size * (unit or (8 if kind == "binary" else 1))
            if wanted > bits.size:
                raise ValueError(f"line {line}: the binary is shorter than its segment's size")
            bits = _Bits(bits.value >> (bits.size - wanted), wanted)
        if kind == "binary" and bits.size % 8:
            raise ValueError(f"line {line}: a binary segment must be whole bytes; use /bits")
        return bits
    width = 64 if size is None and kind == "float" else 8 if size is None else size * (unit or 1)
    if kind == "float":
        if not isinstance(value, int | float) or width not in _FLOATS:
            raise ValueError(f"line {line}: a float segment is a number of 16, 32 or 64 bits")
        order = "<" if endian == "little" else ">"
        return _bytes(struct.pack(order + _FLOATS[width], value))
    if not isinstance(value, int):
        raise ValueError(f"line {line}: an integer segment's value must be an integer")
    value &= (1 << width) - 1
    if endian == "big":
        return _Bits(value, width)
    whole, rest = divmod(width, 8)  # little: low bytes first, then the top bits left over
    low = (value & ((1 << 8 * whole) - 1)).to_bytes(whole, "little")
    return _bytes(low).then(_Bits(value >> 8 * whole, rest))


class _Reader:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.next = next(self.tokens)

    def take(self, text: str | None = None) -> _Token:
        token = self.next
        if text is not None and (token.text != text or token.kind not in ("punct", "dot")):
            raise ValueError(f"line {token.line}: expected {text!r}, found {self.what(token)}")
        if token.kind != "end":
            self.next = next(self.tokens)
        return token

    def at(self, text: str) -> bool:
        return self.next.kind == "punct" and self.next.text == text

    def term(self, depth: int = 0) -> tuple[Term, str]:
        """The next term, and ``number`` or ``string`` when it is one as written (a sign and a
        binary segment need to know), else ``""``."""
        token = self.take()
        kind, text, line = token
        if kind in ("int", "float"):
            return _number(token), "number"
        if kind == "char":
            return ord(_unescape(text[1:], line)), "number"
        if kind == "string":
            parts = [_unescape(text[1:-1], line)]
            while self.next.kind == "string":
                more = self.take()
                parts.append(_unescape(more.text[1:-1], more.line))
            return Charlist("".join(parts)), "string"
        if kind == "qatom":
            name = _unescape(text[1:-1], line)
            if len(name) > 255:
                raise ValueError(f"line {line}: an atom is at most 255 characters")
            return Atom(name), ""
        if kind == "atom" and text == "fun":
            return self.fun(line), ""
        if kind == "atom" and text not in _RESERVED:
            return Atom(text), ""
        if kind == "punct":
            return self.compound(text, line, depth + 1)
        raise self.refuse(token)

    def compound(self, text: str, line: int, depth: int) -> tuple[Term, str]:
        if depth > MAX_DEPTH:
            raise ValueError(f"line {line}: nested deeper than {MAX_DEPTH} levels; flatten it")
        if text in ("-", "+"):
            value, how = self.term(depth)
            if how != "number" or not isinstance(value, int | float):
                raise ValueError(f"line {line}: {text} only goes before a number")
            return (-value if text == "-" else value), ""
        if text == "(":
            inner = self.term(depth)
            self.take(")")
            return inner
        if text == "{":
            return tuple(self.items("}", depth)), ""
        if text == "[":
            return self.list(depth), ""
        if text == "#":
            if self.next.kind == "atom":
                raise ValueError(f"line {line}: records are not terms; write the tuple")
            self.take("{")
            return self.map(line, depth), ""
        if text == "<<":
            return self.binary(line, depth), ""
        raise ValueError(f"line {line}: expected a term, found {text!r}")

    def items(self, close: str, depth: int) -> list[Term]:
        out: list[Term] = []
        if self.at(close):
            self.take()
            return out
        while True:
            out.append(self.term(depth)[0])
            if self.take(close if not self.at(",") else ",").text == close:
                return out

    def list(self, depth: int) -> Term:
        if self.at("]"):
            self.take()
            return []
        items: list[Term] = []
        while True:
            items.append(self.term(depth)[0])
            if self.at("|"):
                self.take()
                tail = self.term(depth)[0]
                self.take("]")
                return _cons(items, tail)
            if self.take("]" if not self.at(",") else ",").text == "]":
                return items

    def map(self, line: int, depth: int) -> dict[Term, Term]:
        pairs: list[tuple[Term, Term]] = []
        while not self.at("}"):
            key = self.term(depth)[0]
            self.take("=>")
            pairs.append((key, self.term(depth)[0]))
            if not self.at(","):
                break
            self.take()
            if self.at("}"):
                raise ValueError(f"line {self.next.line}: a map ends with a comma; remove it")
        self.take("}")
        try:
            return dict(pairs)
        except TypeError:
            raise ValueError(f"line {line}: a map key that is a list or map is not read") from None

    def binary(self, line: int, depth: int) -> bytes | BitBinary:
        if self.at(">>"):
            self.take()
            return b""
        bits = _Bits(0, 0)
        while True:
            value, how = self.term(depth)
            size = None
            if self.at(":"):
                self.take()
                written, size_how = self.term(depth)
                if size_how != "number" or not isinstance(written, int):
                    raise ValueError(f"line {line}: a binary segment's size is an integer")
                size = written
            specs: list[str] = []
            if self.at("/"):
                self.take()
                specs.append(self.spec())
                while self.at("-"):
                    self.take()
                    specs.append(self.spec())
            bits = bits.then(_segment(value, how == "string", size, specs, line))
            if not self.at(","):
                break
            self.take()
        self.take(">>")
        return bits.term()

    def spec(self) -> str:
        token = self.take()
        if token.kind != "atom":
            raise ValueError(
                f"line {token.line}: expected a binary segment type, found {token.text!r}"
            )
        if token.text != "unit":
            return token.text
        self.take(":")
        unit = self.take()
        return f"unit:{unit.text if unit.kind == 'int' and unit.text.isdigit() else ''}"

    def fun(self, line: int) -> ExportFun:
        module = self.take()
        self.take(":")
        function = self.take()
        self.take("/")
        arity = self.take()
        names = [t.text if t.kind == "atom" else _unescape(t.text[1:-1], line)
                 for t in (module, function) if t.kind in ("atom", "qatom")]  # fmt: skip
        if len(names) != 2 or arity.kind != "int":
            raise ValueError(f"line {line}: the only fun in a term is fun Module:Function/Arity")
        return ExportFun(Atom(names[0]), Atom(names[1]), int(_number(arity)))

    @staticmethod
    def what(token: _Token) -> str:
        return "the end of the file" if token.kind == "end" else repr(token.text)

    @classmethod
    def refuse(cls, token: _Token) -> ValueError:
        """Why ``token`` cannot start a term, and what to write instead."""
        if token.kind == "end":
            return ValueError(f"line {token.line}: the file ends inside a term; finish it")
        if token.kind == "var":
            fix = "a variable has no value here: quote it as an atom or write the value"
        elif token.text == "?":
            fix = "macros are not expanded here: write the value"
        elif token.kind == "atom":
            fix = f"it is a reserved word: quote it ('{token.text}')"
        elif token.text in ("'", '"'):
            fix = "close the quote"
        else:
            fix = "fix the syntax"
        return ValueError(f"line {token.line}: {cls.what(token)} is not a term; {fix}")


def consult(text: str) -> list[Term]:
    """Every term of ``text``, as ``file:consult/1`` reads them."""
    reader = _Reader(text)
    terms: list[Term] = []
    while reader.next.kind != "end":
        terms.append(reader.term()[0])
        reader.take(".")
    return terms


def first_term(text: str) -> Term:
    """The first term of ``text``, nothing after its full stop read (``systools``' way with an
    appup: ``systools_lib:read_term/1``)."""
    reader = _Reader(text)
    term = reader.term()[0]
    reader.take(".")
    return term
