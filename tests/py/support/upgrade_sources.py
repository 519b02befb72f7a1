"""v2 sources of the example's processes, as a developer writes them for an appup-style
upgrade: demo_store's record gains a field (its code_change/3 converts the state both ways),
demo_fsm's data gains a key, demo_sup gains a child (demo_extra, a new gen_server)."""

from __future__ import annotations

from pathlib import Path

from relsync.harness.example import Variant, example_project

STORE_V2 = """-module(demo_store).
-behaviour(gen_server).
-export([start_link/0, put/2, get/1, busy/1, hits/0]).
-export([init/1, handle_call/3, handle_cast/2, code_change/3]).
-record(state, {items = #{} :: map(), hits = 0 :: non_neg_integer()}).
start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).
put(Key, Value) -> gen_server:call(?MODULE, {put, Key, Value}).
get(Key) -> gen_server:call(?MODULE, {get, Key}).
busy(Ms) -> gen_server:cast(?MODULE, {busy, Ms}).
hits() -> gen_server:call(?MODULE, hits).
init([]) -> {ok, #state{}}.
handle_call({put, K, V}, _From, #state{items = I} = S) -> {reply, ok, S#state{items = I#{K => V}}};
handle_call({get, K}, _From, #state{items = I, hits = H} = S) ->
    {reply, maps:get(K, I, undefined), S#state{hits = H + 1}};
handle_call(hits, _From, #state{hits = H} = S) -> {reply, H, S}.
handle_cast({busy, Ms}, S) -> timer:sleep(Ms), {noreply, S}.
code_change({down, _}, #state{items = I}, _Extra) -> {ok, {state, I}};
code_change(_OldVsn, {state, I}, _Extra) -> CODE_CHANGE_UP.
"""
STORE_V2_OK = STORE_V2.replace("CODE_CHANGE_UP", "{ok, #state{items = I}}")
STORE_V2_CRASH = STORE_V2.replace("CODE_CHANGE_UP", "error({cannot_convert, I})")

FSM_V2 = (
    (example_project() / "src" / "demo_fsm.erl")
    .read_text()
    .replace(
        "code_change(_OldVsn, State, Data, _Extra) ->\n    {ok, State, Data}.",
        "code_change({down, _}, State, Data, _Extra) -> {ok, State, maps:remove(version, Data)};\n"
        "code_change(_OldVsn, State, Data, _Extra) -> {ok, State, Data#{version => 2}}.",
    )
)
EXTRA = """-module(demo_extra).
-behaviour(gen_server).
-export([start_link/0, init/1, handle_call/3, handle_cast/2]).
start_link() -> gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).
init([]) -> {ok, []}.
handle_call(_, _From, S) -> {reply, hello, S}.
handle_cast(_, S) -> {noreply, S}.
"""
SUP_CHILD = "#{id => demo_fsm, start => {demo_fsm, start_link, []}}"
SUP_V2 = (
    SUP_CHILD,
    SUP_CHILD + ",\n        #{id => demo_extra, start => {demo_extra, start_link, []}}",
)


def v2_release(base: Path, root: Path, store: str = STORE_V2_OK) -> Variant:
    """The example with demo_store, demo_fsm and demo_sup at v2 and demo_extra added."""
    return (
        Variant(base, root)
        .compile("demo_store", store)
        .compile("demo_fsm", FSM_V2)
        .compile("demo_extra", EXTRA)
        .edit("demo_sup", *SUP_V2)
    )
