"""Render decoded terms the way Erlang prints them, for one-line error messages.

>>> format_term((Atom("error"), [Atom("enoent"), b"/srv/x", Charlist("ab")]))
'{error,[enoent,<<"/srv/x">>,"ab"]}'
"""

from __future__ import annotations

from relsync.erldist.etf import (
    Atom,
    BitBinary,
    Charlist,
    ExportFun,
    ImproperList,
    OpaqueFun,
    Pid,
    Port,
    Reference,
    Term,
)


def _atom(name: str) -> str:
    plain = name[:1].islower() and all(c.isalnum() or c in "_@" for c in name)
    return name if plain else "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _binary(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "<<" + ",".join(str(b) for b in data) + ">>"
    if text.isprintable():
        return '<<"' + text.replace("\\", "\\\\").replace('"', '\\"') + '">>'
    return "<<" + ",".join(str(b) for b in data) + ">>"


def format_term(term: Term, limit: int = 400) -> str:
    """``term`` in Erlang syntax, cut to ``limit`` characters."""
    text = _fmt(term)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt(term: Term) -> str:
    if isinstance(term, Atom):
        return _atom(term)
    if isinstance(term, Charlist):
        return '"' + term.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(term, bool) or term is None:
        return {True: "true", False: "false", None: "undefined"}[term]
    if isinstance(term, int | float):
        return repr(term)
    if isinstance(term, str):
        return _binary(term.encode())
    if isinstance(term, bytes | bytearray | memoryview):
        return _binary(bytes(term))
    if isinstance(term, tuple):
        return "{" + ",".join(_fmt(t) for t in term) + "}"
    if isinstance(term, list):
        return "[" + ",".join(_fmt(t) for t in term) + "]"
    if isinstance(term, dict):
        return "#{" + ",".join(f"{_fmt(k)} => {_fmt(v)}" for k, v in term.items()) + "}"
    if isinstance(term, ImproperList):
        return "[" + ",".join(_fmt(t) for t in term.items) + "|" + _fmt(term.tail) + "]"
    if isinstance(term, Pid):
        return f"<0.{term.id}.{term.serial}>"
    if isinstance(term, Port):
        return f"#Port<0.{term.id}>"
    if isinstance(term, Reference):
        return "#Ref<0." + ".".join(str(i) for i in reversed(term.ids)) + ">"
    if isinstance(term, ExportFun):
        return f"fun {_atom(term.module)}:{_atom(term.function)}/{term.arity}"
    if isinstance(term, BitBinary):
        return f"<<{len(term.data)} bytes, {term.bits} bits in the last>>"
    if isinstance(term, OpaqueFun):
        return "#Fun<...>"
    return repr(term)
