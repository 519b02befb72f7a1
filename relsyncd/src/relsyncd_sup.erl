-module(relsyncd_sup).

-behaviour(supervisor).

-export([start_link/0, init/1]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    Config = relsyncd:config(#{}),
    Children = case maps:get(enabled, Config) of
                   true -> [#{id => relsyncd_daemon,
                              start => {relsyncd_daemon, start_link, [Config]},
                              shutdown => 5000}];
                   _ -> []
               end,
    {ok, {#{strategy => one_for_one, intensity => 5, period => 60}, Children}}.
