"""What a person and ``--json`` are told about files that went as a block delta."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path
from typing import cast

import pytest

from relsync.cli import main
from relsync.engine import SyncOptions, SyncReport, switch_code
from relsync.erldist.errors import BadRpc
from relsync.erldist.etf import Atom
from relsync.errors import ExitCode
from relsync.plan import SyncPlan
from relsync.report import as_dict, print_json, print_summary, print_table
from relsync.rollback import ShadowChanges
from relsync.status import BoardStatus, print_status
from relsync.target import FilePut, ModuleResult, Target

BIG = "/data/relsync/lib/demo-1/priv/big.bin"


def _report(deltas: list[str], sent: int) -> SyncReport:
    plan = SyncPlan(root="/data/relsync", changed=["lib/demo-1/priv/big.bin"])
    plan.writes.append(FilePut(BIG, "/tmp/big.bin", 10_000_000, 0o644, b"h" * 32, "/srv/big"))
    return SyncReport("demo@192.0.2.7", plan, [], bytes_sent=sent, deltas=deltas)


def test_summary_and_json_name_the_block_deltas() -> None:
    out = io.StringIO()
    print_summary(_report([BIG], 16_700), out=out)
    assert "1 changed, 0 deleted; 10.0 MB to send, 16.7 kB sent (1 as block deltas)\n" in (
        out.getvalue()
    )
    assert as_dict(_report([BIG], 16_700))["delta"] == ["lib/demo-1/priv/big.bin"]  # relative


def test_a_whole_file_is_no_delta() -> None:
    out = io.StringIO()
    print_summary(_report([], 10_000_000), out=out)
    assert "10.0 MB to send, 10.0 MB sent\n" in out.getvalue()
    assert as_dict(_report([], 10_000_000))["delta"] == []


def test_json_has_one_shape_for_one_board_many_and_none() -> None:
    one, many, none = io.StringIO(), io.StringIO(), io.StringIO()
    ok = _report([], 10)
    failed = SyncReport("other@192.0.2.8", SyncPlan(root="/data/relsync"), [])
    failed.error, failed.exit_code = "could not connect", ExitCode.CONNECT
    print_json([ok], one)
    print_json([ok, failed], many)
    print_json([], none, error="no release found", exit_code=2)
    shapes = [json.loads(out.getvalue()) for out in (one, many, none)]
    assert [sorted(s) for s in shapes] == [["boards", "error", "exit_code", "ok"]] * 3
    assert shapes[0]["ok"] is True and shapes[0]["error"] is None
    assert shapes[0]["boards"][0]["written"] == ["lib/demo-1/priv/big.bin"]  # relative
    assert shapes[1]["ok"] is False and shapes[1]["exit_code"] == int(ExitCode.CONNECT)
    assert shapes[1]["error"] == "other@192.0.2.8: could not connect"
    assert shapes[2] == {"ok": False, "exit_code": 2, "error": "no release found", "boards": []}


def test_json_on_bad_input_is_an_object_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--json", "-d", "demo@127.0.0.1", "-l", str(tmp_path / "nowhere")])
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("relsync: error: ") and err.count("\n") == 1
    result = json.loads(out)
    assert result["ok"] is False and result["exit_code"] == 2 and result["boards"] == []
    assert "nowhere" in result["error"]


def test_elixir_modules_are_named_as_elixir_writes_them() -> None:
    report = SyncReport("myex@host", SyncPlan(root="/srv/erlang"), [])
    report.modules = [ModuleResult("Elixir.Myex.Counter", "loaded"), ModuleResult("demo", "loaded"),
                      ModuleResult("Elixir.Myex.Greet", "error", detail="badfile")]  # fmt: skip
    out = io.StringIO()
    print_summary(report, out=out)
    assert "  reloaded: Myex.Counter, demo\n" in out.getvalue()
    assert "  FAILED to load: Myex.Greet\n    Myex.Greet: badfile\n" in out.getvalue()
    assert as_dict(report)["modules"][0]["module"] == "Elixir.Myex.Counter"  # the atom, for tools


def test_elixir_names_in_warnings_errors_and_status_are_elixir_s_too() -> None:
    """Registered names and module atoms in any human line, not in paths nor --json (issue
    32)."""
    proc = "<0.977.0> 'Elixir.Myex.Loop'"
    report = SyncReport("myex@host", SyncPlan(root="/srv/erlang"), [])
    report.plan.added = ["lib/myex-1/ebin/Elixir.Myex.Loop.beam"]
    report.warnings = [f"{proc} still runs the old code of Elixir.Myex.Loop"]
    report.error = "Elixir.Myex.Old is no longer in the release."
    out = io.StringIO()
    print_summary(report, verbose=True, out=out)
    text = out.getvalue()
    assert "warning: <0.977.0> Myex.Loop still runs the old code of Myex.Loop\n" in text
    assert "error: Myex.Old is no longer in the release.\n" in text
    assert "ebin/Elixir.Myex.Loop.beam" in text and text.count("Elixir.") == 1
    assert as_dict(report)["warnings"] == report.warnings  # the atoms, for tools
    table = io.StringIO()
    print_table([report, report], verbose=True, out=table)
    assert "Elixir." not in table.getvalue()
    status = BoardStatus("myex@host", "/srv", None, False, None, [], SyncPlan(root="/srv"),
                         [ModuleResult("Elixir.Myex.Loop", "old_code", (proc,))], [])  # fmt: skip
    shown = io.StringIO()
    print_status(status, shown)
    assert "old code of Myex.Loop still runs in <0.977.0> Myex.Loop\n" in shown.getvalue()


def _summary(report: SyncReport, *, verbose: bool = False) -> str:
    out = io.StringIO()
    print_summary(report, out=out, verbose=verbose)
    return out.getvalue()


def test_a_dry_run_says_no_time_and_a_rollback_no_files_line() -> None:
    dry = _report([], 0)
    dry.dry_run = True
    assert _summary(dry).startswith("relsync: would sync demo@192.0.2.7 -> /data/relsync\n")
    back = SyncReport("demo@192.0.2.7", SyncPlan(root="/srv/erlang"), [], action="rollback")
    back.plan.code_path_replace = [("/data/relsync", "/srv/erlang")]
    text = _summary(back)
    assert text.startswith("relsync: rolled back demo@192.0.2.7 in ") and "files:" not in text


def test_nothing_to_roll_back_is_not_rolled_back() -> None:
    report = SyncReport("demo@192.0.2.7", SyncPlan(root="/srv/erlang"), [], action="rollback")
    report.warnings.append(
        "nothing to roll back: demo@192.0.2.7 runs the release at /srv/erlang, not a shadow tree"
    )
    text = _summary(report)
    assert "rolled back" not in text and text.count("nothing to roll back") == 1, text
    assert "runs the release at /srv/erlang, not a shadow tree" in text


def test_md5_is_not_blamed_on_a_board_without_crypto() -> None:
    report = _report([], 10)
    report.hash = "md5"
    text = _summary(report, verbose=True)
    assert "files compared by md5" in text and "has no crypto" not in text


def test_exit_6_has_an_error_in_json() -> None:
    report = _report([], 10)
    report.modules = [ModuleResult("Elixir.Myex.Conn", "loaded", ("<0.90.0>", "<0.91.0>"))]
    nothing_to_call = cast(Target, None)  # the plan loads nothing and keeps the code path
    asyncio.run(switch_code(nothing_to_call, SyncOptions(dest_path="/srv/erlang"), report))
    assert report.exit_code == ExitCode.RELOAD
    assert report.error is not None and "Myex.Conn still runs in 2 processes" in report.error
    assert as_dict(report)["error"] == report.error


def test_status_names_elixir_modules_and_counts_in_words() -> None:
    pristine = ShadowChanges({"Elixir.Myex.Counter": ("/srv/x.beam", b"")}, [], {})
    status = BoardStatus("myex@host", "/srv/erlang", "/data/relsync", True, pristine,
                         ["Elixir.Myex.Greet"], SyncPlan(root="/data/relsync"),
                         [ModuleResult("Elixir.Myex.Conn", "not_purged", ("<0.90.0>",))],
                         [])  # fmt: skip
    out = io.StringIO()
    print_status(status, out)
    text = out.getvalue()
    assert "1 module changed" in text and "changed: Myex.Counter" in text
    assert "Myex.Greet" in text and "old code of Myex.Conn" in text and "Elixir." not in text


def test_a_bad_rpc_leaves_the_command_line_to_mention_v() -> None:
    error = BadRpc("b@h", "m:f/0", (Atom("EXIT"), (Atom("badarg"), [(Atom("m"), Atom("f"), 0)])))
    assert "-v" not in str(error) and "badarg in m:f/0" in str(error)


def test_on_a_terminal_the_error_is_printed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On stderr only, not again in the summary (issue 32); redirected, in both."""
    import relsync.cli

    report = SyncReport("a@127.0.0.1", SyncPlan(root="/d"), [])
    report.error, report.exit_code = "the old code of demo still runs", ExitCode.RELOAD

    async def run(*_: object) -> list[SyncReport]:
        return [report]

    monkeypatch.setattr(relsync.cli, "run", run)
    monkeypatch.chdir(tmp_path)
    assert main(["-d", "a@127.0.0.1"]) == 6
    out, err = capsys.readouterr()
    assert "still runs" in out and "still runs" in err  # a log of stdout has it too
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["-d", "a@127.0.0.1"]) == 6
    out, err = capsys.readouterr()
    assert "still runs" not in out and err.count("still runs") == 1
