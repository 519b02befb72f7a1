"""``--watch``'s fast path: a changed module compiled by a warm compiler instead of a full build.

A watch keeps one host-side VM running beside it (no distribution: it reads requests on its
stdin): ``erl`` for a rebar3 project, ``elixir`` for a mix project. When the only sources
changed since the last build are modules of the project's own application(s) that the last
build compiled, each is compiled there and written over its beam in ``_build`` and in the
release, as the build tool would have written it:

* rebar3 (``src/**/*.erl``, ``apps/*/src/**/*.erl``): with the very options rebar3 compiled it
  with (read from its beam's debug info, or its compile info);
* mix (``lib/**/*.ex`` of a project that is not an umbrella): ``Code.compile_file`` in the
  project's directory, as ``mix compile`` does; the release gets the beam stripped as ``mix
  release`` strips it (when its old beam was). A file that defines macros, structs,
  exceptions, protocols or implementations, guards, reads the configuration or the mix
  environment at compile time or names an external resource may change other modules: it
  goes to the full build, as does a file whose modules or exports changed.

The bytes are the build tool's, so the next full build changes nothing the board runs.
Anything else goes to the full build: a header, an ``.app.src``, ``rebar.config`` or
``mix.exs``, the configuration, a dependency, a new or deleted module, a parse transform, a
module that does not compile (the build tool then shows the error as it prints it).
``RELSYNC_WARM_COMPILER=off`` makes every round a full build.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
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


#: The mix project's compile server, run by ``elixir -e`` in the project's directory. A request
#: is one line, ``SOURCE EBIN RELEASE_EBIN EBIN,EBIN..`` (each base64); the answer as above.
_ELIXIR_SERVER = r"""
Code.compiler_options(ignore_module_conflict: true)
dec = fn field -> for b <- String.split(field, ","), b != "-", do: Base.decode64!(b) end
say = fn status, text ->
  IO.write(status <> " " <> Base.encode64(IO.chardata_to_string(text)) <> "\n")
end
risky = ~w(defmacro defstruct defexception defprotocol defimpl defguard
           @external_resource compile_env Mix.env)
beam = fn ebin, mod -> Path.join(ebin, Atom.to_string(mod) <> ".beam") end
exports = fn bin ->
  {:ok, {_, [exports: e]}} = :beam_lib.chunks(bin, [:exports])
  e
end
source_of = fn path ->
  case :beam_lib.chunks(String.to_charlist(path), [:compile_info]) do
    {:ok, {_, [compile_info: ci]}} -> Path.expand(to_string(Keyword.get(ci, :source, ~c"")))
    _ -> nil
  end
end
release_copy = fn old, old_rel, bin ->
  {:ok, stripped_old} = Mix.Release.strip_beam(old)
  cond do
    old_rel == stripped_old -> elem(Mix.Release.strip_beam(bin), 1)
    old_rel == old -> bin
    true -> nil
  end
end
write = fn path, bin ->
  tmp = path <> ".relsync-tmp"
  File.write!(tmp, bin)
  File.rename!(tmp, path)
end
plan = fn ebin, rel_ebin, {mod, bin} ->
  old = File.read!(beam.(ebin, mod))
  rel_path = beam.(rel_ebin, mod)
  rel = if File.exists?(rel_path), do: release_copy.(old, File.read!(rel_path), bin)
  {exports.(old) == exports.(bin) and rel != nil, [{beam.(ebin, mod), bin}, {rel_path, rel}]}
end
check = fn src, ebin, rel_ebin, compiled ->
  before = for p <- Path.wildcard(Path.join(ebin, "*.beam")), source_of.(p) == src, do: p
  made = for {mod, _} <- compiled, do: beam.(ebin, mod)
  same = Enum.sort(before) == Enum.sort(made)
  plans = if same, do: Enum.map(compiled, &plan.(ebin, rel_ebin, &1))
  if plans != nil and Enum.all?(plans, &elem(&1, 0)) do
    for {_, writes} <- plans, {path, bin} <- writes, do: write.(path, bin)
    {"ok", ""}
  else
    {"fallback", "its modules or their exports changed, or the release's beam is not the build's"}
  end
end
compile = fn src, ebin, rel_ebin ->
  if Enum.any?(risky, &String.contains?(File.read!(src), &1)) do
    {"fallback", "it may change other modules"}
  else
    try do
      check.(src, ebin, rel_ebin, Code.compile_file(src))
    rescue
      e -> {"error", Exception.message(e)}
    end
  end
end
Code.compile_string("defmodule RelsyncWarm do\n  use GenServer\n  def x(y), do: y\nend")
:code.purge(RelsyncWarm)
:code.delete(RelsyncWarm)
loop = fn loop ->
  case IO.gets("") do
    :eof -> System.halt(0)
    line ->
      [[src], [ebin], [rel_ebin], ebins] = Enum.map(String.split(String.trim(line), " "), dec)
      Enum.each(ebins, &Code.prepend_path/1)
      {status, text} =
        try do
          compile.(Path.expand(src), ebin, rel_ebin)
        catch
          kind, reason -> {"fallback", inspect({kind, reason})}
        end
      say.(status, text)
      loop.(loop)
  end
end
loop.(loop)
"""


def _b64(path: Path | str) -> str:
    return base64.b64encode(os.fsencode(path)).decode()


class _Compiler:
    """A warm compiler: one VM kept running, one request at a time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, root: Path) -> _Compiler:
        """The project's compiler: ``erl`` for rebar3, ``elixir`` (in ``root``) for mix."""
        argv = ["erl", "-noshell", "-eval", _SERVER]
        if (root / "mix.exs").is_file():
            argv = ["elixir", "-e", _ELIXIR_SERVER]
        found = shutil.which(argv[0])
        if found is None:
            raise OSError(f"{argv[0]} is not installed")
        # A session of its own: Ctrl-C in the terminal is the watch's to handle (it stops the
        # compiler), not a break for the VM.
        proc = await asyncio.create_subprocess_exec(
            found, *argv[1:], cwd=root, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        return cls(proc)

    async def ask(self, *fields: list[Path]) -> tuple[str, str]:
        """One request (each field a list of paths): (status, text); see the servers."""
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None and stdout is not None
        request = " ".join(",".join(_b64(p) for p in field) or "-" for field in fields)
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
        tool = any((self._root / name).is_file() for name in ("rebar.config", "mix.exs"))
        if tool and self._compiler is None:
            self._compiler = asyncio.ensure_future(_Compiler.start(self._root))

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
        release = _release(out, relname)
        if not changed or self._compiler is None or release is None:
            return None
        requests = [(rel, r) for rel in sorted(changed) if (r := self._request(rel, out, release))]
        if len(requests) != len(changed):
            return None
        ebins = sorted((out.parent / "lib").glob("*/ebin"))
        for rel, fields in requests:
            try:
                status, text = await (await self._compiler).ask(*fields, ebins)
            except (OSError, ValueError):  # it did not start, or ended: full builds from now on
                self._compiler = None
                return None
            if status != "ok":
                return None
            sys.stderr.write(text)
            print(f"relsync: compiled {rel} (warm compiler)", file=sys.stderr, flush=True)
        return release

    def _request(self, rel: str, out: Path, release: Path) -> list[list[Path]] | None:
        """The request compiling the source ``rel`` when the fast path can (see the
        servers), else None."""
        source = self._root / rel
        try:
            text = source.read_bytes()
        except OSError:  # deleted
            return None
        lib = out.parent / "lib"
        if rel.endswith(".erl") and b"parse_transform" not in text:
            parts = Path(rel).parts
            if parts[:1] == ("src",) or (parts[:1] == ("apps",) and parts[2:3] == ("src",)):
                return self._erlang(source, lib, release)
        if rel.endswith(".ex") and rel.startswith("lib/"):
            app = re.search(rb"\bapp:\s*:(\w+)", (self._root / "mix.exs").read_bytes())
            name = app.group(1).decode() if app else ""
            ebins = list((release / "lib").glob(f"{name}-*/ebin"))
            if app and len(ebins) == 1:
                return [[source], [lib / name / "ebin"], ebins]
        return None

    @staticmethod
    def _erlang(source: Path, lib: Path, release: Path) -> list[list[Path]] | None:
        """The source, the beam the last build made of it and where the new one goes (in
        ``_build`` and in the release: the same file in a dev-mode release)."""
        real = os.path.realpath(source)
        for beam in lib.glob(f"*/ebin/{source.stem}.beam"):
            if real.startswith(os.path.realpath(beam.parent.parent / "src") + os.sep):
                app = beam.parent.parent.name
                outs = {os.path.realpath(beam): beam}
                for copy in (release / "lib").glob(f"{app}-*/ebin/{beam.name}"):
                    outs.setdefault(os.path.realpath(copy), copy)
                return [[source], [beam], list(outs.values())]
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
    :func:`relsync.build.build_release`), unless ``$RELSYNC_WARM_COMPILER`` is ``off``."""
    if os.environ.get("RELSYNC_WARM_COMPILER", "").strip().lower() == "off":
        yield
        return
    fast = FastBuild(root)
    fast.start()
    token = build.FAST_PATH.set(fast)
    try:
        yield
    finally:
        build.FAST_PATH.reset(token)
        await fast.close()
