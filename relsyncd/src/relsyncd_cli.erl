%% relsyncd_cli: what answers a session channel's requests other than
%% "subsystem" (the daemon's ssh_cli). There is no shell: "env" is accepted
%% and ignored, "pty-req", "shell" and "exec" are refused and the channel is
%% closed.
%%
%% OpenSSH sends "env" (SendEnv LANG LC_*, Debian's default) before its
%% subsystem request, without asking for a reply. With no ssh_cli at all, OTP
%% answers it with a channel failure anyway, which the client takes as the
%% answer to its subsystem request. The process started for an "env" stays
%% until the connection ends (the subsystem then owns the channel; closing
%% this one would close it).
-module(relsyncd_cli).

-behaviour(ssh_server_channel).

-export([init/1, handle_msg/2, handle_ssh_msg/2, terminate/2]).

-spec init(list()) -> {ok, undefined}.
init(_Args) ->
    {ok, undefined}.

-spec handle_msg(term(), term()) -> {ok, term()}.
handle_msg(_Msg, S) ->
    {ok, S}.

-spec handle_ssh_msg(term(), term()) -> {ok, term()} | {stop, ssh:channel_id(), term()}.
handle_ssh_msg({ssh_cm, CM, {env, Id, WantReply, _Var, _Value}}, S) ->
    _ = ssh_connection:reply_request(CM, WantReply, success, Id),
    {ok, S};
handle_ssh_msg({ssh_cm, CM, Request}, S) when element(1, Request) =:= pty;
                                             element(1, Request) =:= shell;
                                             element(1, Request) =:= exec ->
    Id = element(2, Request),
    _ = ssh_connection:reply_request(CM, element(3, Request), failure, Id),
    {stop, Id, S};
handle_ssh_msg(_Msg, S) ->
    {ok, S}.

-spec terminate(term(), term()) -> ok.
terminate(_Reason, _S) ->
    ok.
