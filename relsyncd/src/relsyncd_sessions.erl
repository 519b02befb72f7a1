%% relsyncd_sessions: the max_sessions limit of a daemon started by
%% relsyncd:start_daemon/1, counting logged-in connections only.
%%
%% OTP's own max_sessions counts every TCP connection from its accept on,
%% logins in progress included: a few connections that never log in (from
%% anyone who reaches the port) would lock every client out. Here a
%% connection joins when its login succeeds (the daemon's connectfun) and
%% leaves when its process ends; one over the limit is closed right away.
%% Connections still logging in are bounded by the daemon's login timeout.
-module(relsyncd_sessions).

-export([start/1, watch/2, stop/1, join/2]).

-define(JOIN_TIMEOUT, 5000).

%% Not linked: start_daemon/1 may be called from a short-lived process (an rpc).
-spec start(pos_integer()) -> pid().
start(Max) ->
    spawn(fun() -> loop(Max, #{}) end).

%% Ends the limiter when the daemon ends (its ref is its supervisor's pid,
%% which is monitored, as relsyncd_daemon does).
-spec watch(pid(), ssh:daemon_ref()) -> ok.
watch(Limiter, Daemon) ->
    Limiter ! {watch, Daemon},
    ok.

-spec stop(pid()) -> ok.
stop(Limiter) ->
    exit(Limiter, kill),
    ok.

%% Called by a connection (Conn, its handler's pid) that has just logged in.
-spec join(pid(), pid()) -> ok | full.
join(Limiter, Conn) ->
    Mon = monitor(process, Limiter),
    Limiter ! {join, self(), Mon, Conn},
    receive
        {Mon, Answer} -> demonitor(Mon, [flush]), Answer;
        {'DOWN', Mon, process, _, _} -> full
    after ?JOIN_TIMEOUT ->
            demonitor(Mon, [flush]),
            full
    end.

%% Sessions: the logged-in connections, each monitored.
loop(Max, Sessions) ->
    receive
        {watch, Daemon} ->
            _ = monitor(process, Daemon),
            loop(Max, Sessions#{Daemon => daemon});
        {join, From, Tag, Conn} ->
            Count = length([S || S <- maps:values(Sessions), S =:= session]),
            case is_map_key(Conn, Sessions) orelse Count < Max of
                true ->
                    _ = is_map_key(Conn, Sessions) orelse is_reference(monitor(process, Conn)),
                    From ! {Tag, ok},
                    loop(Max, Sessions#{Conn => session});
                false ->
                    From ! {Tag, full},
                    loop(Max, Sessions)
            end;
        {'DOWN', _, process, Pid, _} ->
            case maps:take(Pid, Sessions) of
                {daemon, _} -> ok;
                {session, Rest} -> loop(Max, Rest);
                error -> loop(Max, Sessions)
            end
    end.
