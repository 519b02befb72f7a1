-module(demo_port).
-behaviour(gen_server).

%% Owns a port to priv/demo_port (a C program speaking {packet, 2}) and
%% reopens it whenever it exits, e.g. after the binary was replaced and the
%% old OS process was killed.
-export([start_link/0, ask/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2, code_change/3]).

-define(TIMEOUT, 5000).

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% Sends Request to the C program and returns its reply, e.g. <<"v1:hello">>.
-spec ask(iodata()) -> binary() | {error, term()}.
ask(Request) ->
    gen_server:call(?MODULE, {ask, iolist_to_binary(Request)}, 2 * ?TIMEOUT + 1000).

init([]) ->
    process_flag(trap_exit, true),
    {ok, open()}.

handle_call({ask, Request}, _From, Port0) ->
    case request(ensure_open(Port0), Request) of
        {ok, Reply, Port} ->
            {reply, Reply, Port};
        {error, {port_exit, _}} ->
            %% The program went away under us (e.g. it was just replaced): retry once.
            case request(open(), Request) of
                {ok, Reply, Port} -> {reply, Reply, Port};
                {error, Reason} -> {reply, {error, Reason}, undefined}
            end;
        {error, Reason} ->
            {reply, {error, Reason}, undefined}
    end.

handle_cast(_Msg, Port) ->
    {noreply, Port}.

handle_info({'EXIT', Port, _Reason}, Port) ->
    {noreply, open()};
handle_info(_Other, Port) ->
    {noreply, Port}.

terminate(_Reason, Port) ->
    close(Port).

code_change(_OldVsn, Port, _Extra) ->
    {ok, Port}.

request(Port, Request) ->
    try port_command(Port, Request) of
        true ->
            receive
                {Port, {data, Reply}} -> {ok, Reply, Port};
                {'EXIT', Port, Reason} -> {error, {port_exit, Reason}}
            after ?TIMEOUT ->
                close(Port),
                {error, timeout}
            end
    catch
        error:badarg -> {error, {port_exit, closed}}
    end.

ensure_open(undefined) ->
    open();
ensure_open(Port) ->
    case erlang:port_info(Port) of
        undefined -> open();
        _ -> Port
    end.

open() ->
    Exe = filename:join(code:priv_dir(demo), "demo_port"),
    open_port({spawn_executable, Exe}, [{packet, 2}, binary, use_stdio]).

close(undefined) ->
    ok;
close(Port) ->
    catch port_close(Port),
    ok.
