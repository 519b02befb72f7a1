-module(demo_store).
-behaviour(gen_server).

%% A server whose state is a record: tests recompile it with a field more and a
%% code_change/3 that converts the running state (relsync --upgrade).

-export([start_link/0, put/2, get/1, busy/1]).
-export([init/1, handle_call/3, handle_cast/2, code_change/3]).

-record(state, {items = #{} :: map()}).

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

put(Key, Value) ->
    gen_server:call(?MODULE, {put, Key, Value}).

get(Key) ->
    gen_server:call(?MODULE, {get, Key}).

%% Keeps the server busy for Ms milliseconds: it cannot be suspended meanwhile.
busy(Ms) ->
    gen_server:cast(?MODULE, {busy, Ms}).

init([]) ->
    {ok, #state{}}.

handle_call({put, Key, Value}, _From, #state{items = Items} = State) ->
    {reply, ok, State#state{items = Items#{Key => Value}}};
handle_call({get, Key}, _From, #state{items = Items} = State) ->
    {reply, maps:get(Key, Items, undefined), State}.

handle_cast({busy, Ms}, State) ->
    timer:sleep(Ms),
    {noreply, State}.

code_change(_OldVsn, State, _Extra) ->
    {ok, State}.
