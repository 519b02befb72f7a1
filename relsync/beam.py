"""Reading a compiled Erlang module (a ``.beam`` file) without an Erlang VM."""

from __future__ import annotations

import struct

from relsync.dist.etf import Term, binary_to_term

_HEADER = struct.Struct(">4sI4s")
_CHUNK = struct.Struct(">4sI")


def attributes(beam: bytes) -> list[Term]:
    """The module's attributes (its ``Attr`` chunk), as ``Mod:module_info(attributes)`` gives
    them; ``ValueError`` when ``beam`` is not an uncompressed beam file."""
    magic, _, form = _HEADER.unpack_from(beam)
    if (magic, form) != (b"FOR1", b"BEAM"):
        raise ValueError("not a beam file")
    offset = _HEADER.size
    while offset + _CHUNK.size <= len(beam):
        name, size = _CHUNK.unpack_from(beam, offset)
        offset += _CHUNK.size
        if name == b"Attr":
            found = binary_to_term(beam[offset : offset + size])
            if not isinstance(found, list):
                raise ValueError("a beam file whose attributes are not a list")
            return found
        offset += (size + 3) & ~3
    raise ValueError("a beam file without attributes")


def vsn(attrs: Term) -> Term | None:
    """The ``vsn`` in a module's attribute list (the MD5 of its code unless its source sets
    one); None when there is none."""
    for attribute in attrs if isinstance(attrs, list) else []:
        if isinstance(attribute, tuple) and attribute[:1] == ("vsn",):
            return attribute[1]
    return None
