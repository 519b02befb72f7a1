"""Options from files, under the command line: what a project keeps so no run repeats them.

Highest first: the command line; ``relsync.toml`` of the project (its ``[relsync]`` table);
the ``[relsync]`` table of the ``--targets`` file; ``{relsync, [...]}`` in ``rebar.config``
(the original rebar3 plugin's place); the defaults. Keys are the long option names, with ``-``
or ``_`` (``destination_rw_path``, ``mode``, ``hooks``, ...).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relsync.boards import read_toml
from relsync.erldist.etf import Atom, Term
from relsync.erldist.pretty import format_term
from relsync.erlterm import consult, decode
from relsync.errors import UsageError

#: Files that mark a project's top directory.
PROJECT_FILES = ("relsync.toml", "rebar.config", "mix.exs")
#: Never shown by --show-config.
SECRET = frozenset({"cookie"})
#: The top level of relsync.toml and of a --targets file.
TOP_LEVEL = frozenset({"relsync", "board"})
#: Options that make no sense in a file.
COMMAND_ONLY = frozenset({"show_config", "help", "version"})


def boolean(text: str) -> bool:
    """A command-line boolean (``true``, ``no``, ``1``...)."""
    lowered = text.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def port(text: str) -> int:
    """A TCP port number, 1-65535."""
    value = int(text) if text.isdigit() else -1
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"expected a TCP port number (1-65535), got {text!r}")
    return value


def seconds(text: str) -> float:
    """A time limit as a number as written (``1_0`` is no number of seconds; the range is
    :meth:`relsync.api.Settings.check`'s)."""
    try:
        if "_" in text or text != text.strip():
            raise ValueError(text)
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None


#: The options whose values are numbers: a file gives them as numbers, not text.
NUMBERS = (port, seconds)


@dataclass(frozen=True, slots=True)
class Layer:
    """One file's options: where they come from, and their values by option name."""

    source: str
    values: dict[str, Any]


def project_root(cwd: Path) -> Path | None:
    """The nearest directory from ``cwd`` up holding relsync.toml, rebar.config or mix.exs."""
    for directory in (cwd, *cwd.parents):
        if any((directory / name).is_file() for name in PROJECT_FILES):
            return directory
    return None


def _toml_layer(path: Path, what: str) -> Layer | None:
    if not path.is_file():
        return None
    whole = read_toml(path, str(path))
    if unknown := sorted(set(whole) - TOP_LEVEL):
        raise UsageError(
            f"{path}: unknown key(s) {', '.join(map(repr, unknown))} at the top level; options "
            "go in the [relsync] table, boards in [[board]] tables"
        )
    table = whole.get("relsync", {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [relsync] must be a table of options; fix it")
    return Layer(f"{path} ({what})", {k.replace("-", "_"): v for k, v in table.items()})


def _plain(term: Term) -> Any:
    """An Erlang option value as TOML would give it: text for atoms and strings."""
    if isinstance(term, bytes):
        return term.decode()
    if isinstance(term, list):
        return [_plain(t) for t in term]
    if isinstance(term, Atom) and term in ("true", "false"):  # Erlang's booleans
        return term == "true"
    return str(term) if isinstance(term, str) else term


def _rebar_layer(path: Path) -> Layer | None:
    """``{relsync, [...]}`` of ``rebar.config``; a file rebar3 could not read either is an
    error, never options silently dropped."""
    if not path.is_file():
        return None
    try:
        terms = consult(decode(path.read_bytes()))
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8, or say "
            "%% coding: latin-1 on its first line"
        ) from None
    except OSError as exc:
        raise UsageError(f"{path} cannot be read ({exc.strerror}); make it readable") from None
    except ValueError as exc:
        raise UsageError(f"{path}, {exc}") from None
    for term in terms:
        if isinstance(term, tuple) and len(term) == 2 and term[0] == "relsync":
            options = term[1] if isinstance(term[1], list) else [term[1]]
            pairs = [o for o in options if isinstance(o, tuple) and len(o) == 2]
            if not isinstance(term[1], list) or len(pairs) != len(options):
                raise UsageError(
                    f"{path}: {{relsync, {format_term(term[1], 80)}}} is not a list of "
                    "{option, Value}; write it as one"
                )
            return Layer(f"{path} ({{relsync, [...]}})", {str(k): _plain(v) for k, v in pairs})
    return None


def layers(cwd: Path, targets: Path | None) -> list[Layer]:
    """The option files that apply, highest first."""
    found: list[Layer] = []
    root = project_root(cwd)
    if root is not None and (own := _toml_layer(root / "relsync.toml", "[relsync]")):
        found.append(own)
    if targets is not None and (listed := _toml_layer(targets, "--targets [relsync]")):
        found.append(listed)
    if root is not None and (rebar := _rebar_layer(root / "rebar.config")):
        found.append(rebar)
    return found


def _convert(action: argparse.Action, value: Any, source: str) -> Any:
    name = action.option_strings[-1]
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise UsageError(f"{source}: {name} must be true or false, not {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [_convert_one(action, item, source) for item in items]
    return _convert_one(action, value, source)


def _convert_one(action: argparse.Action, value: Any, source: str) -> Any:
    convert = action.type if callable(action.type) else None
    name = action.option_strings[-1]
    if convert in NUMBERS:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise UsageError(f"{source}: {name} must be a number, not {value!r}; fix it there")
    elif convert is boolean:
        if not isinstance(value, bool):
            raise UsageError(f"{source}: {name} must be true or false, not {value!r}")
    elif not isinstance(value, str):
        raise UsageError(f"{source}: {name} must be a string, not {value!r}; fix it there")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        result = convert(text) if convert is not None else text
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise UsageError(f"{source}: {name} {value!r}: {exc}; fix it there") from None
    if action.choices is not None and result not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise UsageError(f"{source}: {name} must be one of {choices}")
    return result


def apply(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str], found: list[Layer]
) -> dict[str, str]:
    """Fill ``args`` from ``found`` where the command line gave nothing; return each option's
    source (``command line``, a file, ``default``)."""
    given = _given(parser, argv)
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    for layer in found:  # every value checked, whatever overrides it
        for key, value in layer.values.items():
            if key not in actions or key in COMMAND_ONLY:
                raise UsageError(
                    f"{layer.source}: no option {key!r}; use the long option names of "
                    "relsync --help (destination_rw_path, mode, ...)"
                )
            _convert(actions[key], value, layer.source)
    sources: dict[str, str] = {}
    for dest, action in actions.items():
        if dest in COMMAND_ONLY:
            continue
        if dest in given:
            sources[dest] = "command line"
            continue
        sources[dest] = "default"
        for layer in found:
            if dest in layer.values:
                setattr(args, dest, _convert(action, layer.values[dest], layer.source))
                sources[dest] = layer.source
                break
    return sources


def _given(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The options ``argv`` sets itself (parsed again with every default suppressed)."""
    probe = argparse.Namespace()
    saved = [(a, a.default) for a in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        parser.parse_args(argv, namespace=probe)
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(probe))


def _value(args: argparse.Namespace, dest: str) -> Any:
    """An option's value as shown: never the cookie, a path as text."""
    value = getattr(args, dest, None)
    if dest in SECRET and value:
        return "(set)"
    return str(value) if isinstance(value, Path) else value


def show(args: argparse.Namespace, sources: dict[str, str]) -> str:
    """What applies and where each value came from, one option a line (never the cookie)."""
    lines = []
    for dest in sorted(sources):
        value = _value(args, dest)
        shown = "" if value is None else str(value)
        lines.append(f"{dest.replace('_', '-'):24} {shown:30} {sources[dest]}")
    return "\n".join(lines) + "\n"


def show_json(args: argparse.Namespace, sources: dict[str, str]) -> str:
    """:func:`show` as one JSON object: ``{"options": {name: {"value", "source"}}}``."""
    import json

    options = {
        dest.replace("_", "-"): {"value": _value(args, dest), "source": sources[dest]}
        for dest in sorted(sources)
    }
    return json.dumps({"options": options}) + "\n"
