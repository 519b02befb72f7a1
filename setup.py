"""The build step setuptools runs for ``pip install .``, the sdist and the wheel: relsync's
board-side helper (``relsync/erlang/*.erl``) compiled into the package's ``erlang/ebin``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import ExecError

HELPER = Path(__file__).parent / "relsync" / "erlang"


class BuildWithHelper(build_py):
    """Python files as usual, then the helper's beams (deterministic, as ``make erlang``)."""

    def run(self) -> None:
        erlc = shutil.which("erlc")
        if erlc is None:
            raise ExecError(
                "relsync needs erlc to build its board-side helper: install Erlang/OTP "
                "(apt-get install erlang-base, brew install erlang), then install relsync again"
            )
        super().run()
        out = Path(self.build_lib) / "relsync" / "erlang" / "ebin"
        out.mkdir(parents=True, exist_ok=True)
        sources = sorted(str(p) for p in HELPER.glob("*.erl"))
        done = subprocess.run(
            [erlc, "+deterministic", "+debug_info", "-o", str(out), *sources],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise ExecError(f"erlc could not compile relsync's helper ({HELPER})")


setup(cmdclass={"build_py": BuildWithHelper})
