-module(demo_fsm).
-behaviour(gen_statem).

%% A state machine counting pushes: tests recompile it with a code_change/4
%% that adds to its data (relsync --upgrade).

-export([start_link/0, push/0]).
-export([init/1, callback_mode/0, handle_event/4, code_change/4]).

start_link() ->
    gen_statem:start_link({local, ?MODULE}, ?MODULE, [], []).

push() ->
    gen_statem:call(?MODULE, push).

callback_mode() ->
    handle_event_function.

init([]) ->
    {ok, idle, #{pushes => 0}}.

handle_event({call, From}, push, _State, #{pushes := N} = Data) ->
    {keep_state, Data#{pushes := N + 1}, [{reply, From, N + 1}]}.

code_change(_OldVsn, State, Data, _Extra) ->
    {ok, State, Data}.
