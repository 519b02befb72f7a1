"""Find the user's presync/postsync hook module: a module in the release or an ``.erl`` file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from relsync.erlc import compile_erl
from relsync.errors import UsageError
from relsync.transports.helper import HELPER_MODULES, UPGRADER

HOOK_FUNCTIONS = ("presync", "postsync")


@dataclass(frozen=True, slots=True)
class Hook:
    """A hook module ready to be loaded on the target."""

    module: str
    beam: bytes


def elixir_module(spec: str) -> str:
    """The module's atom as the VM names it: Elixir's ``Myex.Hooks`` is ``Elixir.Myex.Hooks``
    (a name starting with a capital letter is an Elixir alias); Erlang names as they are."""
    return f"Elixir.{spec}" if spec[:1].isupper() else spec


async def resolve_hook(spec: str, root: Path, cwd: Path) -> Hook:
    """``--hooks MOD`` (a module of the release in directory ``root``, else ``MOD.erl``; an
    Elixir module as Elixir writes it, ``Myex.Hooks``) or ``--hooks file.erl``."""
    if spec.endswith(".erl"):
        return await _compile(cwd / spec, spec)
    module = elixir_module(spec)
    if not all(part.isidentifier() for part in module.split(".")):
        raise UsageError(f"--hooks {spec!r} is neither a module name nor a .erl file")
    _not_ours(module, spec)
    for beam in sorted(root.glob(f"lib/*/ebin/{module}.beam")):
        return Hook(module, beam.read_bytes())
    source = cwd / f"{spec}.erl"
    if source.is_file():
        return await _compile(source, spec)
    raise UsageError(
        f"--hooks {spec}: no module {spec} in the release's lib/*/ebin and no {spec}.erl here; "
        "add it to the release or give the path of its .erl file"
    )


def _not_ours(module: str, spec: str) -> None:
    """Refuse a hooks module named as one of relsync's own modules on the board: loading it
    would replace relsync's helper (or relsyncd)."""
    if module in (*HELPER_MODULES, UPGRADER) or module.startswith("relsyncd"):
        raise UsageError(
            f"--hooks {spec}: module {module} has the name of one of relsync's own modules on "
            "the board; rename your hooks module (e.g. my_hooks)"
        )


async def _compile(source: Path, spec: str) -> Hook:
    if not source.is_file():
        raise UsageError(f"--hooks {spec}: no such file; give the path of the hooks .erl file")
    import tempfile  # here: a run without hooks does not need it at start-up

    _not_ours(source.stem, spec)
    with tempfile.TemporaryDirectory(prefix="relsync-hooks-") as out:
        beam = await compile_erl(source, Path(out))
    return Hook(source.stem, beam)
