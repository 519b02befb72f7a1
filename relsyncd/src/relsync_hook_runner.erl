%% relsync_hook_runner: part of relsync's target-side helper (see relsync_target).
%% Hooks: a presync/postsync function run with a time limit, its output kept.
-module(relsync_hook_runner).

-export([run_hook/3]).

-include("relsync_target.hrl").

-spec run_hook(module(), atom(), non_neg_integer()) ->
          {ok, term(), binary()} | {error, {atom(), term(), list()}, binary()}
        | {timeout, binary()} | {not_exported, binary()}.
run_hook(M, F, Timeout) when is_atom(M), is_atom(F), is_integer(Timeout), Timeout >= 0 ->
    _ = (catch code:ensure_loaded(M)),
    case erlang:function_exported(M, F, 0) of
        false -> {not_exported, <<>>};
        true -> run_hook_proc(M, F, Timeout)
    end;
run_hook(M, F, Timeout) ->
    {error, {error, badarg, [{relsync_target, run_hook, [M, F, Timeout], []}]}, <<>>}.

run_hook_proc(M, F, Timeout) ->
    Caller = self(),
    Ref = make_ref(),
    Cap = spawn(fun() -> capture_init(Caller) end),
    {Pid, MRef} = spawn_monitor(
                    fun() ->
                            group_leader(Cap, self()),
                            Res = try {ok, M:F()} catch C:R:St -> {error, {C, R, St}} end,
                            Caller ! {Ref, Res}
                    end),
    Cap ! {watch, Pid},
    {Result, Down} = receive
                         {Ref, Res} -> {Res, false};
                         {'DOWN', MRef, process, Pid, Why} -> {{error, {exit, Why, []}}, true}
                     after Timeout ->
                             exit(Pid, kill),
                             {timeout, false}
                     end,
    %% Return only once the hook process is gone (it exits right after
    %% sending its result, or was killed).
    Down orelse receive {'DOWN', MRef, process, Pid, _} -> true end,
    Final = receive {Ref, Late} -> Late after 0 -> Result end, % finished just in time
    Output = capture_stop(Cap),
    case Final of
        {ok, Value} -> {ok, Value, Output};
        {error, Err} -> {error, Err, Output};
        timeout -> {timeout, Output}
    end.

%% The capturing group leader. It watches the caller so that a killed rpc
%% worker takes the hook process and the capturer down with it.
capture_init(Caller) ->
    _ = monitor(process, Caller),
    capture_loop(Caller, undefined, [], 0).

capture_loop(Caller, Hook, Acc, Size) ->
    receive
        {io_request, From, ReplyAs, Req} ->
            {Reply, Acc1, Size1} = try io_request(Req, Acc, Size)
                                   catch _:_ -> {{error, request}, Acc, Size}
                                   end,
            From ! {io_reply, ReplyAs, Reply},
            capture_loop(Caller, Hook, Acc1, Size1);
        {watch, Pid} ->
            capture_loop(Caller, Pid, Acc, Size);
        {stop, Caller, Ref} ->
            Caller ! {Ref, iolist_to_binary(lists:reverse(Acc))};
        {'DOWN', _, process, Caller, _} when is_pid(Hook) ->
            exit(Hook, kill);
        {'DOWN', _, process, Caller, _} ->
            ok;
        _ ->
            capture_loop(Caller, Hook, Acc, Size)
    end.

capture_stop(Cap) ->
    Ref = monitor(process, Cap),
    Cap ! {stop, self(), Ref},
    receive
        {Ref, Bin} -> receive {'DOWN', Ref, process, Cap, _} -> Bin end; % gone when we return
        {'DOWN', Ref, process, Cap, _} -> <<>>
    end.

io_request({put_chars, Enc, Chars}, Acc, Size) ->
    case unicode:characters_to_binary(Chars, Enc, utf8) of
        Bin when is_binary(Bin) -> append(Bin, Acc, Size);
        _ -> {{error, put_chars}, Acc, Size}
    end;
io_request({put_chars, Enc, M, F, A}, Acc, Size) ->
    try apply(M, F, A) of
        Chars -> io_request({put_chars, Enc, Chars}, Acc, Size)
    catch _:_ -> {{error, F}, Acc, Size}
    end;
io_request({put_chars, Chars}, Acc, Size) ->
    io_request({put_chars, latin1, Chars}, Acc, Size);
io_request({put_chars, M, F, A}, Acc, Size) ->
    io_request({put_chars, latin1, M, F, A}, Acc, Size);
io_request({requests, Reqs}, Acc, Size) ->
    lists:foldl(fun(R, {ok, A, S}) -> io_request(R, A, S);
                   (_, Err) -> Err
                end, {ok, Acc, Size}, Reqs);
io_request(getopts, Acc, Size) ->
    {[{binary, false}, {encoding, unicode}], Acc, Size};
io_request(Req, Acc, Size) when element(1, Req) =:= get_chars;
                                element(1, Req) =:= get_line;
                                element(1, Req) =:= get_until ->
    {eof, Acc, Size};
io_request(_, Acc, Size) ->
    {{error, enotsup}, Acc, Size}.

%% Output is capped so that a runaway hook cannot exhaust the target's memory.
append(_Bin, Acc, Size) when Size >= ?MAX_OUTPUT -> {ok, Acc, Size};
append(Bin, Acc, Size) when Size + byte_size(Bin) > ?MAX_OUTPUT ->
    Head = case unicode:characters_to_binary(binary:part(Bin, 0, ?MAX_OUTPUT - Size)) of
               {incomplete, Whole, _} -> Whole;   % do not cut a character in two
               Whole -> Whole
           end,
    {ok, [<<"\n[relsync: output truncated]\n">>, Head | Acc], ?MAX_OUTPUT};
append(Bin, Acc, Size) -> {ok, [Bin | Acc], Size + byte_size(Bin)}.
