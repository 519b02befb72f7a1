"""An Elixir project as ``mix new NAME --sup`` makes it, with a GenServer and a protocol
implementation, built into a release with ``MIX_ENV=prod mix release`` (offline: no deps)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

COUNTER = """defmodule Myex.Counter do
  use GenServer
  def start_link(_), do: GenServer.start_link(__MODULE__, 0, name: __MODULE__)
  def bump, do: GenServer.call(__MODULE__, :bump)
  def version, do: GenServer.call(__MODULE__, :version)
  @impl true
  def init(n), do: {:ok, n}
  @impl true
  def handle_call(:bump, _from, n), do: {:reply, n + 1, n + 1}
  def handle_call(:version, _from, n), do: {:reply, VERSION, n}
end
"""
GREET = """defprotocol Myex.Greet do
  def hello(x)
end

defimpl Myex.Greet, for: Atom do
  def hello(x), do: "VERSION #{x}"
end
"""
#: v2 and later also implement it for integers: the consolidated protocol changes too.
GREET_INTEGER = """
defimpl Myex.Greet, for: Integer do
  def hello(n), do: "VERSION number #{n}"
end
"""
HOOKS = """defmodule Myex.Hooks do
  def presync, do: :persistent_term.put(:myex_presync, true)
  def postsync, do: :ok
end
"""


def mix_env(home: Path) -> dict[str, str]:
    """An environment for mix that works offline and writes nowhere but ``home``."""
    return {**os.environ, "MIX_ENV": "prod", "MIX_HOME": str(home / "mix"),
            "HEX_HOME": str(home / "hex"), "HEX_OFFLINE": "1"}  # fmt: skip


def mix_release(project: Path, version: int = 1) -> Path:
    """``mix new myex --sup`` at ``project`` (once), sources at ``version``, ``mix release``;
    the release's path."""
    env = mix_env(project.parent)
    if not project.exists():
        subprocess.run(["mix", "new", project.name, "--sup"], cwd=project.parent, env=env,
                       check=True, capture_output=True)  # fmt: skip
        app = project / "lib" / "myex" / "application.ex"
        app.write_text(app.read_text().replace("children = [", "children = [Myex.Counter", 1))
    lib = project / "lib" / "myex"
    (lib / "counter.ex").write_text(COUNTER.replace("VERSION", str(version)))
    greet = GREET + (GREET_INTEGER if version > 1 else "")
    (lib / "greet.ex").write_text(greet.replace("VERSION", f"v{version}"))
    (lib / "hooks.ex").write_text(HOOKS)
    release = project / "_build" / "prod" / "rel" / "myex"
    shutil.rmtree(release, ignore_errors=True)  # mix keeps files already there
    # Forced: an edit within the second of the last build, same size, looks unchanged to mix.
    for command in (["mix", "compile", "--force"], ["mix", "release", "--quiet"]):
        subprocess.run(command, cwd=project, env=env, check=True, capture_output=True)
    return release
