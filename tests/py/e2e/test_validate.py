"""``relsync validate RELEASE --target KIND``: the one-command check of a user's release, run as
a user would (a subprocess), on every board kind; a broken release fails with the board's
console attached, bad input is one line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from support.stock_projects import mix_release, rebar3_release

from relsync.harness.example import Variant
from relsync.harness.kinds import example_release

pytestmark = pytest.mark.e2e

#: Booting, syncing and rebooting qemu-arm twice takes a few minutes on emulated ARM.
TIMEOUT = 900


def validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relsync.cli", "validate", *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "kind", ["local", "docker-otp-27", pytest.param("qemu-arm", marks=pytest.mark.arm)]
)
@pytest.mark.timeout(TIMEOUT)
def test_validate_passes_on_a_good_release(kind: str) -> None:
    release = asyncio.run(example_release(kind))
    target = kind.removesuffix("-27")
    done = validate(str(release), "--target", target)
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith(f"relsync validate: demo 0.1.0 on {target} (erl): all 4 checks"), last
    assert "relsync report" in done.stdout
    assert "reboot: back on the untouched release" in done.stdout


@pytest.mark.parametrize(
    ("tool", "kind"), [("rebar3", "local"), ("rebar3", "docker-otp"), ("mix", "local"),
                       ("mix", "docker-otp")],
)  # fmt: skip
@pytest.mark.timeout(TIMEOUT)
def test_validate_passes_on_a_stock_project(tool: str, kind: str, tmp_path: Path) -> None:
    """Releases of unedited ``rebar3 new release`` and ``mix new --sup`` projects: their own
    node names and cookies (vm.args ``-sname myapp``; mix's), rebar3's dev-mode release on the
    local board (applications linked into the project), ``rebar3 as prod release`` on docker-otp
    (with this machine's ERTS: the OTP 25 board), mix's ``bin/myex start``."""
    if tool == "rebar3":
        profile = [] if kind == "local" else ["prod"]
        project = rebar3_release(tmp_path, *profile)
        release = project / "_build" / (profile or ["default"])[0] / "rel" / "myapp"
    else:
        release = mix_release(tmp_path) / "_build" / "prod" / "rel" / "myex"
    done = validate(str(release), "--target", kind)
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith(f"relsync validate: {release.name} 0.1.0 on {kind} (erl): all 4"), last


@pytest.mark.timeout(TIMEOUT)
def test_validate_fails_on_a_release_that_does_not_start(tmp_path: Path) -> None:
    release = asyncio.run(example_release("local"))
    broken = Variant(release, tmp_path / "broken").compile(
        "demo_app",
        "-module(demo_app).\n-behaviour(application).\n-export([start/2, stop/1]).\n"
        "start(_, _) -> {error, relsync_validate_broken}.\nstop(_) -> ok.\n",
    )
    done = validate(str(broken.root), "--target", "local")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED" in done.stderr.strip().splitlines()[-1]
    # What a person needs to see why: the board's console, with the application's own error.
    assert "relsync_validate_broken" in done.stdout


def test_validate_refuses_what_is_not_a_release(tmp_path: Path) -> None:
    done = validate(str(tmp_path), "--target", "local")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "not a release" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("otp", ["27"])
def test_validate_refuses_another_otp_once_before_booting(otp: str) -> None:
    release = asyncio.run(example_release("local"))  # this machine's OTP 25
    done = validate(str(release), "--target", "docker-otp", "--otp", otp)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "rebuild the release with OTP 27" in done.stderr
    assert done.stdout == ""  # no check ran: no board booted
