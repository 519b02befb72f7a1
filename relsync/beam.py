"""Reading a compiled Erlang module (a ``.beam`` file) without an Erlang VM."""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass

from relsync.erldist.etf import Term, binary_to_term

_HEADER = struct.Struct(">4sI4s")
_CHUNK = struct.Struct(">4sI")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_TRIPLE = struct.Struct(">III")


def _chunks(beam: bytes) -> dict[bytes, bytes]:
    if beam[:2] == b"\x1f\x8b":  # beam_lib:strip writes them gzipped
        try:
            beam = gzip.decompress(beam)
        except (OSError, EOFError) as exc:
            raise ValueError("a gzipped beam file that does not unpack") from exc
    magic, _, form = _HEADER.unpack_from(beam)
    if (magic, form) != (b"FOR1", b"BEAM"):
        raise ValueError("not a beam file")
    found: dict[bytes, bytes] = {}
    offset = _HEADER.size
    while offset + _CHUNK.size <= len(beam):
        name, size = _CHUNK.unpack_from(beam, offset)
        offset += _CHUNK.size
        found[name] = beam[offset : offset + size]
        offset += (size + 3) & ~3
    return found


def attributes(beam: bytes) -> list[Term]:
    """The module's attributes (its ``Attr`` chunk), as ``Mod:module_info(attributes)`` gives
    them; ``ValueError`` when ``beam`` is not a beam file or has none (a beam
    stripped by ``beam_lib:strip`` keeps no attributes)."""
    chunk = _chunks(beam).get(b"Attr")
    if chunk is None:
        raise ValueError("a beam file without attributes")
    found = binary_to_term(chunk)
    if not isinstance(found, list):
        raise ValueError("a beam file whose attributes are not a list")
    return found


def vsn(attrs: Term) -> Term | None:
    """The ``vsn`` in a module's attribute list (the MD5 of its code unless its source sets
    one); None when there is none."""
    for attribute in attrs if isinstance(attrs, list) else []:
        if isinstance(attribute, tuple) and attribute[:1] == ("vsn",):
            return attribute[1]
    return None


@dataclass(frozen=True, slots=True)
class BeamFacts:
    """What a module declares about itself, from chunks that stripped beams keep too."""

    module: str
    exports: frozenset[tuple[str, int]]
    #: Modules it calls by name (its import table), itself and ``erlang`` left out.
    calls: frozenset[str]
    #: ``-behaviour`` attributes; empty when the beam carries no attributes (stripped).
    behaviours: frozenset[str]


def facts(beam: bytes) -> BeamFacts:
    """Exports, called modules and behaviours of ``beam``; ``ValueError`` if it is none."""
    chunks = _chunks(beam)
    atoms = _atoms(chunks.get(b"AtU8") or chunks.get(b"Atom") or b"")
    if not atoms:
        raise ValueError("a beam file without an atom table")

    def table(name: bytes) -> list[tuple[int, int, int]]:
        data = chunks.get(name, b"\0\0\0\0")
        (count,) = _U32.unpack_from(data)
        return [_TRIPLE.unpack_from(data, 4 + 12 * i) for i in range(count)]

    try:
        exports = frozenset((atoms[f - 1], arity) for f, arity, _ in table(b"ExpT"))
        called = {atoms[m - 1] for m, _, _ in table(b"ImpT")}
    except (IndexError, struct.error) as exc:
        raise ValueError("a beam file with a broken export or import table") from exc
    behaviours: set[str] = set()
    try:
        attrs: list[Term] = attributes(beam)
    except ValueError:
        attrs = []
    for attribute in attrs:
        if isinstance(attribute, tuple) and attribute[0] in ("behaviour", "behavior"):
            values = attribute[1] if isinstance(attribute[1], list) else []
            behaviours.update(str(v) for v in values)
    module = atoms[0]
    return BeamFacts(module, exports, frozenset(called - {module, "erlang"}), frozenset(behaviours))


def _atoms(data: bytes) -> list[str]:
    """The atom table; OTP 28 marks compact-encoded lengths with a negative count."""
    if len(data) < 4:
        return []
    (count,) = _I32.unpack_from(data)
    compact, offset, names = count < 0, 4, []
    for _ in range(abs(count)):
        if compact:
            size, offset = _compact_uint(data, offset)
        else:
            size, offset = data[offset], offset + 1
        names.append(data[offset : offset + size].decode("utf-8", "replace"))
        offset += size
    return names


def _compact_uint(data: bytes, offset: int) -> tuple[int, int]:
    first = data[offset]
    if not first & 0x08:
        return first >> 4, offset + 1
    if not first & 0x10:
        return ((first >> 5) << 8) | data[offset + 1], offset + 2
    raise ValueError("an atom longer than the compact encoding relsync reads")


def compiler_version(beam: bytes) -> str | None:
    """The version of the compiler that made ``beam`` (its ``CInf`` chunk); None when the
    beam does not say (``beam_lib:strip`` removes it)."""
    chunk = _chunks(beam).get(b"CInf")
    info = binary_to_term(chunk) if chunk else None
    for item in info if isinstance(info, list) else []:
        if isinstance(item, tuple) and len(item) == 2 and item[0] == "version":
            return str(item[1])
    return None


#: The OTP release each compiler version (major, minor) shipped with.
_COMPILER_OTP = {(7, 6): 23, (8, 0): 24, (8, 1): 24, (8, 2): 25, (8, 3): 26, (8, 4): 26,
                 (8, 5): 27, (8, 6): 27, (9, 0): 28}  # fmt: skip


def otp_of_compiler(version: str) -> int | None:
    """The OTP release whose compiler has ``version`` (``8.6.1`` -> 27); None if unknown,
    and one past the newest known for a newer compiler."""
    parts = version.split(".")
    try:
        key = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        return None
    if key in _COMPILER_OTP:
        return _COMPILER_OTP[key]
    return max(_COMPILER_OTP.values()) + 1 if key > max(_COMPILER_OTP) else None
