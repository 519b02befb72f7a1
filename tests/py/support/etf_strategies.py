"""Hypothesis strategies and a canonical normal form for ``relsync.erldist.etf`` tests.

Three libraries represent the same Erlang term differently, so every comparison goes
through one *normal form*: nested, hashable, type-tagged tuples.

===================  ==========================  ============================================
Erlang term          relsync.erldist.etf            erlang-py (``erlang`` module)
===================  ==========================  ============================================
integer              ``int``                     ``int``
float                ``float``                   ``float``
atom                 ``Atom`` (``True``/         ``OtpErlangAtom(str | bytes)``; the atoms
                     ``False``/``None`` encode   ``true``/``false``/``undefined`` decode to
                     as true/false/undefined)    ``True``/``False``/``None``
binary               ``bytes``/``str`` (UTF-8)   ``OtpErlangBinary(bytes, bits=8)``
bitstring            ``BitBinary``               ``OtpErlangBinary(bytes, bits<8)``
string (STRING_EXT)  ``Charlist``                ``bytes`` (!) -- erlang-py also *encodes*
                                                 ``bytes`` and ``str`` as STRING_EXT
proper list          ``list`` / ``Charlist``     ``list``
improper list        ``ImproperList``            ``OtpErlangList(items + [tail], improper=True)``
tuple / map          ``tuple`` / ``dict``        ``tuple`` / ``dict`` (``frozendict`` inside keys)
pid / ref / port     ``Pid``/``Reference``/      ``OtpErlangPid``/``Reference``/``Port`` holding
                     ``Port`` (ints)             the raw big-endian bytes of each field
fun M:F/A            ``ExportFun``               ``OtpErlangFunction(113, encoded bytes)``
local fun            ``OpaqueFun(raw)``          ``OtpErlangFunction(112, raw[1:])``
===================  ==========================  ============================================

Normal form: ``("int", n)``, ``("float", x)``, ``("atom", text)``, ``("bin", bytes)``,
``("bits", bytes_with_unused_bits_zeroed, bits)`` (a bitstring with 8 bits in its last byte is a
binary), ``("list", items)`` (a charlist is a list of integers, ``[]`` is ``("list", ())``),
``("improper", items, tail)`` (a list tail is spliced in, as Erlang would), ``("tuple", items)``,
``("map", frozenset(pairs))``, ``("pid", node, id, serial, creation)``,
``("ref", node, creation, ids)``, ``("port", node, id, creation)``,
``("export", module, function, arity)``, ``("fun", raw_new_fun_ext)``.
"""

from __future__ import annotations

import struct
from typing import Any

import erlang  # type: ignore[import-untyped]
from hypothesis import strategies as st

from relsync.erldist.etf import (
    NEW_FUN_EXT,
    Atom,
    BitBinary,
    Charlist,
    ExportFun,
    ImproperList,
    OpaqueFun,
    Pid,
    Port,
    Reference,
    term_to_binary,
)

Norm = tuple[Any, ...]

# ----------------------------------------------------------------------------------------------
# Normalisation


def _splice(items: tuple[Norm, ...], tail: Norm) -> Norm:
    """Build the normal form of ``[items... | tail]``."""
    if tail[0] == "list":
        return ("list", items + tail[1])
    if tail[0] == "improper":
        return ("improper", items + tail[1], tail[2])
    return ("improper", items, tail)


def _mask_bits(data: bytes, bits: int) -> Norm:
    if bits == 8:
        return ("bin", data)
    mask = (0xFF << (8 - bits)) & 0xFF
    return ("bits", data[:-1] + bytes([data[-1] & mask]), bits)


def norm(term: Any) -> Norm:
    """Normal form of a term as ``relsync.erldist.etf`` encodes or decodes it."""
    if isinstance(term, Atom):
        return ("atom", str(term))
    if isinstance(term, Charlist):
        return ("list", tuple(("int", ord(c)) for c in term))
    if isinstance(term, bool):
        return ("atom", "true" if term else "false")
    if term is None:
        return ("atom", "undefined")
    if isinstance(term, int):
        return ("int", term)
    if isinstance(term, float):
        return ("float", term)
    if isinstance(term, str):
        return ("bin", term.encode("utf-8"))
    if isinstance(term, bytes | bytearray | memoryview):
        return ("bin", bytes(term))
    if isinstance(term, tuple):
        return ("tuple", tuple(norm(x) for x in term))
    if isinstance(term, list):
        return ("list", tuple(norm(x) for x in term))
    if isinstance(term, ImproperList):
        return _splice(tuple(norm(x) for x in term.items), norm(term.tail))
    if isinstance(term, dict):
        return ("map", frozenset((norm(k), norm(v)) for k, v in term.items()))
    if isinstance(term, BitBinary):
        return _mask_bits(term.data, term.bits)
    if isinstance(term, Pid):
        return ("pid", str(term.node), term.id, term.serial, term.creation)
    if isinstance(term, Reference):
        return ("ref", str(term.node), term.creation, tuple(term.ids))
    if isinstance(term, Port):
        return ("port", str(term.node), term.id, term.creation)
    if isinstance(term, ExportFun):
        return ("export", str(term.module), str(term.function), term.arity)
    if isinstance(term, OpaqueFun):
        return ("fun", bytes(term.raw))
    raise TypeError(f"no normal form for {term!r}")


def _erlpy_atom_text(atom: erlang.OtpErlangAtom) -> str:
    value = atom.value
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _u(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def norm_erlpy(value: Any) -> Norm:
    """Normal form of a value decoded by ``erlang.binary_to_term`` (erlang-py)."""
    if isinstance(value, bool):
        return ("atom", "true" if value else "false")
    if value is None:
        return ("atom", "undefined")
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", value)
    if isinstance(value, erlang.OtpErlangAtom):
        return ("atom", _erlpy_atom_text(value))
    if isinstance(value, erlang.OtpErlangBinary):
        return _mask_bits(value.value, value.bits)
    if isinstance(value, bytes):  # STRING_EXT
        return ("list", tuple(("int", b) for b in value))
    if isinstance(value, list):
        return ("list", tuple(norm_erlpy(x) for x in value))
    if isinstance(value, erlang.OtpErlangList):
        items = tuple(norm_erlpy(x) for x in value.value)
        if value.improper:
            return _splice(items[:-1], items[-1])
        return ("list", items)
    if isinstance(value, tuple):
        return ("tuple", tuple(norm_erlpy(x) for x in value))
    if isinstance(value, dict):
        return ("map", frozenset((norm_erlpy(k), norm_erlpy(v)) for k, v in value.items()))
    if isinstance(value, erlang.OtpErlangPid):
        node = _erlpy_atom_text(value.node)
        return ("pid", node, _u(value.id), _u(value.serial), _u(value.creation))
    if isinstance(value, erlang.OtpErlangReference):
        raw = value.id
        ids = tuple(_u(raw[i : i + 4]) for i in range(0, len(raw), 4))
        return ("ref", _erlpy_atom_text(value.node), _u(value.creation), ids)
    if isinstance(value, erlang.OtpErlangPort):
        return ("port", _erlpy_atom_text(value.node), _u(value.id), _u(value.creation))
    if isinstance(value, erlang.OtpErlangFunction):
        if value.tag == NEW_FUN_EXT:
            return ("fun", bytes([NEW_FUN_EXT]) + value.value)
        # EXPORT_EXT: module atom, function atom, SMALL_INTEGER_EXT arity
        pos, module = erlang._binary_to_atom(0, value.value)
        pos, function = erlang._binary_to_atom(pos, value.value)
        arity = value.value[pos + 1]
        return ("export", _erlpy_atom_text(module), _erlpy_atom_text(function), arity)
    raise TypeError(f"no normal form for erlang-py value {value!r}")


# ----------------------------------------------------------------------------------------------
# Conversion to erlang-py's input types


def _erlpy_atom(text: str) -> erlang.OtpErlangAtom:
    return erlang.OtpErlangAtom(str(text))


def to_erlpy(term: Any) -> Any:
    """The erlang-py value that ``erlang.term_to_binary`` encodes as the same Erlang term."""
    if isinstance(term, Atom):
        return _erlpy_atom(term)
    if isinstance(term, Charlist):
        codes = [ord(c) for c in term]
        if codes and all(c < 256 for c in codes):
            return bytes(codes)  # erlang-py writes bytes as STRING_EXT (or LIST_EXT if long)
        return codes
    if isinstance(term, bool) or term is None or isinstance(term, int | float):
        return term
    if isinstance(term, str):
        return erlang.OtpErlangBinary(term.encode("utf-8"))
    if isinstance(term, bytes | bytearray | memoryview):
        return erlang.OtpErlangBinary(bytes(term))
    if isinstance(term, tuple):
        return tuple(to_erlpy(x) for x in term)
    if isinstance(term, list):
        return [to_erlpy(x) for x in term]
    if isinstance(term, ImproperList):
        return erlang.OtpErlangList([to_erlpy(x) for x in (*term.items, term.tail)], improper=True)
    if isinstance(term, dict):
        return {to_erlpy(k): to_erlpy(v) for k, v in term.items()}
    if isinstance(term, BitBinary):
        return erlang.OtpErlangBinary(bytes(term.data), term.bits)
    if isinstance(term, Pid):
        fields = struct.pack(">III", term.id, term.serial, term.creation)
        return erlang.OtpErlangPid(_erlpy_atom(term.node), fields[:4], fields[4:8], fields[8:])
    if isinstance(term, Reference):
        ids = struct.pack(f">{len(term.ids)}I", *term.ids)
        creation = struct.pack(">I", term.creation)
        return erlang.OtpErlangReference(_erlpy_atom(term.node), ids, creation)
    if isinstance(term, Port):
        return erlang.OtpErlangPort(
            _erlpy_atom(term.node), struct.pack(">Q", term.id), struct.pack(">I", term.creation)
        )
    if isinstance(term, ExportFun):
        body = (
            _erlpy_atom(term.module).binary()
            + _erlpy_atom(term.function).binary()
            + bytes([97, term.arity])
        )
        return erlang.OtpErlangFunction(113, body)
    if isinstance(term, OpaqueFun):
        return erlang.OtpErlangFunction(term.raw[0], bytes(term.raw[1:]))
    raise TypeError(f"no erlang-py form for {term!r}")


# ----------------------------------------------------------------------------------------------
# Strategies

#: Atom text: any Unicode scalar value (no surrogates), at most 255 characters.
atom_text = st.text(st.characters(codec="utf-8"), max_size=20)
atoms = atom_text.map(Atom)
#: Atoms safe as map keys for erlang-py, which decodes true/false/undefined to Python
#: True/False/None (and True == 1 would merge two distinct keys).
key_atoms = atoms.filter(lambda a: a not in ("true", "false", "undefined"))

_INT_EDGES = [
    0, 1, 255, 256, -1, -256, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1,
    2**32, 2**63, -(2**63), 2**64 - 1, 2**64, 256**255 - 1, 256**255, -(256**255),
]  # fmt: skip
integers = st.one_of(
    st.integers(min_value=-(2**31) - 5, max_value=2**31 + 5),
    st.integers(min_value=-(2**2100), max_value=2**2100),
    st.sampled_from(_INT_EDGES),
)
floats = st.floats(allow_nan=False, allow_infinity=False)
binaries = st.binary(max_size=40)
texts = st.text(st.characters(codec="utf-8"), max_size=20)
charlists = st.one_of(
    st.text(st.characters(max_codepoint=255), max_size=20),
    st.text(st.characters(codec="utf-8"), max_size=8),
).map(Charlist)
bitbinaries = st.builds(BitBinary, st.binary(min_size=1, max_size=12), st.integers(1, 8))

#: Node names for synthesised identifiers.  ``nonode@nohost`` with creation 0 would be the
#: VM's own incarnation, where Erlang rejects out-of-range numbers; so creation is never 0.
nodes = st.sampled_from(["nonode@nohost", "a@b", "relsync@host.example", "ñode@höst"]).map(Atom)
_u32 = st.integers(0, 2**32 - 1)
_creation = st.integers(1, 2**32 - 1)
pids = st.builds(Pid, nodes, _u32, _u32, _creation)
references = st.builds(
    Reference, nodes, _creation, st.lists(_u32, min_size=1, max_size=5).map(tuple)
)
ports = st.builds(Port, nodes, st.integers(0, 2**64 - 1), _creation)
export_funs = st.builds(ExportFun, atoms, atoms, st.integers(0, 255))


def _hand_made_fun(free_vars: int) -> OpaqueFun:
    """A syntactically valid NEW_FUN_EXT (module m, index 0) with ``free_vars`` small ints."""
    body = (
        bytes([0])  # arity
        + bytes(range(16))  # uniq
        + struct.pack(">II", 0, free_vars)  # index, num_free
        + term_to_binary(Atom("m"))[1:]  # module
        + term_to_binary(0)[1:]  # old index
        + term_to_binary(12345)[1:]  # old uniq
        + term_to_binary(Pid(Atom("a@b"), 1, 0, 1))[1:]  # creator pid
        + b"".join(term_to_binary(i)[1:] for i in range(free_vars))
    )
    return OpaqueFun(bytes([NEW_FUN_EXT]) + struct.pack(">I", len(body) + 4) + body)


HAND_MADE_FUNS = [_hand_made_fun(0), _hand_made_fun(3)]
opaque_funs = st.sampled_from(HAND_MADE_FUNS)

leaves = st.one_of(
    integers, floats, atoms, binaries, texts, charlists, bitbinaries,
    st.sampled_from([True, False, None]), pids, references, ports, export_funs,
)  # fmt: skip

#: Map keys: types that stay hashable and distinct after decoding by both decoders
#: (no floats: 1 == 1.0 in Python; no charlists: Charlist("a") == Atom("a")).
map_keys = st.recursive(
    st.one_of(integers, key_atoms, binaries, pids),
    lambda inner: st.lists(inner, max_size=3).map(tuple),
    max_leaves=4,
)
#: Tails of improper lists: anything that is not a list.
_tails = st.one_of(integers, atoms, binaries, floats, st.tuples(integers))


def terms(extra_leaves: st.SearchStrategy[Any] | None = None, max_leaves: int = 25) -> Any:
    """Arbitrary encodable terms; ``extra_leaves`` adds e.g. identifiers taken from a live VM."""
    base = leaves if extra_leaves is None else st.one_of(leaves, extra_leaves)

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.lists(children, max_size=6),
            st.lists(children, max_size=6).map(tuple),
            st.dictionaries(map_keys, children, max_size=4),
            st.builds(ImproperList, st.lists(children, min_size=1, max_size=4).map(tuple), _tails),
        )

    return st.recursive(base, extend, max_leaves=max_leaves)
