"""The client side of the distribution handshake, protocol version 6 (OTP 23+) only.

Messages are framed ``<<Len:16, Body>>``::

    -> 'N' Flags:64 Creation:32 NameLen:16 Name          send_name
    <- 's' Status                                        "ok", "ok_simultaneous", "nok", ...
    <- 'N' Flags:64 Challenge:32 Creation:32 NLen:16 Name
    -> 'r' MyChallenge:32 md5(Cookie ++ integer_to_list(Challenge))
    <- 'a' md5(Cookie ++ integer_to_list(MyChallenge))  (we verify it)

After this the link switches to ``<<Len:32, Packet>>`` framing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
from dataclasses import dataclass

from relsync.erldist.errors import CookieRejected, FlagsRefused, HandshakeRefused, NameMismatch

# Capability flags (erts/kernel dist.hrl). "mandatory in OTP N" = a peer of release N refuses a
# handshake without the flag.
DFLAG_PUBLISHED = 0x01  # visible node; we leave it out: we are a hidden node
DFLAG_ATOM_CACHE = 0x02  # not offered: keeps messages pass-through
DFLAG_EXTENDED_REFERENCES = 0x04  # mandatory in OTP 25
DFLAG_DIST_MONITOR = 0x08  # not needed: we never monitor
DFLAG_FUN_TAGS = 0x10  # mandatory in OTP 25
DFLAG_NEW_FUN_TAGS = 0x80  # mandatory in OTP 25
DFLAG_EXTENDED_PIDS_PORTS = 0x100  # mandatory in OTP 25
DFLAG_EXPORT_PTR_TAG = 0x200  # mandatory in OTP 25
DFLAG_BIT_BINARIES = 0x400  # mandatory in OTP 25
DFLAG_NEW_FLOATS = 0x800  # mandatory in OTP 25
DFLAG_UTF8_ATOMS = 0x10000  # mandatory in OTP 25
DFLAG_MAP_TAG = 0x20000  # mandatory in OTP 25
DFLAG_BIG_CREATION = 0x40000  # mandatory in OTP 25
DFLAG_SEND_SENDER = 0x80000  # not offered: plain SEND control messages suffice
DFLAG_FRAGMENTS = 0x800000  # not offered: every message arrives in one packet
DFLAG_HANDSHAKE_23 = 0x1000000  # mandatory in OTP 25 (the version-6 handshake above)
DFLAG_UNLINK_ID = 0x2000000  # mandatory in OTP 26
DFLAG_MANDATORY_25_DIGEST = 0x4000000  # OTP 25+: shorthand for the OTP 25 set; OTP 27 requires it
DFLAG_SPAWN = 1 << 32  # not offered: we never spawn remotely
DFLAG_NAME_ME = 1 << 33  # not offered: we always choose our own name
DFLAG_V4_NC = 1 << 34  # mandatory in OTP 26 (64-bit port ids, 5-word references)
DFLAG_ALIAS = 1 << 35  # not offered: replies then come to our pid, not an alias

MANDATORY_25 = (
    DFLAG_EXTENDED_REFERENCES
    | DFLAG_FUN_TAGS
    | DFLAG_NEW_FUN_TAGS
    | DFLAG_EXTENDED_PIDS_PORTS
    | DFLAG_EXPORT_PTR_TAG
    | DFLAG_BIT_BINARIES
    | DFLAG_NEW_FLOATS
    | DFLAG_UTF8_ATOMS
    | DFLAG_MAP_TAG
    | DFLAG_BIG_CREATION
    | DFLAG_HANDSHAKE_23
)

#: What we advertise: 0x407070f94.
OUR_FLAGS = MANDATORY_25 | DFLAG_MANDATORY_25_DIGEST | DFLAG_UNLINK_ID | DFLAG_V4_NC

VERSION = 6


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What the handshake learned about the peer."""

    name: str
    flags: int
    creation: int


def digest(cookie: str, challenge: int) -> bytes:
    """``erlang:md5(Cookie ++ integer_to_list(Challenge))`` as the handshake computes it."""
    return hashlib.md5(cookie.encode("utf-8") + str(challenge).encode("ascii")).digest()


def new_creation() -> int:
    """A random non-zero 32-bit creation (OTP uses values above 3 for real nodes)."""
    # os.urandom, not secrets: that module (and random) costs start-up time for two numbers.
    return 4 + int.from_bytes(os.urandom(4), "big") % (0xFFFFFFFF - 4)


async def _recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


async def _recv_msg(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    (size,) = struct.unpack(">H", await _recv_exact(loop, sock, 2))
    return await _recv_exact(loop, sock, size)


async def _send_msg(loop: asyncio.AbstractEventLoop, sock: socket.socket, body: bytes) -> None:
    await loop.sock_sendall(sock, struct.pack(">H", len(body)) + body)


def _check_status(peer: str, status: str) -> None:
    if status in ("ok", "ok_simultaneous"):
        return
    if status == "not_allowed":
        raise FlagsRefused(peer)
    if status == "alive":
        raise HandshakeRefused(
            peer,
            "status 'alive': a node with our name is already connected",
            "use another local node name",
        )
    if status == "nok":
        raise HandshakeRefused(
            peer, "status 'nok': the peer is connecting to us at the same time", "retry"
        )
    raise HandshakeRefused(peer, f"unexpected status {status!r}")


async def client_handshake(
    sock: socket.socket,
    *,
    local_name: str,
    peer_name: str,
    cookie: str,
    creation: int,
    flags: int = OUR_FLAGS,
) -> PeerInfo:
    """Run the initiating side of the handshake on a connected non-blocking socket."""
    loop = asyncio.get_running_loop()
    name = local_name.encode("utf-8")
    stage = "name"
    try:
        await _send_msg(loop, sock, b"N" + struct.pack(">QIH", flags, creation, len(name)) + name)
        status = await _recv_msg(loop, sock)
        if not status.startswith(b"s"):
            raise HandshakeRefused(peer_name, f"expected a status message, got {status[:1]!r}")
        _check_status(peer_name, status[1:].decode("latin-1"))

        stage = "challenge"
        challenge_msg = await _recv_msg(loop, sock)
        if challenge_msg[:1] != b"N" or len(challenge_msg) < 19:
            raise HandshakeRefused(
                peer_name,
                f"peer does not speak distribution version {VERSION} (OTP 23+)",
                "upgrade the target to OTP 25 or later",
            )
        peer_flags, challenge, peer_creation, nlen = struct.unpack_from(">QIIH", challenge_msg, 1)
        got_name = challenge_msg[19 : 19 + nlen].decode("utf-8", "replace")
        if got_name != peer_name:
            raise NameMismatch(peer_name, got_name)
        if not peer_flags & DFLAG_HANDSHAKE_23:
            raise HandshakeRefused(peer_name, "peer lacks the OTP 23 handshake flag")

        stage = "reply"
        my_challenge = int.from_bytes(os.urandom(4), "big")
        await _send_msg(
            loop, sock, b"r" + struct.pack(">I", my_challenge) + digest(cookie, challenge)
        )
        ack = await _recv_msg(loop, sock)
    except EOFError:
        if stage == "reply":
            raise CookieRejected(peer_name) from None
        if stage == "name":
            raise HandshakeRefused(
                peer_name,
                "the peer closed the link after our name",
                "it refuses our node name: do not mix long (-name) and short (-sname) names, "
                "or the peer is not an Erlang node",
            ) from None
        raise HandshakeRefused(peer_name, f"the peer closed the link during the {stage}") from None
    except OSError as exc:
        raise HandshakeRefused(peer_name, f"socket error during the {stage}: {exc}") from None
    if ack[:1] != b"a" or len(ack) != 17:
        raise HandshakeRefused(peer_name, "malformed challenge acknowledgement")
    if ack[1:] != digest(cookie, my_challenge):
        raise CookieRejected(peer_name, ours_wrong=False)
    return PeerInfo(got_name, peer_flags, peer_creation)
