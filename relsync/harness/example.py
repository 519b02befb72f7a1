"""The example release (examples/demo) and modified copies of it, as a developer would rebuild.

A variant is a copy of the built release with some modules recompiled from edited sources, new
modules added, modules removed, or the C port program rebuilt with another version string.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from relsync.harness.bundle import harness_root


def example_project() -> Path:
    """The example's rebar3 project (examples/demo)."""
    return harness_root() / "examples" / "demo"


def copy_example_project(where: Path) -> Path:
    """A copy of the example's project in ``where/demo``, without build output, to edit."""
    project = where / "demo"
    shutil.copytree(
        example_project(), project, symlinks=True, ignore=shutil.ignore_patterns("_build")
    )
    return project


APP_DIR = "lib/demo-0.1.0"


def build_example_release() -> Path:
    """Build examples/demo with Debian's rebar3 (skipped when up to date); return its path."""
    out = subprocess.run(
        [str(harness_root() / "examples" / "build.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    release = Path(out.strip().splitlines()[-1])
    if not (release / "bin" / "demo").is_file():
        raise RuntimeError(f"examples/build.sh did not produce a release at {release}")
    return release


class Variant:
    """A writable copy of a release, changed step by step."""

    def __init__(self, base: Path, root: Path) -> None:
        shutil.copytree(base, root, symlinks=True)
        self.root = root
        self.ebin = root / APP_DIR / "ebin"
        self._src = root.parent / f"{root.name}-src"
        self._src.mkdir()

    def compile(self, module: str, source: str) -> Variant:
        """Compile ``source`` as ``module`` into the app's ebin."""
        path = self._src / f"{module}.erl"
        path.write_text(source)
        subprocess.run(
            ["erlc", "+deterministic", "-o", str(self.ebin), str(path)],
            check=True, capture_output=True,
        )  # fmt: skip
        return self

    def edit(self, module: str, old: str, new: str) -> Variant:
        """Recompile an example module with one piece of its source replaced."""
        source = (example_project() / "src" / f"{module}.erl").read_text()
        if old not in source:
            raise ValueError(f"{old!r} not in {module}.erl")
        return self.compile(module, source.replace(old, new, 1))

    def counter_version(self, version: int) -> Variant:
        """demo_counter answering ``version()`` with ``version``."""
        return self.edit("demo_counter", "-define(VERSION, 1).", f"-define(VERSION, {version}).")

    def remove(self, module: str) -> Variant:
        """Delete a module's beam."""
        (self.ebin / f"{module}.beam").unlink()
        return self

    def port_version(self, version: str, cc: str = "cc") -> Variant:
        """Rebuild priv/demo_port answering ``<version>:<request>`` (with compiler ``cc``)."""
        source = (example_project() / "c_src" / "demo_port.c").read_text()
        source = source.replace('#define PORT_VERSION "v1"', f'#define PORT_VERSION "{version}"')
        path = self._src / "demo_port.c"
        path.write_text(source)
        out = self.root / APP_DIR / "priv" / "demo_port"
        tmp = out.with_name("demo_port.new")
        subprocess.run([cc, "-O2", "-o", str(tmp), str(path)], check=True, capture_output=True)
        tmp.replace(out)
        return self
