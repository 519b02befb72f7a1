%% relsync hooks for the example release: restart only the port owner around a sync, so the
%% new port program is picked up while the counter keeps its state.
-module(demo_hooks).
-export([presync/0, postsync/0]).

presync() ->
    io:format("presync: stopping demo_port (its port program exits)~n"),
    ok = supervisor:terminate_child(demo_sup, demo_port).

postsync() ->
    {ok, _Pid} = supervisor:restart_child(demo_sup, demo_port),
    io:format("postsync: demo_port restarted with ~s~n", [code:priv_dir(demo)]).
