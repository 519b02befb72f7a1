%% relsyncd_channel: the "relsync" ssh subsystem, the control channel of ssh
%% mode. Add it to an ssh daemon with `{subsystems, [subsystem_spec(Opts)]}`.
%%
%% Wire protocol (both directions, over the channel's normal data stream):
%%   request: <<Len:32/big, Body:Len/binary>>, Body = term_to_binary({ReqId, Function, Args})
%%            ReqId :: integer(), Function :: atom(), Args :: list()
%%   reply:   <<Len:32/big, Body:Len/binary>>, Body = term_to_binary({ReqId, Result})
%% Function/arity must be one of the relsync_target API functions (whitelisted
%% below), load_binary/3 or ping/0; anything else is {error, unknown_function}.
%% A decodable body of another shape that starts with an integer ReqId gets
%% {error, bad_request}; an undecodable body closes the channel. A frame over
%% max_frame bytes is not read: its request gets {error, {frame_too_large,
%% Len, Max}} (when its ReqId can be read from the body's first bytes), then
%% the channel is closed once the requests before it are answered. Every path
%% argument must pass relsyncd_paths:check/3 against allowed_paths, otherwise
%% {error, {forbidden, Path}} and nothing is done.
%%
%% Requests run one after the other, in order, in a worker process linked to
%% the channel, which sends the replies itself, so a long call (a hook, a big
%% manifest) never blocks the connection's other channels (SFTP). When the
%% channel closes, the worker is killed, and with it a running hook
%% (relsync_target:run_hook/3 watches its caller). After the client's EOF,
%% queued requests are finished, then the channel ends with exit status 0
%% (1 after an oversized frame), EOF and close.
%%
%% Flow control: ssh_server_channel re-opens the SSH window by a data
%% message's size when handle_ssh_msg/2 returns. While the worker has
%% requests to do, the channel does not return (it waits for the worker), so
%% a client can be at most one window ahead of the worker: memory stays
%% bounded (max_frame plus a window) whatever a client sends. A client that
%% wants requests done side by side opens more channels (relsync's file
%% batches do).
-module(relsyncd_channel).

-behaviour(ssh_server_channel).

-export([subsystem_spec/1]).
-export([init/1, handle_msg/2, handle_ssh_msg/2, terminate/2]).
%% internal
-export([worker_init/4, dispatch/3, api/0]).

-define(NAME, "relsync").
-define(DEFAULT_MAX_FRAME, (16 * 1024 * 1024)).
-define(DEFAULT_HOOK_TIMEOUT, 600000).

-type opts() :: #{allowed_paths := [file:name_all()],
                  max_frame => pos_integer(),
                  hook_timeout => non_neg_integer()}.
-export_type([opts/0]).

-record(st, {cm :: ssh:connection_ref() | undefined,
             id :: ssh:channel_id() | undefined,
             opts :: map(),
             %% bytes of frames not yet whole, newest part first (see more/2)
             parts = [] :: [binary()],
             size = 0 :: non_neg_integer(),
             %% what `size` must reach before frames/1 can take one
             need = 4 :: pos_integer(),
             buf = <<>> :: binary(),
             worker :: pid() | undefined,
             pending = 0 :: non_neg_integer(),
             %% why no more requests are read: the client's EOF, or a frame over
             %% max_frame; the channel's exit status is then 0 or 1
             eof = false :: false | client | oversized}).

%% ssh wants the channel's init argument to be a list: the options travel as
%% a proplist.
-spec subsystem_spec(opts() | [{atom(), term()}]) -> ssh:subsystem_spec().
subsystem_spec(Opts) when is_map(Opts) ->
    {?NAME, {?MODULE, maps:to_list(Opts)}};
subsystem_spec(Opts) when is_list(Opts) ->
    {?NAME, {?MODULE, Opts}}.

%%% --------------------------------------------------- ssh_server_channel

-spec init([{atom(), term()}]) -> {ok, #st{}}.
init(Args) ->
    Opts0 = maps:from_list(Args),
    Opts = #{allowed_paths => [relsyncd_paths:to_bin(P)
                               || P <- maps:get(allowed_paths, Opts0, [])],
             max_frame => maps:get(max_frame, Opts0, ?DEFAULT_MAX_FRAME),
             hook_timeout => maps:get(hook_timeout, Opts0, ?DEFAULT_HOOK_TIMEOUT)},
    {ok, #st{opts = Opts}}.

-spec handle_msg(term(), #st{}) -> {ok, #st{}} | {stop, ssh:channel_id(), #st{}}.
handle_msg({ssh_channel_up, Id, CM}, #st{opts = Opts} = S) ->
    Worker = spawn_link(?MODULE, worker_init, [self(), CM, Id, Opts]),
    {ok, S#st{cm = CM, id = Id, worker = Worker}};
handle_msg({relsyncd_done, W}, #st{worker = W, pending = N} = S) ->
    maybe_close(S#st{pending = N - 1});
handle_msg({'EXIT', W, Reason}, #st{worker = W, id = Id} = S) ->
    %% The worker catches everything a call raises; it ends only when a reply
    %% cannot be sent any more (the connection went away).
    logger:info("relsyncd: control worker ended: ~p", [Reason]),
    {stop, Id, S#st{worker = undefined}};
handle_msg(_Msg, S) ->
    {ok, S}.

-spec handle_ssh_msg(term(), #st{}) -> {ok, #st{}} | {stop, ssh:channel_id(), #st{}}.
handle_ssh_msg({ssh_cm, _CM, {data, Id, 0, Data}}, #st{id = Id, eof = false} = S) ->
    more(Data, S);
handle_ssh_msg({ssh_cm, _CM, {data, Id, _Ext, _Data}}, #st{id = Id} = S) ->
    {ok, S};                            % stderr, or what follows an oversized frame
handle_ssh_msg({ssh_cm, _CM, {eof, Id}}, #st{id = Id} = S) ->
    maybe_close(S#st{eof = client});
handle_ssh_msg({ssh_cm, _CM, {signal, _, _}}, S) ->
    {ok, S};
handle_ssh_msg({ssh_cm, _CM, {exit_signal, Id, _, _, _}}, #st{id = Id} = S) ->
    {stop, Id, S};
handle_ssh_msg({ssh_cm, _CM, {exit_status, Id, _}}, #st{id = Id} = S) ->
    {stop, Id, S};
handle_ssh_msg(_Msg, S) ->
    {ok, S}.

-spec terminate(term(), #st{}) -> ok.
terminate(_Reason, #st{worker = W}) ->
    is_pid(W) andalso exit(W, kill),
    ok.

%%% -------------------------------------------------------------- framing

%% A frame of megabytes comes in packets of a few kilobytes. They are kept in
%% a list and joined once, when a frame (or its length header) is whole:
%% appending each packet to one binary copied the whole frame again for
%% every packet.
more(Data, #st{parts = Parts, size = Size, need = Need} = S0) ->
    S = S0#st{parts = [Data | Parts], size = Size + byte_size(Data)},
    case S#st.size >= Need of
        false ->
            {ok, S};
        true ->
            Buf = iolist_to_binary(lists:reverse(S#st.parts)),
            case frames(S#st{buf = Buf, parts = []}) of
                {ok, S1} -> wait_idle(rest(S1));
                Stop -> Stop
            end
    end.

%% What frames/1 left (part of a frame) waits for the bytes that complete it.
rest(#st{buf = Buf, opts = #{max_frame := Max}} = S) ->
    Need = case Buf of
               <<Len:32/big, _/binary>> when Len =< Max -> 4 + Len;
               <<_:32, _/binary>> -> byte_size(Buf) + 1;   % an oversized one's ReqId
               _ -> 4
           end,
    Parts = case Buf of <<>> -> []; _ -> [Buf] end,
    S#st{buf = <<>>, parts = Parts, size = byte_size(Buf), need = Need}.

frames(#st{buf = <<Len:32/big, Head/binary>>, opts = #{max_frame := Max}} = S)
  when Len > Max ->
    case oversized_id(Head) of
        more ->
            {ok, S};
        {ok, ReqId} ->
            logger:warning("relsyncd: control frame of ~b bytes exceeds max_frame ~b; "
                           "refused, closing the channel", [Len, Max]),
            S#st.worker ! {reply, ReqId, {error, {frame_too_large, Len, Max}}},
            {ok, S#st{buf = <<>>, eof = oversized, pending = S#st.pending + 1}};
        none ->
            logger:warning("relsyncd: control frame of ~b bytes exceeds max_frame ~b; closing",
                           [Len, Max]),
            close(S#st{buf = <<>>})
    end;
frames(#st{buf = <<Len:32/big, Body:Len/binary, Rest/binary>>} = S) ->
    case decode(Body) of
        {ok, Req} ->
            S#st.worker ! {request, Req},
            true = erlang:garbage_collect(),            % (see the worker)
            frames(S#st{buf = Rest, pending = S#st.pending + 1});
        {bad_request, ReqId} ->
            S#st.worker ! {reply, ReqId, {error, bad_request}},
            frames(S#st{buf = Rest, pending = S#st.pending + 1});
        undecodable ->
            logger:warning("relsyncd: undecodable control frame; closing"),
            close(S#st{buf = Rest})
    end;
frames(S) ->
    {ok, S}.

%% Atoms are created as needed: requests name modules and functions that may
%% not exist yet (a hook module). Only authenticated clients get here, and
%% they can load code anyway.
decode(Body) ->
    try binary_to_term(Body) of
        {ReqId, F, Args} = Req when is_integer(ReqId), is_atom(F), is_list(Args) ->
            {ok, Req};
        T when is_tuple(T), tuple_size(T) >= 1, is_integer(element(1, T)) ->
            {bad_request, element(1, T)};
        _ -> undecodable
    catch error:badarg -> undecodable
    end.

%% The ReqId of an oversized request, read from the first bytes of its body
%% (term_to_binary of {ReqId, F, Args} with ReqId in 32 bits, as clients
%% send it); `more` while those bytes may still start one.
oversized_id(<<131, 104, 3, 97, Id, _/binary>>) -> {ok, Id};
oversized_id(<<131, 104, 3, 98, Id:32/signed, _/binary>>) -> {ok, Id};
oversized_id(<<131, 104, 3, T, _/binary>>) when T =:= 97; T =:= 98 ->
    more;
oversized_id(Head) when byte_size(Head) < 4 ->
    case binary:longest_common_prefix([Head, <<131, 104, 3>>]) =:= byte_size(Head) of
        true -> more;
        false -> none
    end;
oversized_id(_) ->
    none.

%% ssh_server_channel closes the channel when told to stop. (Closing it here
%% as well sends a second CLOSE, which a client may take as a protocol error
%% and drop the whole connection, as asyncssh does.)
close(#st{id = Id} = S) ->
    {stop, Id, S}.

maybe_close(#st{eof = Why, pending = 0, cm = CM, id = Id} = S) when Why =/= false ->
    _ = ssh_connection:exit_status(CM, Id, case Why of client -> 0; oversized -> 1 end),
    _ = ssh_connection:send_eof(CM, Id),
    close(S);
maybe_close(S) ->
    {ok, S}.

%% Returns once the worker has done every request (see flow control above);
%% meanwhile only the worker's news and the channel's close are taken, all
%% else waits in the mailbox.
wait_idle(#st{pending = 0} = S) ->
    maybe_close(S);
wait_idle(#st{worker = W, cm = CM, id = Id, pending = N} = S) ->
    receive
        {relsyncd_done, W} -> wait_idle(S#st{pending = N - 1});
        {'EXIT', W, _} = Exit -> handle_msg(Exit, S);
        {ssh_cm, CM, {closed, Id}} -> {stop, Id, S}
    end.

%%% --------------------------------------------------------------- worker

-spec worker_init(pid(), ssh:connection_ref(), ssh:channel_id(), map()) -> no_return().
worker_init(Channel, CM, Id, Opts) ->
    worker_loop(Channel, CM, Id, Opts).

worker_loop(Channel, CM, Id, Opts) ->
    {ReqId, Result} =
        receive
            {request, {R, F, Args}} -> {R, safe_dispatch(F, Args, Opts)};
            {reply, R, Res} -> {R, Res}
        end,
    Body = encode({ReqId, Result}),
    case ssh_connection:send(CM, Id, [<<(byte_size(Body)):32/big>>, Body]) of
        ok -> ok;
        Err -> exit({send_failed, Err})
    end,
    Channel ! {relsyncd_done, self()},
    %% A request's binaries (megabytes) would otherwise wait for a collection
    %% of this small heap, many requests later.
    true = erlang:garbage_collect(),
    worker_loop(Channel, CM, Id, Opts).

%% minor_version 2 (UTF-8 atoms) is the default from OTP 26 on; asking for it
%% makes replies identical on OTP 25, 26 and 27.
encode(Term) ->
    try term_to_binary(Term, [{minor_version, 2}])
    catch error:badarg -> term_to_binary(Term)
    end.

safe_dispatch(F, Args, Opts) ->
    try dispatch(F, Args, Opts)
    catch C:R:St -> {error, {C, R, St}}
    end.

%%% ------------------------------------------------------------- dispatch

%% The whitelist: every callable function with its arity, and the paths among
%% its arguments that must be allowed before anything is done.
-spec dispatch(atom(), list(), map()) -> term().
dispatch(ping, [], _Opts) -> pong;
dispatch(load_binary, [Mod, Filename, Bin], _Opts) ->
    load_binary(Mod, Filename, Bin);
dispatch(run_hook, [M, F, Timeout], #{hook_timeout := Max})
  when is_integer(Timeout), Timeout > Max ->
    relsync_target:run_hook(M, F, Max);
dispatch(F, Args, Opts) ->
    case lists:member({F, length(Args)}, api()) of
        false -> {error, unknown_function};
        true ->
            case check_args(F, Args, maps:get(allowed_paths, Opts)) of
                ok -> apply(relsync_target, F, Args);
                {error, {forbidden, _}} = E -> E
            end
    end.

-type api_function() :: {atom(), arity()}.

%% The wire API: every function relsync_target exports (declared once, there;
%% ping, load_binary and run_hook's cap are dispatched above). A function it
%% exports that neither takes no path (no_path/0) nor has its paths checked
%% below is refused as forbidden: the channel fails closed.
-spec api() -> [api_function()].
api() ->
    [FA || {F, _} = FA <- relsync_target:module_info(exports), F =/= module_info].

%% The functions that take no path: nothing they are given reaches the file
%% system (running_programs only compares its paths with /proc/PID/exe of the
%% VM's own ports).
no_path() ->
    [{info, 0}, {unlock, 1}, {loaded_shas, 0}, {code_state, 0}, {old_code, 0},
     {suspended, 0},
     {mark_pending, 1}, {stash_code, 1}, {delete_modules, 2}, {check_beams, 1},
     {missing_apps, 1}, {outdated, 1}, {running_programs, 1}, {run_hook, 3}].

check_args(F, Args, A) ->
    case lists:member({F, length(Args)}, no_path()) of
        true -> ok;
        false -> check_paths(F, Args, A)
    end.

%% The lock's owner is this channel's worker (the caller): no other pid is taken.
check_paths(sync_state, [Dest, Excl, Rw, Opts], A) when is_map(Opts) ->
    case maps:is_key(owner, Opts) of
        true -> {error, {forbidden, owner}};
        false -> check_paths(sync_state, [Dest, Excl, Rw], A)
    end;
check_paths(sync_state, [Dest, _Excl, Rw], A) when is_binary(Dest) ->
    Shadow = case Rw of
                 none -> [];
                 _ -> [Rw, <<Dest/binary, "/lib">>]   % the lib listing follows a link
             end,
    relsyncd_paths:check_many([Dest | Shadow], follow, A);
check_paths(manifest, [Root, _], A) -> one(Root, follow, A);
check_paths(list_dir, [Dir], A) -> one(Dir, follow, A);
check_paths(block_signatures, [Path, _], A) -> one(Path, follow, A);
check_paths(put_delta, [Path, Base | _], A) ->
    case one(Path, nofollow, A) of
        ok -> one(Base, follow, A);
        E -> E
    end;
check_paths(put_files, [Files, _Token], A) -> check_paths(put_files, [Files], A);
check_paths(put_files, [Files], A) when is_list(Files) ->
    entries(fun({P, _Mode, _Data, _Sha}) -> P; (_) -> bad end, Files, nofollow, A);
check_paths(put_chunk, [Path, _, _ | _], A) -> one(Path, nofollow, A);
check_paths(commit, [Path, _, _ | _], A) -> one(Path, nofollow, A);
check_paths(delete_files, [Paths], A) -> relsyncd_paths:check_many(Paths, nofollow, A);
check_paths(delete_dirs, [Paths], A) -> relsyncd_paths:check_many(Paths, nofollow, A);
%% Only where a link is made is checked: a link's text grants nothing by
%% itself, and whatever later goes through it is resolved and checked again.
check_paths(make_symlinks, [Links], A) when is_list(Links) ->
    entries(fun({Link, _Target}) -> Link; (_) -> bad end, Links, nofollow, A);
check_paths(update_code_path, [Opts], A) when is_map(Opts) ->
    To = case maps:get(replace_prefix, Opts, none) of
             {_From, T} -> [T];
             Pairs when is_list(Pairs) -> [T || {_From, T} <- Pairs];
             _ -> []
         end,
    relsyncd_paths:check_many(To ++ maps:get(add, Opts, []), follow, A);
check_paths(load_fresh, [Mods], A) -> check_paths(load_modules, [Mods, soft], A);
check_paths(load_modules, [Mods, _], A) when is_list(Mods) ->
    entries(fun(M) when is_tuple(M), tuple_size(M) >= 2 -> element(2, M); (_) -> bad end,
            Mods, follow, A);
check_paths(upgrade, [Steps, Opts], A) when is_list(Steps), is_map(Opts) ->
    each(fun({delete_module, M}) when is_atom(M) -> ok;
            %% An appup's apply runs code, as run_hook does: no path to check.
            ({apply, M, F, Args}) when is_atom(M), is_atom(F), is_list(Args) -> ok;
            (S) when is_tuple(S), tuple_size(S) >= 4 ->
                 one(element(tuple_size(S) - 1, S), follow, A);
            %% The .app files and sys.config the application data is read from.
            ({read, P}) -> one(P, follow, A);
            (Bad) -> {error, {forbidden, Bad}}
         end, Steps ++ [{read, P} || P <- upgrade_reads(Opts)]);
check_paths(_F, [Bad | _], _A) ->
    {error, {forbidden, Bad}};          % a path list that is not a list, ...
check_paths(F, [], _A) ->
    {error, {forbidden, F}}.

upgrade_reads(Opts) ->
    Apps = maps:get(apps, Opts, []),
    [P || P <- (if is_list(Apps) -> Apps; true -> [Apps] end) ++ [maps:get(config, Opts, none)],
          P =/= none].

%% The path each entry of a request names (Pick gives it, or `bad` for an
%% entry of the wrong shape), checked together.
entries(Pick, Entries, Mode, A) ->
    case picked(Pick, Entries, []) of
        {ok, Paths} -> relsyncd_paths:check_many(Paths, Mode, A);
        {bad, Bad} -> {error, {forbidden, Bad}}
    end.

picked(_Pick, [], Acc) -> {ok, lists:reverse(Acc)};
picked(Pick, [E | Es], Acc) ->
    case Pick(E) of
        bad -> {bad, E};
        P -> picked(Pick, Es, [P | Acc])
    end;
picked(_Pick, Bad, _Acc) -> {bad, Bad}.

one(Path, Mode, A) ->
    case relsyncd_paths:check(Path, Mode, A) of
        {ok, _} -> ok;
        E -> E
    end.

each(_Fun, []) -> ok;
each(Fun, [X | Xs]) ->
    case Fun(X) of
        ok -> each(Fun, Xs);
        E -> E
    end;
each(_Fun, Bad) -> {error, {forbidden, Bad}}.

%% Load a module from a binary (a hook module pushed by the client). Old code
%% is purged softly first; if a process still runs it, nothing is loaded.
-spec load_binary(module(), file:filename_all(), binary()) ->
          {module, module()} | {error, term()}.
load_binary(Mod, Filename, Bin) when is_atom(Mod), is_binary(Bin),
                                     (is_binary(Filename) orelse is_list(Filename)) ->
    case code:soft_purge(Mod) of
        false -> {error, not_purged};
        true ->
            Name = case Filename of
                       B when is_binary(B) -> unicode:characters_to_list(B);
                       L -> L
                   end,
            code:load_binary(Mod, Name, Bin)
    end;
load_binary(_, _, _) ->
    {error, badarg}.
