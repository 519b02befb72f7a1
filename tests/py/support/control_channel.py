"""A raw relsync control channel to a real relsyncd, for tests that send frames by hand."""

from __future__ import annotations

import asyncio
import struct

import asyncssh

from relsync.erldist.etf import Atom, Term, binary_to_term, term_to_binary

#: The length prefix of every frame on the channel.
LEN = struct.Struct(">I")


def frame(body: bytes) -> bytes:
    """``body`` (an encoded term, or anything) with its length prefix."""
    return LEN.pack(len(body)) + body


class Channel(asyncssh.SSHClientSession[bytes]):
    """A raw relsync control channel: frames out, decoded replies in a queue."""

    def __init__(self) -> None:
        self.buf = b""
        self.replies: asyncio.Queue[Term] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None

    @classmethod
    async def open(cls, conn: asyncssh.SSHClientConnection) -> Channel:
        session = cls()
        session.chan, _ = await conn.create_session(lambda: session, subsystem="relsync",
                                                    encoding=None)  # fmt: skip
        return session

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.buf += data
        while len(self.buf) >= 4 and len(self.buf) >= 4 + LEN.unpack_from(self.buf)[0]:
            size = LEN.unpack_from(self.buf)[0]
            self.replies.put_nowait(binary_to_term(self.buf[4 : 4 + size]))
            self.buf = self.buf[4 + size :]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def send(self, data: bytes) -> None:
        assert self.chan is not None
        self.chan.write(data)

    async def call(self, ident: int, function: str, args: list[Term]) -> Term:
        """One request and its reply (its ``ident`` checked)."""
        self.send(frame(term_to_binary((ident, Atom(function), args))))
        reply = await asyncio.wait_for(self.replies.get(), 30)
        assert isinstance(reply, tuple) and reply[0] == ident, reply
        return reply[1]
