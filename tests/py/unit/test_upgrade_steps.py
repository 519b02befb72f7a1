"""Upgrade steps from real beams (as erlc and beam_lib:strip leave them), load order, and the
rollback plan of a shadow tree."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from relsync.beam import BeamFacts, facts
from relsync.errors import UsageError
from relsync.plan import SyncPlan, TargetState
from relsync.release import FileKind, LocalFile, LocalRelease
from relsync.rollback import plan_rollback, shadow_changes
from relsync.target import RemoteFile, RemoteLink
from relsync.upgrade import app_data, appup_steps, change_of, generated_steps, load_order

SOURCES = {
    "s_sup": "-module(s_sup).\n-behaviour(supervisor).\n-export([start_link/0, init/1]).\n"
    "start_link() -> supervisor:start_link(?MODULE, []).\ninit([]) -> {ok, {#{}, []}}.\n",
    "s_srv": "-module(s_srv).\n-behaviour(gen_server).\n"
    "-export([init/1, handle_call/3, handle_cast/2, code_change/3, go/0]).\n"
    "go() -> s_lib:f().\ninit(_) -> {ok, 0}.\nhandle_call(_, _, S) -> {reply, ok, S}.\n"
    "handle_cast(_, S) -> {noreply, S}.\ncode_change(_, S, _) -> {ok, S}.\n",
    "s_fsm": "-module(s_fsm).\n-export([code_change/4, go/0]).\ngo() -> s_srv:go().\n"
    "code_change(_, St, D, _) -> {ok, St, D}.\n",
    "s_lib": "-module(s_lib).\n-export([f/0]).\nf() -> lists:sum([1]).\n",
    # A proc_lib special process: sys calls its system_code_change/4.
    "s_special": "-module(s_special).\n-export([system_code_change/4]).\n"
    "system_code_change(S, _, _, _) -> {ok, S}.\n",
}


@pytest.fixture(scope="module")
def beams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("beams")
    for module, source in SOURCES.items():
        (out / f"{module}.erl").write_text(source)
        subprocess.run(["erlc", "-o", str(out), str(out / f"{module}.erl")], check=True)
    return {m: out / f"{m}.beam" for m in SOURCES}


def strip(path: Path, to: Path) -> Path:
    """A copy of ``path`` as a production build leaves it (beam_lib:strip: gzipped, no Attr)."""
    to.write_bytes(path.read_bytes())
    subprocess.run(
        ["erl", "-noshell", "-eval",
         f'{{ok, _}} = beam_lib:strip("{to}"), halt().'], check=True,
    )  # fmt: skip
    return to


def test_each_module_is_judged_from_its_beam(beams: dict[str, Path], tmp_path: Path) -> None:
    judged = {m: change_of(facts(p.read_bytes())) for m, p in beams.items()}
    assert judged == {
        "s_sup": "supervisor",
        "s_srv": "advanced",
        "s_fsm": "advanced",
        "s_lib": "",
        "s_special": "advanced",
    }
    # Stripped: no -behaviour left, the same verdicts from exports and imports alone.
    stripped = {m: facts(strip(p, tmp_path / p.name).read_bytes()) for m, p in beams.items()}
    assert all(not f.behaviours for f in stripped.values())
    assert {m: change_of(f) for m, f in stripped.items()} == judged
    assert stripped["s_srv"].calls == {"s_lib"}


def test_callees_load_first_and_cycles_do_not_hang() -> None:
    def beam(module: str, *calls: str) -> BeamFacts:
        return BeamFacts(module, frozenset(), frozenset(calls), frozenset())

    chain = {"a": beam("a", "b"), "b": beam("b", "c"), "c": beam("c"), "z": beam("z")}
    assert load_order(chain) == ["c", "b", "a", "z"]
    cycle = {"x": beam("x", "y"), "y": beam("y", "x"), "w": beam("w", "x")}
    order = load_order(cycle)
    assert sorted(order) == ["w", "x", "y"] and order.index("x") < order.index("w")


def test_steps_add_first_then_in_call_order_then_deletes(beams: dict[str, Path]) -> None:
    release = LocalRelease(root=Path("/tmp/rel"), name="r", version="1")
    for module, path in beams.items():
        rel = f"lib/s-1/ebin/{module}.beam"
        release.files[rel] = LocalFile(rel, str(path), 1, 0o644, b"x", FileKind.BEAM)
    plan = SyncPlan(root="/srv/erlang")
    plan.reload = [(m, f"/srv/erlang/lib/s-1/ebin/{m}.beam", b"x") for m in sorted(beams)]
    plan.new_modules = ["s_sup"]
    plan.purge = ["s_old"]
    steps = generated_steps(plan, release)
    assert [s.appup() for s in steps] == [
        "{add_module, s_sup}",
        "{load_module, s_lib}",
        "{update, s_special, {advanced, []}}",
        "{update, s_srv, {advanced, []}}",
        "{update, s_fsm, {advanced, []}}",
        "{delete_module, s_old}",
    ]


def test_app_data_names_the_app_files_of_the_changed_applications() -> None:
    """The .app of an application whose modules load (even when its files were written by a
    sync killed before) and of one whose .app changes, with the release's sys.config."""
    release = LocalRelease(root=Path("/tmp/rel"), name="r", version="2")
    for rel in ("lib/a-2/ebin/a.app", "lib/b-1/ebin/b.app", "lib/c-1/ebin/c.app",
                "releases/2/sys.config"):  # fmt: skip
        release.files[rel] = LocalFile(rel, rel, 1, 0o644, b"x", FileKind.OTHER)
    plan = SyncPlan(root="/srv/erlang/")
    plan.reload = [("a_mod", "/srv/erlang/lib/a-2/ebin/a_mod.beam", b"x")]
    plan.changed = ["lib/b-1/ebin/b.app"]
    assert app_data(plan, release.files, release.version) == (
        ["/srv/erlang/lib/a-2/ebin/a.app", "/srv/erlang/lib/b-1/ebin/b.app"],
        "/srv/erlang/releases/2/sys.config",
    )
    assert app_data(SyncPlan(root="/srv/erlang"), {}, "2") == ([], None)


def _file(rel: str, content: str) -> RemoteFile:
    return RemoteFile(rel, len(content), 0o644, hashlib.sha256(content.encode()).digest())


def test_rollback_plan_reloads_the_release_and_purges_the_shadow_only_modules() -> None:
    dest, rw = "/srv/erlang", "/data/relsync"
    ebin = "lib/demo-0.1.0/ebin"
    original = {
        f"{ebin}/a.beam": _file(f"{ebin}/a.beam", "a1"),
        f"{ebin}/b.beam": _file(f"{ebin}/b.beam", "b1"),
        f"{ebin}/gone.beam": _file(f"{ebin}/gone.beam", "g1"),
    }
    shadow = {
        f"{ebin}/a.beam": _file(f"{ebin}/a.beam", "a2"),  # changed
        f"{ebin}/b.beam": RemoteLink(f"{ebin}/b.beam", f"{dest}/{ebin}/b.beam"),
        f"{ebin}/new.beam": _file(f"{ebin}/new.beam", "n1"),
        "lib/extra-1/ebin/x.beam": _file("lib/extra-1/ebin/x.beam", "x1"),
    }
    # The code path runs an excluded system library through the tree's link to it: it stays.
    kernel = f"{rw}/lib/kernel-8.5/ebin"
    state = TargetState(
        dest, rw, original, shadow, shadow_active=True,
        excluded_dirs=("lib/kernel-8.5",), code_path=(kernel, f"{rw}/{ebin}"),
    )  # fmt: skip
    changes = shadow_changes(state)
    assert (sorted(changes.changed), changes.added, sorted(changes.deleted)) == (
        ["a"], ["new", "x"], ["gone"],
    )  # fmt: skip
    plan = plan_rollback(state)
    assert [m for m, _, _ in plan.reload] == ["a", "gone"]
    assert plan.reload[0][1] == f"{dest}/{ebin}/a.beam"
    assert plan.new_modules == ["gone"] and plan.purge == ["new", "x"]
    assert plan.code_path_replace == [(rw, dest)]
    assert plan.code_path_remove == [f"{dest}/lib/extra-1/ebin"]


# ----------------------------------------------------------------------------------------------
# Reading the user's appup, as systools reads it

APPUP_REL = "lib/demo-0.2.0/ebin/demo.appup"
M_PATH = "/srv/erlang/lib/demo-0.2.0/ebin/m.beam"


def _appup_steps(tmp_path: Path, text: str, *, down: bool = False) -> list[str]:
    """The steps a sync from demo 0.1.0 on the board to 0.2.0 takes from an appup ``text``."""
    appup = tmp_path / "demo.appup"
    appup.write_text(text, encoding="utf-8")
    release = LocalRelease(root=tmp_path, name="demo", version="0.2.0")
    release.files[APPUP_REL] = LocalFile(APPUP_REL, str(appup), 1, 0o644, b"x", FileKind.OTHER)
    board = {"lib/demo-0.1.0/ebin/m.beam": _file("lib/demo-0.1.0/ebin/m.beam", "m1")}
    plan = SyncPlan(root="/srv/erlang")
    plan.reload = [("m", M_PATH, b"x")]
    state = TargetState("/srv/erlang", None, dict(board))
    return [s.appup() for s in appup_steps(plan, release, state, down=down)]


def test_an_appup_is_its_first_term_as_systools_reads_it(tmp_path: Path) -> None:
    current = '{"0.2.0", [{"0.1.0", [{load_module, m}]}], [{"0.1.0", [{update, m, soft}]}]}.\n'
    history = '%% the entry before, kept for the record\n{"0.1.0", [{"0.0.9", []}], []}.\n'
    assert _appup_steps(tmp_path, current + history) == ["{load_module, m}"]
    assert _appup_steps(tmp_path, current + history, down=True) == ["{update, m, soft}"]


def test_a_version_regex_matches_as_systools_matches_it(tmp_path: Path) -> None:
    # systools takes an entry when the regex's first match is the whole version: "0" is the
    # first match of <<"0|0\\.1\\.0">> in "0.1.0", so that entry is passed over.
    found = subprocess.run(
        ["erl", "-noshell", "-eval",
         'io:format("~p", [[systools_relup:appup_search_for_version("0.1.0", [{R, [x]}])'
         ' || R <- [<<"0|0\\\\.1\\\\.0">>, <<"0\\\\.1\\\\..*">>, <<"1">>]]]), halt().'],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert found == "[error,{ok,[x]},error]"
    for regex, steps in (
        (r"0|0\\.1\\.0", []),
        (r"0\\.1\\..*", ["{load_module, m}"]),
        ("1", []),
    ):
        appup = f'{{"0.2.0", [{{<<"{regex}">>, [{{load_module, m}}]}}], []}}.'
        assert _appup_steps(tmp_path, appup) == steps, regex


@pytest.mark.parametrize(
    ("instruction", "step"),
    [
        ("{update, m}", "{update, m, soft}"),
        ("{update, m, [n]}", "{update, m, soft}"),
        ("{update, m, supervisor}", "{update, m, supervisor}"),
        ("{update, m, {advanced, x}, [n]}", "{update, m, {advanced, x}}"),
        ("{update, m, {advanced, x}, brutal_purge, brutal_purge, []}",
         "{update, m, {advanced, x}}"),
        ("{update, m, 5000, {advanced, x}, brutal_purge, brutal_purge, []}",
         "{update, m, {advanced, x}}"),
        ("{update, m, static, default, {advanced, x}, brutal_purge, brutal_purge, []}",
         "{update, m, {advanced, x}}"),
        ("{update, m, dynamic, infinity, soft, brutal_purge, brutal_purge, []}",
         "{update, m, soft}"),
    ],
)  # fmt: skip
def test_every_update_form_of_appup_4_keeps_its_change(
    tmp_path: Path, instruction: str, step: str
) -> None:
    appup = f'{{"0.2.0", [{{"0.1.0", [{instruction}]}}], []}}.'
    assert _appup_steps(tmp_path, appup) == [step]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"0.2.0", [{<<"0.1.(">>, []}], []}.', '<<"0.1.(">> is not a valid version regex'),
        ('{"0.2.0", [{"0.1.0", {load_module, m}}], []}.', "{load_module,m}} is not {"),
        ('{"0.2.0", [], [{"0.1.0", load_module}]}.', '{"0.1.0",load_module} is not {'),
        ('{"0.2.0", [{"0.1.0"}], []}.', '{"0.1.0"} is not {'),
        ("{\"0.2.0\", [{'0.1.0', []}], []}.", "{'0.1.0',[]} is not {"),
        ('{"0.2.0", up, []}.', "up is not a list of {Vsn, [Instruction]}"),
        ("{" * 10_000 + "}" * 10_000 + ".", "nested deeper than 100 levels"),
        ('{"0.2.0", [{"0.1.0", [?MOD]}], []}.', "line 1: '?' is not a term"),
    ],
)
def test_an_appup_relsync_cannot_follow_is_a_usage_error_naming_it(
    tmp_path: Path, text: str, words: str
) -> None:
    with pytest.raises(UsageError) as caught:
        _appup_steps(tmp_path, text)
    message = str(caught.value)
    assert APPUP_REL in message and words in message and "\n" not in message, message
