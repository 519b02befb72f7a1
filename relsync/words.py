"""Small helpers for what relsync prints to people."""

from __future__ import annotations

import re


def plural(count: int, noun: str) -> str:
    """``1 module``, ``2 modules``, ``3 processes``."""
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun}es" if noun.endswith(("s", "sh", "ch", "x")) else f"{count} {noun}s"


def shown(module: str) -> str:
    """A module name as its language writes it: Elixir's ``Elixir.Myex.Counter`` is
    ``Myex.Counter``; Erlang's are as they are."""
    return module.removeprefix("Elixir.")


#: An Elixir module's atom in a message (``'Elixir.Myex.Loop'``, a registered name too), not
#: in a path (``ebin/Elixir.Myex.Loop.beam``).
_ELIXIR = re.compile(r"(?<![\w/.-])'?Elixir\.([A-Z][\w.]*?\w)'?(?!\w|\.\w)")


def human(text: str) -> str:
    """A line for a person: every Elixir module atom in it as :func:`shown` (``--json``
    keeps the atoms)."""
    return _ELIXIR.sub(r"\1", text)


def modules(names: list[str]) -> str:
    """Module names as :func:`shown`, comma-separated."""
    return ", ".join(shown(name) for name in names)


def size(nbytes: float) -> str:
    """``812 B``, ``16.7 kB``, ``10.0 MB`` (decimal units)."""
    for unit in ("B", "kB", "MB"):
        if nbytes < 1000:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} GB"
