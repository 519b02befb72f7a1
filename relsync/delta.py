"""Block delta of a changed file against the copy the target already has (rsync's idea).

The target cuts its copy into fixed blocks and sends a weak (Adler-32) and a strong (MD5) sum
of each. Here, walking the new file, a block that hashes like one of the target's becomes a
``copy`` of that block; bytes in between become literal ``data``. The weak sum rolls one byte at
a time only across bytes that match nothing, so an edit or an insertion costs about one block of
rolling. A file that shares little is not worth it: :func:`make_delta` gives up (``None``) and
the file goes whole. The target rebuilds the file and checks its SHA-256 before the rename.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

BLOCK = 16 * 1024
#: Places :func:`make_delta` looks for a shared block before scanning a whole file.
PROBES = 8
_MOD = 65521


@dataclass(frozen=True, slots=True)
class Copy:
    """``length`` bytes of the target's copy, from ``offset``."""

    offset: int
    length: int


Op = Copy | bytes


def _strong(data: bytes | memoryview) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def make_delta(
    new: bytes,
    signatures: list[tuple[int, bytes]],
    block: int = BLOCK,
    max_literal: float = 0.5,
    probes: int = PROBES,
) -> list[Op] | None:
    """Ops rebuilding ``new`` from the target's copy, or None when a delta would not pay.

    ``signatures`` are (adler32, md5) of the copy's consecutive ``block``-sized blocks. Unless
    any literal is fine (``max_literal >= 1``), a file of at least ``2 * probes`` blocks must
    first find one of the copy's blocks near one of ``probes`` evenly spaced places: a file
    that shares nothing then costs milliseconds, not seconds of rolling.
    """
    weak: dict[int, int] = {}
    strong: dict[bytes, int] = {}
    for number, (w, s) in enumerate(signatures):
        weak.setdefault(w, number)
        strong.setdefault(s, number)
    size = len(new)
    view = memoryview(new)
    probing = max_literal < 1 and probes and size >= 2 * probes * block
    if probing and not _shares_a_block(view, block, weak, strong, probes):
        return None
    ops: list[Op] = []
    literal_start = pos = literal_done = 0
    budget = int(size * max_literal)
    last = size - block  # where the last full window starts
    a = b = -1  # rolling Adler-32 halves of new[pos:pos+block]; -1: not computed
    while pos <= last:
        if a < 0:
            value = zlib.adler32(view[pos : pos + block])
            a, b = value & 0xFFFF, value >> 16
        found = strong.get(_strong(view[pos : pos + block])) if ((b << 16) | a) in weak else None
        if found is not None:
            if pos > literal_start:
                ops.append(bytes(view[literal_start:pos]))
                literal_done += pos - literal_start
            _add_copy(ops, found * block, block)
            pos += block
            literal_start = pos
            a = -1
            continue
        room = budget - literal_done  # literal bytes still allowed
        if pos - literal_start > room:
            return None
        if pos == last:
            break
        stop = min(last, literal_start + room + 1)
        pos, a, b = _roll(view, pos, stop, a, b, block, weak)
    if literal_start < size:
        ops.append(bytes(view[literal_start:]))
        literal_done += size - literal_start
    return ops if literal_done <= budget else None


def _roll(
    view: memoryview, pos: int, stop: int, a: int, b: int, block: int, weak: dict[int, int]
) -> tuple[int, int, int]:
    """Roll the weak sum of the window at ``pos`` forward, one byte at a time, to the first
    window whose weak sum the target has, or to ``stop``; return (position, a, b)."""
    for out, into in zip(view[pos:stop], view[pos + block : stop + block], strict=True):
        a = (a - out + into) % _MOD
        b = (b - block * out + a - 1) % _MOD
        pos += 1
        if ((b << 16) | a) in weak:
            break
    return pos, a, b


def _shares_a_block(
    view: memoryview, block: int, weak: dict[int, int], strong: dict[bytes, int], probes: int
) -> bool:
    """Whether one of ``probes`` windows spread over ``view``, each rolled over a block's worth
    of positions (so a shifted copy still lines up), is one of the target's blocks."""
    last = len(view) - block
    for number in range(probes):
        pos = number * (last - block) // max(probes - 1, 1)
        stop = pos + block
        value = zlib.adler32(view[pos : pos + block])
        a, b = value & 0xFFFF, value >> 16
        while True:
            if ((b << 16) | a) in weak and _strong(view[pos : pos + block]) in strong:
                return True
            if pos >= stop:
                break
            pos, a, b = _roll(view, pos, stop, a, b, block, weak)
    return False


def _add_copy(ops: list[Op], offset: int, length: int) -> None:
    last = ops[-1] if ops else None
    if isinstance(last, Copy) and last.offset + last.length == offset:
        ops[-1] = Copy(last.offset, last.length + length)
    else:
        ops.append(Copy(offset, length))


def apply_delta(base: bytes, ops: list[Op]) -> bytes:
    """What the target does with ``ops`` (kept here for tests and as the reference)."""
    return b"".join(base[op.offset : op.offset + op.length] if isinstance(op, Copy) else op
                    for op in ops)  # fmt: skip


def signatures_of(data: bytes, block: int = BLOCK) -> list[tuple[int, bytes]]:
    """The (adler32, md5) sums of ``data``'s blocks, as the target computes them."""
    view = memoryview(data)
    return [(zlib.adler32(view[i : i + block]), _strong(view[i : i + block]))
            for i in range(0, len(data) - block + 1, block)]  # fmt: skip
