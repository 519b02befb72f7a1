-module(demo_sup).
-behaviour(supervisor).

-export([start_link/0, init/1]).

start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

init([]) ->
    Flags = #{strategy => one_for_one, intensity => 10, period => 10},
    Children = [
        #{id => demo_counter, start => {demo_counter, start_link, []}},
        #{id => demo_port, start => {demo_port, start_link, []}},
        #{id => demo_store, start => {demo_store, start_link, []}},
        #{id => demo_fsm, start => {demo_fsm, start_link, []}}
    ],
    {ok, {Flags, Children}}.
