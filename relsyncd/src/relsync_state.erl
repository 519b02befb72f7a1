%% relsync_state: part of relsync's target-side helper (see relsync_target).
%% The VM's sync state: the sync lock, and the state table (pending marks, which
%% are correctness state, and the listing and hash caches).
%%
%% Hash cache: a named public ETS table (?STATE) keyed by absolute path, value
%% {Size, Mtime, Inode, Sha256}. It is owned by a process registered as ?STATE,
%% spawned unlinked (so it outlives the rpc worker) with init's group leader.
%% Once the table exists, the owner hibernates into timer:sleep(infinity), so
%% its stack and heap hold no reference to this module: reloading and purging
%% relsync_state (which kills processes running old code) leaves it alone.
%% Stop it with exit(whereis(relsync_target_state), kill); the table goes too.
%% A file whose mtime is within ?RACY_SECS of the clock is hashed but not
%% cached, so a same-size rewrite within the same second is never missed.
%% The same table keeps directory listings, keyed by {dir, Path}, see
%% relsync_manifest:walk/6.
-module(relsync_state).

-export([hold/1, pin/2]).
-export([cache_insert/5, cache_known/3, cache_listing/3, cache_lookup/1, clear_pending/1,
         code_state/0, drop_old_code/1, ensure_state/0, forget_loaded/1, holds_lock/1,
         keep_old_code/2, loaded_records/0, lock/2, mark_pending/1, old_code/1,
         record_loaded/2, unlock/1]).

-include("relsync_target.hrl").

%% The sync lock is a process registered as ?LOCK: registering is atomic, and
%% the name goes with the process. It monitors the lock's owner, and its
%% dictionary keeps who holds it. It waits hibernated (no code of this module
%% on its stack, so a reload leaves it be, see hold/1): the owner's 'DOWN' or
%% unlock/1 ends it, unless an upgrade pinned it (pin/2): then it ends once the
%% upgrade is over too. The same owner asking again gets the same token (a lock
%% request that was answered by an older helper).
lock(Owner, Who) ->
    Caller = self(),
    Ref = make_ref(),
    {Pid, MRef} = spawn_monitor(fun() -> lock_holder(Caller, Ref, Owner, Who) end),
    receive
        {Ref, Reply} -> erlang:demonitor(MRef, [flush]), Reply;
        {'DOWN', MRef, process, Pid, Reason} -> {error, Reason}
    end.

lock_holder(Caller, Ref, Owner, Who) ->
    case whereis(init) of
        undefined -> ok;
        Init -> group_leader(Init, self())
    end,
    try register(?LOCK, self()) of
        true ->
            Token = binary:encode_hex(relsync_hash:random_bytes(6)),
            put(?LOCK_KEY, #{token => Token, owner => Owner, who => Who,
                             since => erlang:system_time(second)}),
            _ = erlang:monitor(process, Owner),
            Caller ! {Ref, {ok, Token}},
            erlang:hibernate(?MODULE, hold, [#{owner => Owner}])
    catch error:badarg ->
            Caller ! {Ref, case lock_info() of
                               #{owner := Owner, token := Token} -> {ok, Token};
                               #{who := W, since := Since} -> {busy, #{who => W, since => Since}};
                               _ -> {busy, #{}}        % it just went: ask again
                           end}
    end.

%% The lock's holder between two messages. Held: the owner (until it goes or
%% unlocks) and a pinned upgrade (until it ends) keep it.
-spec hold(#{owner => pid(), pinned => pid()}) -> no_return().
hold(Held) ->
    Next = receive
               unlock -> maps:remove(owner, Held);
               {pin, From, Ref, Worker} ->
                   _ = erlang:monitor(process, Worker),
                   From ! {Ref, ok},
                   Held#{pinned => Worker};
               {'DOWN', _, process, Pid, _} ->
                   maps:filter(fun(_, P) -> P =/= Pid end, Held);
               _ -> Held
           end,
    case map_size(Next) of
        0 -> exit(normal);
        _ -> erlang:hibernate(?MODULE, hold, [Next])
    end.

%% Keep the lock Token names until Worker ends, even when its owner goes
%% first (an upgrade is one transaction: it finishes or undoes itself before
%% another sync may start). The empty token (a client from before the lock)
%% pins nothing.
-spec pin(binary(), pid()) -> ok | {error, lock_lost}.
pin(<<>>, _Worker) -> ok;
pin(Token, Worker) ->
    case {whereis(?LOCK), lock_info()} of
        {Pid, #{token := Token}} when is_pid(Pid) ->
            MRef = erlang:monitor(process, Pid),
            Pid ! {pin, self(), MRef, Worker},
            receive
                {MRef, ok} -> erlang:demonitor(MRef, [flush]), ok;
                {'DOWN', MRef, process, Pid, _} -> {error, lock_lost}
            end;
        _ -> {error, lock_lost}
    end.

%% What the lock's holder keeps (#{} when nobody holds it).
lock_info() ->
    case whereis(?LOCK) of
        undefined -> #{};
        Pid ->
            case erlang:process_info(Pid, dictionary) of
                {dictionary, Dict} -> proplists:get_value(?LOCK_KEY, Dict, #{});
                undefined -> #{}
            end
    end.

%% Release the lock Token names; waits (a little) until the next sync can take it.
-spec unlock(binary()) -> ok.
unlock(Token) when is_binary(Token) ->
    case {whereis(?LOCK), lock_info()} of
        {Pid, #{token := Token}} when is_pid(Pid) ->
            MRef = erlang:monitor(process, Pid),
            Pid ! unlock,
            receive {'DOWN', MRef, process, Pid, _} -> ok after 5000 -> ok end;
        _ -> ok
    end.

%% A write that carries a sync's token is refused once that sync no longer
%% holds the lock; the empty token (clients from before the lock) is not checked.
holds_lock(<<>>) -> ok;
holds_lock(Token) ->
    case lock_info() of
        #{token := Token} -> ok;
        _ -> {error, lock_lost}
    end.

cache_listing(Dir, {_, _, M, C} = Stamp, Listing) ->
    case erlang:system_time(second) - max(M, C) > ?RACY_SECS of
        true -> cache_put({{dir, Dir}, Stamp, Listing});
        false -> ok
    end.

cache_lookup(Abs) ->
    try ets:lookup(?STATE, Abs) catch error:badarg -> [] end.  % owner was killed

cache_insert(Abs, Size, Mtime, Ino, Hash) ->
    case abs(erlang:system_time(second) - Mtime) =< ?RACY_SECS of
        true -> ok;
        false -> cache_put({Abs, {Size, Mtime, Ino, Hash}})
    end.

%% After writing a file ourselves we know its hash (computed here, of the data
%% on the inode we wrote): seed the cache, skipping the racy-mtime rule, so the
%% next manifest does not re-read what was just pushed. Size, mtime and inode
%% come from our own descriptor, never from the path (whoever renamed a file
%% there since has not been hashed).
cache_known(Path0, #file_info{size = S, mtime = M, inode = I}, Hash) ->
    Path = filename:join([Path0]),              % same spelling as manifest's keys
    cache_put({Path, {S, M, I, Hash}}).

%% A cache entry (a listing, a file's hash) goes with the table if its owner
%% was killed, which only costs a re-read. Pending marks are correctness state
%% and never put this way (mark_pending/1).
cache_put(Entry) ->
    try ets:insert(?STATE, Entry) of
        true -> ok
    catch error:badarg -> ok
    end.

ensure_state() ->
    case ets:whereis(?STATE) of
        undefined -> start_state();
        _ -> ok
    end.

%% Race-safe: creating the named table is the lock. A loser finds the table
%% already there, which is all its caller needs.
start_state() ->
    Ref = make_ref(),
    Caller = self(),
    {Pid, MRef} = spawn_monitor(fun() -> state_owner(Caller, Ref) end),
    receive
        {Ref, Pid} -> erlang:demonitor(MRef, [flush]), ok;
        {'DOWN', MRef, process, Pid, _} -> ok
    end.

state_owner(Caller, Ref) ->
    case whereis(init) of
        undefined -> ok;
        Init -> group_leader(Init, self())
    end,
    try ets:new(?STATE, [named_table, public, set, {read_concurrency, true},
                         {write_concurrency, true}]) of
        _ ->
            catch register(?STATE, self()),
            Caller ! {Ref, self()},
            erlang:hibernate(timer, sleep, [infinity])
    catch error:badarg ->
            Caller ! {Ref, self()}              % someone else won the race
    end.

%% Before it writes anything, a sync marks the modules it will load or delete as
%% pending; loading or deleting one clears its mark. A sync that died half way
%% leaves its modules pending, so the next one handles them whatever the files
%% on disk say. In memory only: a reboot clears the marks with the code.
-spec mark_pending([module()]) -> ok.
mark_pending(Mods) when is_list(Mods) ->
    ensure_state(),
    true = ets:insert(?STATE, [{{pending, M}, true} || M <- Mods, is_atom(M)]),
    ok.

%% In embedded mode also every module loaded: nothing loads on demand there, so a
%% beam of the release the VM has not loaded (a reboot boots only what the boot
%% script names) is code it does not run, and the next sync loads it.
-spec code_state() -> #{recorded := #{module() => binary()}, pending := [module()],
                        loaded => [module()]}.
code_state() ->
    ensure_state(),
    Pending = try ets:match(?STATE, {{pending, '$1'}, '_'}) catch error:badarg -> [] end,
    State = #{recorded => relsync_code:loaded_shas(),
              pending => lists:sort([M || [M] <- Pending])},
    case code:get_mode() of
        embedded -> State#{loaded => [M || {M, _} <- code:all_loaded()]};
        interactive -> State
    end.

clear_pending(M) ->
    state_delete({pending, M}).

%% A module relsync loaded, with the SHA-256 of its beam: loading clears its
%% pending mark. The record outlives the load only while the module is loaded
%% (see relsync_code:loaded_shas/0).
-spec record_loaded(module(), binary()) -> ok.
record_loaded(M, Sha) when is_atom(M), is_binary(Sha) ->
    ensure_state(),
    true = ets:insert(?STATE, {{loaded, M}, Sha}),
    clear_pending(M).

-spec forget_loaded(module()) -> ok.
forget_loaded(M) ->
    state_delete({loaded, M}).

-spec loaded_records() -> [{module(), binary()}].
loaded_records() ->
    try ets:match(?STATE, {{loaded, '$1'}, '$2'}) of
        Rows -> [{M, Sha} || [M, Sha] <- Rows]
    catch error:badarg -> []
    end.

%% The code a module ran before a sync changed its files, kept for an upgrade
%% step that has to load it again: {File, Beam}, none (it was not loaded) or
%% unavailable (its beam on disk was not the code it ran).
-spec keep_old_code(module(), {binary(), binary()} | none | unavailable) -> ok.
keep_old_code(M, Kept) ->
    ensure_state(),
    true = ets:insert(?STATE, {{old_code, M}, Kept}),
    ok.

-spec old_code(module()) -> {ok, {binary(), binary()} | none | unavailable} | error.
old_code(M) ->
    try ets:lookup(?STATE, {old_code, M}) of
        [{_, Kept}] -> {ok, Kept};
        [] -> error
    catch error:badarg -> error
    end.

-spec drop_old_code([module()]) -> ok.
drop_old_code(Mods) ->
    lists:foreach(fun(M) -> state_delete({old_code, M}) end, Mods).

%% With the table gone (its owner killed) the entry is gone too.
state_delete(Key) ->
    try ets:delete(?STATE, Key) of
        true -> ok
    catch error:badarg -> ok
    end.
