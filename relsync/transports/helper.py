"""What every transport shares: the calls to relsync's target helper and their replies.

A transport subclasses :class:`HelperTarget` and says how a helper function is called
(``_call``) and how a module binary is loaded (``_load_binary``); it may also carry file bytes
its own way (``put_files``).
"""

from __future__ import annotations

import asyncio
import struct
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

from relsync.delta import BLOCK, Copy, Op, file_delta
from relsync.erldist.errors import rpc_failure
from relsync.erldist.etf import Atom, Term
from relsync.erldist.pretty import format_term
from relsync.errors import BusyError, TargetError, UsageError
from relsync.posix import describe
from relsync.target import (
    CodeState,
    FilePut,
    HookResult,
    ModuleResult,
    Progress,
    Readout,
    RemoteEntry,
    RemoteFile,
    RemoteLink,
    RunningProgram,
    TargetInfo,
    UpgradeEvent,
    UpgradeResult,
    UpgradeStep,
    Written,
    nothing_written,
    temp_path,
)
from relsync.transports.compress import deflate, link_rate, worth_it

HELPER = "relsync_target"
#: Every module of the helper (relsync_target hands its work to the others), pushed together.
HELPER_MODULES = ("relsync_state", "relsync_hash", "relsync_manifest", "relsync_files",
                  "relsync_code", "relsync_hook_runner", HELPER)  # fmt: skip
#: The helper's upgrade steps (see ``relsync_upgrade.erl``), pushed only when needed.
UPGRADER = "relsync_upgrade"
#: Files up to this size travel in batches; larger ones in chunks of this size.
CHUNK = 4 << 20
#: put_files batches (of about CHUNK bytes each) sent before the first is answered.
BATCHES_IN_FLIGHT = 2
#: Generous per-call timeout for file operations (a slow SD card fsyncs slowly).
FILE_TIMEOUT = 120.0
CALL_TIMEOUT = 60.0


def read_chunks(path: str) -> Iterator[bytes]:
    """A local file's bytes in chunks of :data:`CHUNK`; a file that cannot be read (changed
    since the scan) is a :class:`UsageError`, not a fault of the target."""
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk
    except OSError as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: str, exc: OSError) -> UsageError:
    """The error for a local file that cannot be read."""
    return UsageError(f"cannot read {path} ({exc.strerror}); rebuild the release and sync again")


_ENTRY_HEAD = struct.Struct(">BI").unpack_from
_FILE_FIELDS = struct.Struct(">QHB").unpack_from
_LENGTH = struct.Struct(">I").unpack_from


def unpack_manifest(blob: bytes) -> dict[str, RemoteEntry]:
    """Decode the helper's packed manifest (``format => packed``): entries one after the
    other, each ``<<0, RelLen:32, Rel, Size:64, Mode:16, HashLen:8, Hash>>`` (a file) or
    ``<<1, RelLen:32, Rel, TargetLen:32, Target>>`` (a symlink)."""
    entries: dict[str, RemoteEntry] = {}
    pos, end = 0, len(blob)
    try:
        while pos < end:
            kind, size = _ENTRY_HEAD(blob, pos)
            pos += 5 + size
            rel = blob[pos - size : pos].decode("utf-8", "surrogateescape")
            if kind == 0:
                nbytes, mode, size = _FILE_FIELDS(blob, pos)
                pos += 11 + size
                entries[rel] = RemoteFile(rel, nbytes, mode, blob[pos - size : pos])
            elif kind == 1:
                (size,) = _LENGTH(blob, pos)
                pos += 4 + size
                target = blob[pos - size : pos].decode("utf-8", "surrogateescape")
                entries[rel] = RemoteLink(rel, target)
            else:
                raise ValueError(f"entry kind {kind}")
    except (struct.error, ValueError) as exc:
        raise TargetError(f"malformed manifest from the target ({exc})") from exc
    if pos != end:
        raise TargetError("malformed manifest from the target (truncated)")
    return entries


def _signatures(reply: Term) -> list[tuple[int, bytes]] | None:
    """The block sums of a ``block_signatures`` reply; None for an error (no base)."""
    if not (isinstance(reply, tuple) and len(reply) == 2 and reply[0] == "ok"):
        return None
    sums = reply[1]
    if not isinstance(sums, list):
        return None
    out: list[tuple[int, bytes]] = []
    for item in sums:
        if not (isinstance(item, tuple) and len(item) == 2):
            return None
        weak, strong = item
        if not (isinstance(weak, int) and isinstance(strong, bytes)):
            return None
        out.append((weak, strong))
    return out


def _payload(data: bytes) -> tuple[Term, int]:
    """A file's bytes for put_files, compressed (``{zlib, Size, Deflated}``) when that makes
    them smaller, and how many bytes they are on the wire."""
    packed = deflate(data)
    if len(packed) < len(data):
        return (Atom("zlib"), len(data), packed), len(packed)
    return data, len(data)


def _op(op: Op) -> Term:
    return (Atom("copy"), op.offset, op.length) if isinstance(op, Copy) else op


def delta_bytes(put: FilePut, ops: list[Op]) -> int:
    """About the bytes a ``put_delta`` call puts on the wire: its term encoding (a literal's
    data plus 5, a copy 18, paths, mode, hash and framing)."""
    fixed = 64 + len(_path(put.path)) + len(_path(put.base or ""))
    return fixed + sum(len(op) + 5 if isinstance(op, bytes) else 18 for op in ops)


def _text(value: Term) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _path(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _modules(modules: Sequence[tuple[str, str, bytes]]) -> list[Term]:
    """``(module, beam path, digest)`` as the helper takes them."""
    return [(Atom(m), _path(p), sha) for m, p, sha in modules]


def _proc(entry: Term) -> str:
    """A process (``<0.90.0> name``), or another user of a module (see delete_modules)."""
    if isinstance(entry, tuple) and len(entry) == 2 and entry[0] == "application":
        return f"application {format_term(entry[1])}"
    if isinstance(entry, tuple) and len(entry) == 4 and entry[0] == "child":
        _, sup, name, child = entry
        of = (
            format_term(sup) if name == "undefined" else f"{format_term(name)} ({format_term(sup)})"
        )
        return f"child {format_term(child)} of {of}"
    if isinstance(entry, tuple) and len(entry) == 2:
        pid, name = entry
        label = format_term(pid)
        return label if name == "undefined" else f"{label} {format_term(name)}"
    return format_term(entry)


def _module_result(module: str, result: Term) -> ModuleResult:
    if isinstance(result, Atom):
        return ModuleResult(module, str(result))
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], Atom):
        status, extra = result
        if status == "deleted" and isinstance(extra, Atom | tuple):  # an upgrade's delete
            return _module_result(module, extra)
        if isinstance(extra, list):
            return ModuleResult(module, str(status), tuple(_proc(p) for p in extra))
        return ModuleResult(module, str(status), detail=describe(_text(extra)))
    return ModuleResult(module, "error", detail=format_term(result))


def _step(step: UpgradeStep) -> Term:
    module = Atom(step.module)
    if step.action == "delete_module":
        return (Atom("delete_module"), module)
    if step.action == "apply":
        return (Atom("apply"), module, Atom(step.change), step.extra)
    if step.action == "update":
        advanced = step.change == "advanced"
        how: Term = (Atom("advanced"), step.extra) if advanced else Atom(step.change)
        return (Atom("update"), module, how, _path(step.path), step.digest)
    return (Atom(step.action), module, _path(step.path), step.digest)


def _event(entry: Term) -> UpgradeEvent:
    if isinstance(entry, tuple) and len(entry) == 4:
        what, module, pid, name = entry
        return UpgradeEvent(str(what), str(module), _proc((pid, name)))
    if isinstance(entry, tuple) and len(entry) == 3:
        return UpgradeEvent(str(entry[0]), str(entry[1]), format_term(entry[2]))
    return UpgradeEvent("unknown", "", format_term(entry))


def upgrade_error(reason: Term) -> str:
    """One line for an upgrade's ``{error, Why}``: which step failed, on which process."""
    why = reason[1] if isinstance(reason, tuple) and len(reason) == 2 else reason
    if not isinstance(why, tuple) or not why:
        return f"the upgrade failed: {format_term(why)}"
    kind, rest = str(why[0]), why[1:]
    if kind in ("suspend", "code_change") and len(rest) == 4:
        module, pid, name, cause = rest
        verb = "did not suspend" if kind == "suspend" else "refused code_change"
        return f"process {_proc((pid, name))} ({_text(module)}) {verb}: {_reason(cause)}"
    if kind == "load" and len(rest) == 2:
        result = _module_result(_text(rest[0]), rest[1])
        who = ", ".join(result.processes)
        procs = f" ({who} still run its old code)" if who else ""
        return f"loading {result.module} failed: {result.status}{procs} {result.detail}".rstrip()
    if kind == "child" and len(rest) == 3:
        child = format_term(rest[1])
        return f"supervisor {_text(rest[0])} could not start its new child {child}: " + (
            _reason(rest[2])
        )
    if kind == "apply" and len(rest) == 3:
        return f"the appup's apply of {_text(rest[0])}:{_text(rest[1])} failed: " + (
            format_term(rest[2])
        )
    if kind == "no_old_code" and len(rest) == 1:
        return (
            f"the code {_text(rest[0])} runs is no longer in its beam on disk (replaced by "
            "something other than relsync), so a failing step could not be undone; restart "
            "the node to run the beams"
        )
    return f"the upgrade failed: {format_term(why)}"


def _reason(cause: Term) -> str:
    if cause == "timeout":
        return "timed out (busy in a long call?)"
    return describe(format_term(cause))


#: Exception classes, as relsyncd reports a call that raised: ``{error, {Class, Reason, St}}``.
_CLASSES = ("error", "exit", "throw")

#: The keys of a ``sync_state`` reply, in the order :class:`relsync.target.Readout` takes them.
_STATE_KEYS = ("info", "original", "shadow", "code", "top", "lib")
_UNKNOWN_FUNCTION = (Atom("error"), Atom("unknown_function"))


def _names(result: Term) -> list[str]:
    """A ``list_dir`` reply's names (none for an error)."""
    if isinstance(result, tuple) and result[0] == "ok" and isinstance(result[1], list):
        return sorted(_text(n) for n in result[1])
    return []


def _code_state(result: Term) -> CodeState:
    recorded = result.get(Atom("recorded"), {}) if isinstance(result, dict) else {}
    pending = result.get(Atom("pending"), []) if isinstance(result, dict) else []
    loaded = result.get(Atom("loaded")) if isinstance(result, dict) else None
    return CodeState(
        {str(m): s for m, s in recorded.items() if isinstance(s, bytes)}
        if isinstance(recorded, dict)
        else {},
        frozenset(str(m) for m in pending) if isinstance(pending, list) else frozenset(),
        frozenset(str(m) for m in loaded) if isinstance(loaded, list) else None,
    )


def _lock_holder(reply: Term) -> tuple[str, int]:
    """Who holds the lock and since when, from a ``{busy, Holder}`` reply."""
    holder = reply[1] if isinstance(reply, tuple) and len(reply) == 2 else {}
    if not isinstance(holder, dict):
        return "", 0
    since = holder.get(Atom("since"), 0)
    return _text(holder.get(Atom("who"), b"")), since if isinstance(since, int) else 0


class HelperTarget(ABC):
    """A :class:`relsync.target.Target` driving ``relsync_target`` on the board."""

    label: str
    #: The sync lock's token while this client holds it: it names our temporary files.
    _token: bytes | None = None
    #: Whether the helper names temporary files by the file's name (one from before the MD5
    #: names, in an older relsyncd: see :func:`relsync.target.temp_path`); set by ``info``.
    _temps_by_name = False
    #: Whether the helper takes compressed files in put_files (its info says so).
    _inflates = False
    #: The link's speed (bytes/s) once measured: once a connection.
    _link: float | None = None

    def _lock_owner(self) -> Term | None:
        """The process whose end releases our sync lock; None: the one running the call."""
        return None

    def _with_token(self, args: list[Term]) -> list[Term]:
        """``args`` of a write, plus our lock's token when we hold one."""
        return args if self._token is None else [*args, self._token]

    def temp_path(self, path: str) -> str:
        """Where ``path`` is staged before the target renames it into place (named with our
        lock's token while we hold it: see :func:`relsync.target.temp_path`)."""
        return temp_path(path, self._token, by_name=self._temps_by_name)

    async def commit(self, put: FilePut) -> None:
        """Check and install a file staged at :meth:`temp_path` (see ``put_chunk``)."""
        args = self._with_token([_path(put.path), put.mode, put.digest])
        self._check(await self._call("commit", args, FILE_TIMEOUT), f"writing {put.path}")

    @abstractmethod
    async def _call(self, function: str, args: list[Term], timeout: float = CALL_TIMEOUT) -> Term:
        """Call ``relsync_target:function(args...)`` on the target."""

    @abstractmethod
    async def _load_binary(self, module: str, beam: bytes) -> Term:
        """``code:load_binary/3`` on the target; returns its result."""

    def _check(self, result: Term, what: str) -> None:
        if result == "ok":
            return
        forbidden = result[1] if isinstance(result, tuple) and len(result) == 2 else None
        if isinstance(forbidden, tuple) and forbidden and forbidden[0] == "forbidden":
            path = _text(forbidden[1]) if len(forbidden) == 2 else "?"
            raise UsageError(
                f"{what}: relsyncd on {self.label} does not allow {path}; use a path inside its "
                "allowed_paths, or add it there (relsyncd's application env)"
            )
        if isinstance(result, tuple) and result and result[0] == "error":
            where = f" {_text(result[1])}:" if len(result) == 3 else ""
            last = result[-1]
            if isinstance(last, tuple) and len(last) == 3 and last[0] in _CLASSES:
                reason = rpc_failure((Atom("EXIT"), (last[1], last[2])))  # a call that raised
            else:
                reason = _text(last) if isinstance(last, bytes | str) else format_term(last)
            hint = {
                "enospc": "free space on it and sync again",
                "erofs": "give a writable --destination-rw-path",
                "eacces": "check the owner of that path on the target",
                "hash_mismatch": "sync again",
                "lock_lost": "sync again",
            }.get(reason, "check the path on the target")
            raise TargetError(f"{what} failed on {self.label}:{where} {describe(reason)}; {hint}")
        raise TargetError(f"{what} failed on {self.label}: unexpected reply {format_term(result)}")

    async def read(
        self, dest: str, exclude: Sequence[str], rw: str | None, lock: str | None = None
    ) -> Readout:
        """See :class:`relsync.target.Target`: one ``sync_state`` call."""
        excl: list[Term] = [_path(p) for p in exclude]
        shadow: Term = _path(rw) if rw else Atom("none")
        opts: dict[Term, Term] = {}
        if lock is not None:
            opts[Atom("lock")] = _path(lock)
            if (owner := self._lock_owner()) is not None:
                opts[Atom("owner")] = owner
        reply = await self._call("sync_state", [_path(dest), excl, shadow, opts], FILE_TIMEOUT)
        if reply == _UNKNOWN_FUNCTION:  # a relsyncd from before the lock: no lock to take
            lock = None
            reply = await self._call("sync_state", [_path(dest), excl, shadow], FILE_TIMEOUT)
        if reply == _UNKNOWN_FUNCTION:  # a relsyncd from before sync_state
            parts = await self._read_in_parts(dest, excl, rw)
        elif isinstance(reply, tuple):
            self._check(reply, f"reading {dest}")
            raise TargetError(f"{self.label}: unexpected state reply {format_term(reply)}")
        elif isinstance(reply, dict):
            if lock is not None:
                self._take_lock(reply.get(Atom("lock")))
            parts = [reply.get(Atom(key)) for key in _STATE_KEYS]
        else:
            raise TargetError(f"{self.label}: unexpected state reply {format_term(reply)}")
        info, original, shadow_files, code, top, libs = parts
        dest_kind = reply.get(Atom("dest")) if isinstance(reply, dict) else None
        resolved = reply.get(Atom("resolved")) if isinstance(reply, dict) else None
        return Readout(
            info=self._info(info),
            original=self._entries(original, dest),
            shadow=self._entries(shadow_files, rw or ""),
            code=_code_state(code),
            top=_names(top),
            libs=_names(libs),
            dest_kind=None if dest_kind is None else _text(dest_kind),
            resolved=(
                (_text(resolved[0]), _text(resolved[1]))
                if isinstance(resolved, tuple) and len(resolved) == 2
                else None
            ),
        )

    def _take_lock(self, reply: Term) -> None:
        """Keep the token of a ``{ok, Token}`` lock reply; raise BusyError for ``busy``."""
        ok = isinstance(reply, tuple) and len(reply) == 2 and reply[0] == "ok"
        token = reply[1] if ok and isinstance(reply, tuple) else None
        if isinstance(token, bytes):
            self._token = token
            return
        if isinstance(reply, tuple) and reply and reply[0] == "busy":
            holder, since = _lock_holder(reply)
            by = f" by {holder}" if holder else ""
            raise BusyError(f"{self.label} is busy: another sync{by} holds it", holder, since)
        raise TargetError(f"{self.label}: cannot take the sync lock ({format_term(reply)})")

    async def info(self) -> TargetInfo:
        return self._info(await self._call("info", []))

    async def unlock(self) -> None:
        """See :class:`relsync.target.Target`."""
        if self._token is not None:
            token, self._token = self._token, None
            await self._call("unlock", [token])

    async def _read_in_parts(self, dest: str, excl: list[Term], rw: str | None) -> list[Term]:
        """The replies ``sync_state`` gathers, asked one by one (in the order of
        :data:`_STATE_KEYS`)."""

        async def ask(function: str, *args: Term) -> Term:
            return await self._call(function, list(args), FILE_TIMEOUT)

        async def nothing() -> Term:
            return (Atom("ok"), [])

        packed = Atom("packed")
        return list(
            await asyncio.gather(
                ask("info"),
                ask("manifest", _path(dest), {Atom("exclude"): excl, Atom("format"): packed}),
                ask("manifest", _path(rw), {Atom("format"): packed}) if rw else nothing(),
                ask("code_state"),
                ask("list_dir", _path(dest)) if rw else nothing(),
                ask("list_dir", _path(f"{dest}/lib")) if rw else nothing(),
            )
        )

    def _info(self, info: Term) -> TargetInfo:
        """The VM's ``info`` reply (which also says how the helper names temporary files)."""
        if not isinstance(info, dict):
            raise TargetError(f"{self.label}: unexpected info reply {format_term(info)}")
        crypto = info.get(Atom("crypto")) == "true"
        hash_name = str(info.get(Atom("hash"), "sha256" if crypto else ""))
        if not hash_name:  # a helper from before MD5, on a board without crypto
            raise TargetError(
                f"{self.label} runs an older relsyncd that needs the crypto application; "
                "update relsyncd in the release, or add crypto to it"
            )
        self._temps_by_name = info.get(Atom("temp_names")) != "md5"
        compress = info.get(Atom("compress"))
        self._inflates = isinstance(compress, list) and "zlib" in compress
        paths = info.get(Atom("code_path"), [])
        return TargetInfo(
            otp_release=_text(info.get(Atom("otp_release"), b"?")),
            node=_text(info.get(Atom("node"), self.label)),
            code_path=tuple(_text(p) for p in paths) if isinstance(paths, list) else (),
            root_dir=_text(info.get(Atom("root_dir"), b"")),
            hash=hash_name,
            release_root=_text(root) if isinstance(root := info.get(Atom("release_root")), bytes)
            else None,
        )  # fmt: skip

    def _entries(self, result: Term, root: str) -> dict[str, RemoteEntry]:
        """A manifest reply's entries (packed, or a list from a helper that predates it)."""
        if isinstance(result, tuple) and result[0] == "ok" and isinstance(result[1], bytes):
            return unpack_manifest(result[1])
        if not (isinstance(result, tuple) and result[0] == "ok" and isinstance(result[1], list)):
            self._check(result, f"reading {root}")
            raise AssertionError("unreachable")
        entries: dict[str, RemoteEntry] = {}
        for item in result[1]:
            assert isinstance(item, tuple)
            rel = _text(item[0])
            if item[1] == "regular":
                size, mode, sha = item[2], item[3], item[4]
                assert isinstance(size, int) and isinstance(mode, int) and isinstance(sha, bytes)
                entries[rel] = RemoteFile(rel, size, mode, sha)
            else:
                entries[rel] = RemoteLink(rel, _text(item[2]))
        return entries

    async def mark_pending(self, modules: Sequence[str]) -> None:
        """See :class:`relsync.target.Target`."""
        self._check(await self._call("mark_pending", [[Atom(m) for m in modules]]), "marking")

    async def running_programs(self, paths: Sequence[str]) -> list[RunningProgram]:
        """See :class:`relsync.target.Target`."""
        result = await self._call("running_programs", [[_path(p) for p in paths]])
        found: list[RunningProgram] = []
        for item in result if isinstance(result, list) else []:
            if isinstance(item, tuple) and len(item) == 4 and isinstance(item[1], int):
                owner = _proc((item[2], item[3]))
                found.append(RunningProgram(_text(item[0]), item[1], owner))
        return found

    async def put_files(
        self, files: Sequence[FilePut], progress: Progress, written: Written = nothing_written
    ) -> list[str]:
        """See :class:`relsync.target.Target`."""
        deltas: list[str] = []
        batch: list[Term] = []
        paths: list[str] = []
        batch_bytes = wire_bytes = 0
        # Batches on their way at once: the target writes one while the next is read here and
        # sent.
        in_flight = await self._open_lanes(sum(p.size for p in files if p.size <= CHUNK))
        flying: list[asyncio.Task[None]] = []
        whole = [p for p in files if p.size <= CHUNK and p.base is None]
        compress = self._inflates and bool(whole) and await worth_it(whole, self._link_rate)

        def send() -> None:
            flying.append(
                asyncio.ensure_future(self._put_batch(batch, paths, wire_bytes, progress, written))
            )

        try:
            for put in files:
                if await self._put_delta(put, progress):
                    deltas.append(put.path)
                    written([put.path])
                    continue
                if put.size > CHUNK:
                    await self._put_large(put, progress)
                    written([put.path])
                    continue
                with open(put.local, "rb") as handle:
                    data = handle.read()
                payload, wire = _payload(data) if compress else (data, len(data))
                batch.append((_path(put.path), put.mode, payload, put.digest))
                paths.append(put.path)
                batch_bytes += len(data)
                wire_bytes += wire
                if batch_bytes >= CHUNK:
                    send()
                    batch, paths, batch_bytes, wire_bytes = [], [], 0, 0
                    if len(flying) >= in_flight:
                        await flying.pop(0)
            if batch:
                send()
            while flying:
                await flying.pop(0)
        finally:
            for task in flying:  # a failure: the batches still on their way are not waited for
                task.cancel()
            await asyncio.gather(*flying, return_exceptions=True)
        return deltas

    async def _put_delta(self, put: FilePut, progress: Progress) -> bool:
        """Send ``put`` as a block delta against ``put.base`` when that pays (the target
        rebuilds it, checks its SHA-256 and renames it into place). False: send it whole, as
        there is no base, no delta worth it, or the target could not read the base or rebuild
        the file (it changed meanwhile: the whole file then gets it right)."""
        if put.base is None:
            return False
        base = _path(put.base)
        signatures = _signatures(await self._call("block_signatures", [base, BLOCK], FILE_TIMEOUT))
        if signatures is None:
            return False
        # The file is read a piece at a time; literal data in the one call stays within a chunk
        # (a message must not outlast a tick), which bounds what the ops hold.
        max_literal = min(0.5, CHUNK / max(put.size, 1))
        try:
            with open(put.local, "rb") as handle:
                ops = file_delta(handle, signatures, BLOCK, max_literal)
        except OSError as exc:
            raise _unreadable(put.local, exc) from exc
        if ops is None:
            return False
        args: list[Term] = [_path(put.path), base, [_op(op) for op in ops], put.mode, put.digest]
        result = await self._call("put_delta", args, FILE_TIMEOUT)
        progress(delta_bytes(put, ops))
        return result == "ok"

    async def _link_rate(self) -> float:
        if self._link is None:
            self._link = await link_rate(self._echo)
        return self._link

    async def _echo(self, payload: bytes) -> None:
        """A round trip to the board carrying ``payload`` (its answer does not matter): the
        link's speed is measured with it (see :mod:`relsync.transports.compress`). relsyncd
        answers ``ping`` with a payload ``{error, unknown_function}`` (ping takes none) once it
        has read the whole request."""
        await self._call("ping", [payload])

    async def _open_lanes(self, nbytes: int) -> int:
        """How many put_files batches of ``nbytes`` in all may be on their way at once (a
        transport may open lanes of its own for them first: see :meth:`_on_lane`)."""
        return BATCHES_IN_FLIGHT

    async def _on_lane(self, function: str, args: list[Term]) -> Term:
        """A long call (file bytes, loading) that may go beside others (a transport with
        lanes of its own puts each on a lane it has to itself)."""
        return await self._call(function, args, FILE_TIMEOUT)

    async def _put_batch(
        self, batch: list[Term], paths: list[str], nbytes: int, progress: Progress,
        written: Written,
    ) -> None:  # fmt: skip
        result = await self._on_lane("put_files", self._with_token([batch]))
        self._check(result, "writing files")
        progress(nbytes)
        written(paths)

    async def _put_large(self, put: FilePut, progress: Progress) -> None:
        path = _path(put.path)
        offset = 0
        for chunk in read_chunks(put.local):
            args = self._with_token([path, offset, chunk])
            self._check(await self._on_lane("put_chunk", args), f"writing {put.path}")
            offset += len(chunk)
            progress(len(chunk))
        await self.commit(put)

    async def make_symlinks(self, links: Sequence[tuple[str, str]]) -> None:
        """See :class:`relsync.target.Target`."""
        args: list[Term] = [(_path(link), _path(dest)) for link, dest in links]
        self._check(await self._call("make_symlinks", [args], FILE_TIMEOUT), "linking")

    async def delete_files(self, paths: Sequence[str]) -> None:
        """See :class:`relsync.target.Target`."""
        args: list[Term] = [_path(p) for p in paths]
        self._check(await self._call("delete_files", [args], FILE_TIMEOUT), "deleting")

    async def delete_dirs(self, paths: Sequence[str]) -> list[str]:
        """See :class:`relsync.target.Target`."""
        stuck: list[str] = []
        for path in paths:
            result = await self._call("delete_dirs", [[_path(path)]], FILE_TIMEOUT)
            if result != "ok":
                stuck.append(path)
        return stuck

    async def update_code_path(
        self, replace: Sequence[tuple[str, str]], add: Sequence[str], remove: Sequence[str]
    ) -> list[str]:
        """See :class:`relsync.target.Target`."""
        pairs: list[Term] = [(_path(old), _path(new)) for old, new in replace]
        spec: dict[Term, Term] = {
            # One pair goes as a tuple, which every helper version takes.
            Atom("replace_prefix"): (
                pairs[0] if len(pairs) == 1 else pairs if pairs else Atom("none")
            ),
            Atom("add"): [_path(p) for p in add],
            Atom("remove"): [_path(p) for p in remove],
        }
        result = await self._call("update_code_path", [spec])
        if isinstance(result, tuple) and result[0] == "ok" and isinstance(result[1], list):
            return [_text(p) for p in result[1]]
        self._check(result, "updating the code path")
        return []

    async def load_modules(
        self, modules: Sequence[tuple[str, str, bytes]], brutal: bool
    ) -> list[ModuleResult]:
        """See :class:`relsync.target.Target`."""
        purge = Atom("brutal" if brutal else "soft")
        args: list[Term] = [_modules(modules), purge]
        return self._module_results(await self._call("load_modules", args, FILE_TIMEOUT))

    async def load_fresh(self, modules: Sequence[tuple[str, str, bytes]]) -> list[ModuleResult]:
        """See :class:`relsync.target.Target`: on a lane of its own, beside the file batches."""
        result = await self._on_lane("load_fresh", [_modules(modules)])
        if result == _UNKNOWN_FUNCTION:  # a relsyncd from before it: all load at the end
            return []
        return self._module_results(result)

    async def delete_modules(self, modules: Sequence[str], brutal: bool) -> list[ModuleResult]:
        """See :class:`relsync.target.Target`."""
        args: list[Term] = [Atom(m) for m in modules]
        purge = Atom("brutal" if brutal else "soft")
        return self._module_results(await self._call("delete_modules", [args, purge]))

    def _module_results(self, result: Term) -> list[ModuleResult]:
        if not isinstance(result, list):
            raise TargetError(
                f"reloading failed on {self.label}: unexpected reply {format_term(result)}"
            )
        out: list[ModuleResult] = []
        for item in result:
            assert isinstance(item, tuple) and len(item) == 2
            out.append(_module_result(str(item[0]), item[1]))
        return out

    async def stash_code(self, modules: Sequence[str]) -> None:
        """See :class:`relsync.target.Target`."""
        await self._ensure_upgrader()
        reply = await self._call("stash_code", [[Atom(m) for m in modules]], FILE_TIMEOUT)
        if reply == _UNKNOWN_FUNCTION:
            raise UsageError(
                f"relsyncd on {self.label} predates --upgrade and --rollback; update the "
                "relsyncd application in the release, or sync without them"
            )

    async def upgrade(
        self,
        steps: Sequence[UpgradeStep],
        *,
        down: bool,
        timeout: float,
        brutal: bool,
        apps: Sequence[str] = (),
        config: str | None = None,
        lost_code: bool = False,
    ) -> UpgradeResult:
        """See :class:`relsync.target.Target`."""
        await self._ensure_upgrader()
        opts: dict[Term, Term] = {
            Atom("direction"): Atom("down" if down else "up"),
            Atom("timeout"): int(timeout * 1000),
            Atom("purge"): Atom("brutal" if brutal else "soft"),
            Atom("apps"): [_path(a) for a in apps],
            Atom("config"): Atom("none") if config is None else _path(config),
        }
        if self._token is not None:  # the board keeps our lock until the upgrade is over
            opts[Atom("token")] = self._token
        if lost_code:
            opts[Atom("lost_code")] = Atom("allow")
        args: list[Term] = [[_step(s) for s in steps], opts]
        # Every process call may take ``timeout``: the call as a whole gets them all.
        limit = FILE_TIMEOUT + timeout * 4 * max(1, len(steps))
        reply = await self._call("upgrade", args, limit)
        if not isinstance(reply, dict):
            raise TargetError(f"upgrading failed on {self.label}: {format_term(reply)}")
        events = reply.get(Atom("events"), [])
        result = reply.get(Atom("result"))
        return UpgradeResult(
            [_event(e) for e in events] if isinstance(events, list) else [],
            self._module_results(reply.get(Atom("modules"), [])),
            None if result == "ok" else upgrade_error(result),
            reply.get(Atom("undone")) == "true",
        )

    @abstractmethod
    async def _ensure_upgrader(self) -> None:
        """Make sure the target has ``relsync_upgrade`` (relsyncd ships it; erl pushes it)."""

    async def check_beams(self, beams: Sequence[tuple[str, bytes]]) -> dict[str, str]:
        """See :class:`relsync.target.Target` (a helper from before it checks nothing)."""
        reply = await self._call("check_beams", [[(Atom(m), b) for m, b in beams]], FILE_TIMEOUT)
        if not isinstance(reply, list):
            return {}
        return {
            _text(e[0]): describe(format_term(e[1]))
            for e in reply
            if isinstance(e, tuple) and len(e) == 2
        }

    async def outdated(self, modules: Sequence[str]) -> dict[str, str]:
        """See :class:`relsync.target.Target`."""
        reply = await self._call("outdated", [[Atom(m) for m in modules]], FILE_TIMEOUT)
        if not isinstance(reply, list):  # a helper from before: reload them all
            return dict.fromkeys(modules, "changed")
        return {_text(e[0]): _text(e[1]) for e in reply if isinstance(e, tuple) and len(e) == 2}

    async def missing_apps(self, apps: Sequence[str]) -> list[str]:
        """See :class:`relsync.target.Target` (a helper from before it finds none missing)."""
        reply = await self._call("missing_apps", [[Atom(a) for a in apps]])
        return sorted(_text(a) for a in reply) if isinstance(reply, list) else []

    async def old_code(self) -> list[ModuleResult]:
        """See :class:`relsync.target.Target`."""
        reply = await self._call("old_code", [])
        if not isinstance(reply, list):
            raise TargetError(f"{self.label}: unexpected reply {format_term(reply)}")
        return [
            ModuleResult(str(m), "old_code", tuple(_proc(p) for p in procs))
            for m, procs in (e for e in reply if isinstance(e, tuple) and len(e) == 2)
            if isinstance(procs, list)
        ]

    async def suspended(self) -> list[str]:
        """See :class:`relsync.target.Target` (a helper from before it finds none)."""
        reply = await self._call("suspended", [])
        return [_proc(p) for p in reply] if isinstance(reply, list) else []

    async def run_hook(self, module: str, function: str, beam: bytes, timeout: float) -> HookResult:
        """See :class:`relsync.target.Target`."""
        loaded = await self._load_binary(module, beam)
        if not (isinstance(loaded, tuple) and loaded[0] == "module"):
            return HookResult(
                "error", "", f"the target refused to load {module}: {format_term(loaded)}"
            )
        result = await self._call(
            "run_hook", [Atom(module), Atom(function), int(timeout * 1000)], timeout + 30.0
        )
        if not isinstance(result, tuple) or not result:
            return HookResult("error", "", f"unexpected reply {format_term(result)}")
        status, output = str(result[0]), _text(result[-1])
        if status == "ok":
            return HookResult("ok", output)
        if status == "error" and len(result) == 3 and isinstance(result[1], tuple):
            cls_, reason = result[1][0], result[1][1]
            return HookResult("error", output, f"{format_term(cls_)}:{format_term(reason)}")
        return HookResult(status, output, f"after {timeout:g} s" if status == "timeout" else "")
