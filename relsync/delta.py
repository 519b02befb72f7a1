"""Block delta of a changed file against the copy the target already has (rsync's idea).

The target cuts its copy into fixed blocks and sends a weak (Adler-32) and a strong (MD5) sum
of each. Here, walking the new file, a block that hashes like one of the target's becomes a
``copy`` of that block; bytes in between become literal ``data``. The weak sum rolls one byte at
a time only across bytes that match nothing, so an edit or an insertion costs about one block of
rolling. A file that shares little is not worth it: :func:`file_delta` gives up (``None``) and
the file goes whole. The target rebuilds the file and checks its SHA-256 before the rename.

The new file is read :data:`READ` bytes at a time: besides the target's sums, memory holds one
piece of it and the literal data found (which the caller bounds with ``max_literal``).
"""

from __future__ import annotations

import hashlib
import io
import os
import zlib
from dataclasses import dataclass
from typing import BinaryIO

BLOCK = 16 * 1024
#: Places :func:`file_delta` looks for a shared block before scanning a whole file.
PROBES = 8
#: How much of the new file is read at a time.
READ = 1 << 20
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
    """:func:`file_delta` of the bytes ``new``."""
    return file_delta(io.BytesIO(new), signatures, block, max_literal, probes)


def file_delta(
    source: BinaryIO,
    signatures: list[tuple[int, bytes]],
    block: int = BLOCK,
    max_literal: float = 0.5,
    probes: int = PROBES,
) -> list[Op] | None:
    """Ops rebuilding the seekable file ``source`` from the target's copy, or None when a delta
    would not pay (or the file got shorter while read: it changed, and goes whole).

    ``signatures`` are (adler32, md5) of the copy's consecutive ``block``-sized blocks. At most
    ``max_literal`` of the file may go as literal data. Unless any literal is fine
    (``max_literal >= 1``), a file of at least ``2 * probes`` blocks must first find one of the
    copy's blocks near one of ``probes`` evenly spaced places: a file that shares nothing then
    costs milliseconds, not seconds of rolling.
    """
    weak: dict[int, int] = {}
    strong: dict[bytes, int] = {}
    for number, (w, s) in enumerate(signatures):
        weak.setdefault(w, number)
        strong.setdefault(s, number)
    size = source.seek(0, os.SEEK_END)
    try:
        probing = max_literal < 1 and probes and size >= 2 * probes * block
        if probing and not _shares_a_block(source, size, block, weak, strong, probes):
            return None
        return _scan(_Window(source, size), block, weak, strong, int(size * max_literal))
    except EOFError:
        return None


class _Window:
    """The part of a file a scan is at, read a piece at a time."""

    def __init__(self, source: BinaryIO, size: int) -> None:
        source.seek(0)
        self._source = source
        self.size = size
        self.start = 0  # the file offset of data[0]
        self.data = memoryview(b"")

    @property
    def end(self) -> int:
        """The file offset after the bytes held."""
        return self.start + self.data.nbytes

    def hold(self, pos: int, need: int) -> None:
        """Hold ``need`` bytes from ``pos`` on (up to the end of the file), at least
        :data:`READ` more than now; forget the bytes before ``pos``."""
        want = min(self.size - self.end, max(READ, pos + need - self.end))
        self.data = memoryview(b"".join((self.data[pos - self.start :], _read(self._source, want))))
        self.start = pos

    def take(self, start: int, stop: int) -> bytes:
        """A copy of the file's bytes ``start:stop`` (held)."""
        return self.data[start - self.start : stop - self.start].tobytes()


def _read(source: BinaryIO, size: int) -> bytes:
    """``size`` bytes of ``source``; EOFError when it ends before (it got shorter)."""
    data = source.read(size)
    if len(data) < size:
        raise EOFError
    return data


class _Literals:
    """The literal data found since the last copy, in pieces; ``total`` counts all so far."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.total = 0

    def add(self, data: bytes) -> None:
        """Keep ``data`` as literal."""
        self.pieces.append(data)
        self.total += len(data)

    def flush(self, ops: list[Op]) -> None:
        """Append the pieces to ``ops`` as one literal."""
        if self.pieces:
            ops.append(self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces))
            self.pieces = []


def _scan(
    window: _Window, block: int, weak: dict[int, int], strong: dict[bytes, int], budget: int
) -> list[Op] | None:
    """The ops of the file ``window`` reads, or None when its literal data exceeds ``budget``."""
    ops: list[Op] = []
    literals = _Literals()
    size = window.size
    literal_start = pos = 0
    last = size - block  # where the last full window starts
    a = b = -1  # rolling Adler-32 halves of the file's [pos, pos + block); -1: not computed
    while pos <= last:
        if window.end < min(size, pos + 2 * block):
            if pos > literal_start:
                literals.add(window.take(literal_start, pos))
                literal_start = pos
            window.hold(pos, 2 * block)
        view, base = window.data, window.start
        here = view[pos - base : pos - base + block]
        if a < 0:
            value = zlib.adler32(here)
            a, b = value & 0xFFFF, value >> 16
        found = strong.get(_strong(here)) if ((b << 16) | a) in weak else None
        if found is not None:
            if pos > literal_start:
                literals.add(window.take(literal_start, pos))
            literals.flush(ops)
            _add_copy(ops, found * block, block)
            pos += block
            literal_start = pos
            a = -1
            continue
        room = budget - literals.total  # literal bytes still allowed
        if pos - literal_start > room:
            return None
        if pos == last:
            break
        stop = min(last, literal_start + room + 1, window.end - block)
        moved, a, b = _roll(view, pos - base, stop - base, a, b, block, weak)
        pos = base + moved
    if literal_start < size:
        window.hold(literal_start, size - literal_start)
        literals.add(window.take(literal_start, size))
    literals.flush(ops)
    return ops if literals.total <= budget else None


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
    source: BinaryIO,
    size: int,
    block: int,
    weak: dict[int, int],
    strong: dict[bytes, int],
    probes: int,
) -> bool:
    """Whether one of ``probes`` windows spread over the file, each rolled over a block's worth
    of positions (so a shifted copy still lines up), is one of the target's blocks."""
    last = size - block
    for number in range(probes):
        source.seek(number * (last - block) // max(probes - 1, 1))
        view = memoryview(_read(source, 2 * block))
        pos = 0
        value = zlib.adler32(view[:block])
        a, b = value & 0xFFFF, value >> 16
        while True:
            if ((b << 16) | a) in weak and _strong(view[pos : pos + block]) in strong:
                return True
            if pos >= block:
                break
            pos, a, b = _roll(view, pos, block, a, b, block, weak)
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
