"""What ``--watch`` counts as a save and how a round names what it reloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from relsync.engine import SyncReport
from relsync.plan import SyncPlan
from relsync.target import ModuleResult
from relsync.watch import is_source_change, round_line

ROOT = Path("/p")


@pytest.mark.parametrize(
    "name",
    ["lib/myex/sed9bvZPU", "src/.#demo.erl", "src/demo.erl~", "src/4913", "src/#demo.erl#",
     "src/.demo.erl.swp", "src/demo.erl___jb_tmp___", "_build/default/lib/demo/ebin/demo.beam"],
)  # fmt: skip
def test_editor_and_sed_temporaries_are_no_saves(name: str) -> None:
    assert not is_source_change(ROOT, f"/p/{name}")


@pytest.mark.parametrize("name", ["src/demo.erl", "lib/myex/counter.ex", "rebar.config", "src"])
def test_sources_are_saves(name: str) -> None:
    assert is_source_change(ROOT, f"/p/{name}")


def test_a_round_names_elixir_modules_as_elixir_does() -> None:
    report = SyncReport("myex@host", SyncPlan(root="/srv"), [])
    report.modules = [ModuleResult("Elixir.Myex.Counter", "loaded")]
    line = round_line("lib/myex/counter.ex changed", [report], 0.5)
    assert "reloaded Myex.Counter" in line and "Elixir." not in line
