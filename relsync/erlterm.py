"""Reading Erlang terms written as text (``file:consult/1`` files such as ``APP.appup``).

Atoms, quoted atoms, strings, binaries of strings, integers, floats, tuples and lists;
``%`` comments; each term ends with a full stop. Enough for configuration files, not a parser
for code: anything else is a ``ValueError`` naming the line.
"""

from __future__ import annotations

import re

from relsync.erldist.etf import Atom, Charlist, Term

_TOKEN = re.compile(
    r"""\s+|%[^\n]*
    |(?P<float>-?\d+\.\d+(?:[eE][-+]?\d+)?)
    |(?P<int>-?\d+(?:\#[0-9a-zA-Z]+)?)
    |(?P<atom>[a-z][a-zA-Z0-9_@]*)
    |(?P<qatom>'(?:[^'\\]|\\.)*')
    |(?P<string>"(?:[^"\\]|\\.)*")
    |(?P<punct><<|>>|[{}\[\],.])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "s": " ", "e": "\x1b", "\\": "\\", "'": "'", '"': '"'}


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), text[1:-1])


class _Reader:
    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str, int]] = []
        pos, line = 0, 1
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:
                raise ValueError(f"line {line}: cannot read {text[pos : pos + 20]!r}")
            if match.lastgroup:
                self.tokens.append((match.lastgroup, match.group(), line))
            line += match.group().count("\n")
            pos = match.end()
        self.at = 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", "", -1)

    def take(self, text: str | None = None) -> tuple[str, str, int]:
        token = self.peek()
        if token[0] == "end" or (text is not None and token[1] != text):
            want = f"{text!r}" if text else "a term"
            raise ValueError(f"line {token[2]}: expected {want}, found {token[1] or 'the end'!r}")
        self.at += 1
        return token

    def term(self) -> Term:
        kind, text, line = self.take()
        if kind == "int":
            base, _, digits = text.partition("#")
            return int(digits, int(base)) if digits else int(text)
        if kind == "float":
            return float(text)
        if kind == "atom":
            return Atom(text)
        if kind == "qatom":
            return Atom(_unquote(text))
        if kind == "string":
            return Charlist(_unquote(text))
        if text == "{":
            return tuple(self.items("}"))
        if text == "[":
            return self.items("]")
        if text == "<<":
            part = self.take()
            if part[0] != "string":
                raise ValueError(f'line {line}: only <<"text">> binaries are read')
            self.take(">>")
            return _unquote(part[1]).encode()
        raise ValueError(f"line {line}: unexpected {text!r}")

    def items(self, close: str) -> list[Term]:
        out: list[Term] = []
        if self.peek()[1] == close:
            self.take()
            return out
        while True:
            out.append(self.term())
            _, sep, line = self.take()
            if sep == close:
                return out
            if sep != ",":
                raise ValueError(f"line {line}: expected ',' or {close!r}, found {sep!r}")


def consult(text: str) -> list[Term]:
    """Every term of ``text``, as ``file:consult/1`` reads them."""
    reader = _Reader(text)
    terms: list[Term] = []
    while reader.peek()[0] != "end":
        terms.append(reader.term())
        reader.take(".")
    return terms
