"""The ``erl`` transport: the target's VM over Erlang distribution, driving ``relsync_target``."""

from __future__ import annotations

from relsync.beam import attributes, vsn
from relsync.dist.connection import Connection
from relsync.dist.errors import BadRpc, ConnectionLost, DistError
from relsync.dist.etf import Atom, Charlist, Term
from relsync.dist.node import connect
from relsync.dist.pretty import format_term
from relsync.erlc import helper_beam
from relsync.errors import ConnectError, TargetError
from relsync.transports.helper import CALL_TIMEOUT, HELPER, HelperTarget


class ErlTarget(HelperTarget):
    """A target reached over Erlang distribution."""

    def __init__(self, conn: Connection, label: str) -> None:
        self._conn = conn
        self.label = label

    @classmethod
    async def open(
        cls,
        node: str,
        cookie: str,
        *,
        local_name: str | None = None,
        epmd_port: int | None = None,
        timeout: float = 10.0,
    ) -> ErlTarget:
        """Connect to ``node`` and make sure our helper module runs there."""
        try:
            conn = await connect(
                node, cookie=cookie, local_name=local_name, epmd_port=epmd_port, timeout=timeout
            )
        except DistError as exc:
            raise ConnectError(str(exc)) from exc
        target = cls(conn, node)
        try:
            await target._ensure_helper()
        except BaseException:
            await conn.close()
            raise
        return target

    async def _ensure_helper(self) -> None:
        beam = await helper_beam(HELPER)
        loaded = await self._loaded_attributes(HELPER)
        if loaded is not None and vsn(loaded) == vsn(attributes(beam)):
            return  # the same helper is loaded already
        result = await self._load_binary(HELPER, beam)
        if not (isinstance(result, tuple) and result[0] == "module"):
            raise ConnectError(
                f"{self.label} refused relsync's helper module ({format_term(result)}); it needs "
                "the kernel, stdlib and crypto applications"
            )

    async def _loaded_attributes(self, module: str) -> Term | None:
        """The attributes of ``module`` as loaded on the target; None when it is not loaded."""
        try:
            return await self._call_raw(
                "erlang", "get_module_info", [Atom(module), Atom("attributes")]
            )
        except TargetError as exc:
            if isinstance(exc.__cause__, BadRpc):  # badarg: not loaded
                return None
            raise

    async def _call_raw(
        self, module: str, function: str, args: list[Term], timeout: float = CALL_TIMEOUT
    ) -> Term:
        try:
            return await self._conn.call(module, function, args, timeout=timeout)
        except ConnectionLost as exc:
            raise TargetError(
                f"{exc}; check the board and run relsync again: the next sync converges"
            ) from exc
        except DistError as exc:
            raise TargetError(str(exc)) from exc

    async def _call(self, function: str, args: list[Term], timeout: float = CALL_TIMEOUT) -> Term:
        return await self._call_raw(HELPER, function, args, timeout)

    async def _load_binary(self, module: str, beam: bytes) -> Term:
        return await self._call_raw(
            "code", "load_binary", [Atom(module), Charlist(f"{module}.beam"), beam]
        )

    async def close(self) -> None:
        """See :class:`relsync.target.Target`."""
        await self._conn.close()
