"""What every board kind shares: waiting until it is ready (its node answers with the release's
main app started), and reading a directory tree on it with a shell one-liner."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from relsync.erldist.errors import DistError
from relsync.erldist.node import call_once

#: Pause between two readiness probes (the wait itself is bounded by its timeout).
PROBE_INTERVAL = 0.2
#: Limit for a readiness probe's connection (EPMD lookup, TCP, handshake).
CONNECT_TIMEOUT = 2.0


class BoardError(RuntimeError):
    """A board could not be started, answered wrongly or could not be stopped."""


def app_names(which_applications: object) -> set[str]:
    """The names in an ``application:which_applications()`` reply."""
    names: set[str] = set()
    if isinstance(which_applications, list):
        for item in which_applications:
            if isinstance(item, tuple | list) and item:
                names.add(str(item[0]))
    return names


async def _probe(node: str, cookie: str, epmd_port: int, main_app: str) -> bool:
    # A short connect timeout: QEMU's user network accepts a connection before the guest
    # listens, and such a connect hangs until its timeout, however soon the node is up.
    apps = await call_once(
        node, cookie, epmd_port, ("application", "which_applications", []),
        connect_timeout=CONNECT_TIMEOUT, timeout=5.0,
    )  # fmt: skip
    return main_app in app_names(apps)


async def cancel(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it is done."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


async def wait_ready(
    node: str,
    cookie: str,
    epmd_port: int,
    main_app: str,
    *,
    timeout: float,
    describe: Callable[[], str],
    died: asyncio.Future[int] | None = None,
) -> None:
    """Return once ``node`` answers with ``main_app`` started; fail at once if ``died`` is set.

    ``describe()`` supplies what a person needs in the error (e.g. the console log's tail).
    """
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[int] = died if died is not None else loop.create_future()
    deadline = loop.time() + timeout
    last_error = "no answer yet"
    while (remaining := deadline - loop.time()) > 0:
        probe: asyncio.Future[bool] = asyncio.ensure_future(
            _probe(node, cookie, epmd_port, main_app)
        )
        waiters: set[asyncio.Future[Any]] = {probe, gone}
        done, _ = await asyncio.wait(
            waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
        if gone in done:
            await cancel(probe)
            raise BoardError(
                f"node {node} exited with status {gone.result()} before it was ready; {describe()}"
            )
        if probe not in done:
            await cancel(probe)
            break
        try:
            if probe.result():
                return
            last_error = f"application {main_app} not started yet"
        except (DistError, OSError, TimeoutError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        # Pause before the next probe, but notice an exit at once.
        await asyncio.wait({gone}, timeout=min(PROBE_INTERVAL, max(0.0, remaining)))
    raise BoardError(
        f"node {node} did not answer with {main_app} started within {timeout:g}s "
        f"(last: {last_error}); {describe()}"
    )


def tree_command(root: str) -> str:
    """A POSIX shell command listing every file and symlink below ``root`` (see parse_tree).

    Entries that vanish while it runs (a sync still going on) are left out, and nothing but
    entries is printed, whatever the command's stderr is merged into.
    """
    return (
        f'cd "{root}" 2>/dev/null || exit 0; '
        "find . \\( -type f -o -type l \\) 2>/dev/null | sort | while read -r p; do "
        'if [ -L "$p" ]; then t=$(readlink "$p") && printf "%s link:%s\\n" "${p#./}" "$t"; '
        'elif h=$( { sha256sum < "$p"; } 2>/dev/null ); then '
        'printf "%s file:%s\\n" "${p#./}" "${h%% *}"; fi; done'
    )


def parse_tree(output: str) -> dict[str, str]:
    """``tree_command``'s output as {relative path: 'file:<sha256>' | 'link:<target>'}."""
    return dict(line.split(" ", 1) for line in output.splitlines() if " " in line)


async def run_command(
    *argv: str | Path,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    split: bool = False,
) -> str:
    """Run a short command to its end and return its output (stdout and stderr together, or
    with ``split`` stdout alone); with ``check``, a failure raises :class:`BoardError` naming
    the command and what it said (its stderr when ``split``)."""
    proc = await asyncio.create_subprocess_exec(
        *(str(a) for a in argv), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if split else asyncio.subprocess.STDOUT,
        env=None if env is None else dict(env),
    )  # fmt: skip
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:  # e.g. `docker wait` while a boot is watched: end it here
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    if check and proc.returncode != 0:
        said = (err if split else out).decode(errors="replace").strip()
        command = " ".join(str(a) for a in argv)
        raise BoardError(f"`{command}` failed (exit {proc.returncode}): {said}")
    return text
