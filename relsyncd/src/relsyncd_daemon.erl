%% relsyncd_daemon: owns the application's ssh daemon. Starting never fails:
%% if the daemon cannot start (port taken, host key unreadable, ...) the error
%% is logged and retried every retry_interval ms, so relsyncd never brings
%% the user's release down. If the daemon dies, it is started again.
-module(relsyncd_daemon).

-behaviour(gen_server).

-export([start_link/1, port/0, daemon_ref/0]).
-export([init/1, handle_continue/2, handle_call/3, handle_cast/2, handle_info/2,
         terminate/2]).

%% ssh:daemon_ref() is opaque, but it is the pid of the daemon's supervisor,
%% which is what we monitor.
-dialyzer({no_opaque, start/1}).

-record(st, {config :: relsyncd:config(),
             ref :: ssh:daemon_ref() | undefined,
             mon :: reference() | undefined}).

-spec start_link(relsyncd:config()) -> {ok, pid()} | {error, term()}.
start_link(Config) ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, Config, []).

%% The port the application's daemon listens on.
-spec port() -> {ok, inet:port_number()} | {error, not_running}.
port() ->
    case daemon_ref() of
        {ok, Ref} -> relsyncd:port(Ref);
        E -> E
    end.

-spec daemon_ref() -> {ok, ssh:daemon_ref()} | {error, not_running}.
daemon_ref() ->
    try gen_server:call(?MODULE, daemon_ref)
    catch exit:_ -> {error, not_running}
    end.

-spec init(relsyncd:config()) -> {ok, #st{}, {continue, start}}.
init(Config) ->
    process_flag(trap_exit, true),
    {ok, #st{config = Config}, {continue, start}}.

-spec handle_continue(start, #st{}) -> {noreply, #st{}}.
handle_continue(start, S) ->
    {noreply, start(S)}.

-spec handle_call(term(), gen_server:from(), #st{}) -> {reply, term(), #st{}}.
handle_call(daemon_ref, _From, #st{ref = undefined} = S) ->
    {reply, {error, not_running}, S};
handle_call(daemon_ref, _From, #st{ref = Ref} = S) ->
    {reply, {ok, Ref}, S};
handle_call(_Req, _From, S) ->
    {reply, {error, unknown_call}, S}.

-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast(_Msg, S) ->
    {noreply, S}.

-spec handle_info(term(), #st{}) -> {noreply, #st{}}.
handle_info(retry, #st{ref = undefined} = S) ->
    {noreply, start(S)};
handle_info({'DOWN', Mon, process, _, Reason}, #st{mon = Mon} = S) ->
    logger:warning("relsyncd: ssh daemon went down (~p), restarting", [Reason]),
    {noreply, retry(S#st{ref = undefined, mon = undefined})};
handle_info(_Msg, S) ->
    {noreply, S}.

-spec terminate(term(), #st{}) -> ok.
terminate(_Reason, #st{ref = undefined}) -> ok;
terminate(_Reason, #st{ref = Ref}) ->
    _ = (catch relsyncd:stop_daemon(Ref)),
    ok.

start(#st{config = Config} = S) ->
    try relsyncd:start_daemon(Config) of
        {ok, Ref} ->
            {ok, Port} = relsyncd:port(Ref),
            logger:notice("relsyncd: listening on port ~b", [Port]),
            S#st{ref = Ref, mon = monitor(process, Ref)};
        {error, Reason} ->
            logger:error("relsyncd: cannot start the ssh daemon: ~p", [Reason]),
            retry(S)
    catch C:R ->
            logger:error("relsyncd: cannot start the ssh daemon: ~p:~p", [C, R]),
            retry(S)
    end.

retry(#st{config = Config} = S) ->
    erlang:send_after(maps:get(retry_interval, relsyncd:config(Config)), self(), retry),
    S.
