%% @doc The rebar3 plugin's entry point: registers the `relsync' provider.
-module(rebar3_relsync).

-export([init/1]).

-spec init(rebar_state:t()) -> {ok, rebar_state:t()}.
init(State) ->
    rebar3_relsync_prv:init(State).
