"""Whether a sync's files go compressed to a board, decided per board by measuring.

Sources, scripts and text deflate to a third or less, beams (their debug info is compressed
already) by a fifth or so. On a board's real link (USB gadget Ethernet ~100 Mbit/s, Wi-Fi ~20
Mbit/s) the bytes are the cost; on loopback or gigabit the link outruns zlib and compressing
would only cost time. So before sending more than :data:`PROBE_MIN` bytes, relsync measures
both: how fast zlib (level 1) deflates a sample of the files and how far, and how fast the link
carries bytes (round trips with and without :data:`PROBE_BYTES` of incompressible payload).
A batch is deflated while the one before it is still on the link (the socket's buffer carries
it), so compressing pays when zlib outruns the link and the bytes shrink. Less than
:data:`PROBE_MIN` goes compressed without measuring: it costs a few milliseconds at most.

``$RELSYNC_COMPRESS`` overrides the choice: ``always``, ``never`` or ``auto`` (the default).
A board's helper takes compressed files only when its info says ``compress => [zlib]``.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence

from relsync.errors import UsageError
from relsync.target import FilePut

#: zlib's fastest level: beams still come to about a third.
LEVEL = 1
#: Below this many bytes to send, compress without measuring anything.
PROBE_MIN = 1 << 20
#: The payload of the probe's second round trip (incompressible bytes).
PROBE_BYTES = 128 << 10
#: The extra time the payload takes that no scheduling hiccup explains: measured once is enough.
SURE_S = 0.03
#: How much of the files to send the deflate speed is measured on.
SAMPLE_BYTES = 256 << 10
#: Files that shrink less than this go as they are.
MIN_RATIO = 1.1
#: What ``$RELSYNC_COMPRESS`` may say.
CHOICES = ("auto", "always", "never")

#: Sends its argument to the board and waits for the answer (any answer).
Echo = Callable[[bytes], Awaitable[object]]


def deflate(data: bytes) -> bytes:
    """``data`` in zlib's format, as the board's ``zlib:inflate`` reads it."""
    return zlib.compress(data, LEVEL)


def setting() -> str:
    """``$RELSYNC_COMPRESS`` (``auto`` when unset); anything else is a usage error."""
    value = os.environ.get("RELSYNC_COMPRESS", "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise UsageError(f"RELSYNC_COMPRESS={value}: expected one of {', '.join(CHOICES)}")
    return value


async def worth_it(files: Sequence[FilePut], link: Callable[[], Awaitable[float]]) -> bool:
    """Whether compressing ``files`` (whole files of a batch) gets them to the board sooner;
    ``link`` gives the link's speed (bytes/s: see :func:`link_rate`)."""
    choice = setting()
    if choice != "auto":
        return choice == "always"
    total = sum(put.size for put in files)
    if total < PROBE_MIN:
        return True
    speed, ratio = _deflate_rate(files)
    if ratio < MIN_RATIO:
        return False
    return await link() < speed


def _deflate_rate(files: Sequence[FilePut]) -> tuple[float, float]:
    """zlib's speed (bytes/s) and ratio on up to :data:`SAMPLE_BYTES` of ``files``."""
    sample = bytearray()
    for put in files:
        try:
            with open(put.local, "rb") as handle:
                sample += handle.read(SAMPLE_BYTES - len(sample))
        except OSError:
            continue  # read again, and reported, when it is sent
        if len(sample) >= SAMPLE_BYTES:
            break
    started = time.process_time()  # CPU time: the speed zlib has, whatever else runs
    packed = deflate(bytes(sample))
    seconds = max(time.process_time() - started, 1e-6)
    return len(sample) / seconds, len(sample) / max(len(packed), 1)


async def link_rate(echo: Echo) -> float:
    """Bytes a second the link carries: the extra time :data:`PROBE_BYTES` take on a round
    trip. A scheduling hiccup can only make a link look slower: unless the payload took long
    enough for one not to matter (:data:`SURE_S`), the best of two of each counts."""
    payload = os.urandom(PROBE_BYTES)
    times: dict[bool, float] = {}
    for big in (False, True, False, True):
        started = time.perf_counter()
        await echo(payload if big else b"")
        seconds = time.perf_counter() - started
        times[big] = min(times.get(big, seconds), seconds)
        if big and times[True] - times[False] >= SURE_S:
            break
    return PROBE_BYTES / max(times[True] - times[False], 1e-6)
