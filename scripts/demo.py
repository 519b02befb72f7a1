"""`make demo`: the main job on the embedded default, end to end, on this machine.

1. boot a board: the example release on a read-only path (a read-only bind mount when root),
   started by its own script, like a Nerves board runs /srv/erlang from its squashfs;
2. change a module and the C port program, as a developer would rebuild;
3. relsync the change into a shadow tree on the board's writable path;
4. show the board before and after, then reboot it: it comes back on the untouched release.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from relsync.erldist.etf import Atom, Term
from relsync.erldist.pretty import format_term
from relsync.harness.example import Variant, build_example_release
from relsync.harness.local import LocalBoard

REPO = Path(__file__).resolve().parents[1]


def say(text: str = "") -> None:
    print(text, flush=True)


async def show(board: LocalBoard, title: str) -> None:
    async def rpc(mod: str, fun: str, args: list[Term] | None = None) -> Term:
        return await board.rpc(mod, fun, args or [])

    version = await rpc("demo_counter", "version")
    value = await rpc("demo_counter", "value")
    port = await rpc("demo_port", "ask", [b"ping"])
    which = await rpc("code", "which", [Atom("demo_counter")])
    say(f"  {title}:")
    say(f"    demo_counter:version() -> {version}    demo_counter:value() -> {value}")
    say(f'    demo_port:ask(<<"ping">>) -> {format_term(port)}')
    say(f"    code:which(demo_counter) -> {which}")


def show_shadow(rw: Path) -> None:
    files, links = [], 0
    for dirpath, dirs, names in os.walk(rw):
        for name in names + [d for d in dirs if Path(dirpath, d).is_symlink()]:
            path = Path(dirpath, name)
            if path.is_symlink():
                links += 1
            else:
                files.append(path.relative_to(rw).as_posix())
    say(f"  shadow tree {rw}: {len(files)} real files, {links} symlinks to the original")
    for rel in files:
        say(f"    real file: {rel}")


async def relsync(board: LocalBoard, local: Path) -> int:
    argv = [
        "relsync", "-d", board.node, "--epmd-port", str(board.epmd_port),
        "-p", str(board.release_path), "-q", str(board.rw_path), "-l", str(local),
        "-H", str(REPO / "examples" / "demo_hooks.erl"),
    ]  # fmt: skip
    say("  $ RELSYNC_COOKIE=... " + shlex.join(argv))
    env = dict(os.environ, RELSYNC_COOKIE=board.cookie)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relsync.cli", *argv[1:], env=env
    )
    return await proc.wait()


async def demo(workdir: Path) -> int:
    say("relsync demo: a read-only board on this machine, one change, one sync")
    release = build_example_release()
    say(f"  example release: {release}")
    started = time.perf_counter()
    async with await LocalBoard.start(release, workdir=workdir / "board") as board:
        say(f"  board {board.node} up in {time.perf_counter() - started:.1f} s, running from")
        say(f"    {board.release_path} ({board.read_only_mode})")
        for _ in range(3):
            await board.rpc("demo_counter", "bump", [])
        await show(board, "before")

        say("\n  rebuilding: demo_counter VERSION 1 -> 2, port program v1 -> v2")
        v2 = Variant(release, workdir / "v2").counter_version(2).port_version("v2")
        code = await relsync(board, v2.root)
        if code != 0:
            say(f"relsync failed with exit code {code}")
            return code
        await show(board, "after (counter state kept across the reload)")
        show_shadow(board.rw_path)

        say("\n  rebooting the board: it must come back on the untouched release")
        await board.reboot()
        await show(board, "after reboot")
    say("\nrelsync demo: done")
    return 0


def main() -> int:
    base = REPO / ".demo"
    base.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as workdir:
        return asyncio.run(demo(Path(workdir)))


if __name__ == "__main__":
    sys.exit(main())
