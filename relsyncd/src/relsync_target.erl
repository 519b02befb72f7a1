%% relsync_target: target-side helper pushed by relsync with code:load_binary/3
%% and driven through rpc. It only offers small, generic primitives; every sync
%% decision is made on the Python side.
%%
%% Needs only kernel and stdlib; uses crypto's SHA-256 when the VM can load it,
%% else MD5 (erlang:md5_* BIFs): see hash_algo/0. Compiled on OTP 25, must load
%% on 25-27.
%% Conventions: paths are absolute binaries; expected failures are returned as
%% error tuples carrying posix atoms, never raised to the rpc caller.
%%
%% Hash cache: a named public ETS table (?STATE) keyed by absolute path, value
%% {Size, Mtime, Inode, Sha256}. It is owned by a process registered as ?STATE,
%% spawned unlinked (so it outlives the rpc worker) with init's group leader.
%% Once the table exists, the owner hibernates into timer:sleep(infinity), so
%% its stack and heap hold no reference to this module: reloading and purging
%% relsync_target (which kills processes running old code) leaves it alone.
%% Stop it with exit(whereis(relsync_target_state), kill); the table goes too.
%% A file whose mtime is within ?RACY_SECS of the clock is hashed but not
%% cached, so a same-size rewrite within the same second is never missed.
%% The same table keeps directory listings, keyed by {dir, Path}, see walk/6.
-module(relsync_target).

-export([sync_state/3, sync_state/4, unlock/1, info/0, list_dir/1, manifest/2,
         put_files/1, put_files/2, put_chunk/3, put_chunk/4, commit/3, commit/4,
         block_signatures/2, put_delta/5,
         delete_files/1, delete_dirs/1, make_symlinks/1, update_code_path/1,
         load_modules/2, delete_modules/2, loaded_shas/0, mark_pending/1, code_state/0,
         running_programs/1, stash_code/1, upgrade/2, old_code/0, check_beams/1,
         missing_apps/1,
         run_hook/3]).

-include_lib("kernel/include/file.hrl").

-define(STATE, relsync_target_state).
-define(LOCK, relsync_target_lock).
-define(LOCK_KEY, relsync_lock).
-define(TMP_PREFIX, ".relsync-tmp.").
-define(CHUNK, (1024 * 1024)).
-define(RACY_SECS, 2).
-define(NEW_FILE, [write, raw, binary, exclusive]).
%% Processes writing one put_files call's files at once (see put_parallel/2).
-define(WRITERS, 8).
%% Directories down to this depth below a manifest's root are walked by
%% processes of their own (lib/APP in a release is depth 2), at most this many
%% at a time (each may hold a 1 MiB read buffer while it hashes).
-define(FAN_OUT_DEPTH, 2).
-define(MAX_WALKERS, 16).
-define(MAX_OUTPUT, (1024 * 1024)).

-type posix() :: file:posix() | badarg.
-type entry() :: {binary(), regular, non_neg_integer(), non_neg_integer(), binary()}
               | {binary(), symlink, binary()}.
-type procs() :: [{pid(), atom()}].
-type purge() :: soft | brutal.

%%% ------------------------------------------------------------------ info

-spec info() -> #{otp_release := binary(), node := atom(), root_dir := binary(),
                  release_root := binary() | none, code_path := [binary()],
                  crypto := boolean(), hash := sha256 | md5, helper_vsn := 1}.
info() ->
    #{otp_release => list_to_binary(erlang:system_info(otp_release)),
      crypto => ensure_crypto(),
      hash => hash_algo(),
      node => node(),
      root_dir => name_bin(code:root_dir()),
      release_root => release_root(),
      code_path => [name_bin(P) || P <- code:get_path()],
      helper_vsn => 1}.

%% The directory of the release the VM was booted from (its boot script is
%% ROOT/releases/VSN/NAME), or none for a VM booted from OTP's own scripts.
release_root() ->
    case init:get_argument(boot) of
        {ok, [[Boot | _] | _]} ->
            Abs = filename:absname(Boot),
            VsnDir = filename:dirname(Abs),
            Releases = filename:dirname(VsnDir),
            case filename:basename(Releases) of
                "releases" -> name_bin(filename:dirname(Releases));
                _ -> none
            end;
        _ ->
            none
    end.

%%% ------------------------------------------------------------ sync_state

%% Everything a sync reads before it plans, in one call (one round trip and one
%% rpc worker instead of six): info/0, code_state/0, the manifest of the release
%% at Dest without the Excl prefixes and, with a shadow tree at Rw (none: no
%% shadow tree), the shadow tree's manifest and the names in Dest and Dest/lib.
-spec sync_state(binary(), [binary()], binary() | none) ->
          #{info := map(), code := map(),
            original | shadow := {ok, binary()} | {error, {binary(), posix()}},
            top | lib := {ok, [binary()]} | {error, posix()}}.
sync_state(Dest, Excl, Rw) when is_binary(Dest), is_list(Excl),
                                (is_binary(Rw) orelse Rw =:= none) ->
    Packed = #{format => packed},
    Shadow = case Rw of
                 none -> #{shadow => {ok, <<>>}, top => {ok, []}, lib => {ok, []}};
                 _ -> #{shadow => manifest(Rw, Packed), top => list_dir(Dest),
                        lib => list_dir(<<Dest/binary, "/lib">>)}
             end,
    Shadow#{info => info(), code => code_state(),
            original => manifest(Dest, Packed#{exclude => Excl})}.

%% sync_state/3, and what Dest is (directory, or why not). With lock (a sync
%% about to write), first take the VM's sync lock for Who (a label shown to a
%% client that finds the VM busy), held until Owner (default: the calling
%% process) goes, or unlock/1. Busy: only #{lock => {busy, Holder}}, nothing read.
-spec sync_state(binary(), [binary()], binary() | none, #{lock => binary(), owner => pid()}) ->
          #{lock => {ok, binary()} | {busy, map()} | {error, term()}, atom() => term()}.
sync_state(Dest, Excl, Rw, Opts) when is_binary(Dest), is_map(Opts) ->
    Locked = case Opts of
                 #{lock := Who} when is_binary(Who) -> lock(maps:get(owner, Opts, self()), Who);
                 _ -> none
             end,
    case Locked of
        {ok, _} -> (sync_state(Dest, Excl, Rw))#{lock => Locked, dest => dest_type(Dest)};
        none -> (sync_state(Dest, Excl, Rw))#{dest => dest_type(Dest)};
        _ -> #{lock => Locked}
    end.

dest_type(Dest) ->
    case file:read_file_info(Dest, [raw]) of
        {ok, #file_info{type = Type}} -> Type;
        {error, Reason} -> Reason
    end.

%%% ------------------------------------------------------------------ lock

%% The sync lock is a process registered as ?LOCK: registering is atomic, and
%% the name goes with the process. It monitors the lock's owner, and its
%% dictionary keeps who holds it. It hibernates into erlang:exit/1 (no code of
%% this module on its stack, so a reload leaves it be): the first message it
%% gets, the owner's 'DOWN' or unlock/1's, ends it. The same owner asking again
%% gets the same token (a lock request that was answered by an older helper).
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
            Token = binary:encode_hex(random_bytes(6)),
            put(?LOCK_KEY, #{token => Token, owner => Owner, who => Who,
                             since => erlang:system_time(second)}),
            _ = erlang:monitor(process, Owner),
            Caller ! {Ref, {ok, Token}},
            erlang:hibernate(erlang, exit, [normal])
    catch error:badarg ->
            Caller ! {Ref, case lock_info() of
                               #{owner := Owner, token := Token} -> {ok, Token};
                               #{who := W, since := Since} -> {busy, #{who => W, since => Since}};
                               _ -> {busy, #{}}        % it just went: ask again
                           end}
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

%% SHA-256 needs crypto. Embedded-mode targets (the usual case) load nothing on
%% demand, so load it explicitly when it is not loaded yet: from the code path,
%% else from the OTP libraries beside a release that does not carry it (under
%% code:root_dir()/lib, or where kernel comes from in a slim release), whose
%% ebin then joins the code path.
ensure_crypto() ->
    case code:is_loaded(crypto) of
        {file, _} -> true;
        false ->
            case code:load_file(crypto) of
                {module, crypto} -> true;
                {error, _} -> load_crypto_from_root()
            end
    end.

load_crypto_from_root() ->
    Libs = otp_libs(),
    Found = [E || L <- Libs, E <- filelib:wildcard(filename:join([L, "crypto-*", "ebin"]))],
    case lists:reverse(lists:sort(Found)) of
        [Ebin | _] ->
            true = code:add_pathz(Ebin),
            case code:load_file(crypto) of
                {module, crypto} -> true;
                {error, _} -> _ = code:del_path(Ebin), false
            end;
        [] -> false
    end.

%% The content hash this VM computes (and relsync compares): SHA-256 with
%% crypto, else MD5, which the runtime always has. Fixed for the VM's life
%% unless crypto gets loaded later; cached hashes of the other kind are ignored.
-spec hash_algo() -> sha256 | md5.
hash_algo() ->
    case ensure_crypto() of
        true -> sha256;
        false -> md5
    end.

hash_init() ->
    case hash_algo() of
        sha256 -> {sha256, crypto:hash_init(sha256)};
        md5 -> {md5, erlang:md5_init()}
    end.

hash_update({sha256, Ctx}, Data) -> {sha256, crypto:hash_update(Ctx, Data)};
hash_update({md5, Ctx}, Data) -> {md5, erlang:md5_update(Ctx, Data)}.

hash_final({sha256, Ctx}) -> crypto:hash_final(Ctx);
hash_final({md5, Ctx}) -> erlang:md5_final(Ctx).

hash(Data) -> hash_final(hash_update(hash_init(), Data)).

hash_size() ->
    case hash_algo() of
        sha256 -> 32;
        md5 -> 16
    end.

random_bytes(N) ->
    case ensure_crypto() of
        true -> crypto:strong_rand_bytes(N);
        false -> rand:bytes(N)
    end.

%% Names in a directory ([] when it does not exist), sorted.
-spec list_dir(binary()) -> {ok, [binary()]} | {error, posix()}.
list_dir(Dir) when is_binary(Dir) ->
    case prim_file:list_dir(Dir) of
        {ok, Names} -> {ok, lists:sort([name_bin(N) || N <- Names])};
        {error, enoent} -> {ok, []};
        {error, _} = E -> E
    end;
list_dir(_) ->
    {error, badarg}.

%%% -------------------------------------------------------------- manifest

%% With format => packed the entries come as one binary (see pack_entry/1),
%% which the client decodes far faster than thousands of tuples. A helper that
%% predates the option ignores it and sends the list: clients accept both.
-spec manifest(binary(), #{exclude => [binary()], format => list | packed}) ->
          {ok, [entry()] | binary()} | {error, {binary(), posix()}}.
manifest(Root, Opts) when is_binary(Root), is_map(Opts) ->
    Excl = maps:get(exclude, Opts, []),
    ensure_state(),
    case file:read_file_info(Root, [raw, {time, posix}]) of
        {ok, #file_info{type = directory} = FI} ->
            Slots = atomics:new(1, []),
            ok = atomics:put(Slots, 1, ?MAX_WALKERS),
            try joined(walk(strip_slash(Root), FI, <<>>, Excl, {0, Slots}, [])) of
                Acc -> {ok, format(maps:get(format, Opts, list), lists:keysort(1, Acc))}
            catch throw:{walk_error, Path, Reason} -> {error, {Path, Reason}}
            after abandon_walkers()
            end;
        {ok, _} -> {error, {Root, enotdir}};
        {error, enoent} -> {ok, format(maps:get(format, Opts, list), [])};
        {error, Reason} -> {error, {Root, Reason}}
    end;
manifest(Root, _Opts) ->
    {error, {Root, badarg}}.

format(packed, Entries) -> << <<(pack_entry(E))/binary>> || E <- Entries >>;
format(_, Entries) -> Entries.

%% One entry, lengths and numbers big-endian:
%%   regular: <<0, RelLen:32, Rel, Size:64, Mode:16, HashLen:8, Hash>>
%%   symlink: <<1, RelLen:32, Rel, TargetLen:32, Target>>
pack_entry({Rel, regular, Size, Mode, Hash}) ->
    <<0, (byte_size(Rel)):32, Rel/binary, Size:64, Mode:16, (byte_size(Hash)):8, Hash/binary>>;
pack_entry({Rel, symlink, Target}) ->
    <<1, (byte_size(Rel)):32, Rel/binary, (byte_size(Target)):32, Target/binary>>.

%% Hot path (thousands of files on every sync): raw prim_file calls, no file
%% server round trips, binary paths, and only the exclusion prefixes that can
%% still match below the current directory. Fan is {Depth, Slots}: Dir's depth
%% below the root and the free walker slots (see walk_job/5).
%%
%% Each file call is a round trip to a dirty I/O scheduler (~25 us on a board
%% whose schedulers sleep at once), so a directory's listing is cached: which
%% names it holds, and the target of each symlink. Names cannot come or go, and
%% a symlink cannot be re-pointed, without changing the directory's mtime and
%% ctime, so while its stamp (device, inode, mtime, ctime) is unchanged the
%% listing is reused and its symlinks cost no call at all. Other entries are
%% still stat'ed: a regular file may be rewritten in place. As for hashes, a
%% directory changed within ?RACY_SECS of the clock is not cached.
walk(Dir, DirFI, RelDir, Excl, Fan, Acc0) ->
    Stamp = dir_stamp(DirFI),
    Entry = fun(Name, Acc) ->
                    walk_entry(child(Dir, Name), rel(RelDir, Name), Name, Excl, Fan, Acc)
            end,
    case cache_lookup({dir, Dir}) of
        [{_, Stamp, Listing}] ->
            lists:foldl(fun({Name, {symlink, Target}}, Acc) ->
                                Rel = rel(RelDir, Name),
                                case excluded(Rel, Excl) of
                                    true -> Acc;
                                    false -> [{Rel, symlink, Target} | Acc]
                                end;
                           ({Name, stat}, Acc) ->
                                element(2, Entry(Name, Acc))
                        end, Acc0, Listing);
        _ ->
            case prim_file:list_dir(Dir) of
                {ok, Names} ->
                    {Listing, Acc} = lists:mapfoldl(fun(N, A) ->
                                                            Name = name_bin(N),
                                                            {Kind, A1} = Entry(Name, A),
                                                            {{Name, Kind}, A1}
                                                    end, Acc0, Names),
                    cache_listing(Dir, Stamp, Listing),
                    Acc;
                {error, enoent} -> Acc0;          % vanished while walking
                {error, R} -> throw({walk_error, Dir, R})
            end
    end.

rel(<<>>, Name) -> Name;
rel(RelDir, Name) -> <<RelDir/binary, "/", Name/binary>>.

dir_stamp(#file_info{major_device = Dev, inode = Ino, mtime = M, ctime = C}) ->
    {Dev, Ino, M, C}.

cache_listing(Dir, {_, _, M, C} = Stamp, Listing) ->
    case erlang:system_time(second) - max(M, C) > ?RACY_SECS of
        true -> cache_put({{dir, Dir}, Stamp, Listing});
        false -> ok
    end.

%% The entries for one name of a directory (added to Acc), and how the listing
%% cache keeps it: {symlink, Target} for a symlink whose target was read, else
%% stat (looked at again on every walk). An excluded name is not even stat'ed.
walk_entry(Abs, Rel, Name, Excl, Fan, Acc) ->
    case excluded(Rel, Excl) of
        true -> {stat, Acc};
        false -> walk_included(Abs, Rel, Name, Excl, Fan, Acc)
    end.

walk_included(Abs, Rel, Name, Excl, {Depth, Slots} = Fan, Acc) ->
    case prim_file:read_link_info(Abs, [{time, posix}]) of
        {ok, #file_info{type = directory} = FI} ->
            Sub = <<Rel/binary, "/">>,
            case excluded(Sub, Excl) of
                true -> {stat, Acc};
                false ->
                    Below = {Depth + 1, Slots},
                    case Depth < ?FAN_OUT_DEPTH andalso take_slot(Fan) of
                        true -> {stat, [walk_job(Abs, FI, Rel, below(Sub, Excl), Below) | Acc]};
                        false -> {stat, walk(Abs, FI, Rel, below(Sub, Excl), Below, Acc)}
                    end
            end;
        {ok, #file_info{type = Type} = FI} when Type =:= regular; Type =:= symlink ->
            case is_tmp_name(Name) of
                true -> {stat, [tmp_entry(Rel, FI) | Acc]};
                false ->
                    case file_entry(Abs, Rel, FI) of
                        {_, symlink, Target} = E -> {{symlink, Target}, [E | Acc]};
                        E -> {stat, [E | Acc]}
                    end
            end;
        {ok, _} -> {stat, Acc};                   % devices, fifos, sockets
        {error, enoent} -> {stat, Acc};           % vanished while walking
        {error, R} -> throw({walk_error, Abs, R})
    end.

%% A directory walked by a process of its own (a walker), so that the stat
%% calls (each a round trip to a dirty I/O scheduler) of several directories
%% overlap. Its part stands in the accumulator as {'$walk', Pid, MRef} until
%% joined/1 collects it. It is linked, so it dies with its caller (an rpc that
%% timed out), and it catches everything: what it throws or raises is thrown or
%% raised again in its caller, as if the walk had run there. It is recorded in
%% the caller's process dictionary until collected, for abandon_walkers/0.
walk_job(Abs, FI, Rel, Excl, Fan) ->
    Parent = self(),
    {Pid, MRef} = spawn_opt(fun() -> Parent ! {self(), walker(Abs, FI, Rel, Excl, Fan)} end,
                            [link, monitor]),
    put({?MODULE, walker, Pid}, MRef),
    {'$walk', Pid, MRef}.

%% A walker holds one of the walk's slots (taken by its caller, take_slot/1)
%% while it walks its own part, then gives it back before it waits for the
%% walkers it started in turn.
walker(Abs, FI, Rel, Excl, {_, Slots} = Fan) ->
    try
        Own = try walk(Abs, FI, Rel, Excl, Fan, []) after atomics:add(Slots, 1, 1) end,
        {ok, joined(Own)}
    catch throw:{walk_error, _, _} = E -> E;
          C:R:St -> {raised, C, R, St}
    after abandon_walkers()
    end.

take_slot({_, Slots}) ->
    case atomics:sub_get(Slots, 1, 1) >= 0 of
        true -> true;
        false -> ok = atomics:add(Slots, 1, 1), false   % none free: walk it in line
    end.

%% The accumulator with every walker's part in place of its {'$walk', ...}.
%% The first failure is thrown (or raised) at once; the caller's `after` then
%% stops the walkers not collected yet (abandon_walkers/0).
joined(Acc) -> joined(Acc, []).

joined([{'$walk', Pid, MRef} | Rest], Acc) ->
    receive
        {Pid, Result} ->
            erlang:demonitor(MRef, [flush]),
            forget_walker(Pid),
            case Result of
                {ok, Part} -> joined(Rest, Part ++ Acc);
                {raised, Class, Reason, Stack} -> erlang:raise(Class, Reason, Stack);
                Error -> throw(Error)
            end;
        {'DOWN', MRef, process, Pid, Reason} ->         % killed from outside
            forget_walker(Pid),
            exit({walk_failed, Reason})
    end;
joined([Entry | Rest], Acc) -> joined(Rest, [Entry | Acc]);
joined([], Acc) -> Acc.

forget_walker(Pid) ->
    unlink(Pid),
    receive {'EXIT', Pid, _} -> ok after 0 -> ok end,   % a caller trapping exits
    erase({?MODULE, walker, Pid}).

%% Stop the walkers of this process not collected yet (after a failure; their
%% own walkers die with them through the link) and leave no trace of them: no
%% message in the mailbox, no entry in the process dictionary.
abandon_walkers() ->
    lists:foreach(fun({{?MODULE, walker, Pid}, MRef}) ->
                          forget_walker(Pid),
                          exit(Pid, kill),
                          receive {'DOWN', MRef, process, Pid, _} -> ok end,
                          receive {Pid, _} -> ok after 0 -> ok end;
                     (_) -> ok
                  end, get()).

child(<<"/">>, Name) -> <<"/", Name/binary>>;
child(Dir, Name) -> <<Dir/binary, "/", Name/binary>>.

%% The prefixes that can still match an entry below directory Sub ("a/b/").
below(_Sub, []) -> [];
below(Sub, Excl) ->
    [P || P <- Excl, binary:longest_common_prefix([Sub, P]) =:= byte_size(Sub)].

file_entry(Abs, Rel, #file_info{type = symlink}) ->
    case file:read_link_all(Abs) of
        {ok, Target} -> {Rel, symlink, name_bin(Target)};
        {error, R} -> throw({walk_error, Abs, R})
    end;
file_entry(Abs, Rel, #file_info{size = Size, mode = Mode} = FI) ->
    {Rel, regular, Size, Mode band 8#7777, cached_hash(Abs, FI)}.

%% A temp file left by an interrupted sync (client killed, power cut): listed
%% as a regular file with an empty hash and never hashed, so the plan removes it.
tmp_entry(Rel, #file_info{size = Size, mode = Mode}) ->
    {Rel, regular, Size, Mode band 8#7777, <<>>}.

excluded(Rel, Prefixes) ->
    lists:any(fun(P) -> binary:longest_common_prefix([Rel, P]) =:= byte_size(P) end,
              Prefixes).

is_tmp_name(Name) ->
    binary:longest_common_prefix([Name, <<?TMP_PREFIX>>]) =:= byte_size(<<?TMP_PREFIX>>).

cached_hash(Abs, #file_info{size = Size, mtime = Mtime, inode = Ino}) ->
    Want = hash_size(),
    case cache_lookup(Abs) of
        [{_, {Size, Mtime, Ino, Hash}}] when byte_size(Hash) =:= Want -> Hash;
        _ ->
            Hash = case hash_file(Abs) of
                       {ok, H} -> H;
                       {error, R} -> throw({walk_error, Abs, R})
                   end,
            %% Cache only if the file did not change while we read it.
            case file:read_link_info(Abs, [raw, {time, posix}]) of
                {ok, #file_info{size = Size, mtime = Mtime, inode = Ino}} ->
                    cache_insert(Abs, Size, Mtime, Ino, Hash);
                _ -> ok
            end,
            Hash
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

%%% ------------------------------------------------------------- put_files

-spec put_files([{binary(), integer(), binary(), binary()}]) ->
          ok | {error, binary(), posix() | hash_mismatch}.
put_files(Files) -> put_files(Files, <<>>).

%% Token: the sync's (see sync_state/4), which names its temporary files and
%% must still hold the lock; <<>> for a client that takes no lock.
-spec put_files([{binary(), integer(), binary(), binary()}], binary()) ->
          ok | {error, lock_lost} | {error, binary(), posix() | hash_mismatch}.
put_files(Files, Token) when is_list(Files), is_binary(Token) ->
    case holds_lock(Token) of
        ok -> put_parallel(Files, Token);
        Lost -> Lost
    end.

%% The files of one call are written by up to ?WRITERS processes at once. Each
%% file still has its own fdatasync before its rename; concurrent flushes are
%% committed together by the file system instead of one journal commit a file.
put_parallel(Files, Token) ->
    N = max(1, min(?WRITERS, length(Files))),
    Numbered = lists:zip(lists:seq(0, length(Files) - 1), Files),
    Writers = [spawn_monitor(fun() -> exit({written, put_each(Part, Token)}) end)
               || K <- lists:seq(0, N - 1),
                  Part <- [[F || {I, F} <- Numbered, I rem N =:= K]]],
    case [R || R <- [written(Ref) || {_Pid, Ref} <- Writers], R =/= ok] of
        [] -> ok;
        [Error | _] -> Error
    end.

written(Ref) ->
    receive
        {'DOWN', Ref, process, _, {written, Result}} -> Result;
        {'DOWN', Ref, process, _, Reason} -> erlang:error(Reason)
    end.

put_each([], _Token) -> ok;
put_each([{Path, Mode, Data, Sha} | Rest], Token) when is_binary(Path), is_integer(Mode),
                                                      is_binary(Data), is_binary(Sha) ->
    Tmp = tmp_path(Path, Token),
    Result = case hash(Data) of
                 Sha -> case write_new(Tmp, Data, sync) of
                            {ok, Written} -> install(Tmp, Written, Path, Mode, Sha);
                            Err -> Err
                        end;
                 _ -> {error, hash_mismatch}
             end,
    case Result of
        ok -> put_each(Rest, Token);
        {error, Reason} -> _ = file:delete(Tmp), {error, Path, Reason}
    end;
put_each([Bad | _], _Token) -> {error, Bad, badarg}.

put_chunk(Path, Offset, Data) -> put_chunk(Path, Offset, Data, <<>>).

-spec put_chunk(binary(), non_neg_integer(), binary(), binary()) ->
          ok | {error, posix() | lock_lost}.
put_chunk(Path, Offset, Data, Token) when is_binary(Path), is_integer(Offset), Offset >= 0,
                                          is_binary(Data), is_binary(Token) ->
    Tmp = tmp_path(Path, Token),
    Written = case {holds_lock(Token), Offset} of
                  {ok, 0} -> write_new(Tmp, Data, nosync);
                  {ok, _} -> write_at(Tmp, Offset, Data);
                  {Lost, _} -> Lost
              end,
    case Written of
        ok -> ok;
        {error, _} = E -> _ = file:delete(Tmp), E     % e.g. enospc: free what it took
    end;
put_chunk(_, _, _, _) -> {error, badarg}.

commit(Path, Mode, Sha) -> commit(Path, Mode, Sha, <<>>).

-spec commit(binary(), integer(), binary(), binary()) ->
          ok | {error, posix() | hash_mismatch | lock_lost | staged_file_replaced}.
commit(Path, Mode, Sha, Token) when is_binary(Path), is_integer(Mode), is_binary(Sha),
                                    is_binary(Token) ->
    Tmp = tmp_path(Path, Token),
    case do_steps([fun() -> holds_lock(Token) end,
                   fun() -> finish(Tmp, Path, Mode, Sha) end]) of
        ok -> ok;
        {error, enoent} = E -> E;               % nothing staged
        {error, _} = E -> _ = file:delete(Tmp), E
    end;
commit(_, _, _, _) -> {error, badarg}.

%% Block delta (see relsync/delta.py): the sums of Path's consecutive full
%% blocks, then a new file built from copies of Base's bytes and literal data.
-spec block_signatures(binary(), pos_integer()) ->
          {ok, [{non_neg_integer(), binary()}]} | {error, posix()}.
block_signatures(Path, Block) when is_binary(Path), is_integer(Block), Block > 0 ->
    with_fd(Path, [read, raw, binary, read_ahead],
            fun(Fd) -> {ok, block_sums(Fd, Block, [])} end);
block_signatures(_, _) ->
    {error, badarg}.

block_sums(Fd, Block, Acc) ->
    case file:read(Fd, Block) of
        {ok, Data} when byte_size(Data) =:= Block ->
            block_sums(Fd, Block, [{erlang:adler32(Data), erlang:md5(Data)} | Acc]);
        _ -> lists:reverse(Acc)                   % a short tail block is sent as data
    end.

-spec put_delta(binary(), binary(), [{copy, non_neg_integer(), non_neg_integer()} | binary()],
                integer(), binary()) -> ok | {error, posix() | hash_mismatch}.
put_delta(Path, Base, Ops, Mode, Sha) when is_binary(Path), is_binary(Base), is_list(Ops),
                                           is_integer(Mode), is_binary(Sha) ->
    Tmp = tmp_path(Path, call_token()),
    %% A shadow tree may not have Path's directory yet (its base is the original):
    %% open_new/1 makes it.
    Build = fun(In) -> use_fd(open_new(Tmp), fun(Out) -> apply_ops(Ops, In, Out) end) end,
    Built = with_fd(Base, [read, raw, binary], Build),
    Result = case Built of
                 ok -> finish(Tmp, Path, Mode, Sha);
                 {error, _} = E -> E
             end,
    case Result of
        ok -> ok;
        {error, _} = Err -> _ = file:delete(Tmp), Err
    end;
put_delta(_, _, _, _, _) ->
    {error, badarg}.

apply_ops([], _In, _Out) -> ok;
%% A copy (merged: it may span most of the base) goes ?CHUNK bytes at a time.
apply_ops([{copy, Offset, Len} | Ops], In, Out) when is_integer(Offset), Offset >= 0,
                                                     is_integer(Len), Len >= 0 ->
    Piece = min(Len, ?CHUNK),
    case file:pread(In, Offset, Piece) of
        {ok, Data} when byte_size(Data) =:= Piece ->
            write_then(Out, Data, rest_of_copy(Offset + Piece, Len - Piece, Ops), In);
        {ok, _} -> {error, einval};               % the base is shorter than announced
        eof -> {error, einval};
        {error, _} = E -> E
    end;
apply_ops([Data | Ops], In, Out) when is_binary(Data) ->
    write_then(Out, Data, Ops, In);
apply_ops(_, _In, _Out) ->
    {error, badarg}.

rest_of_copy(_Offset, 0, Ops) -> Ops;
rest_of_copy(Offset, Len, Ops) -> [{copy, Offset, Len} | Ops].

write_then(Out, Data, Ops, In) ->
    case file:write(Out, Data) of
        ok -> apply_ops(Ops, In, Out);
        {error, _} = E -> E
    end.

%% Dir/.relsync-tmp.<Token>.<Base>.part (no token: Dir/.relsync-tmp.<Base>.part):
%% never named like a module (*.beam) or an app file, and one sync's own.
tmp_path(Path, Token) ->
    Base = filename:basename(Path),
    Name = case Token of
               <<>> -> <<?TMP_PREFIX, Base/binary, ".part">>;
               _ -> <<?TMP_PREFIX, Token/binary, ".", Base/binary, ".part">>
           end,
    filename:join(filename:dirname(Path), Name).

%% A temporary name of its own for a file made within one call.
call_token() ->
    integer_to_binary(erlang:unique_integer([positive]), 36).

%% Data as a new Tmp (see open_new/1); with sync, flushed too (fdatasync:
%% enough for a new file's content and size to survive a power cut) and the
%% file's info returned, for install/5.
write_new(Tmp, Data, Sync) ->
    use_fd(open_new(Tmp),
           fun(Fd) ->
                   case file:pwrite(Fd, 0, Data) of
                       ok when Sync =:= sync -> synced_info(Fd);
                       Written -> Written
                   end
           end).

synced_info(Fd) ->
    case file:datasync(Fd) of
        ok -> file:read_file_info(Fd, [raw, {time, posix}]);
        Err -> Err
    end.

%% Always a fresh inode of our own: the file is opened exclusive, so we never
%% write through anything. Only when that fails is a leftover tmp (maybe a
%% symlink) removed, or the missing directory made, and the open tried again:
%% each file call is a trip to a dirty I/O scheduler, so the usual case makes one.
open_new(Tmp) ->
    case file:open(Tmp, ?NEW_FILE) of
        {error, eexist} -> open_new_after(file:delete(Tmp), Tmp);
        {error, enoent} -> open_new_after(mkdir_p(filename:dirname(Tmp)), Tmp);
        Opened -> Opened
    end.

open_new_after(ok, Tmp) -> file:open(Tmp, ?NEW_FILE);
open_new_after(Err, _Tmp) -> Err.

%% Opening with `write` would create a missing file: a lost first chunk must
%% show up as enoent instead.
write_at(Tmp, Offset, Data) ->
    do_steps([fun() -> is_regular(Tmp) end,
              fun() -> with_fd(Tmp, [read, write, raw, binary],
                               fun(Fd) -> file:pwrite(Fd, Offset, Data) end) end]).

%% Verify a file staged over several calls, flush its data, then install it.
finish(Tmp, Path, Mode, Sha) ->
    Verified = case is_regular(Tmp) of
                   ok -> with_fd(Tmp, [read, raw, binary], fun(Fd) -> verify_and_sync(Fd, Sha) end);
                   Err -> Err
               end,
    case Verified of
        {ok, Info} -> install(Tmp, Info, Path, Mode, Sha);
        Error -> Error
    end.

%% Give the flushed Tmp its mode and rename it over Path, once it is checked to
%% be still the file that was verified (Info, from its descriptor); then cache
%% the hash for that file.
install(Tmp, #file_info{inode = Ino} = Info, Path, Mode, Sha) ->
    case do_steps([fun() -> same_inode(Tmp, Ino) end,
                   fun() -> file:write_file_info(Tmp, #file_info{mode = Mode band 8#7777},
                                                 [raw]) end,
                   fun() -> file:rename(Tmp, Path) end]) of
        ok -> cache_known(Path, Info, Sha);
        Err -> Err
    end.

same_inode(Tmp, Ino) ->
    case file:read_link_info(Tmp, [raw]) of
        {ok, #file_info{type = regular, inode = Ino}} -> ok;
        {ok, _} -> {error, staged_file_replaced};
        Err -> Err
    end.

verify_and_sync(Fd, Sha) ->
    case hash_fd(Fd, hash_init()) of
        {ok, Sha} -> synced_info(Fd);
        {ok, _} -> {error, hash_mismatch};
        Err -> Err
    end.

hash_file(Path) ->
    with_fd(Path, [read, raw, binary], fun(Fd) -> hash_fd(Fd, hash_init()) end).

hash_fd(Fd, Ctx) ->
    case file:read(Fd, ?CHUNK) of
        {ok, Bin} -> hash_fd(Fd, hash_update(Ctx, Bin));
        eof -> {ok, hash_final(Ctx)};
        {error, _} = E -> E
    end.

with_fd(Path, Modes, Fun) ->
    use_fd(file:open(Path, Modes), Fun).

use_fd(Opened, Fun) ->
    case Opened of
        {ok, Fd} ->
            try Fun(Fd) of
                ok -> file:close(Fd);           % close errors count (e.g. NFS)
                {ok, _} = Ok -> closed_then(file:close(Fd), Ok);
                Other -> _ = file:close(Fd), Other
            catch C:R:St -> _ = file:close(Fd), erlang:raise(C, R, St)
            end;
        Err -> Err
    end.

closed_then(ok, Result) -> Result;
closed_then(Err, _Result) -> Err.

%% The staged file must be our own regular file, never followed through a link.
is_regular(Tmp) ->
    case file:read_link_info(Tmp, [raw]) of
        {ok, #file_info{type = regular}} -> ok;
        {ok, _} -> {error, einval};
        Err -> Err
    end.

%% Create Dir and its parents; an existing non-directory is enotdir.
mkdir_p(Dir) ->
    case file:read_file_info(Dir, [raw]) of
        {ok, #file_info{type = directory}} -> ok;
        {ok, _} -> {error, enotdir};
        {error, enoent} ->
            Parent = filename:dirname(Dir),
            case Parent =:= Dir orelse mkdir_p(Parent) of
                true -> {error, enoent};
                ok -> case file:make_dir(Dir) of
                          {error, eexist} -> mkdir_p(Dir); % lost a race, recheck
                          R -> R
                      end;
                Err -> Err
            end;
        Err -> Err
    end.

do_steps([]) -> ok;
do_steps([F | Fs]) ->
    case F() of
        ok -> do_steps(Fs);
        {ok, _} -> do_steps(Fs);
        {error, _} = E -> E
    end.

%%% ------------------------------------------------ deleting and symlinks

-spec delete_files([binary()]) -> ok | {error, binary(), posix()}.
delete_files([]) -> ok;
delete_files([Path | Rest]) ->
    case file:delete(Path) of
        R when R =:= ok; R =:= {error, enoent} -> delete_files(Rest);
        {error, Reason} -> {error, Path, Reason}
    end.

%% Deepest first, so a directory and its (empty) subdirectories can be given
%% in any order. A non-empty directory is reported as enotempty.
-spec delete_dirs([binary()]) -> ok | {error, binary(), posix()}.
delete_dirs(Paths) ->
    Sorted = lists:reverse(lists:sort([{length(filename:split(P)), P} || P <- Paths])),
    del_dirs([P || {_, P} <- Sorted]).

del_dirs([]) -> ok;
del_dirs([Dir | Rest]) ->
    case file:del_dir(Dir) of
        R when R =:= ok; R =:= {error, enoent} -> del_dirs(Rest);
        {error, eexist} -> {error, Dir, enotempty};
        {error, Reason} -> {error, Dir, Reason}
    end.

-spec make_symlinks([{binary(), binary()}]) -> ok | {error, binary(), posix()}.
make_symlinks([]) -> ok;
make_symlinks([{Link, Target} | Rest]) ->
    Tmp = tmp_path(Link, call_token()),
    Steps = [fun() -> mkdir_p(filename:dirname(Link)) end,
             fun() -> case file:delete(Tmp) of {error, enoent} -> ok; R -> R end end,
             fun() -> file:make_symlink(Target, Tmp) end,
             fun() -> file:rename(Tmp, Link) end],
    case do_steps(Steps) of
        ok -> make_symlinks(Rest);
        {error, Reason} -> _ = file:delete(Tmp), {error, Link, Reason}
    end.

%%% ------------------------------------------------------------- code path

%% The new path is installed with one code:set_path/1 call, which validates
%% every entry; non-directories are reported as {error, {bad_directory, Dirs}}.
%% replace_prefix: one {From, To} or a list of them, applied in order.
-spec update_code_path(#{replace_prefix => {binary(), binary()} | [{binary(), binary()}] | none,
                         add => [binary()], remove => [binary()]}) ->
          {ok, [binary()]} | {error, {bad_directory, [binary()]}}.
update_code_path(Opts) when is_map(Opts) ->
    Old = [name_bin(P) || P <- code:get_path()],
    Pairs = case maps:get(replace_prefix, Opts, none) of
                none -> [];
                {_, _} = Pair -> [Pair];
                List when is_list(List) -> List
            end,
    Replaced = lists:foldl(fun({From, To}, Path) ->
                                   [rewrite(P, strip_slash(From), strip_slash(To)) || P <- Path]
                           end, Old, Pairs),
    Remove = maps:get(remove, Opts, []),
    Kept = [P || P <- Replaced, not lists:member(P, Remove)],
    New = dedup(Kept ++ maps:get(add, Opts, [])),
    case New =:= Old of
        true -> {ok, Old};
        false ->
            case code:set_path([to_list(P) || P <- New]) of
                true -> {ok, [name_bin(P) || P <- code:get_path()]};
                _BadDirectory ->
                    {error, {bad_directory, [P || P <- New, not filelib:is_dir(P)]}}
            end
    end.

rewrite(From, From, To) -> To;
rewrite(P, From, To) ->
    N = byte_size(From),
    case P of
        <<From:N/binary, "/", Rest/binary>> -> <<To/binary, "/", Rest/binary>>;
        _ -> P
    end.

strip_slash(<<"/">>) -> <<"/">>;
strip_slash(P) ->
    case binary:last(P) of
        $/ -> strip_slash(binary:part(P, 0, byte_size(P) - 1));
        _ -> P
    end.

dedup(L) -> dedup(L, #{}).
dedup([], _) -> [];
dedup([X | T], Seen) when is_map_key(X, Seen) -> dedup(T, Seen);
dedup([X | T], Seen) -> [X | dedup(T, Seen#{X => true})].

%%% ------------------------------------------------------- port programs

%% Which of Paths are running right now as the program of one of this VM's
%% ports (found through /proc/<os pid>/exe; [] where there is no /proc). A
%% program replaced by rename keeps running its old binary until restarted.
-spec running_programs([binary()]) -> [{binary(), integer(), pid() | undefined, atom()}].
running_programs(Paths) when is_list(Paths) ->
    Wanted = maps:from_list([{real_path(P), P} || P <- Paths, is_binary(P)]),
    lists:filtermap(
      fun(Port) ->
              case {erlang:port_info(Port, os_pid), erlang:port_info(Port, connected)} of
                  {{os_pid, OsPid}, {connected, Owner}} when is_integer(OsPid) ->
                      Exe = exe_of(OsPid),
                      case maps:find(Exe, Wanted) of
                          {ok, Path} -> {true, {Path, OsPid, Owner, reg_name(Owner)}};
                          error -> false
                      end;
                  _ -> false
              end
      end, erlang:ports());
running_programs(_) ->
    [].

exe_of(OsPid) ->
    case file:read_link_all("/proc/" ++ integer_to_list(OsPid) ++ "/exe") of
        {ok, Exe} -> name_bin(Exe);
        {error, _} -> undefined
    end.

%% The path with every symlink resolved (as /proc/PID/exe shows it).
real_path(Path) -> real_path(filename:split(Path), <<"/">>, 0).

real_path([], Acc, _) -> Acc;
real_path(_, Acc, Depth) when Depth > 40 -> Acc;
real_path([<<"/">> | Rest], _Acc, Depth) -> real_path(Rest, <<"/">>, Depth);
real_path([Part | Rest], Acc, Depth) ->
    Next = filename:join(Acc, Part),
    case file:read_link_all(Next) of
        {ok, Target} ->
            Abs = filename:absname(name_bin(Target), Acc),
            real_path(filename:split(Abs) ++ Rest, <<"/">>, Depth + 1);
        {error, _} -> real_path(Rest, Next, Depth)
    end.

%%% ---------------------------------------------------------- code loading

%% With {Module, BeamPath, Sha256} the file must have that hash, and the hash is
%% recorded (in the cache table, as {{loaded, Module}, Sha256}) once it is loaded:
%% loaded_shas/0 then tells the next sync what this VM really runs, even if an
%% earlier sync died between writing files and reloading them. The record lives
%% in memory only, so a reboot forgets it along with the code it describes.
-spec load_modules([{module(), binary()} | {module(), binary(), binary()}], purge()) ->
          [{module(), {loaded, procs()} | {not_purged, procs()} | sticky | {error, term()}}].
load_modules(Mods, Purge) ->
    ensure_state(),
    [{element(1, Mod), load_entry(Mod, Purge)} || Mod <- Mods].

load_entry({M, Path}, Purge) -> load_module(M, Path, any, Purge);
load_entry({M, Path, Sha}, Purge) -> load_module(M, Path, Sha, Purge).

load_module(M, Path, Sha, Purge) ->
    case code:is_sticky(M) of
        true -> clear_pending(M), sticky;           % final: never loadable here
        false ->
            case read_beam(Path, Sha) of
                {ok, Bin} ->
                    case purge_old(M, Purge) of
                        ok -> record_loaded(M, Sha, load_binary(M, Path, Bin));
                        NotPurged -> NotPurged
                    end;
                {error, _} = E -> E
            end
    end.

read_beam(Path, Sha) ->
    case file:read_file(Path) of
        {ok, Bin} when Sha =:= any -> {ok, Bin};
        {ok, Bin} ->
            case hash(Bin) of
                Sha -> {ok, Bin};
                _ -> {error, hash_mismatch}
            end;
        {error, _} = E -> E
    end.

record_loaded(M, Sha, {loaded, _} = Result) ->
    clear_pending(M),
    is_binary(Sha) andalso ets:insert(?STATE, {{loaded, M}, Sha}),
    Result;
record_loaded(_M, _Sha, Result) ->
    Result.

%% Before it writes anything, a sync marks the modules it will load or delete as
%% pending; loading or deleting one clears its mark. A sync that died half way
%% leaves its modules pending, so the next one handles them whatever the files
%% on disk say. In memory only: a reboot clears the marks with the code.
-spec mark_pending([module()]) -> ok.
mark_pending(Mods) when is_list(Mods) ->
    ensure_state(),
    true = ets:insert(?STATE, [{{pending, M}, true} || M <- Mods, is_atom(M)]),
    ok.

-spec code_state() -> #{recorded := #{module() => binary()}, pending := [module()]}.
code_state() ->
    ensure_state(),
    Pending = try ets:match(?STATE, {{pending, '$1'}, '_'}) catch error:badarg -> [] end,
    #{recorded => loaded_shas(), pending => lists:sort([M || [M] <- Pending])}.

clear_pending(M) ->
    state_delete({pending, M}).

%% With the table gone (its owner killed) the entry is gone too.
state_delete(Key) ->
    try ets:delete(?STATE, Key) of
        true -> ok
    catch error:badarg -> ok
    end.

%% Modules relsync loaded into this VM (and still loaded) -> SHA-256 of their beam.
-spec loaded_shas() -> #{module() => binary()}.
loaded_shas() ->
    ensure_state(),
    Recorded = try ets:match(?STATE, {{loaded, '$1'}, '$2'}) catch error:badarg -> [] end,
    maps:from_list([{M, Sha} || [M, Sha] <- Recorded, code:is_loaded(M) =/= false]).

load_binary(M, Path, Bin) ->
    case code:load_binary(M, to_list(Path), Bin) of
        {module, M} -> {loaded, lingering(M)};
        {error, _} = E -> E
    end.

-spec delete_modules([module()], purge()) ->
          [{module(), deleted | not_loaded | sticky | {not_purged, procs()}}].
delete_modules(Mods, Purge) ->
    ensure_state(),
    [{M, settled(M, delete_module(M, Purge))} || M <- Mods].

settled(M, Result) when Result =:= deleted; Result =:= not_loaded; Result =:= sticky ->
    clear_pending(M),
    Result;
settled(_M, Result) ->
    Result.

%% A {not_purged, _} from the second purge means the current code is gone but
%% the listed processes still run the (now old) code.
delete_module(M, Purge) ->
    case {code:is_sticky(M), code:is_loaded(M), erlang:check_old_code(M)} of
        {true, _, _} -> sticky;
        {_, false, false} -> not_loaded;
        {_, Loaded, _} ->
            ok = state_delete({loaded, M}),
            case purge_old(M, Purge) of
                ok when Loaded =:= false -> deleted;
                ok -> _ = code:delete(M),
                      case purge_old(M, Purge) of
                          ok -> deleted;
                          NotPurged -> NotPurged
                      end;
                NotPurged -> NotPurged
            end
    end.

purge_old(M, Purge) ->
    case erlang:check_old_code(M) andalso not code:soft_purge(M) of
        false -> ok;
        true when Purge =:= brutal -> _ = code:purge(M), ok;
        true -> {not_purged, lingering(M)}
    end.

%% Processes still executing the old code of M (none if it can be purged
%% softly, in which case we do so right away: nothing needs it any more).
lingering(M) ->
    case erlang:check_old_code(M) andalso not code:soft_purge(M) of
        false -> [];
        true -> [{P, reg_name(P)} || P <- processes(), P =/= self(), uses_old(P, M)]
    end.

uses_old(Pid, M) ->
    try erlang:check_process_code(Pid, M) catch error:_ -> false end.

reg_name(Pid) ->
    case process_info(Pid, registered_name) of
        {registered_name, Name} -> Name;
        _ -> undefined
    end.

%% Whether this VM can load each beam, without loading it (erlang:prepare_loading
%% checks the code as a load would): a beam from a newer OTP is refused here,
%% before anything is written. Answers the modules it cannot load, with why.
-spec check_beams([{module(), binary()}]) -> [{module(), term()}].
check_beams(Beams) when is_list(Beams) ->
    [{M, Why} || {M, Bin} <- Beams, is_atom(M), is_binary(Bin),
                 {error, Why} <- [prepare(M, Bin)]].

prepare(M, Bin) ->
    try erlang:prepare_loading(M, Bin) of
        {error, _} = E -> E;
        _Prepared -> ok
    catch error:Why -> {error, Why}
    end.

%% Which of Apps (applications a slim release expects from the board's OTP) this
%% VM has neither on its code path nor among the OTP libraries beside it.
-spec missing_apps([atom()]) -> [atom()].
missing_apps(Apps) when is_list(Apps) ->
    Libs = otp_libs(),
    [A || A <- Apps, is_atom(A), not has_app(A, Libs)].

%% Where OTP's libraries are: the root's lib, and where kernel comes from (the
%% board's OTP, in a slim release).
otp_libs() ->
    lists:usort([filename:join(code:root_dir(), "lib"), filename:dirname(code:lib_dir(kernel))]).

has_app(A, Libs) ->
    case code:lib_dir(A) of
        {error, _} ->
            Name = atom_to_list(A),
            lists:any(fun(L) -> filelib:wildcard(filename:join(L, Name ++ "-*")) =/= [] end,
                      Libs);
        _ -> true
    end.

%%% -------------------------------------------------------------- upgrades

%% Before the files change, keep the code each module runs now ({File, Beam}
%% in the state table, checked against the loaded code's MD5), so that an
%% upgrade step that fails can load it again. Not loaded: nothing kept.
-spec stash_code([module()]) -> ok.
stash_code(Mods) when is_list(Mods) ->
    ensure_state(),
    lists:foreach(fun stash/1, [M || M <- Mods, is_atom(M)]).

stash(M) ->
    Key = {old_code, M},
    Kept = case code:is_loaded(M) of
               {file, File} when is_list(File) -> running_beam(M, File);
               false -> none;
               _ -> unavailable
           end,
    true = ets:insert(?STATE, {Key, Kept}).

running_beam(M, File) ->
    case file:read_file(File) of
        {ok, Bin} ->
            case beam_lib:md5(Bin) of
                {ok, {M, Md5}} ->
                    case erlang:get_module_info(M, md5) of
                        Md5 -> {name_bin(File), Bin};
                        _ -> unavailable
                    end;
                _ -> unavailable
            end;
        {error, _} -> unavailable
    end.

%% Carry out upgrade steps (see relsync_upgrade) with this module's loading and
%% records: a module loaded is recorded as by load_modules/2; one whose load
%% is undone is marked pending, so the next sync loads it whatever the files
%% say. Opts: direction (up | down), timeout (ms, per process call), purge.
-spec upgrade([relsync_upgrade:step()], #{direction => up | down, timeout => timeout(),
                                          purge => purge()}) -> map().
upgrade(Steps, Opts) when is_list(Steps), is_map(Opts) ->
    ensure_state(),
    Purge = maps:get(purge, Opts, soft),
    Mods = [element(2, S) || S <- Steps, is_tuple(S), tuple_size(S) >= 2],
    Old = maps:from_list([{M, stashed(M)} || M <- Mods]),
    _ = [ets:delete(?STATE, {old_code, M}) || M <- Mods],
    case [M || {M, unavailable} <- maps:to_list(Old)] of
        [M | _] ->
            #{result => {error, {no_old_code, M}}, events => [], modules => []};
        [] ->
            relsync_upgrade:run(
              Steps,
              #{direction => maps:get(direction, Opts, up),
                timeout => maps:get(timeout, Opts, 5000),
                load => fun(M, Path, Sha) -> load_module(M, Path, Sha, Purge) end,
                restore => fun restore/2,
                delete => fun(M) -> settled(M, delete_module(M, Purge)) end,
                old_code => maps:filter(fun(_, V) -> V =/= none end, Old)})
    end.

%% What a module ran before: stashed by stash_code/1, else what it runs now.
stashed(M) ->
    case ets:lookup(?STATE, {old_code, M}) of
        [{_, Kept}] -> Kept;
        [] -> stash(M), stashed(M)
    end.

restore(M, Old) ->
    ets:delete(?STATE, {loaded, M}),
    true = ets:insert(?STATE, {{pending, M}, true}),
    _ = code:purge(M),
    case Old of
        none -> _ = code:delete(M), _ = code:purge(M), ok;
        {File, Bin} -> {module, M} = code:load_binary(M, to_list(File), Bin), ok
    end.

%% Modules whose old code some process still runs, with those processes.
-spec old_code() -> [{module(), procs()}].
old_code() ->
    [{M, Procs} || {M, _} <- code:all_loaded(), erlang:check_old_code(M),
                   (Procs = lingering(M)) =/= []].

%%% ------------------------------------------------------------------ hooks

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
    {error, {error, badarg, [{?MODULE, run_hook, [M, F, Timeout], []}]}, <<>>}.

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

%%% ------------------------------------------------------------- helpers

%% File names from the file module are lists decoded with the native name
%% encoding (binaries when undecodable); re-encode them the same way.
name_bin(B) when is_binary(B) -> B;
name_bin(L) ->
    case unicode:characters_to_binary(L, unicode, file:native_name_encoding()) of
        B when is_binary(B) -> B;
        _ -> iolist_to_binary(L)
    end.

to_list(B) when is_binary(B) ->
    case file:native_name_encoding() of
        utf8 -> case unicode:characters_to_list(B) of
                    L when is_list(L) -> L;
                    _ -> binary_to_list(B)
                end;
        latin1 -> binary_to_list(B)
    end;
to_list(L) when is_list(L) -> L.
