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
%% {error, bad_request}; an undecodable body closes the channel, and so does a
%% compressed one (refused before it is inflated: a 1 MiB frame may inflate
%% to a GiB) or one that decodes to more than ?MAX_DECODED_WORDS of heap. Bodies are decoded `safe`, creating no atom; a body naming atoms
%% the VM does not know yet is decoded only for a function that names modules
%% or applications (a module about to be loaded), with at most ?MAX_NEW_ATOMS
%% of them and while the atom table stays below 3/4 full, else the request
%% gets {error, {new_atoms, Count, Max}}: atoms are never collected. A frame over
%% max_frame bytes is not read: its request gets {error, {frame_too_large,
%% Len, Max}} (when its ReqId can be read from the body's first bytes), then
%% the channel is closed once the requests before it are answered. Every path
%% argument must pass relsyncd_paths:check/3 against allowed_paths (less
%% denied_paths), otherwise {error, {forbidden, Path}} and nothing is done;
%% the paths a function is given are the checked ones, normalized.
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
%% Atoms a request may add to the VM's (never collected) atom table.
-define(MAX_NEW_ATOMS, 20000).
%% The heap (words) a request may decode to: 4M words, 32 MB on a 64-bit VM.
%% Binaries over 64 bytes (a batch's files) live off the heap and do not count.
-define(MAX_DECODED_WORDS, (4 * 1024 * 1024)).

-type opts() :: #{allowed_paths := [file:name_all()],
                  denied_paths => [file:name_all()],
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
    Bins = fun(K) -> [relsyncd_paths:to_bin(P) || P <- maps:get(K, Opts0, [])] end,
    Opts = #{jail => #{allowed => Bins(allowed_paths), denied => Bins(denied_paths)},
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
    case request_id(Head) of
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
frames(#st{buf = <<Len:32/big, Body:Len/binary, Rest/binary>>} = S0) ->
    %% One decoded request at a time: the worker has done the one before.
    case idle(S0) of
        {ok, S} -> frame(bounded_decode(Body), S#st{buf = Rest});
        Stop -> Stop
    end;
frames(S) ->
    {ok, S}.

frame(Decoded, S) ->
    case Decoded of
        {ok, Req} ->
            S#st.worker ! {request, Req},
            true = erlang:garbage_collect(),            % (see the worker)
            frames(S#st{pending = S#st.pending + 1});
        {bad_request, ReqId} ->
            S#st.worker ! {reply, ReqId, {error, bad_request}},
            frames(S#st{pending = S#st.pending + 1});
        {refused, ReqId, Error} ->
            S#st.worker ! {reply, ReqId, Error},
            frames(S#st{pending = S#st.pending + 1});
        undecodable ->
            logger:warning("relsyncd: undecodable control frame; closing"),
            close(S);
        too_large ->
            logger:warning("relsyncd: control frame decodes to over ~b words; closing",
                           [?MAX_DECODED_WORDS]),
            close(S)
    end.

%% A body that decodes to more than ?MAX_DECODED_WORDS of heap (a 15 MiB frame
%% of [] decodes to 15M list cells, 240 MB) is refused. binary_to_term/2 takes
%% the whole heap a term needs at once, so a body is measured first
%% (heap_words/2); one holding kinds that are not measured (pids, funs...) is
%% decoded in a process whose heap may not grow past the bound, killed if it does.
bounded_decode(Body) ->
    case heap_words(Body, ?MAX_DECODED_WORDS) of
        over -> too_large;
        {ok, _} -> decode(Body);
        unknown -> decode_apart(Body)
    end.

decode_apart(Body) ->
    Limit = #{size => ?MAX_DECODED_WORDS, kill => true, error_logger => false},
    {Pid, Ref} = spawn_opt(fun() -> exit({decoded, decode(Body)}) end,
                           [monitor, {max_heap_size, Limit}]),
    receive
        {'DOWN', Ref, process, Pid, {decoded, Decoded}} -> Decoded;
        {'DOWN', Ref, process, Pid, _Killed} -> too_large
    end.

decode(<<131, 80, _/binary>>) ->
    undecodable;                        % compressed: never inflated
decode(Body) ->
    try binary_to_term(Body, [safe]) of
        Term -> shape(Term)
    catch error:badarg -> with_new_atoms(Body)
    end.

shape({ReqId, F, Args} = Req) when is_integer(ReqId), is_atom(F), is_list(Args) ->
    {ok, Req};
shape(T) when is_tuple(T), tuple_size(T) >= 1, is_integer(element(1, T)) ->
    {bad_request, element(1, T)};
shape(_) ->
    undecodable.

%% A body that names atoms the VM does not have (or is no term at all).
with_new_atoms(Body) ->
    case etf_atoms(Body) of
        {ok, [{_, F} = Function | _] = Atoms} ->
            %% (a fold: a body-recursive count of 100k failing lookups kept a
            %% stack that every collection of their exceptions' garbage scanned)
            New = lists:foldl(fun(A, N) -> N + new_atom(A) end, 0, lists:usort(Atoms)),
            Room = erlang:system_info(atom_limit) * 3 div 4 - erlang:system_info(atom_count),
            Known = new_atom(Function) =:= 0,
            case Known andalso lists:member(F, names_modules())
                andalso New =< min(?MAX_NEW_ATOMS, Room) of
                true ->
                    try shape(binary_to_term(Body)) catch error:badarg -> undecodable end;
                false ->
                    Error = case Known of
                                true -> {error, {new_atoms, New, ?MAX_NEW_ATOMS}};
                                false -> {error, unknown_function}   % a function no one has
                            end,
                    case request_id(Body) of
                        {ok, ReqId} -> {refused, ReqId, Error};
                        _ -> undecodable
                    end
            end;
        _ -> undecodable
    end.

%% The functions whose arguments name modules or applications, which may be
%% new to the VM (a module a sync is about to load).
names_modules() ->
    [<<"load_binary">>, <<"load_modules">>, <<"load_fresh">>, <<"mark_pending">>,
     <<"stash_code">>, <<"check_beams">>, <<"missing_apps">>, <<"upgrade">>,
     <<"delete_modules">>, <<"run_hook">>, <<"outdated">>].

%% 0 for an atom the VM has, 1 for a new one.
new_atom({Enc, Name}) ->
    try binary_to_existing_atom(Name, Enc) of _ -> 0
    catch error:badarg -> 1
    end.

%% The atoms of an external term format body, in order, without decoding it:
%% [{Encoding, Name}], or error for a body that is no term of the kinds a
%% request holds (numbers, atoms, tuples, lists, binaries, maps).
etf_atoms(<<131, T/binary>>) -> etf_atoms(T, 1, []);
etf_atoms(_) -> error.

etf_atoms(<<>>, 0, Acc) -> {ok, lists:reverse(Acc)};
etf_atoms(_, 0, _) -> error;
etf_atoms(<<97, _, R/binary>>, N, Acc) -> etf_atoms(R, N - 1, Acc);
etf_atoms(<<98, _:32, R/binary>>, N, Acc) -> etf_atoms(R, N - 1, Acc);
etf_atoms(<<70, _:64, R/binary>>, N, Acc) -> etf_atoms(R, N - 1, Acc);
etf_atoms(<<T, L, Name:L/binary, R/binary>>, N, Acc) when T =:= 119; T =:= 115 ->
    etf_atoms(R, N - 1, [{enc(T), Name} | Acc]);
etf_atoms(<<T, L:16, Name:L/binary, R/binary>>, N, Acc) when T =:= 118; T =:= 100 ->
    etf_atoms(R, N - 1, [{enc(T), Name} | Acc]);
etf_atoms(<<104, Arity, R/binary>>, N, Acc) -> etf_atoms(R, N - 1 + Arity, Acc);
etf_atoms(<<105, Arity:32, R/binary>>, N, Acc) -> etf_atoms(R, N - 1 + Arity, Acc);
etf_atoms(<<116, Arity:32, R/binary>>, N, Acc) -> etf_atoms(R, N - 1 + 2 * Arity, Acc);
etf_atoms(<<106, R/binary>>, N, Acc) -> etf_atoms(R, N - 1, Acc);
etf_atoms(<<108, Len:32, R/binary>>, N, Acc) -> etf_atoms(R, N + Len, Acc);  % + the tail
etf_atoms(<<107, L:16, _:L/binary, R/binary>>, N, Acc) -> etf_atoms(R, N - 1, Acc);
etf_atoms(<<109, L:32, _:L/binary, R/binary>>, N, Acc) -> etf_atoms(R, N - 1, Acc);
etf_atoms(<<77, L:32, _, _:L/binary, R/binary>>, N, Acc) -> etf_atoms(R, N - 1, Acc);
etf_atoms(<<110, L, _, _:L/binary, R/binary>>, N, Acc) -> etf_atoms(R, N - 1, Acc);
etf_atoms(<<111, L:32, _, _:L/binary, R/binary>>, N, Acc) -> etf_atoms(R, N - 1, Acc);
etf_atoms(_, _, _) -> error.

enc(T) when T =:= 118; T =:= 119 -> utf8;
enc(_) -> latin1.

%% About the heap words an external term format body decodes to, walked like
%% etf_atoms/3 (the same kinds: a body with new atoms that with_new_atoms/1
%% decodes was measured) and given up past Max: `over`, or `unknown` for a body
%% holding other kinds (pids, funs...) or none at all.
heap_words(<<131, T/binary>>, Max) -> words(T, 1, 0, Max);
heap_words(_, _) -> unknown.

words(_, _, W, Max) when W > Max -> over;
words(<<>>, 0, W, _) -> {ok, W};
words(_, 0, _, _) -> unknown;
words(<<97, _, R/binary>>, N, W, M) -> words(R, N - 1, W, M);
words(<<98, _:32, R/binary>>, N, W, M) -> words(R, N - 1, W, M);
words(<<70, _:64, R/binary>>, N, W, M) -> words(R, N - 1, W + 3, M);
words(<<T, L, _:L/binary, R/binary>>, N, W, M) when T =:= 119; T =:= 115 ->
    words(R, N - 1, W, M);
words(<<T, L:16, _:L/binary, R/binary>>, N, W, M) when T =:= 118; T =:= 100 ->
    words(R, N - 1, W, M);
words(<<104, A, R/binary>>, N, W, M) -> words(R, N - 1 + A, W + 1 + A, M);
words(<<105, A:32, R/binary>>, N, W, M) -> words(R, N - 1 + A, W + 1 + A, M);
words(<<116, A:32, R/binary>>, N, W, M) -> words(R, N - 1 + 2 * A, W + 3 + 3 * A, M);
words(<<106, R/binary>>, N, W, M) -> words(R, N - 1, W, M);
words(<<108, L:32, R/binary>>, N, W, M) -> words(R, N + L, W + 2 * L, M);
words(<<107, L:16, _:L/binary, R/binary>>, N, W, M) -> words(R, N - 1, W + 2 * L, M);
words(<<109, L:32, _:L/binary, R/binary>>, N, W, M) -> words(R, N - 1, W + bin_words(L), M);
words(<<77, L:32, _, _:L/binary, R/binary>>, N, W, M) -> words(R, N - 1, W + bin_words(L), M);
words(<<110, L, _, _:L/binary, R/binary>>, N, W, M) -> words(R, N - 1, W + 2 + L div 8, M);
words(<<111, L:32, _, _:L/binary, R/binary>>, N, W, M) ->
    words(R, N - 1, W + 2 + L div 8, M);
words(_, _, _, _) -> unknown.

%% A binary of up to 64 bytes is on the heap, a larger one off it (a few words).
bin_words(L) when L =< 64 -> 2 + (L + 7) div 8;
bin_words(_) -> 6.

%% The ReqId of a request that is not decoded (oversized, or naming too many
%% new atoms), read from the first bytes of its body (term_to_binary of
%% {ReqId, F, Args} with ReqId in 32 bits, as clients send it); `more` while
%% those bytes may still start one.
request_id(<<131, 104, 3, 97, Id, _/binary>>) -> {ok, Id};
request_id(<<131, 104, 3, 98, Id:32/signed, _/binary>>) -> {ok, Id};
request_id(<<131, 104, 3, T, _/binary>>) when T =:= 97; T =:= 98 ->
    more;
request_id(Head) when byte_size(Head) < 4 ->
    case binary:longest_common_prefix([Head, <<131, 104, 3>>]) =:= byte_size(Head) of
        true -> more;
        false -> none
    end;
request_id(_) ->
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
wait_idle(S0) ->
    case idle(S0) of
        {ok, S} -> maybe_close(S);
        Stop -> Stop
    end.

idle(#st{pending = 0} = S) ->
    {ok, S};
idle(#st{worker = W, cm = CM, id = Id, pending = N} = S) ->
    receive
        {relsyncd_done, W} -> idle(S#st{pending = N - 1});
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
dispatch(F, Args, #{jail := Jail}) ->
    case lists:member({F, length(Args)}, api()) of
        false -> {error, unknown_function};
        true ->
            case check_args(F, Args, Jail) of
                {ok, Checked} -> apply(relsync_target, F, Checked);
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

check_args(F, Args, J) ->
    case lists:member({F, length(Args)}, no_path()) of
        true -> {ok, Args};
        false -> check_paths(F, Args, J)
    end.

%% {ok, Args} with every path normalized as it was checked (a path is used as
%% it was checked: "/data/link/" would be checked as the link, and used as
%% where the link leads), or the first forbidden one. Paths used without
%% following a last link (written, deleted, linked) are nofollow; the others
%% are resolved whole, so how they are spelt cannot change what they name.
%% The lock's owner is this channel's worker (the caller): no other pid is taken.
check_paths(sync_state, [Dest, Excl, Rw, Opts], J) when is_map(Opts) ->
    case maps:is_key(owner, Opts) of
        true -> {error, {forbidden, owner}};
        false -> then(check_paths(sync_state, [Dest, Excl, Rw], J), fun(A) -> A ++ [Opts] end)
    end;
check_paths(sync_state, [Dest, Excl, none], J) ->
    then(one(Dest, follow, J), fun(D) -> [D, Excl, none] end);
check_paths(sync_state, [Dest, Excl, Rw], J) when is_binary(Dest) ->
    %% the lib listing follows a link
    then(relsyncd_paths:check_many([Dest, Rw, <<Dest/binary, "/lib">>], follow, J),
         fun([D, R, _]) -> [D, Excl, R] end);
check_paths(manifest, [Root, O], J) -> then(one(Root, follow, J), fun(R) -> [R, O] end);
check_paths(list_dir, [Dir], J) -> then(one(Dir, follow, J), fun(D) -> [D] end);
check_paths(block_signatures, [Path, B], J) -> then(one(Path, follow, J), fun(P) -> [P, B] end);
check_paths(put_delta, [Path, Base | T], J) ->
    bind(one(Path, nofollow, J),
         fun(P) -> then(one(Base, follow, J), fun(B) -> [P, B | T] end) end);
check_paths(put_files, [Files, Token], J) ->
    then(check_paths(put_files, [Files], J), fun(A) -> A ++ [Token] end);
check_paths(put_files, [Files], J) when is_list(Files) ->
    entries(fun({P, _Mode, _Data, _Sha}) -> P; (_) -> bad end,
            fun({_, M, D, S}, P) -> {P, M, D, S} end, Files, nofollow, J);
check_paths(put_chunk, [_, _, _ | _] = A, J) -> first(A, nofollow, J);
check_paths(commit, [_, _, _ | _] = A, J) -> first(A, nofollow, J);
check_paths(delete_files, [Paths], J) ->
    then(relsyncd_paths:check_many(Paths, nofollow, J), fun(Ps) -> [Ps] end);
check_paths(delete_dirs, [Paths], J) ->
    then(relsyncd_paths:check_many(Paths, nofollow, J), fun(Ps) -> [Ps] end);
%% Where a link is made, and where it points (relsyncd_paths:check_target/3):
%% no link relsyncd makes leads out of the jail.
check_paths(make_symlinks, [Links], J) when is_list(Links) ->
    bind(entries(fun({Link, _Target}) -> Link; (_) -> bad end,
                 fun({_, T}, L) -> {L, T} end, Links, nofollow, J),
         fun([Checked]) -> then(targets(Checked, J), fun(_) -> [Checked] end) end);
check_paths(update_code_path, [Opts], J) when is_map(Opts) ->
    To = case maps:get(replace_prefix, Opts, none) of
             {_From, T} -> [T];
             Pairs when is_list(Pairs) -> [T || {_From, T} <- Pairs];
             _ -> []
         end,
    then(relsyncd_paths:check_many(To ++ maps:get(add, Opts, []), follow, J),
         fun(_) -> [Opts] end);
check_paths(load_fresh, [Mods], J) ->
    then(check_paths(load_modules, [Mods, soft], J), fun([Checked, _]) -> [Checked] end);
check_paths(load_modules, [Mods, Purge], J) when is_list(Mods) ->
    then(entries(fun(M) when is_tuple(M), tuple_size(M) >= 2 -> element(2, M); (_) -> bad end,
                 fun(M, P) -> setelement(2, M, P) end, Mods, follow, J),
         fun([Checked]) -> [Checked, Purge] end);
check_paths(upgrade, [Steps, Opts], J) when is_list(Steps), is_map(Opts) ->
    Check = fun({delete_module, M}) when is_atom(M) -> ok;
               %% An appup's apply runs code, as run_hook does: no path to check.
               ({apply, M, F, Args}) when is_atom(M), is_atom(F), is_list(Args) -> ok;
               (S) when is_tuple(S), tuple_size(S) >= 4 ->
                    checked(one(element(tuple_size(S) - 1, S), follow, J));
               %% The .app files and sys.config the application data is read from.
               ({read, P}) -> checked(one(P, follow, J));
               (Bad) -> {error, {forbidden, Bad}}
            end,
    Checked = case each(Check, Steps) of
                  ok -> each(Check, [{read, P} || P <- upgrade_reads(Opts)]);
                  Refused -> Refused
              end,
    then(Checked, fun(_) -> [Steps, Opts] end);
check_paths(_F, [Bad | _], _J) ->
    {error, {forbidden, Bad}};          % a path list that is not a list, ...
check_paths(F, [], _J) ->
    {error, {forbidden, F}}.

upgrade_reads(Opts) ->
    Apps = maps:get(apps, Opts, []),
    [P || P <- (if is_list(Apps) -> Apps; true -> [Apps] end) ++ [maps:get(config, Opts, none)],
          P =/= none].

%% The checked value given to Fun, whose result is the checked arguments
%% (then/2), or the next check's result (bind/2).
then({ok, X}, Fun) -> {ok, Fun(X)};
then(ok, Fun) -> {ok, Fun(ok)};
then({error, _} = E, _Fun) -> E.

bind({ok, X}, Fun) -> Fun(X);
bind({error, _} = E, _Fun) -> E.

first([Path | Rest], Mode, J) -> then(one(Path, Mode, J), fun(P) -> [P | Rest] end).

%% The path each entry of a request names (Pick gives it, or `bad` for an
%% entry of the wrong shape), checked together; Put puts the checked path
%% back into its entry. Answers [Entries] (the argument list of one).
entries(Pick, Put, Entries, Mode, J) ->
    case picked(Pick, Entries, []) of
        {ok, Paths} ->
            then(relsyncd_paths:check_many(Paths, Mode, J),
                 fun(Ps) -> [lists:zipwith(Put, Entries, Ps)] end);
        {bad, Bad} -> {error, {forbidden, Bad}}
    end.

picked(_Pick, [], Acc) -> {ok, lists:reverse(Acc)};
picked(Pick, [E | Es], Acc) ->
    case Pick(E) of
        bad -> {bad, E};
        P -> picked(Pick, Es, [P | Acc])
    end;
picked(_Pick, Bad, _Acc) -> {bad, Bad}.

targets([], _J) -> ok;
targets([{Link, Target} | Rest], J) ->
    case relsyncd_paths:check_target(Link, Target, J) of
        ok -> targets(Rest, J);
        E -> E
    end.

one(Path, Mode, J) -> relsyncd_paths:check(Path, Mode, J).

checked({ok, _}) -> ok;
checked(E) -> E.

each(_Fun, []) -> ok;
each(Fun, [X | Xs]) ->
    case Fun(X) of
        ok -> each(Fun, Xs);
        E -> E
    end;
each(_Fun, Bad) -> {error, {forbidden, Bad}}.

%% Load a module from a binary (a hook module pushed by the client). Old code
%% is purged softly first; if a process still runs it, nothing is loaded. OTP's
%% own modules are refused as the code server refuses sticky ones.
-spec load_binary(module(), file:filename_all(), binary()) ->
          {module, module()} | {error, term()}.
load_binary(Mod, Filename, Bin) when is_atom(Mod), is_binary(Bin),
                                     (is_binary(Filename) orelse is_list(Filename)) ->
    Otp = relsync_code:otp_own(Mod),
    case not Otp andalso code:soft_purge(Mod) of
        false when Otp -> {error, sticky_directory};
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
