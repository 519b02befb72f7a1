"""The board model's dev-mode histories: rebar3's default release, built in a project and run from
``_build`` itself, synced with ``relsync --build`` as the README's first-run flow has it.

The steps edit the project's sources (the counter gen_server's version, a module added, changed
and removed), run ``relsync --build`` (or ``--build --upgrade``) in the project, bump the counter,
restart the node. After every sync: relsync wrote nothing (the node runs the very directory the
build wrote), the project's sources and config keep their inodes and contents, the release's
links stay links, the node runs the code the build made (each loaded module's MD5 is its beam's,
a removed module is not loaded), the counter's state is kept, and a second run does nothing.
"""

from __future__ import annotations

import random
from pathlib import Path

from relsync.erldist.etf import Atom, Charlist
from support.dev_release import (
    DevNode,
    counter_source,
    dev_links,
    dev_project,
    project_files,
    run_in_project,
)

EXTRA = "-module(myapp_extra).\n-export([v/0]).\nv() -> {v}.\n"


class DevHistory:
    """One random history on a node running its project's ``_build`` release."""

    def __init__(self, seed: int, mode: str, project: Path, node: DevNode) -> None:
        self.seed, self.mode, self.project, self.node = seed, mode, project, node
        self.rng = random.Random(seed)
        self.release = project / "_build" / "default" / "rel" / "myapp"
        self.src = project / "apps" / "myapp" / "src"
        self.links = dev_links(self.release)
        self.steps: list[str] = []
        #: What the sources say, and what the last build made (what the node runs).
        self.source: tuple[int, int | None] = (1, None)
        self.version, self.count = 1, 0
        self.extra: int | None = None

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            steps = "\n  ".join(self.steps)
            raise AssertionError(f"{what}\n seed {self.seed} ({self.mode}, dev mode):\n  {steps}")

    def edit(self) -> str:
        """Change the counter's version, or add, change or remove myapp_extra."""
        extra = self.src / "myapp_extra.erl"
        version, value = self.source
        if self.rng.random() < 0.5:
            version = self.rng.choice([v for v in range(1, 5) if v != version])
            (self.src / "myapp_counter.erl").write_text(counter_source(version))
            self.source = (version, value)
            return f"edit myapp_counter: version {version}"
        if value is not None and self.rng.random() < 0.4:
            extra.unlink()
            self.source = (version, None)
            return "remove myapp_extra.erl"
        value = self.rng.randint(1, 9)
        extra.write_text(EXTRA.format(v=value))
        self.source = (version, value)
        return f"write myapp_extra.erl: v() -> {value}"

    async def sync(self, *extra: str) -> str:
        before = project_files(self.project)
        code, report, err = await run_in_project(self.project, self.node, "--build", *extra)
        self.expect(code == 0, f"relsync --build {extra} exited {code}: {err.strip()[-400:]}")
        self.version, self.extra = self.source
        wrote = {k: report.get(k) for k in ("added", "changed", "deleted", "written", "linked")}
        self.expect(not any(wrote.values()), f"relsync wrote into the project's build: {wrote}")
        self.expect(project_files(self.project) == before, "the project's sources changed")
        self.expect(dev_links(self.release) == self.links, "the release's links changed")
        code, again, err = await run_in_project(self.project, self.node)
        self.expect(code == 0, f"second relsync exited {code}: {err.strip()[-400:]}")
        did = {k: again.get(k) for k in ("written", "reload", "modules")}
        self.expect(not any(did.values()), f"a second relsync did {did}")
        return f"relsync --build {' '.join(extra)}".strip()

    async def bump(self) -> str:
        value = await self.node.rpc("myapp_counter", "bump", [])
        self.count += 1
        self.expect(value == self.count, f"bump gave {value}, the model {self.count}")
        return "bump"

    async def check(self) -> None:
        """The node runs what the build made, with the counter's state."""
        rpc = self.node.rpc
        self.expect(
            await rpc("myapp_counter", "version", []) == self.version,
            f"myapp_counter does not run version {self.version}",
        )
        state = await rpc("sys", "get_state", [Atom("myapp_counter")])
        self.expect(state == (Atom("count"), self.count), f"the counter's state is {state}")
        if self.extra is None:
            loaded = await rpc("code", "is_loaded", [Atom("myapp_extra")])
            self.expect(loaded == Atom("false"), "myapp_extra is loaded, its source is gone")
        else:
            got = await rpc("myapp_extra", "v", [])
            self.expect(got == self.extra, f"myapp_extra:v() is {got}, not {self.extra}")
        ebin = self.release / "lib" / "myapp-0.1.0" / "ebin"
        for beam in sorted(ebin.glob("*.beam")):
            module = Atom(beam.stem)
            if await rpc("code", "is_loaded", [module]) == Atom("false"):
                continue  # interactive mode: it loads from this very file when first called
            md5 = await rpc(beam.stem, "module_info", [Atom("md5")])
            disk = await rpc("beam_lib", "md5", [Charlist(str(beam))])
            self.expect(
                isinstance(disk, tuple) and disk[1][1] == md5,  # type: ignore[index]
                f"{beam.stem} runs code other than {beam}",
            )


async def run_dev_history(seed: int, mode: str, workdir: Path, steps: int) -> DevHistory:
    """Build a dev-mode project, run it from ``_build``, take ``steps`` random steps."""
    workdir.mkdir(parents=True, exist_ok=True)
    project = dev_project(workdir)
    release = project / "_build" / "default" / "rel" / "myapp"
    node = DevNode(release, workdir / "home")
    h = DevHistory(seed, mode, project, node)
    while len(h.steps) < steps:
        async with node.running():
            if mode == "ssh":
                await node.enable_ssh()
            await h.check()
            while len(h.steps) < steps:
                for _ in range(h.rng.randint(0, 2)):
                    h.steps.append(h.edit())
                if h.rng.random() < 0.3:
                    h.steps.append(await h.bump())
                roll = h.rng.random()
                if roll < 0.15:
                    h.steps.append("restart the node")
                    h.count = 0
                    break
                h.steps.append(await (h.sync("--upgrade") if roll < 0.4 else h.sync()))
                await h.check()
    return h
