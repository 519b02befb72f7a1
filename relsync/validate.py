"""``relsync validate RELEASE [--target local|docker-otp|qemu-arm]``: check a release on an
emulated board before flashing it.

Runs the checks of :mod:`relsync.harness.checks` (pytest, in this process, with the ``relsync``
plugin's options): the board boots the release read-only, a rebuilt copy syncs and loads, a
reboot comes back on the untouched release. pytest's output shows each check and the report;
the last line is a one-line summary. Exit codes: 0 every check passed, 1 a check failed, 2 bad
input (or pytest missing).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from relsync.errors import UsageError
from relsync.harness import progress
from relsync.harness.kinds import BOARD_OPTIONS, check_release
from relsync.harness.local import read_release_info
from relsync.harness.ready import BoardError

PLUGIN = "relsync.harness.pytest_plugin"
CHECKS = "relsync.harness.checks"


class _Outcomes:
    """A pytest plugin that counts the checks' outcomes and keeps the first failure."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" and report.passed:
            self.passed += 1
        elif report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            message = str(crash.message if crash is not None else report.longrepr).strip()
            name = report.nodeid.rsplit("::", 1)[-1]
            self.failed.append(f"{name}: {message.splitlines()[0] if message else '?'}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relsync validate",
        description="Boot RELEASE on an emulated board, sync a rebuilt copy, reboot, check.",
    )
    parser.add_argument("release", type=Path, help="the built release, e.g. _build/prod/rel/app")
    for name, kwargs in BOARD_OPTIONS.items():
        parser.add_argument(f"--{name}", **kwargs)
    parser.add_argument("-v", "--verbose", action="store_true", help="pytest's verbose output")
    return parser


def main(argv: list[str]) -> int:
    """``relsync validate`` with ``argv`` (the arguments after ``validate``); the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error, already printed
        return 0 if exc.code == 0 else 2
    release = args.release.resolve()
    try:
        info = read_release_info(release)
    except BoardError as exc:
        print(f"relsync validate: {exc}; give the built release directory, e.g. "
              "_build/prod/rel/myapp", file=sys.stderr)  # fmt: skip
        return 2
    try:
        check_release(args.target, release, args.otp)
    except UsageError as exc:  # said once, before any board boots
        print(f"relsync validate: {exc}", file=sys.stderr)
        return 2
    try:
        import pytest
    except ImportError:
        print("relsync validate: needs pytest: pip install 'relsync[test]'", file=sys.stderr)
        return 2
    progress.use_terminal()  # the boards' progress line, past pytest's capture
    outcomes = _Outcomes()
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="relsync-validate-")
    ini = Path(tmp) / "pytest.ini"  # not the caller's project configuration
    ini.write_text("[pytest]\n")
    pytest_args = [
        "-c", str(ini), "--rootdir", tmp, "-p", "no:cacheprovider",
        "-p", "no:relsync",  # the entry point; the plugin module is passed below instead
        "-W", "ignore::pytest.PytestAssertRewriteWarning",  # relsync is imported already
        "--basetemp", str(Path(tmp) / "t"), "-v" if args.verbose else "-q", "-rN",
        "-m", "e2e", "--pyargs", CHECKS,
        f"--relsync-release={release}", f"--relsync-target={args.target}",
        f"--relsync-mode={args.mode}",
        *([f"--relsync-otp={args.otp}"] if args.otp else []),
        *(f"--relsync-env={pair}" for pair in args.env),
    ]  # fmt: skip
    plugin = __import__(PLUGIN, fromlist=["_"])
    code = pytest.main(pytest_args, plugins=[plugin, outcomes])
    seconds = time.monotonic() - started
    what = f"{info.name} {info.version} on {args.target} ({args.mode})"
    total = outcomes.passed + len(outcomes.failed)
    if code == 0 and not outcomes.failed and outcomes.passed:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"relsync validate: {what}: all {total} checks passed in {seconds:.0f} s")
        return 0
    first = outcomes.failed[0] if outcomes.failed else f"pytest exited {int(code)}"
    print(f"relsync validate: {what}: FAILED {len(outcomes.failed)} of {total} checks "
          f"({first}); board files and console log kept in {tmp}", file=sys.stderr)  # fmt: skip
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
