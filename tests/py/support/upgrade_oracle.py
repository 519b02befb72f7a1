"""The upgrade oracle: a scenario release at v1 and v2, upgraded once by OTP's own
release_handler (a relup from ``systools:make_relup``, a tarball from ``systools:make_tar``,
``unpack_release`` and ``install_release``, sasl on the node) and once by ``relsync --upgrade``,
then observed the same way (DESIGN.md section 7).

The scenario application ``orc`` holds the patterns real projects broke relsync with:

- ``orc_stats``, a stats registry, and ``orc_srv``, whose ``code_change`` calls it, and
  ``orc_dyn_sup``, a supervisor whose ``init/1`` calls it too: all three are upgraded;
- ``orc_conn``, a ``proc_lib`` special process (``system_code_change/4``, no ``code_change``);
- ``orc_events``, a gen_event manager (child modules ``dynamic``) with the handler
  ``orc_handler``, whose state is converted;
- ``orc_dyn_sup``'s children are added with ``supervisor:start_child/2``: a TCP listener and
  its acceptor; a client connection is open across the upgrade;
- every supervisor's ``init/1`` counts its calls (``{orc_inits, Mod}``): OTP calls it in the
  supervisor on an upgrade, nowhere else;
- ``orc_new`` is a static child v2 gains, ``orc_old`` one it loses (its module goes);
- the application's vsn goes from 1 to 2, its env gains a key and changes one, and
  ``orc_app:config_change/3`` records what it was told.

``orc_probe:observe/0`` (the same module in both versions) says what a user can observe.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

APP = "orc"

SUP = """-module(orc_sup).
-behaviour(supervisor).
-export([start_link/0, init/1]).
start_link() -> supervisor:start_link({local, ?MODULE}, ?MODULE, []).
init([]) ->
    orc_probe:count_init(?MODULE),
    Flags = #{strategy => one_for_one, intensity => 3, period => 60},
    Children = [
        #{id => orc_stats, start => {orc_stats, start_link, []}},
        #{id => orc_srv, start => {orc_srv, start_link, []}},
        #{id => orc_conn, start => {orc_conn, start_link, []}, modules => [orc_conn]},
        #{id => orc_events, start => {gen_event, start_link, [{local, orc_events}]},
          modules => dynamic},
        #{id => orc_dyn_sup, start => {orc_dyn_sup, start_link, []}, type => supervisor},
        CHILDREN
    ],
    {ok, {Flags, Children}}.
"""
SUP_V1 = SUP.replace("CHILDREN", "#{id => orc_old, start => {orc_old, start_link, []}}")
SUP_V2 = SUP.replace("CHILDREN", "#{id => orc_new, start => {orc_new, start_link, []}}")

DYN_SUP = """-module(orc_dyn_sup).
-behaviour(supervisor).
-export([start_link/0, init/1, start_listener/0]).
start_link() -> supervisor:start_link({local, ?MODULE}, ?MODULE, []).
start_listener() ->
    {ok, _} = supervisor:start_child(?MODULE, #{id => orc_listener,
                                                start => {orc_listener, start_link, []}}),
    ok.
init([]) ->
    orc_probe:count_init(?MODULE),
    orc_stats:bump(dyn_sup_init),
    {ok, {#{strategy => one_for_one, intensity => INTENSITY, period => 60}, []}}.
"""

STATS = """-module(orc_stats).
-behaviour(gen_server).
-export([start_link/0, bump/1, init/1, handle_call/3, handle_cast/2, code_change/3]).
start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).
bump(Key) -> gen_server:call(?MODULE, {bump, Key}, 20000).
init([]) -> {ok, STATE}.
handle_call({bump, K}, _From, S) -> {reply, ok, BUMP}.
handle_cast(_, S) -> {noreply, S}.
CODE_CHANGE
"""
STATS_V1 = (
    STATS.replace("STATE", "{stats, #{}}")
    .replace("BUMP", "setelement(2, S, maps:update_with(K, fun(N) -> N + 1 end, 1, element(2, S)))")
    .replace("CODE_CHANGE", "code_change(_, S, _) -> {ok, S}.")
)
STATS_V2 = (
    STATS.replace("STATE", "{stats2, #{}, 0}")
    .replace(
        "BUMP",
        "setelement(3, setelement(2, S, maps:update_with(K, fun(N) -> N + 1 end, 1,"
        " element(2, S))), element(3, S) + 1)",
    )
    .replace(
        "CODE_CHANGE",
        "code_change({down, _}, {stats2, M, _}, _) -> {ok, {stats, M}};\n"
        "code_change(_, {stats, M}, _) -> {ok, {stats2, M, 0}}.",
    )
)

SRV = """-module(orc_srv).
-behaviour(gen_server).
-export([start_link/0, hit/0, init/1, handle_call/3, handle_cast/2, code_change/3]).
start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).
hit() -> gen_server:call(?MODULE, hit).
init([]) -> {ok, {v1, 0}}.
handle_call(hit, _From, S) -> {reply, ok, setelement(2, S, element(2, S) + 1)}.
handle_cast(_, S) -> {noreply, S}.
CODE_CHANGE
"""
SRV_V1 = SRV.replace("CODE_CHANGE", "code_change(_, S, _) -> {ok, S}.")
SRV_V2 = SRV.replace(
    "CODE_CHANGE",
    "code_change({down, _}, {v2, N, _}, _) -> orc_stats:bump(srv_down), {ok, {v1, N}};\n"
    "code_change(_, {v1, N}, _) -> orc_stats:bump(srv_up), {ok, {v2, N, converted}}.",
)
#: v2 of orc_srv whose code_change crashes (an upgrade that must be undone).
SRV_V2_CRASH = SRV.replace("CODE_CHANGE", "code_change(_, S, _) -> error({cannot_convert, S}).")

CONN = """-module(orc_conn).
-export([start_link/0, init/1, loop/3, count/0]).
-export([system_continue/3, system_terminate/4, system_code_change/4, system_get_state/1]).
start_link() -> proc_lib:start_link(?MODULE, init, [self()]).
count() -> Ref = make_ref(), orc_conn ! {self(), Ref, count}, receive {Ref, N} -> N end.
init(Parent) ->
    register(orc_conn, self()),
    proc_lib:init_ack({ok, self()}),
    loop(Parent, sys:debug_options([]), {conn, 0}).
loop(Parent, Deb, S) ->
    receive
        {system, From, Req} -> sys:handle_system_msg(Req, From, Parent, ?MODULE, Deb, S);
        {From, Ref, count} -> From ! {Ref, element(2, S)},
                              ?MODULE:loop(Parent, Deb, setelement(2, S, element(2, S) + 1))
    end.
system_continue(Parent, Deb, S) -> ?MODULE:loop(Parent, Deb, S).
system_terminate(Reason, _Parent, _Deb, _S) -> exit(Reason).
system_get_state(S) -> {ok, S}.
CODE_CHANGE
"""
CONN_V1 = CONN.replace("CODE_CHANGE", "system_code_change(S, _, _, _) -> {ok, S}.")
CONN_V2 = CONN.replace(
    "CODE_CHANGE",
    "system_code_change({conn2, N}, _, {down, _}, _) -> {ok, {conn, N}};\n"
    "system_code_change({conn, N}, _, _, _) -> {ok, {conn2, N}}.",
)

HANDLER = """-module(orc_handler).
-behaviour(gen_event).
-export([init/1, handle_event/2, handle_call/2, code_change/3]).
init([]) -> {ok, {h1, 0}}.
handle_event(_, S) -> {ok, setelement(2, S, element(2, S) + 1)}.
handle_call(_, S) -> {ok, ok, S}.
CODE_CHANGE
"""
HANDLER_V1 = HANDLER.replace("CODE_CHANGE", "code_change(_, S, _) -> {ok, S}.")
HANDLER_V2 = HANDLER.replace(
    "CODE_CHANGE",
    "code_change({down, _}, {h2, N}, _) -> {ok, {h1, N}};\n"
    "code_change(_, {h1, N}, _) -> {ok, {h2, N}}.",
)

SIMPLE_SERVER = """-module(NAME).
-behaviour(gen_server).
-export([start_link/0, init/1, handle_call/3, handle_cast/2]).
start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).
init([]) -> {ok, NAME}.
handle_call(_, _From, S) -> {reply, S, S}.
handle_cast(_, S) -> {noreply, S}.
"""

LISTENER = """-module(orc_listener).
-behaviour(gen_server).
-export([start_link/0, init/1, handle_call/3, handle_cast/2, handle_continue/2]).
start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).
init([]) ->
    {ok, L} = gen_tcp:listen(0, [binary, {active, false}, {ip, {127, 0, 0, 1}},
                                 {reuseaddr, true}, {packet, line}]),
    {ok, Port} = inet:port(L),
    persistent_term:put(orc_port, Port),
    {ok, L, {continue, acceptor}}.
handle_continue(acceptor, L) ->
    {ok, _} = supervisor:start_child(orc_dyn_sup, #{id => orc_acceptor,
                                                    start => {orc_acceptor, start_link, [L]}}),
    {noreply, L}.
handle_call(_, _From, L) -> {reply, ok, L}.
handle_cast(_, L) -> {noreply, L}.
"""

ACCEPTOR = """-module(orc_acceptor).
-export([start_link/1, accept/1, echo/1]).
start_link(L) -> {ok, proc_lib:spawn_link(?MODULE, accept, [L])}.
accept(L) ->
    {ok, S} = gen_tcp:accept(L),
    Pid = spawn(?MODULE, echo, [S]),
    ok = gen_tcp:controlling_process(S, Pid),
    Pid ! go,
    ?MODULE:accept(L).
echo(S) ->
    receive go -> ok after 0 -> ok end,
    case gen_tcp:recv(S, 0) of
        {ok, Line} -> ok = gen_tcp:send(S, [TAG, Line]), echo(S);
        {error, _} -> ok
    end.
"""
ACCEPTOR_V1 = ACCEPTOR.replace("TAG", '""')
#: orc_acceptor changed (a load_module step): its connection processes are left in old code.
ACCEPTOR_V2 = ACCEPTOR.replace("TAG", '"v2:"')

LIB = "-module(orc_lib).\n-export([version/0]).\nversion() -> VERSION.\n"

APP_MOD = """-module(orc_app).
-behaviour(application).
-export([start/2, stop/1, config_change/3]).
start(_, _) ->
    {ok, Sup} = orc_sup:start_link(),
    ok = orc_dyn_sup:start_listener(),
    ok = gen_event:add_handler(orc_events, orc_handler, []),
    {ok, Sup}.
stop(_) -> ok.
config_change(Changed, New, Removed) ->
    persistent_term:put(orc_config_change, {Changed, New, Removed}), ok.
"""

PROBE = """-module(orc_probe).
-export([count_init/1, observe/0]).
count_init(Mod) ->
    persistent_term:put({orc_inits, Mod}, persistent_term:get({orc_inits, Mod}, 0) + 1).
names() -> [orc_sup, orc_stats, orc_srv, orc_conn, orc_events, orc_dyn_sup, orc_old, orc_new,
            orc_listener].
observe() ->
    #{pids => maps:from_list([{N, whereis(N)} || N <- names()]),
      states => maps:from_list([{N, catch sys:get_state(N, 5000)} || N <- names(),
                                whereis(N) =/= undefined, N =/= orc_sup, N =/= orc_dyn_sup]),
      children => maps:from_list([{S, catch supervisor:which_children(S)}
                                  || S <- [orc_sup, orc_dyn_sup]]),
      suspended => [N || N <- names(), suspended(N)],
      inits => maps:from_list([{M, persistent_term:get({orc_inits, M}, 0)}
                               || M <- [orc_sup, orc_dyn_sup]]),
      vsn => application:get_key(orc, vsn),
      env => lists:sort(application:get_all_env(orc)),
      config_change => persistent_term:get(orc_config_change, none),
      lib => catch orc_lib:version(),
      md5 => maps:from_list([{M, erlang:get_module_info(M, md5)} || {M, _} <- code:all_loaded()]),
      old_code => [M || {M, _} <- code:all_loaded(), erlang:check_old_code(M)],
      connections => length([P || P <- processes(),
                                  process_info(P, initial_call)
                                      =:= {initial_call, {orc_acceptor, echo, 1}}])}.
suspended(N) ->
    case catch sys:get_status(N, 2000) of
        {status, _, _, [_, SysState | _]} -> SysState =:= suspended;
        _ -> false
    end.
"""

APP_SRC = """{application, orc, [
    {description, "relsync upgrade oracle scenario"},
    {vsn, "VSN"},
    {registered, [orc_sup]},
    {mod, {orc_app, []}},
    {applications, [kernel, stdlib, sasl]},
    {env, ENV}
]}.
"""

V1 = {
    "orc_sup": SUP_V1,
    "orc_dyn_sup": DYN_SUP.replace("INTENSITY", "5"),
    "orc_stats": STATS_V1,
    "orc_srv": SRV_V1,
    "orc_conn": CONN_V1,
    "orc_handler": HANDLER_V1,
    "orc_old": SIMPLE_SERVER.replace("NAME", "orc_old"),
    "orc_listener": LISTENER,
    "orc_acceptor": ACCEPTOR_V1,
    "orc_lib": LIB.replace("VERSION", "1"),
    "orc_app": APP_MOD,
    "orc_probe": PROBE,
}
V2 = {
    **{m: s for m, s in V1.items() if m != "orc_old"},
    "orc_sup": SUP_V2,
    "orc_dyn_sup": DYN_SUP.replace("INTENSITY", "6"),
    "orc_stats": STATS_V2,
    "orc_srv": SRV_V2,
    "orc_conn": CONN_V2,
    "orc_handler": HANDLER_V2,
    "orc_new": SIMPLE_SERVER.replace("NAME", "orc_new"),
    "orc_lib": LIB.replace("VERSION", "2"),
}
ENV = {"1": "[{level, 1}, {kept, same}]", "2": "[{level, 2}, {kept, same}, {new_key, yes}]"}

#: What an OTP engineer writes for v1 -> v2 (the appup cookbook), for release_handler.
APPUP = """{"2",
 [{"1", [{add_module, orc_new},
         {load_module, orc_lib},
         {update, orc_stats, {advanced, []}},
         {update, orc_srv, {advanced, []}},
         {update, orc_conn, {advanced, []}},
         {update, orc_handler, {advanced, []}},
         {update, orc_dyn_sup, supervisor},
         {update, orc_sup, supervisor},
         {apply, {supervisor, terminate_child, [orc_sup, orc_old]}},
         {apply, {supervisor, delete_child, [orc_sup, orc_old]}},
         {apply, {supervisor, restart_child, [orc_sup, orc_new]}},
         {delete_module, orc_old}]}],
 [{"1", [{add_module, orc_old},
         {load_module, orc_lib},
         {update, orc_stats, {advanced, []}},
         {update, orc_srv, {advanced, []}},
         {update, orc_conn, {advanced, []}},
         {update, orc_handler, {advanced, []}},
         {update, orc_dyn_sup, supervisor},
         {update, orc_sup, supervisor},
         {apply, {supervisor, terminate_child, [orc_sup, orc_new]}},
         {apply, {supervisor, delete_child, [orc_sup, orc_new]}},
         {apply, {supervisor, restart_child, [orc_sup, orc_old]}},
         {delete_module, orc_new}]}]}.
"""

REBAR_CONFIG = """{erl_opts, [debug_info, deterministic]}.
{deps, []}.
{relx, [
    {release, {orc, "VSN"}, [orc, sasl]},
    {include_erts, false},
    {include_src, false},
    {dev_mode, false},
    {extended_start_script, true},
    {sys_config, "config/sys.config"},
    {vm_args_src, "config/vm.args.src"}
]}.
"""
VM_ARGS = "-name ${RELSYNC_NODE}\n-setcookie ${RELSYNC_COOKIE}\n+sbwt none\n"
SYS_CONFIG = "[{kernel, [{logger_level, notice}]}].\n"


def build_release(where: Path, vsn: str, modules: dict[str, str]) -> Path:
    """A rebar3 project of ``orc`` at ``vsn`` in ``where``, built; its release's path."""
    src = where / "src"
    (where / "config").mkdir(parents=True)
    src.mkdir()
    (where / "rebar.config").write_text(REBAR_CONFIG.replace("VSN", vsn))
    (where / "config" / "vm.args.src").write_text(VM_ARGS)
    (where / "config" / "sys.config").write_text(SYS_CONFIG)
    (src / "orc.app.src").write_text(APP_SRC.replace("VSN", vsn).replace("ENV", ENV[vsn]))
    for module, source in modules.items():
        (src / f"{module}.erl").write_text(source)
    subprocess.run(
        ["rebar3", "release"], cwd=where, check=True, capture_output=True,
        env={**os.environ, "REBAR_COLOR": "none"},
    )  # fmt: skip
    return where / "_build" / "default" / "rel" / APP


def relup_tarball(v1: Path, v2: Path, out: Path) -> Path:
    """``orc2.tar.gz``: v2 with the relup from and back to v1 (``systools:make_relup`` with
    the appup in v2's ebin), as ``release_handler:unpack_release/1`` takes it."""
    script = (
        "[V1, V2, Out] = init:get_plain_arguments(),"
        'Libs = fun(R) -> filelib:wildcard(filename:join(R, "lib/*/ebin")) end,'
        'RelFile = fun(R, V) -> filename:join([R, "releases", V, "orc.rel"]) end,'
        "ok = file:make_dir(Out),"
        '{ok, _} = file:copy(RelFile(V1, "1"), filename:join(Out, "orc1.rel")),'
        '{ok, _} = file:copy(RelFile(V2, "2"), filename:join(Out, "orc2.rel")),'
        '{ok, _} = file:copy(filename:join([V2, "releases", "2", "sys.config"]),'
        '                    filename:join(Out, "sys.config")),'
        "ok = file:set_cwd(Out),"
        '{ok, _, _} = systools:make_script("orc2", [{path, Libs(V2)}, silent, no_warn_sasl]),'
        '{ok, _, _, []} = systools:make_relup("orc2", ["orc1"], ["orc1"],'
        "                                     [{path, Libs(V1) ++ Libs(V2)}, silent]),"
        '{ok, _, _} = systools:make_tar("orc2", [{path, Libs(V2)}, silent, no_warn_sasl]),'
        "halt()."
    )
    subprocess.run(
        ["erl", "-noshell", "-eval", script, "-extra", str(v1), str(v2), str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    return out / "orc2.tar.gz"


def scenario(where: Path) -> tuple[Path, Path, Path, Path]:
    """v1, v2 (no appup: relsync derives its steps), v2 with :data:`APPUP` (relsync follows
    it) and v2's relup tarball for release_handler (made with the appup)."""
    v1 = build_release(where / "v1", "1", V1)
    v2 = build_release(where / "v2", "2", V2)
    with_appup = where / "v2-appup" / APP
    shutil.copytree(v2, with_appup, symlinks=True)
    (with_appup / "lib" / f"{APP}-2" / "ebin" / f"{APP}.appup").write_text(APPUP)
    tarball = relup_tarball(v1, with_appup, where / "relup")
    return v1, v2, with_appup, tarball


def install_tarball(release_root: Path, tarball: Path) -> None:
    """Put the release package where release_handler looks for it."""
    shutil.copy(tarball, release_root / "releases" / tarball.name)
