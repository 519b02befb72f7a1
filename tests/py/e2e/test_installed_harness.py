"""The harness from a wheel, as ``pip install relsync[test]`` gives it: built from this checkout,
installed into a fresh venv outside it, then run from another directory. ``relsync validate``
boots a local board and ``relsync target up`` a docker-otp board, with nothing of the checkout
on the path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from relsync.harness.example import Variant

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
#: What the wheel must carry besides Python code.
SHIPPED = (
    "relsync/erlang/ebin/relsync_target.beam",
    "relsync/erlang/ebin/relsync_upgrade.beam",
    "relsync/harness/bundle/relsyncd/ebin/relsyncd.app",
    "relsync/harness/bundle/relsyncd/src/relsyncd_channel.erl",
    "relsync/harness/bundle/targets/docker-otp/Dockerfile",
    "relsync/harness/bundle/targets/qemu-arm/run.sh",
    "relsync/harness/bundle/scripts/docker-engine.sh",
    "relsync/harness/bundle/examples/demo/src/demo_counter.erl",
)


def run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv outside the checkout with the wheel of this checkout installed: its bin/."""
    work = tmp_path_factory.mktemp("wheel")
    for step in (
        [REPO / "relsyncd" / "build.sh"],  # `make wheel` without its setup step
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work, REPO],
    ):
        built = run(*step, cwd=REPO, timeout=900)
        assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = work.glob("relsync-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in SHIPPED if name not in names]
    assert not missing, f"{wheel.name} lacks {missing}"
    assert not any("/_build/" in name or (name.endswith(".erl") and "/erlang/" in name)
                   for name in names)  # fmt: skip
    venv = work / "venv"
    assert run(sys.executable, "-m", "venv", venv, cwd=work).returncode == 0
    pip = run(venv / "bin" / "python", "-m", "pip", "install", "-q", f"{wheel}[test]", cwd=work,
              timeout=900)  # fmt: skip
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return venv / "bin"


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the checkout's venv or path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO))
    )
    return {**env, **extra}


def test_installed_package_runs_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    where = run(installed / "python", "-c",
                "import relsync, relsync.harness.bundle as b; "
                "print(relsync.__file__); print(b.harness_root())",
                cwd=tmp_path, env=clean_env())  # fmt: skip
    assert where.returncode == 0, where.stderr
    package, root = where.stdout.split()
    assert not package.startswith(str(REPO)) and "site-packages" in package
    assert not root.startswith(str(REPO)) and Path(root, "targets", "docker-otp").is_dir()
    module = run(installed / "python", "-m", "relsync", "--help", cwd=tmp_path, env=clean_env())
    assert module.returncode == 0 and "--destination-node" in module.stdout
    plugin = run(installed / "python", "-m", "pytest", "--help", cwd=tmp_path, env=clean_env())
    assert "--relsync-release" in plugin.stdout  # the pytest plugin's entry point


def test_installed_validate_boots_a_local_board(installed: Path, tmp_path: Path) -> None:
    release = example_release_25()
    out = run(installed / "relsync", "validate", release, cwd=tmp_path, env=clean_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "checks passed" in out.stdout


def test_installed_target_up_boots_a_docker_board(installed: Path, tmp_path: Path) -> None:
    release = example_release_25()
    env = clean_env()
    up = run(installed / "relsync", "target", "up", "docker-otp", "--release", release,
             "--json", "--workdir", tmp_path / "boards", cwd=tmp_path, env=env)  # fmt: skip
    assert up.returncode == 0, up.stderr
    board: dict[str, Any] = json.loads(up.stdout)
    try:
        v2 = Variant(release, tmp_path / "v2").counter_version(2)
        sync = run(installed / "relsync", "-d", board["node"], "--epmd-port",
                   str(board["epmd_port"]), "-p", board["release_path"], "-q", board["rw_path"],
                   "-l", v2.root, "--json", cwd=tmp_path,
                   env=clean_env(RELSYNC_COOKIE=board["cookie"]))  # fmt: skip
        assert sync.returncode == 0, sync.stderr
        assert json.loads(sync.stdout)["boards"][0]["reload"] == ["demo_counter"]
    finally:
        down = run(installed / "relsync", "target", "down", board["id"], cwd=tmp_path, env=env)
    assert down.returncode == 0, down.stderr


def example_release_25() -> Path:
    """The example release built against OTP 25 (what the docker-otp 25 board runs)."""
    out = run(REPO / "targets" / "docker-otp" / "release.sh", "25", cwd=REPO)
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.split()[-1])
