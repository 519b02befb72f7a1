"""The ``rex`` RPC protocol: build the ``gen_server`` call and interpret its result.

Request (sent with REG_SEND to ``rex``)::

    {'$gen_call', {Pid, Ref}, {call, M, F, A, user}}

Reply (sent to ``Pid``): ``{Ref, Result}``; ``Result = {badrpc, Reason}`` on failure. The group
leader is ``user`` so that io calls on the target print there instead of blocking on us.
"""

from __future__ import annotations

import struct

from relsync.erldist import etf
from relsync.erldist.errors import BadRpc
from relsync.erldist.etf import Atom, Buffer, Pid, Reference, Term

REX = "rex"
_GEN_CALL = Atom("$gen_call")
_CALL = Atom("call")
_USER = Atom("user")
_BADRPC = Atom("badrpc")


def mfa(module: str, function: str, arity: int) -> str:
    """``module:function/arity`` for messages."""
    return f"{module}:{function}/{arity}"


def rex_call(pid: Pid, ref: Reference, module: str, function: str, args: list[Term]) -> Term:
    """The message to send to ``rex`` for ``rpc:call(Node, module, function, args)``."""
    return (_GEN_CALL, (pid, ref), (_CALL, Atom(module), Atom(function), args, _USER))


def rex_result(result: Term, peer: str, call: str) -> Term:
    """Return ``result``, or raise BadRpc for ``{badrpc, Reason}``."""
    if (
        type(result) is tuple
        and len(result) == 2
        and isinstance(result[0], Atom)
        and result[0] == _BADRPC
    ):
        raise BadRpc(peer, call, result[1])
    return result


class RexEncoder:
    """Encodes rex call messages for one local pid with cached constant pieces.

    Produces the same bytes as ``etf.encode(rex_call(...))``, without walking the envelope
    each time; ``args`` still go through the scatter-list encoder (large binaries not copied).
    """

    def __init__(self, pid: Pid) -> None:
        self._head = (
            bytes([etf.VERSION, etf.SMALL_TUPLE_EXT, 3])
            + _atom(_GEN_CALL)
            + bytes([etf.SMALL_TUPLE_EXT, 2])
            + etf.term_to_binary(pid)[1:]
        )
        self._ref_head = (
            struct.pack(">BH", etf.NEWER_REFERENCE_EXT, 3) + _atom(pid.node)
            + struct.pack(">I", pid.creation)
        )  # fmt: skip
        self._call = bytes([etf.SMALL_TUPLE_EXT, 5]) + _atom(_CALL)
        self._user = _atom(_USER)
        self._mf: dict[tuple[str, str], bytes] = {}

    def encode(self, ref_ids: tuple[int, int, int], module: str, function: str,
               args: list[Term]) -> list[Buffer]:  # fmt: skip
        """The scatter list of ``{'$gen_call', {Pid, Ref}, {call, M, F, Args, user}}``."""
        mf = self._mf.get((module, function))
        if mf is None:
            mf = self._call + _atom(Atom(module)) + _atom(Atom(function))
            if len(self._mf) < 4096:
                self._mf[(module, function)] = mf
        parts = etf.encode(args, version_byte=False)
        first = b"".join((self._head, self._ref_head, _III.pack(*ref_ids), mf))
        if isinstance(parts[0], bytes):
            parts[0] = first + parts[0]
        else:
            parts.insert(0, first)
        if isinstance(parts[-1], bytes):
            parts[-1] += self._user
        else:
            parts.append(self._user)
        return parts


_III = struct.Struct(">III")


def _atom(name: str) -> bytes:
    return etf.term_to_binary(Atom(name))[1:]
