"""``--watch``'s fast path: a changed module compiled by a warm compiler instead of a full build.

A watch keeps one host-side Erlang VM running (no distribution: it reads requests on its
stdin). When the only sources changed since the last build are modules of the project's own
applications that the last build compiled (``src/**/*.erl`` or ``apps/*/src/**/*.erl`` of a
rebar3 project), each is compiled there with the very options rebar3 compiled it with (read
from its beam's debug info, or its compile info) and written over its beam in ``_build`` and in
the release: the bytes rebar3 would write, so the next full build changes nothing the board
runs. Anything else goes to the full build: a header, an ``.app.src``, ``rebar.config``, a
dependency, a new or deleted module, a parse transform, a module that does not compile (the
build tool then shows the error as it prints it), a mix project.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from stat import S_ISREG

from relsync import build

#: A source snapshot: relative path -> (mtime in ns, size).
Snapshot = dict[str, tuple[int, int]]

#: The compile server, run by ``erl -noshell -eval``. A request is one line,
#: ``SOURCE BEAM OUT,OUT.. EBIN,EBIN..`` (each base64, ``-`` for no ebin); the answer one line,
#: ``STATUS TEXT`` (TEXT base64): ``ok`` (written to every OUT; TEXT: the warnings), ``error``
#: (it does not compile), ``fallback`` (not for the fast path: TEXT says why).
_SERVER = r"""
Dec = fun(B) -> unicode:characters_to_list(base64:decode(B)) end,
Say = fun(Status, Text) ->
          io:put_chars([Status, " ", base64:encode(unicode:characters_to_binary(Text)), "\n"])
      end,
Fmt = fun(Items) ->
          [[F, ":", io_lib:format("~p", [L]), ": ", M:format_error(D), "\n"]
           || {F, Es} <- Items, {L, M, D} <- Es]
      end,
Info = fun(Beam) ->
           case beam_lib:chunks(Beam, [compile_info]) of
               {ok, {_, [{compile_info, CI}]}} -> {ok, proplists:get_value(options, CI, [])};
               _ -> error
           end
       end,
Opts = fun(Beam) ->
           case beam_lib:chunks(Beam, [debug_info]) of
               {ok, {_, [{debug_info, {debug_info_v1, _, {_, O}}}]}} when is_list(O) -> {ok, O};
               _ -> Info(Beam)
           end
       end,
Write = fun(Out, Bin) ->
            Tmp = Out ++ ".relsync-tmp",
            ok = file:write_file(Tmp, Bin),
            ok = file:rename(Tmp, Out)
        end,
Build = fun(Src, O, Outs) ->
            Mod = filename:basename(Src, ".erl"),
            case compile:file(Src, [binary, return_errors, return_warnings | O]) of
                {ok, M, Bin, Ws} ->
                    case atom_to_list(M) of
                        Mod -> [Write(Out, Bin) || Out <- Outs], {"ok", Fmt(Ws)};
                        _ -> {"fallback", "the module is named otherwise"}
                    end;
                {error, Es, Ws} -> {"error", Fmt(Es ++ Ws)}
            end
        end,
Compile = fun(Src, Beam, Outs) ->
              case Opts(Beam) of
                  error -> {"fallback", "no compile options in its beam"};
                  {ok, O} ->
                      case [X || X <- O, is_tuple(X), element(1, X) =:= parse_transform] of
                          [] -> Build(Src, O, Outs);
                          _ -> {"fallback", "a parse transform"}
                      end
              end
          end,
_ = compile:forms([{attribute, 1, module, relsync_warm}], [binary, debug_info, return]),
Loop = fun Loop() ->
           case io:get_line('') of
               eof -> halt();
               Line ->
                   [Src, Beam, Outs, Ebins] = string:lexemes(string:trim(Line), " "),
                   code:add_pathsa([Dec(E) || E <- string:lexemes(Ebins, ","), E =/= "-"]),
                   Paths = [Dec(P) || P <- string:lexemes(Outs, ",")],
                   {S, T} = try Compile(Dec(Src), Dec(Beam), Paths)
                            catch C:R -> {"fallback", io_lib:format("~p:~p", [C, R])}
                            end,
                   Say(S, T),
                   Loop()
           end
       end,
Loop().
"""


def _b64(path: Path | str) -> str:
    return base64.b64encode(os.fsencode(path)).decode()


class _Compiler:
    """The warm compiler: one ``erl`` kept running, one request at a time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls) -> _Compiler:
        erl = shutil.which("erl")
        if erl is None:
            raise OSError("erl is not installed")
        proc = await asyncio.create_subprocess_exec(
            erl, "-noshell", "-eval", _SERVER, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        return cls(proc)

    async def compile(
        self, source: Path, beam: Path, outs: list[Path], ebins: list[Path]
    ) -> tuple[str, str]:
        """Compile ``source`` as ``beam`` was, into every path of ``outs``: (status, text)."""
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None and stdout is not None
        request = " ".join([
            _b64(source), _b64(beam), ",".join(_b64(p) for p in outs),
            ",".join(_b64(p) for p in ebins) or "-",
        ])  # fmt: skip
        async with self._lock:
            stdin.write(request.encode() + b"\n")
            await stdin.drain()
            line = await stdout.readline()
        status, _, text = line.decode().strip().partition(" ")
        if not status:
            raise OSError("the warm compiler ended")
        return status, base64.b64decode(text).decode(errors="replace")

    async def close(self) -> None:
        if self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()


class FastBuild:
    """The fast path of one watch over the project at ``root`` (see the module's docstring)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        #: The sources as the last build saw them (None: no build yet).
        self._built: Snapshot | None = None
        #: The sources as the full build running now saw them when it started.
        self._pending: Snapshot | None = None
        self._compiler: asyncio.Task[_Compiler] | None = None

    def start(self) -> None:
        """Start the warm compiler (it warms up while the first build runs)."""
        if (self._root / "rebar.config").is_file() and self._compiler is None:
            self._compiler = asyncio.ensure_future(_Compiler.start())

    async def close(self) -> None:
        """Stop the warm compiler."""
        if self._compiler is not None:
            with contextlib.suppress(Exception):
                await (await self._compiler).close()
            self._compiler = None

    def snapshot(self) -> Snapshot:
        """Every source below the root, as watch mode sees sources (not the lock files and
        other output every build writes)."""
        from relsync.watch import SOURCES, is_source_change  # here: watch imports this module

        found: Snapshot = {}

        def add(path: str) -> None:
            if is_source_change(self._root, path):
                with contextlib.suppress(OSError):
                    stat = os.stat(path)
                    if S_ISREG(stat.st_mode):  # a directory's own time changes with its files
                        rel = os.path.relpath(path, self._root)
                        found[rel] = (stat.st_mtime_ns, stat.st_size)

        for name in SOURCES:
            add(str(self._root / name))
            for top, dirs, files in os.walk(self._root / name):
                dirs[:] = [d for d in dirs if is_source_change(self._root, f"{top}/{d}/x")]
                for file in files:
                    add(os.path.join(top, file))
        return found

    async def build(self, project: Path, out: Path, relname: str | None) -> Path | None:
        """The release with the changed modules compiled into it, or None: a full build is
        needed (then :meth:`built` once it succeeded)."""
        now = self.snapshot()
        self._pending = now
        if self._built is None or project.resolve() != self._root.resolve():
            return None
        changed = {p for p in now.keys() | self._built.keys() if now.get(p) != self._built.get(p)}
        started = time.time()
        release = await self._compile(changed, out, relname)
        if release is not None:
            build.backdate_outputs(out.parent / "lib", int(started))
            build.backdate_outputs(release / "lib", int(started))
            self._built = now
        return release

    def built(self) -> None:
        """A full build succeeded: the sources it started from are the new base."""
        self._built = self._pending

    async def _compile(self, changed: set[str], out: Path, relname: str | None) -> Path | None:
        if not changed or self._compiler is None:
            return None
        jobs = [job for rel in sorted(changed) if (job := self._job(rel, out)) is not None]
        release = _release(out, relname)
        if len(jobs) != len(changed) or release is None:
            return None
        compiler = await self._compiler
        for rel, source, beam in jobs:
            app = beam.parent.parent.name
            outs = {os.path.realpath(beam): beam}
            for copy in (release / "lib").glob(f"{app}-*/ebin/{beam.name}"):
                outs.setdefault(os.path.realpath(copy), copy)
            ebins = sorted((out.parent / "lib").glob("*/ebin"))
            status, text = await compiler.compile(source, beam, list(outs.values()), ebins)
            if status != "ok":
                return None
            sys.stderr.write(text)
            print(f"relsync: compiled {rel} (warm compiler)", file=sys.stderr, flush=True)
        return release

    def _job(self, rel: str, out: Path) -> tuple[str, Path, Path] | None:
        """(rel, source, the beam the last build made of it) for a module the fast path can
        compile; None for anything else."""
        parts = Path(rel).parts
        in_src = parts[:1] == ("src",) or (parts[:1] == ("apps",) and parts[2:3] == ("src",))
        source = self._root / rel
        if not (in_src and rel.endswith(".erl") and source.is_file()):
            return None
        try:
            if b"parse_transform" in source.read_bytes():
                return None
        except OSError:
            return None
        real = os.path.realpath(source)
        for beam in (out.parent / "lib").glob(f"*/ebin/{source.stem}.beam"):
            src_dir = os.path.realpath(beam.parent.parent / "src")
            if real.startswith(src_dir + os.sep):
                return rel, source, beam
        return None


def _release(out: Path, relname: str | None) -> Path | None:
    """The one release below ``out`` (named ``relname`` when given), as the full build finds it."""
    releases = [p for p in out.glob("*") if (p / "releases").is_dir()]
    if relname:
        releases = [p for p in releases if p.name == relname]
    return releases[0].resolve() if len(releases) == 1 else None


@contextlib.asynccontextmanager
async def warm_compiler(root: Path) -> AsyncIterator[None]:
    """While in it, ``--build`` takes the fast path where it can (see
    :func:`relsync.build.build_release`)."""
    fast = FastBuild(root)
    fast.start()
    token = build.FAST_PATH.set(fast)
    try:
        yield
    finally:
        build.FAST_PATH.reset(token)
        await fast.close()
