"""The README's promises as properties: random histories on local boards (see
support/board_model.py) and on dev-mode releases run from their project's ``_build``
(support/dev_model.py), every promise checked after every step.

``make test`` runs a few short histories per mode and board kind; ``make soak`` runs many long
ones (``RELSYNC_MODEL_HISTORIES``, ``RELSYNC_MODEL_STEPS``) and prints its figures. A failure
prints its seed: ``RELSYNC_MODEL_SEED=N`` replays that history.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from pathlib import Path

import pytest
from support.board_model import run_history
from support.dev_model import run_dev_history

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HISTORIES = int(os.environ.get("RELSYNC_MODEL_HISTORIES", "1"))
STEPS = int(os.environ.get("RELSYNC_MODEL_STEPS", "10"))
#: A dev-mode step builds the project (rebar3, seconds): fewer of them.
DEV_STEPS = max(1, STEPS // 2)


def _seeds(mode: str, kind: str) -> list[int]:
    if seed := os.environ.get("RELSYNC_MODEL_SEED"):
        return [int(seed)]
    base = zlib.crc32(f"{mode}/{kind}".encode())  # fixed in CI: the same histories every run
    return [base + i for i in range(HISTORIES)]


@pytest.mark.timeout(600 + 60 * HISTORIES * STEPS)
@pytest.mark.parametrize("kind", ["shadow", "in_place"])
def test_random_histories_keep_every_promise(
    demo_release: Path, tmp_path: Path, mode: str, kind: str
) -> None:
    steps = 0
    for seed in _seeds(mode, kind):
        history = asyncio.run(
            run_history(seed, mode, kind == "in_place", demo_release, tmp_path / str(seed), STEPS)
        )
        steps += len(history.steps)
    print(f"model {mode}/{kind}: {HISTORIES} histories, {steps} steps, 0 failures")


@pytest.mark.timeout(600 + 60 * HISTORIES * STEPS)
def test_random_dev_mode_histories_keep_every_promise(tmp_path: Path, mode: str) -> None:
    steps = 0
    for seed in _seeds(mode, "dev"):
        history = asyncio.run(run_dev_history(seed, mode, tmp_path / str(seed), DEV_STEPS))
        steps += len(history.steps)
    print(f"model {mode}/dev: {HISTORIES} histories, {steps} steps, 0 failures")
