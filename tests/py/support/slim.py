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
