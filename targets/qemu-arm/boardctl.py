"""Helper of run.sh for a qemu-arm board: QMP, the console, and the node (through relsync's own
distribution client). Run with the repo's venv: .venv/bin/python targets/qemu-arm/boardctl.py ...

    free-ports N                      N free TCP ports on 127.0.0.1, one a line
    qmp SOCK COMMAND                  run a QMP command (system_reset, quit, query-status)
    console SOCK TEXT                 write TEXT to the serial console (a shell runs there)
    wait NODE COOKIE EPMD_PORT [--timeout S] [--call M:F] [--log FILE --after BYTES [--marker T]]
                                      until M:F() answers (default demo_counter:version); with
                                      --log, first until FILE has T (default: the initramfs'
                                      boot line) after offset BYTES
    sh NODE COOKIE EPMD_PORT CMD      os:cmd(CMD) on the board; prints its output
    spawn-sh NODE COOKIE EPMD_PORT CMD
                                      erlang:spawn(os, cmd, [CMD]) and disconnect at once (for
                                      reboot/poweroff: the call returns before the board goes)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import time

from relsync.erldist.etf import Atom, Charlist, Term
from relsync.erldist.node import call_once, connect

BOOT_MARKER = b"relsync-initramfs: loading modules"


def free_ports(count: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def qmp(path: str, command: str) -> object:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        f = s.makefile("rwb")

        def send(cmd: dict[str, object]) -> object:
            f.write(json.dumps(cmd).encode() + b"\n")
            f.flush()
            while True:
                line = f.readline()
                if not line:
                    return None  # QEMU went away (quit)
                reply = json.loads(line)
                if "return" in reply or "error" in reply:
                    return reply
                # an asynchronous event: keep reading

        f.readline()  # greeting
        send({"execute": "qmp_capabilities"})
        return send({"execute": command})


def console(path: str, text: str) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(text.encode())
        time.sleep(0.3)


def _marker_seen(log: str, after: int, marker: bytes) -> bool:
    try:
        with open(log, "rb") as f:
            f.seek(after)
            return marker in f.read()
    except OSError:
        return False


async def wait(args: argparse.Namespace) -> int:
    start = time.monotonic()
    deadline = start + args.timeout
    module, _, function = args.call.partition(":")
    if args.log:
        marker = args.marker.encode()
        while not _marker_seen(args.log, args.after, marker):
            if time.monotonic() > deadline:
                print(
                    f"boardctl: no {args.marker!r} in {args.log} after {args.timeout:g} s",
                    file=sys.stderr,
                )
                return 1
            await asyncio.sleep(0.1)
    last = ""
    while time.monotonic() < deadline:
        try:
            # Short timeouts: slirp accepts a TCP connection before the guest listens.
            result = await call_once(
                args.node, args.cookie, args.epmd_port, (module, function, []),
                connect_timeout=2.0, timeout=5.0,
            )  # fmt: skip
            print(f"{time.monotonic() - start:.1f} {result!r}")
            return 0
        except Exception as exc:  # every failure means "not yet"
            last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.3)
    print(
        f"boardctl: {args.node} did not answer {args.call} in {args.timeout:g} s ({last})",
        file=sys.stderr,
    )
    return 1


async def sh(args: argparse.Namespace, *, spawn: bool) -> int:
    try:
        conn = await connect(args.node, cookie=args.cookie, epmd_port=args.epmd_port, timeout=5.0)
    except Exception as exc:
        print(f"boardctl: cannot connect to {args.node}: {exc}", file=sys.stderr)
        return 2  # nothing was sent: the caller may use the console instead
    try:
        if spawn:
            # A short delay in the guest lets the call's reply out before a reboot or a kill
            # of the node cuts the link. Once sent, the command is never sent again.
            line = Charlist(f"sleep 0.3; {args.command}")
            cmd: list[Term] = [Atom("os"), Atom("cmd"), [line]]
            try:
                await conn.call("erlang", "spawn", cmd, timeout=5.0)
            except Exception as exc:
                print(f"boardctl: sent, but no reply ({exc})", file=sys.stderr)
        else:
            out = await conn.call("os", "cmd", [Charlist(args.command)], timeout=args.timeout)
            # A string (STRING_EXT) decodes as a Charlist; a long or empty one as a list.
            text = out if isinstance(out, str) else "".join(map(chr, out))  # type: ignore[arg-type]
            sys.stdout.write(text)
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="boardctl.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    fp = sub.add_parser("free-ports")
    fp.add_argument("count", type=int)
    q = sub.add_parser("qmp")
    q.add_argument("sock")
    q.add_argument("command")
    c = sub.add_parser("console")
    c.add_argument("sock")
    c.add_argument("text")
    for name in ("wait", "sh", "spawn-sh"):
        s = sub.add_parser(name)
        s.add_argument("node")
        s.add_argument("cookie")
        s.add_argument("epmd_port", type=int)
        if name == "wait":
            s.add_argument("--timeout", type=float, default=90.0)
            s.add_argument("--call", default="demo_counter:version")
            s.add_argument("--log")
            s.add_argument("--after", type=int, default=0)
            s.add_argument("--marker", default=BOOT_MARKER.decode())
        else:
            s.add_argument("command")
            s.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    if args.cmd == "free-ports":
        print("\n".join(map(str, free_ports(args.count))))
        return 0
    if args.cmd == "qmp":
        print(json.dumps(qmp(args.sock, args.command)))
        return 0
    if args.cmd == "console":
        console(args.sock, args.text.encode().decode("unicode_escape"))
        return 0
    if args.cmd == "wait":
        return asyncio.run(wait(args))
    return asyncio.run(sh(args, spawn=args.cmd == "spawn-sh"))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
