"""Errors raised by the distribution node: one type per cause, each a one-line message.

Every message names what failed, why, and what to do. None of them ever contains the cookie.
"""

from __future__ import annotations

from relsync.erldist.etf import Term
from relsync.erldist.pretty import format_term


class DistError(Exception):
    """Base class of every error of the distribution node."""


class EpmdUnreachable(DistError):
    """Nothing answered on the EPMD port of the target host."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host, self.port, self.reason = host, port, reason
        super().__init__(
            f"cannot reach EPMD at {host}:{port} ({reason}); is the target node running, "
            f"and is the EPMD port right (--epmd-port / ERL_EPMD_PORT)?"
        )


class NotEpmd(DistError):
    """The EPMD port answered with more than any EPMD answer: another service listens there."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port = host, port
        super().__init__(
            f"{host}:{port} is not EPMD: it sent more than {limit >> 10} KiB in answer to one "
            f"request; give the target's EPMD port (--epmd-port / ERL_EPMD_PORT)"
        )


class NodeNotFound(DistError):
    """EPMD answered but does not know the node name."""

    def __init__(self, name: str, host: str, known: list[str]) -> None:
        self.name, self.host, self.known = name, host, known
        names = ", ".join(sorted(known)) if known else "none"
        super().__init__(
            f"EPMD on {host} does not know a node named {name!r} (known: {names}); "
            f"check the node name or start the target node"
        )


class ConnectTimeout(DistError):
    """A connection step (EPMD, TCP connect or handshake) did not finish in time."""

    def __init__(self, step: str, address: str, timeout: float) -> None:
        self.step, self.address, self.timeout = step, address, timeout
        super().__init__(
            f"{step} with {address} timed out after {timeout:g} s (a port forward may accept "
            f"connections while nothing listens behind it); check the target is up, or retry"
        )


class CookieRejected(DistError):
    """The peer closed the link right after our challenge reply: the cookies differ."""

    def __init__(self, peer: str, *, ours_wrong: bool = True) -> None:
        self.peer = peer
        side = "the peer rejected our cookie" if ours_wrong else "the peer's cookie differs"
        super().__init__(
            f"handshake with {peer} failed: {side}; pass the target's cookie (--cookie or "
            f"the target's ~/.erlang.cookie / -setcookie)"
        )


class FlagsRefused(DistError):
    """The peer answered ``not_allowed``: it requires capability flags we do not offer."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        super().__init__(
            f"{peer} refused the connection (status not_allowed): it requires distribution "
            f"features this client lacks or forbids hidden nodes; check the target's OTP version "
            f"(25+ is supported) and its net_kernel 'allowed' list"
        )


class NameMismatch(DistError):
    """The node that answered is not the node we asked for."""

    def __init__(self, wanted: str, got: str) -> None:
        self.wanted, self.got = wanted, got
        super().__init__(
            f"asked for node {wanted!r} but {got!r} answered; use the exact node name "
            f"(long -name vs short -sname, same host part)"
        )


class HandshakeRefused(DistError):
    """The handshake failed for another reason (status ``nok``, ``alive``, a bad name, ...)."""

    def __init__(self, peer: str, reason: str, hint: str = "check the node names, retry") -> None:
        self.peer, self.reason = peer, reason
        super().__init__(f"handshake with {peer} failed: {reason}; {hint}")


class ConnectionLost(DistError):
    """The link to the peer is gone (EOF, reset, tick timeout, or closed by us)."""

    def __init__(self, peer: str, reason: str) -> None:
        self.peer, self.reason = peer, reason
        super().__init__(
            f"connection to {peer} lost ({reason}); check whether the target node is still "
            f"running, then reconnect"
        )


class RpcTimeout(DistError):
    """No reply to an RPC within the timeout; the call may still run on the target."""

    def __init__(self, peer: str, mfa: str, timeout: float) -> None:
        self.peer, self.mfa, self.timeout = peer, mfa, timeout
        super().__init__(
            f"RPC {mfa} on {peer} got no reply within {timeout:g} s (it may still be running "
            f"there); raise the timeout or check the target for a stuck call"
        )


class BadRpc(DistError):
    """The target answered ``{badrpc, Reason}``; ``reason`` holds the Erlang term (the whole
    of it is ``detail``; the message says in words what it can)."""

    def __init__(self, peer: str, mfa: str, reason: Term) -> None:
        self.peer, self.mfa, self.reason = peer, mfa, reason
        self.detail = format_term(reason, 4000)
        super().__init__(f"RPC {mfa} on {peer} failed: {rpc_failure(reason)}")


def _where(frame: Term) -> str:
    if isinstance(frame, tuple) and len(frame) >= 3:
        arity = len(frame[2]) if isinstance(frame[2], list) else frame[2]
        return f"{format_term(frame[0])}:{format_term(frame[1])}/{format_term(arity)}"
    return "?"


def rpc_failure(reason: Term) -> str:
    """A ``badrpc`` reason in words: a missing function names itself and what to check, a
    crash its reason and where; anything else a short term (the exception's ``detail`` is
    all of it: relsync -v prints it)."""
    crash = reason[1] if isinstance(reason, tuple) and len(reason) == 2 else None
    if isinstance(reason, tuple) and reason[:1] == ("EXIT",) and isinstance(crash, tuple):
        why, stack = crash if len(crash) == 2 else (crash, [])
        top = stack[0] if isinstance(stack, list) and stack else None
        if why == "undef" and top is not None:
            return f"{_where(top)} is not on the board (is its application in the release?)"
        at = f" in {_where(top)}" if top is not None else ""
        return f"{format_term(why, 120)}{at}"
    return f"{format_term(reason, 200)}; check that the module is loaded on the target"
