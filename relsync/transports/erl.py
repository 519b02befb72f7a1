"""The ``erl`` transport: the target's VM over Erlang distribution, driving ``relsync_target``."""

from __future__ import annotations

import asyncio
from typing import Any

from relsync.beam import attributes, vsn
from relsync.erlc import helper_beam
from relsync.erldist.connection import Connection
from relsync.erldist.errors import BadRpc, ConnectionLost, DistError
from relsync.erldist.etf import Atom, Charlist, Term
from relsync.erldist.node import connect
from relsync.erldist.pretty import format_term
from relsync.errors import ConnectError, TargetError
from relsync.transports.helper import (
    CALL_TIMEOUT,
    HELPER,
    HELPER_MODULES,
    UPGRADER,
    HelperTarget,
)


class ErlTarget(HelperTarget):
    """A target reached over Erlang distribution."""

    def __init__(self, conn: Connection, label: str) -> None:
        self._conn = conn
        self.label = label
        self._helper: asyncio.Future[bool] | None = None
        self._upgrader: asyncio.Future[bool] | None = None

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
        """Connect to ``node`` and start making sure our helper module runs there (the calls
        wait for it, see :meth:`_call`)."""
        try:
            conn = await connect(
                node, cookie=cookie, local_name=local_name, epmd_port=epmd_port, timeout=timeout
            )
        except DistError as exc:
            raise ConnectError(str(exc)) from exc
        target = cls(conn, node)
        target._helper = asyncio.ensure_future(target._ensure_helper())
        return target

    async def _ensure_helper(self) -> bool:
        """Load every module of our helper not loaded already in the same version; whether
        one was loaded now."""
        return any(await asyncio.gather(*(self._ensure(m) for m in HELPER_MODULES)))

    async def _ensure(self, module: str) -> bool:
        """Load one of our target-side modules unless the same one is loaded already; whether
        it was loaded now."""
        beam, version = await _helper_code(module)
        loaded = await self._loaded_attributes(module)
        if loaded is not None and vsn(loaded) == version:
            return False
        # Not code:load_binary at first: when clients meet a fresh board at once, each load
        # makes the one before old code, and a load over old code kills the processes still
        # running it (another client's sync). erlang:load_module refuses instead.
        result = await self._call_raw("erlang", "load_module", [Atom(module), beam])
        if result == (Atom("error"), Atom("not_purged")):
            loaded = await self._loaded_attributes(module)
            if loaded is not None and vsn(loaded) == version:
                return True  # loaded by another client meanwhile
            result = await self._load_binary(module, beam)  # a stale copy's processes go
        if not (isinstance(result, tuple) and result[0] == "module"):
            raise ConnectError(
                f"{self.label} refused relsync's {module} module ({format_term(result)}); it "
                "needs the kernel, stdlib and crypto applications"
            )
        return True

    async def _ensure_upgrader(self) -> None:
        """Push ``relsync_upgrade`` once, when an upgrade or a rollback needs it."""
        if self._upgrader is None:
            self._upgrader = asyncio.ensure_future(self._ensure(UPGRADER))
        await asyncio.shield(self._upgrader)

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
        """Call our helper once it is known to be loaded. The first reads of a sync go out
        with the check instead of a round trip after it: their answers count when the helper
        was loaded already (as on every sync but the first), else they are asked again."""
        assert self._helper is not None
        early = None
        if not self._helper.done() and function in _READ_ONLY:
            early = asyncio.ensure_future(self._call_raw(HELPER, function, args, timeout))
        try:
            pushed = await asyncio.shield(self._helper)
        except BaseException:
            await _discard(early)
            raise
        if early is not None and not pushed:
            return await early
        await _discard(early)  # answered by another helper, or by none
        return await self._call_raw(HELPER, function, args, timeout)

    async def _echo(self, payload: bytes) -> None:
        await self._call_raw("erlang", "byte_size", [payload])

    def _lock_owner(self) -> Term:
        """Our node's pid: the sync lock goes when this connection does."""
        return self._conn.pid

    async def _load_binary(self, module: str, beam: bytes) -> Term:
        return await self._call_raw(
            "code", "load_binary", [Atom(module), Charlist(f"{module}.beam"), beam]
        )

    async def close(self) -> None:
        """See :class:`relsync.target.Target`."""
        await _discard(self._helper)
        await _discard(self._upgrader)
        await self._conn.close()


#: Beam and vsn of relsync's target-side modules, read once per process (not once per board).
_HELPER_CODE: dict[str, tuple[bytes, Term | None]] = {}


async def _helper_code(module: str) -> tuple[bytes, Term | None]:
    if module not in _HELPER_CODE:
        beam = await helper_beam(module)
        _HELPER_CODE[module] = (beam, vsn(attributes(beam)))
    return _HELPER_CODE[module]


#: Helper functions that only read, in every version that has them: safe to call before the
#: check (a helper without one answers undef, and is replaced). info: the release path a sync
#: defaults to is asked first.
_READ_ONLY = frozenset({"info", "sync_state"})


async def _discard(call: asyncio.Future[Any] | None) -> None:
    """Cancel ``call`` unless it is done, and drop its result or error."""
    if call is not None:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
