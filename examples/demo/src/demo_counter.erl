-module(demo_counter).
-behaviour(gen_server).

%% Tests edit the next line and recompile to simulate a code change.
-define(VERSION, 1).

-export([start_link/0, bump/0, value/0, version/0]).
-export([init/1, handle_call/3, handle_cast/2, code_change/3]).

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, 0, []).

%% Increments the counter; returns the new value.
bump() ->
    gen_server:call(?MODULE, bump).

value() ->
    gen_server:call(?MODULE, value).

%% Answered by the running process, so it shows which code the server runs.
version() ->
    gen_server:call(?MODULE, version).

init(Count) ->
    {ok, Count}.

handle_call(bump, _From, Count) ->
    {reply, Count + 1, Count + 1};
handle_call(value, _From, Count) ->
    {reply, Count, Count};
handle_call(version, _From, Count) ->
    {reply, ?VERSION, Count}.

handle_cast(_Msg, Count) ->
    {noreply, Count}.

code_change(_OldVsn, Count, _Extra) ->
    {ok, Count}.
