%% relsync_manifest: part of relsync's target-side helper (see relsync_target).
%% Manifests: the files below a directory, their sizes and hashes, walked in
%% parallel, with the listing and hash caches of the state table.
-module(relsync_manifest).

-export([list_dir/1, manifest/2]).

-include("relsync_target.hrl").

%% Names in a directory ([] when it does not exist), sorted; as bytes, every
%% one of them (see names/1).
-spec list_dir(binary()) -> {ok, [binary()]} | {error, posix()}.
list_dir(Dir) when is_binary(Dir) ->
    case names(Dir) of
        {ok, Names} -> {ok, lists:sort([relsync_hash:name_bin(N) || N <- Names])};
        {error, enoent} -> {ok, []};
        {error, _} = E -> E
    end;
list_dir(_) ->
    {error, badarg}.

%% Every name in Dir: list_dir_all/1 also gives the names that are not valid in
%% the VM's file name encoding (bytes that are not UTF-8), as raw binaries, where
%% list_dir/1 leaves them out.
names(Dir) -> prim_file:list_dir_all(Dir).

%% With format => packed the entries come as one binary (see pack_entry/1),
%% which the client decodes far faster than thousands of tuples. A helper that
%% predates the option ignores it and sends the list: clients accept both.
-spec manifest(binary(), #{exclude => [binary()], format => list | packed}) ->
          {ok, [entry()] | binary()} | {error, {binary(), posix()}}.
manifest(Root, Opts) when is_binary(Root), is_map(Opts) ->
    Excl = maps:get(exclude, Opts, []),
    relsync_state:ensure_state(),
    case file:read_file_info(Root, ?INFO) of
        {ok, #file_info{type = directory} = FI} ->
            Slots = atomics:new(1, []),
            ok = atomics:put(Slots, 1, ?MAX_WALKERS),
            try joined(walk(relsync_code:strip_slash(Root), FI, <<>>, Excl, {0, Slots}, [])) of
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
                    walk_entry(child(Dir, Name), rel(RelDir, Name), Excl, Fan, Acc)
            end,
    case relsync_state:cache_lookup({dir, Dir}) of
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
            case names(Dir) of
                {ok, Names} ->
                    {Listing, Acc} = lists:mapfoldl(fun(N, A) ->
                                                            Name = relsync_hash:name_bin(N),
                                                            {Kind, A1} = Entry(Name, A),
                                                            {{Name, Kind}, A1}
                                                    end, Acc0, Names),
                    relsync_state:cache_listing(Dir, Stamp, Listing),
                    Acc;
                {error, enoent} -> Acc0;          % vanished while walking
                {error, R} -> throw({walk_error, Dir, R})
            end
    end.

rel(<<>>, Name) -> Name;
rel(RelDir, Name) -> <<RelDir/binary, "/", Name/binary>>.

dir_stamp(#file_info{major_device = Dev, inode = Ino, mtime = M, ctime = C}) ->
    {Dev, Ino, M, C}.

%% The entries for one name of a directory (added to Acc), and how the listing
%% cache keeps it: {symlink, Target} for a symlink whose target was read, else
%% stat (looked at again on every walk). An excluded name is not even stat'ed.
walk_entry(Abs, Rel, Excl, Fan, Acc) ->
    case excluded(Rel, Excl) of
        true -> {stat, Acc};
        false -> walk_included(Abs, Rel, Excl, Fan, Acc)
    end.

walk_included(Abs, Rel, Excl, {Depth, Slots} = Fan, Acc) ->
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
            case file_entry(Abs, Rel, FI) of
                {_, symlink, Target} = E -> {{symlink, Target}, [E | Acc]};
                vanished -> {stat, Acc};
                E -> {stat, [E | Acc]}
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

%% A file's entry, or vanished (renamed or removed since it was listed: the
%% temporary file of a sync writing meanwhile, seen by one that takes no lock).
%% Temporary files are listed like any other: which names are relsync's
%% leftovers is for the plan to say, as the release may have files of such names.
file_entry(Abs, Rel, #file_info{type = symlink}) ->
    case file:read_link_all(Abs) of
        {ok, Target} -> {Rel, symlink, relsync_hash:name_bin(Target)};
        {error, enoent} -> vanished;
        {error, R} -> throw({walk_error, Abs, R})
    end;
file_entry(Abs, Rel, #file_info{size = Size, mode = Mode} = FI) ->
    case cached_hash(Abs, FI) of
        vanished -> vanished;
        Hash -> {Rel, regular, Size, Mode band 8#7777, Hash}
    end.

excluded(Rel, Prefixes) ->
    lists:any(fun(P) -> binary:longest_common_prefix([Rel, P]) =:= byte_size(P) end,
              Prefixes).

cached_hash(Abs, #file_info{size = Size, mtime = Mtime, inode = Ino}) ->
    Want = relsync_hash:hash_size(),
    case relsync_state:cache_lookup(Abs) of
        [{_, {Size, Mtime, Ino, Hash}}] when byte_size(Hash) =:= Want -> Hash;
        _ ->
            case relsync_hash:hash_file(Abs) of
                {ok, Hash} ->
                    %% Cache only if the file did not change while we read it.
                    case file:read_link_info(Abs, ?INFO) of
                        {ok, #file_info{size = Size, mtime = Mtime, inode = Ino}} ->
                            relsync_state:cache_insert(Abs, Size, Mtime, Ino, Hash);
                        _ -> ok
                    end,
                    Hash;
                {error, enoent} -> vanished;
                {error, R} -> throw({walk_error, Abs, R})
            end
    end.
