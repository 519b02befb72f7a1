"""A built release's ``.rel`` file: which one it is, and what it says (name, version, ERTS,
applications). The one place relsync and its harness read release metadata from."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


class RelFileError(ValueError):
    """The directory is not a release relsync can read the metadata of (the message says
    what is missing)."""


@dataclass(frozen=True, slots=True)
class ReleaseApp:
    """One application of a ``.rel`` file."""

    name: str
    version: str
    start_type: str = "permanent"


def find_rel_file(root: Path) -> tuple[str, Path]:
    """The version of the release built into ``root`` and its ``.rel`` file.

    The version comes from ``releases/start_erl.data`` (``"<erts vsn> <rel vsn>"``), else from
    the only ``releases/<vsn>/`` directory holding a ``.rel`` file; the ``.rel`` file is the one
    in that directory with a matching ``bin/<name>`` script, else the first.
    """
    releases = root / "releases"
    if not releases.is_dir():
        raise RelFileError(f"{root} is not a release: no releases/ directory")
    version: str | None = None
    start_erl = releases / "start_erl.data"
    if start_erl.is_file():
        fields = start_erl.read_text().split()
        if len(fields) == 2 and (releases / fields[1]).is_dir():
            version = fields[1]
    if version is None:
        candidates = sorted(d.name for d in releases.iterdir() if any(d.glob("*.rel")))
        if len(candidates) != 1:
            raise RelFileError(
                f"{root}: cannot tell the release version (no usable releases/start_erl.data, "
                f"release directories with a .rel file: {candidates})"
            )
        version = candidates[0]
    rel_files = sorted((releases / version).glob("*.rel"))
    if not rel_files:
        raise RelFileError(f"{root}: no .rel file in releases/{version}/")
    with_script = [f for f in rel_files if (root / "bin" / f.stem).is_file()]
    return version, (with_script or rel_files)[0]


_REL_RE = re.compile(
    r"""\{\s*release\s*,\s*\{\s*"(?P<name>[^"]*)"\s*,\s*"(?P<vsn>[^"]*)"\s*\}\s*,
        \s*\{\s*erts\s*,\s*"(?P<erts>[^"]*)"\s*\}\s*,\s*\[(?P<apps>.*)\]\s*\}\s*\.""",
    re.DOTALL | re.VERBOSE,
)
_REL_APP_RE = re.compile(
    r"""\{\s*(?P<name>'(?:[^'\\]|\\.)*'|[a-z][A-Za-z0-9_@]*)\s*,\s*"(?P<vsn>[^"]*)"
        \s*(?:,\s*(?P<type>[a-z]+)\s*)?(?:,\s*\[[^\]]*\]\s*)?\}""",
    re.VERBOSE,
)


def _strip_erlang_comments(text: str) -> str:
    out = []
    for line in text.splitlines():
        # Good enough for .rel files: no '%' inside their strings in practice.
        pos = line.find("%")
        out.append(line if pos < 0 else line[:pos])
    return "\n".join(out)


def parse_rel_file(text: str) -> tuple[str, str, str, tuple[ReleaseApp, ...]]:
    """Parses a ``.rel`` file: (release name, release version, erts version, applications)."""
    match = _REL_RE.search(_strip_erlang_comments(text))
    if match is None:
        raise RelFileError("not a .rel file: no {release, {Name, Vsn}, {erts, Vsn}, Apps} term")
    apps = tuple(
        ReleaseApp(
            name=m["name"].strip("'"),
            version=m["vsn"],
            start_type=m["type"] or "permanent",
        )
        for m in _REL_APP_RE.finditer(match["apps"])
    )
    return match["name"], match["vsn"], match["erts"], apps
