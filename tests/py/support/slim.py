"""Releases as users build them without crypto: the example release with crypto taken out
(its lib directory, its .rel entry and everything of it in the boot script)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

#: Drops crypto's code path, modules and application from start.script, then rebuilds the
#: boot file from it (systools:script2boot), as relx would have made it without crypto.
_STRIP_BOOT = """
{ok, [{script, Name, Cmds}]} = file:consult("start.script"),
Crypto = fun(T) -> string:find(lists:flatten(io_lib:format("~p", [T])), "crypto") =/= nomatch end,
Keep = fun({path, Ps}) -> {true, {path, [P || P <- Ps, not Crypto(P)]}};
          ({primLoad, Ms}) -> {true, {primLoad, [M || M <- Ms, not Crypto(M)]}};
          ({apply, _} = A) -> not Crypto(A);
          (_) -> true
       end,
Script = {script, Name, lists:filtermap(Keep, Cmds)},
ok = file:write_file("start.script", io_lib:format("~p.~n", [Script])),
ok = systools:script2boot("start"),
halt().
"""


def without_crypto(release: Path, root: Path) -> Path:
    """A copy of ``release`` at ``root`` that neither carries nor boots crypto."""
    shutil.copytree(release, root, symlinks=True)
    for lib in (root / "lib").glob("crypto-*"):
        shutil.rmtree(lib)
    for rel_file in (root / "releases").glob("*/*.rel"):
        text = rel_file.read_text()
        rel_file.write_text(re.sub(r',\s*\{crypto,\s*"[^"]*"\}', "", text))
        subprocess.run(
            ["erl", "-noshell", "-eval", _STRIP_BOOT],
            cwd=rel_file.parent, check=True, capture_output=True,
        )  # fmt: skip
    return root


#: rebar.config edits: OTP's libraries left to the board's OTP; crypto left out; dev mode.
SYSTEM_LIBS_FALSE = ("{include_src, false},", "{include_src, false}, {system_libs, false},")
NO_CRYPTO = ("[demo, sasl, crypto]", "[demo, sasl]")
DEV_MODE = ("{dev_mode, false}", "{dev_mode, true}")


def rebar3_release(project: Path, *edits: tuple[str, str], counter_version: int = 1) -> Path:
    """A copy of the example project at ``project`` with each ``(old, new)`` edit made to its
    rebar.config and demo_counter at ``counter_version``, built with rebar3; the release."""
    example = Path(__file__).resolve().parents[3] / "examples" / "demo"
    shutil.copytree(example, project, symlinks=True, ignore=shutil.ignore_patterns("_build"))
    config = project / "rebar.config"
    text = config.read_text()
    for old, new in edits:
        if old not in text:
            raise ValueError(f"{old!r} is not in {config}")
        text = text.replace(old, new, 1)
    config.write_text(text)
    counter = project / "src" / "demo_counter.erl"
    counter.write_text(
        counter.read_text().replace("-define(VERSION, 1).", f"-define(VERSION, {counter_version}).")
    )
    subprocess.run(["rebar3", "release"], cwd=project, check=True, capture_output=True)
    return project / "_build" / "default" / "rel" / "demo"
