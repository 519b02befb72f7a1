%% Common Test suite for relsync/erlang/relsync_target.erl, the helper that
%% relsync pushes onto the target. Everything runs against real files under
%% the suite's priv_dir (one sub-directory per test case).
-module(relsync_target_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("kernel/include/file.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([sync_lock/1, sync_lock_survives_reload/1, writes_under_lock/1]).
-export([all/0, init_per_suite/1, end_per_suite/1,
         init_per_testcase/2, end_per_testcase/2]).
-export([long_and_raw_names/1]).
-export([info/1, list_dir/1, sync_state/1,
         manifest_entries/1, manifest_excludes/1, manifest_missing_root/1,
         manifest_large_file/1, manifest_cache_hit/1, manifest_cache_racy/1,
         manifest_listing_cache/1,
         manifest_packed/1, manifest_fan_out/1, manifest_walker_fails/1,
         cache_owner/1,
         put_files_basic/1, put_files_replaces_symlink/1,
         put_files_running_executable/1, running_programs/1, put_files_hash_mismatch/1,
         put_files_unwritable/1, put_files_file_calls/1, chunked_put_commit/1, delta/1,
         delete_files/1, delete_dirs/1, make_symlinks/1,
         update_code_path/1,
         load_modules_basic/1, load_modules_recorded/1, load_modules_gen_server/1,
         load_modules_old_code/1, load_modules_same_code/1, load_fresh/1, delete_modules/1,
         delete_modules_users/1, outdated/1,
         run_hook_output/1, run_hook_exception/1, run_hook_timeout/1,
         run_hook_caller_dies/1, run_hook_not_exported/1]).

-define(T, relsync_target).

all() ->
    [info, list_dir, sync_state, sync_lock, sync_lock_survives_reload, writes_under_lock,
     manifest_entries, manifest_excludes, manifest_missing_root, long_and_raw_names,
     manifest_large_file, manifest_cache_hit, manifest_cache_racy,
     manifest_listing_cache,
     manifest_packed, manifest_fan_out, manifest_walker_fails,
     cache_owner,
     put_files_basic, put_files_replaces_symlink,
     put_files_running_executable, running_programs, put_files_hash_mismatch,
     put_files_unwritable, put_files_file_calls, chunked_put_commit, delta,
     delete_files, delete_dirs, make_symlinks,
     update_code_path,
     load_modules_basic, load_modules_recorded, load_modules_gen_server,
     load_modules_old_code, load_modules_same_code, load_fresh, delete_modules,
     delete_modules_users, outdated,
     run_hook_output, run_hook_exception, run_hook_timeout,
     run_hook_caller_dies, run_hook_not_exported].

init_per_suite(Config) ->
    {module, ?T} = code:ensure_loaded(?T),
    Config.

end_per_suite(_Config) ->
    ok.

init_per_testcase(TC, Config) ->
    Dir = filename:join(list_to_binary(?config(priv_dir, Config)), atom_to_binary(TC, utf8)),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    [{dir, Dir}, {code_path, code:get_path()} | Config].

end_per_testcase(_TC, Config) ->
    true = code:set_path(?config(code_path, Config)),
    ok.

%%% ------------------------------------------------------------------ info

info(_Config) ->
    #{otp_release := Rel, node := Node, root_dir := Root, code_path := Path,
      helper_vsn := 1, temp_names := md5} = ?T:info(),
    ?assertEqual(list_to_binary(erlang:system_info(otp_release)), Rel),
    ?assertEqual(node(), Node),
    ?assertEqual(list_to_binary(code:root_dir()), Root),
    ?assertEqual([list_to_binary(P) || P <- code:get_path()], Path).

%%% -------------------------------------------------------------- manifest

list_dir(Config) ->
    Dir = ?config(dir, Config),
    ok = file:make_dir(<<Dir/binary, "/b">>),
    ok = file:write_file(<<Dir/binary, "/a">>, <<>>),
    ?assertEqual({ok, [<<"a">>, <<"b">>]}, ?T:list_dir(Dir)),
    ?assertEqual({ok, []}, ?T:list_dir(<<Dir/binary, "/missing">>)),
    ?assertEqual({error, enotdir}, ?T:list_dir(<<Dir/binary, "/a">>)).

%% One call answers what info/0, code_state/0, manifest/2 and list_dir/1 would,
%% the shadow tree's parts only when there is one; an error stays in its part.
sync_state(Config) ->
    Root = make_tree(Config),
    Dir = ?config(dir, Config),
    Rw = <<Dir/binary, "/rw">>,
    _ = write(<<Rw/binary, "/lib/app-1/ebin/app.beam">>, <<"new">>),
    Excl = [<<"erts-">>, <<"lib/kernel-8.5/">>],
    {ok, Original} = ?T:manifest(Root, #{exclude => Excl, format => packed}),
    {ok, Shadow} = ?T:manifest(Rw, #{format => packed}),
    State = ?T:sync_state(Root, Excl, Rw),
    ?assertEqual(lists:sort([code, info, lib, original, resolved, shadow, top]),
                 lists:sort(maps:keys(State))),
    %% Both paths as the board resolves them: through links, "..", and a tail
    %% not made yet kept as it is.
    Link = <<Dir/binary, "/to-root">>,
    ok = file:make_symlink(Root, Link),
    #{resolved := {RealRoot, Inside}} = ?T:sync_state(Root, Excl, <<Link/binary, "/lib/../new">>),
    ?assertEqual(<<RealRoot/binary, "/new">>, Inside),
    #{info := Info, code := Code} = State,
    ?assertEqual(maps:remove(code_path, ?T:info()), maps:remove(code_path, Info)),
    ?assertEqual(?T:code_state(), Code),
    ?assertEqual({ok, Original}, maps:get(original, State)),
    ?assertEqual({ok, Shadow}, maps:get(shadow, State)),
    ?assertEqual(?T:list_dir(Root), maps:get(top, State)),
    ?assertEqual({ok, [<<"app-1">>, <<"kernel-8.5">>, <<"kernel-8.5x">>]}, maps:get(lib, State)),
    ?assertMatch(#{shadow := {ok, <<>>}, top := {ok, []}, lib := {ok, []},
                   original := {ok, Original}},
                 ?T:sync_state(Root, Excl, none)),
    File = <<Root/binary, "/bin/start">>,
    ?assertMatch(#{original := {error, {File, enotdir}}, shadow := {ok, Shadow}},
                 ?T:sync_state(File, [], Rw)).

%% One sync at a time per VM: a second owner finds it busy (and who holds it),
%% the same owner gets its token again, and the lock goes with its owner or
%% with unlock/1 of its own token (not of another's).
sync_lock(Config) ->
    Dir = ?config(dir, Config),
    Owner = fun() -> spawn(fun() -> receive stop -> ok end end) end,
    A = Owner(),
    B = Owner(),
    Lock = fun(Pid, Who) -> maps:get(lock, ?T:sync_state(Dir, [], none,
                                                        #{lock => Who, owner => Pid})) end,
    {ok, TokA} = Lock(A, <<"client a">>),
    ?assertMatch({busy, #{who := <<"client a">>, since := _}}, Lock(B, <<"client b">>)),
    ?assertEqual({busy, busy_info()}, Lock(B, <<"b">>)),
    ?assertEqual({ok, TokA}, Lock(A, <<"client a">>)),
    ?assertMatch(#{dest := directory, original := {ok, _}},
                 ?T:sync_state(Dir, [], none, #{})),            % no lock: only reads
    ?assertEqual(#{dest => enoent}, maps:with([dest], ?T:sync_state(<<Dir/binary, "/x">>, [],
                                                                     none, #{}))),
    exit(A, kill),
    wait_unlocked(),
    {ok, TokB} = Lock(B, <<"client b">>),
    ?assertNotEqual(TokA, TokB),
    ok = ?T:unlock(TokA),                                       % not its token: no effect
    ?assertMatch({busy, _}, Lock(Owner(), <<"c">>)),
    ok = ?T:unlock(TokB),
    ?assertEqual(undefined, whereis(relsync_target_lock)),
    C = Owner(),
    {ok, _} = Lock(C, <<"c">>),
    C ! stop,                                                   % a normal exit frees it too
    wait_unlocked(),
    B ! stop.

busy_info() ->
    {dictionary, D} = process_info(whereis(relsync_target_lock), dictionary),
    maps:with([who, since], proplists:get_value(relsync_lock, D)).

wait_unlocked() ->
    case whereis(relsync_target_lock) of
        undefined -> ok;
        _ -> timer:sleep(10), wait_unlocked()
    end.

%% Reloading the helper (twice, so the first copy is purged, as a new relsync
%% version pushing its helper does) leaves a held lock alone.
sync_lock_survives_reload(Config) ->
    Dir = ?config(dir, Config),
    Owner = spawn(fun() -> receive stop -> ok end end),
    {ok, Token} = maps:get(lock, ?T:sync_state(Dir, [], none, #{lock => <<"a">>, owner => Owner})),
    Holder = whereis(relsync_target_lock),
    {?T, Bin, File} = code:get_object_code(?T),
    [{module, ?T} = code:load_binary(?T, File, Bin) || _ <- [1, 2]],
    ?assertEqual(Holder, whereis(relsync_target_lock)),
    ?assert(is_process_alive(Holder)),
    ok = ?T:unlock(Token),
    Owner ! stop.

%% Writes that carry a token name their temporary files after it, and are
%% refused (nothing written) once the token no longer holds the lock.
writes_under_lock(Config) ->
    Dir = ?config(dir, Config),
    Owner = spawn(fun() -> receive stop -> ok end end),
    {ok, Token} = maps:get(lock, ?T:sync_state(Dir, [], none, #{lock => <<"a">>, owner => Owner})),
    Path = <<Dir/binary, "/big">>,
    ok = ?T:put_chunk(Path, 0, <<"abc">>, Token),
    ?assertEqual([tmp_name(Token, <<"big">>)], tmp_files(Dir)),
    ?assertEqual({error, enoent}, ?T:commit(Path, 8#644, sha(<<"abc">>))),   % not that name
    ok = ?T:put_chunk(Path, 3, <<"def">>, Token),
    ?assertEqual(ok, ?T:commit(Path, 8#600, sha(<<"abcdef">>), Token)),
    ?assertEqual({ok, <<"abcdef">>}, file:read_file(Path)),
    Small = <<Dir/binary, "/small">>,
    ?assertEqual(ok, ?T:put_files([{Small, 8#644, <<"s">>, sha(<<"s">>)}], Token)),
    ok = ?T:put_chunk(Path, 0, <<"xyz">>, Token),
    ok = ?T:unlock(Token),
    ?assertEqual({error, lock_lost}, ?T:commit(Path, 8#644, sha(<<"xyz">>), Token)),
    ?assertEqual({error, lock_lost}, ?T:put_chunk(Path, 0, <<"xyz">>, Token)),
    ?assertEqual({error, lock_lost},
                 ?T:put_files([{Small, 8#644, <<"t">>, sha(<<"t">>)}], Token)),
    ?assertEqual({ok, <<"abcdef">>}, file:read_file(Path)),
    ?assertEqual({ok, <<"s">>}, file:read_file(Small)),
    ?assertEqual([], tmp_files(Dir)),
    Owner ! stop.

manifest_entries(Config) ->
    Root = make_tree(Config),
    {ok, Entries} = ?T:manifest(Root, #{}),
    ?assertEqual(
       [{<<"bin/start">>, regular, 5, 8#755, sha(<<"start">>)},
        {<<"erts-13.1/bin/beam">>, regular, 4, 8#644, sha(<<"beam">>)},
        {<<"lib/app-1/ebin/app.beam">>, regular, 3, 8#600, sha(<<"app">>)},
        {<<"lib/app-1/priv/.relsync-tmp.l">>, symlink, <<"x">>},
        {<<"lib/app-1/priv/dangling">>, symlink, <<"/nonexistent/x">>},
        {<<"lib/app-1/priv/link">>, symlink, <<"../ebin/app.beam">>},
        {<<"lib/kernel-8.5/ebin/kernel.app">>, regular, 1, 8#644, sha(<<"k">>)},
        {<<"lib/kernel-8.5x/ebin/other">>, regular, 1, 8#644, sha(<<"o">>)},
        {<<"releases/1/.relsync-tmp.sys.config">>, regular, 4, 8#644, sha(<<"half">>)},
        {<<"releases/1/sys.config">>, regular, 3, 8#640, sha(<<"[].">>)},
        {<<"symdir">>, symlink, <<"lib">>}],
       Entries),
    %% Names like relsync's temporary files are listed as any other: the client
    %% tells its leftovers from the release's own files. A trailing slash on Root
    %% changes nothing.
    ?assertEqual({ok, Entries}, ?T:manifest(<<Root/binary, "/">>, #{})).

manifest_excludes(Config) ->
    Root = make_tree(Config),
    {ok, Entries} = ?T:manifest(Root, #{exclude => [<<"erts-">>, <<"lib/kernel-8.5/">>,
                                                     <<"lib/app-1/priv">>, <<"bin/st">>]}),
    %% "lib/kernel-8.5/" excludes that directory but not its look-alike sibling.
    ?assertEqual([<<"lib/app-1/ebin/app.beam">>, <<"lib/kernel-8.5x/ebin/other">>,
                  <<"releases/1/.relsync-tmp.sys.config">>, <<"releases/1/sys.config">>,
                  <<"symdir">>],
                 [element(1, E) || E <- Entries]),
    %% A prefix without the slash matches by string: both kernel dirs go.
    {ok, Entries2} = ?T:manifest(Root, #{exclude => [<<"lib/kernel-">>, <<"symdir">>]}),
    ?assertEqual([<<"bin/start">>, <<"erts-13.1/bin/beam">>, <<"lib/app-1/ebin/app.beam">>,
                  <<"lib/app-1/priv/.relsync-tmp.l">>, <<"lib/app-1/priv/dangling">>,
                  <<"lib/app-1/priv/link">>, <<"releases/1/.relsync-tmp.sys.config">>,
                  <<"releases/1/sys.config">>],
                 [element(1, E) || E <- Entries2]).

%% A 255-byte name (NAME_MAX: its temporary name must be shorter) and a name
%% that is not UTF-8 are written, linked and listed as the bytes they are.
long_and_raw_names(Config) ->
    Dir = ?config(dir, Config),
    Owner = spawn(fun() -> receive stop -> ok end end),
    {ok, Token} = maps:get(lock, ?T:sync_state(Dir, [], none, #{lock => <<"a">>, owner => Owner})),
    Long = binary:copy(<<"n">>, 255),
    Raw = <<"caf", 16#e9, ".txt">>,
    At = fun(Name) -> <<Dir/binary, "/", Name/binary>> end,
    ?assertEqual(ok, ?T:put_files([{At(Long), 8#644, <<"l">>, sha(<<"l">>)},
                                   {At(Raw), 8#600, <<"r">>, sha(<<"r">>)}], Token)),
    Big = binary:copy(<<"b">>, 255),
    ok = ?T:put_chunk(At(Big), 0, <<"big">>, Token),
    ?assertEqual(ok, ?T:commit(At(Big), 8#644, sha(<<"big">>), Token)),
    ?assertEqual(ok, ?T:make_symlinks([{At(binary:copy(<<"l">>, 255)), Raw}])),
    ?assertEqual(ok, ?T:put_delta(At(Long), At(Big), [{copy, 0, 3}], 8#644, sha(<<"big">>))),
    {ok, Entries} = ?T:manifest(Dir, #{}),
    ?assertEqual([{Big, regular, 3, 8#644, sha(<<"big">>)},
                  {Raw, regular, 1, 8#600, sha(<<"r">>)},
                  {binary:copy(<<"l">>, 255), symlink, Raw},
                  {Long, regular, 3, 8#644, sha(<<"big">>)}],
                 Entries),
    ?assert(lists:member(Raw, element(2, ?T:list_dir(Dir)))),
    ?assertEqual([], tmp_files(Dir)),
    ok = ?T:unlock(Token),
    Owner ! stop.

manifest_missing_root(Config) ->
    Dir = ?config(dir, Config),
    ?assertEqual({ok, []}, ?T:manifest(<<Dir/binary, "/nope">>, #{})),
    ok = file:make_dir(<<Dir/binary, "/empty">>),
    ?assertEqual({ok, []}, ?T:manifest(<<Dir/binary, "/empty">>, #{exclude => []})),
    File = write(<<Dir/binary, "/file">>, <<"x">>),
    ?assertEqual({error, {File, enotdir}}, ?T:manifest(File, #{})).

%% Hashing is streamed in 1 MiB reads: check a file spanning several reads.
manifest_large_file(Config) ->
    Dir = ?config(dir, Config),
    Data = crypto:strong_rand_bytes(3 * 1024 * 1024 + 12345),
    _ = write(<<Dir/binary, "/big">>, Data),
    ?assertEqual({ok, [{<<"big">>, regular, byte_size(Data), 8#644, sha(Data)}]},
                 ?T:manifest(Dir, #{})).

%% The cache key is {Size, Mtime, Inode}: rewriting a file in place with the
%% same size and restoring its mtime is NOT noticed. This documents the key
%% (and proves that a cached file is not re-hashed).
manifest_cache_hit(Config) ->
    Dir = ?config(dir, Config),
    F = write(<<Dir/binary, "/f">>, <<"aaaa">>),
    Old = 1500000000,
    set_mtime(F, Old),
    {ok, #file_info{inode = Ino}} = file:read_file_info(F),
    {ok, [{<<"f">>, regular, 4, _, H1}]} = ?T:manifest(Dir, #{}),
    ?assertEqual(sha(<<"aaaa">>), H1),
    ok = file:write_file(F, <<"bbbb">>),          % in place: same inode
    set_mtime(F, Old),
    {ok, #file_info{inode = Ino, size = 4}} = file:read_file_info(F),
    ?assertMatch({ok, [{_, _, _, _, H1}]}, ?T:manifest(Dir, #{})),  % stale
    set_mtime(F, Old + 1),
    {ok, [{_, _, _, _, H2}]} = ?T:manifest(Dir, #{}),
    ?assertEqual(sha(<<"bbbb">>), H2).

%% A file whose mtime is within 2 s of the clock is hashed but not cached, so
%% a same-size rewrite within the same second is still seen.
manifest_cache_racy(Config) ->
    Dir = ?config(dir, Config),
    F = write(<<Dir/binary, "/f">>, <<"cccc">>),
    Now = erlang:system_time(second),
    set_mtime(F, Now),
    {ok, [{_, _, _, _, H1}]} = ?T:manifest(Dir, #{}),
    ?assertEqual(sha(<<"cccc">>), H1),
    ok = file:write_file(F, <<"dddd">>),
    set_mtime(F, Now),
    {ok, [{_, _, _, _, H2}]} = ?T:manifest(Dir, #{}),
    ?assertEqual(sha(<<"dddd">>), H2).

%% A directory left alone for over 2 s has its listing cached (its symlinks
%% are not read again); one changed within 2 s is not. A cached listing still
%% sees names added and removed, a re-pointed symlink, a file rewritten in
%% place, and exclusions other than those of the walk that cached it.
manifest_listing_cache(Config) ->
    Root = make_tree(Config),
    Priv = <<Root/binary, "/lib/app-1/priv">>,
    Excl = #{exclude => [<<"erts-">>, <<"lib/kernel-8.5/">>, <<"lib/app-1/priv/link">>]},
    {ok, All} = ?T:manifest(Root, #{}),
    {ok, Some} = ?T:manifest(Root, Excl),
    ?assertEqual([], listing(Priv)),                       % changed just now
    timer:sleep(3100),
    ?assertEqual({ok, Some}, ?T:manifest(Root, Excl)),     % caches what it walks
    ?assertMatch([{_, _, [_ | _]}], listing(Priv)),
    ?assertEqual([], listing(<<Root/binary, "/erts-13.1">>)),  % excluded: not walked
    ?assertEqual({ok, All}, ?T:manifest(Root, #{})),       % through the cached listings
    ?assertEqual({ok, Some}, ?T:manifest(Root, Excl)),
    ok = file:delete(<<Priv/binary, "/link">>),
    ok = file:make_symlink(<<"../ebin/other.beam">>, <<Priv/binary, "/link">>),
    ok = file:delete(<<Root/binary, "/bin/start">>),
    _ = write(<<Root/binary, "/bin/stop">>, <<"stop">>),
    App = <<Root/binary, "/lib/app-1/ebin/app.beam">>,
    {ok, #file_info{inode = Ino}} = file:read_file_info(App),
    ok = file:write_file(App, <<"APP">>),                  % in place
    {ok, #file_info{inode = Ino}} = file:read_file_info(App),
    {ok, Now} = ?T:manifest(Root, #{}),
    ?assertEqual(lists:keydelete(<<"bin/start">>, 1, All) -- Now,
                 [{<<"lib/app-1/ebin/app.beam">>, regular, 3, 8#600, sha(<<"app">>)},
                  {<<"lib/app-1/priv/link">>, symlink, <<"../ebin/app.beam">>}]),
    ?assertEqual(Now -- All,
                 [{<<"bin/stop">>, regular, 4, 8#644, sha(<<"stop">>)},
                  {<<"lib/app-1/ebin/app.beam">>, regular, 3, 8#600, sha(<<"APP">>)},
                  {<<"lib/app-1/priv/link">>, symlink, <<"../ebin/other.beam">>}]).

%% format => packed: the same entries, as one binary (unpack/1 below decodes
%% it the way the client does).
manifest_packed(Config) ->
    Root = make_tree(Config),
    {ok, Entries} = ?T:manifest(Root, #{}),
    {ok, Packed} = ?T:manifest(Root, #{format => packed}),
    ?assert(is_binary(Packed)),
    ?assertEqual(Entries, unpack(Packed)),
    ?assertEqual({ok, Packed},
                 ?T:manifest(Root, #{format => packed, exclude => [<<"nothing/">>]})),
    Dir = ?config(dir, Config),
    ok = file:make_dir(<<Dir/binary, "/empty">>),
    ?assertEqual({ok, <<>>}, ?T:manifest(<<Dir/binary, "/empty">>, #{format => packed})),
    ?assertEqual({ok, <<>>}, ?T:manifest(<<Dir/binary, "/nope">>, #{format => packed})),
    ?assertEqual({ok, Entries}, ?T:manifest(Root, #{format => list})).

%% Directories near the root are walked by processes of their own (more of
%% them than may run at once here): the tree comes out whole and sorted, and
%% nothing of those processes is left behind, also for a caller that traps
%% exits: no process, no message, no process dictionary entry.
manifest_fan_out(Config) ->
    Root = <<(?config(dir, Config))/binary, "/wide">>,
    Files = [<<"lib/app", (integer_to_binary(A))/binary, "/", Sub/binary, "/f",
               (integer_to_binary(F))/binary>>
             || A <- lists:seq(1, 40), Sub <- [<<"ebin">>, <<"priv/bin">>], F <- [1, 2, 3]]
        ++ [<<"releases/1/sys.config">>, <<"top">>],
    [write(<<Root/binary, "/", F/binary>>, F) || F <- Files],
    Expected = lists:sort([{F, regular, byte_size(F), 8#644, sha(F)} || F <- Files]),
    {ok, _} = ?T:manifest(Root, #{}),               % the cache owner exists
    {Result, Walkers} = started_by(fun() -> ?T:manifest(Root, #{}) end),
    ?assertEqual({ok, Expected}, Result),
    ?assert(length(Walkers) > 2),                   % lib/, releases/, lib/app1, ...
    ?assertEqual({ok, Expected}, ?T:manifest(Root, #{exclude => [<<"lib/none">>]})),
    ?assertEqual({messages, []}, process_info(self(), messages)),
    ?assertEqual([], walker_keys(get())),
    {Trapped, Started} = started_by(fun() -> trapping_exits(fun() -> ?T:manifest(Root, #{}) end)
                                    end),
    ?assertEqual({ok, Expected}, Trapped),
    ok = wait_for_exit(Walkers ++ Started).

%% A walker that fails (here: a path too long for the OS, deep below app7)
%% fails the manifest as a walk in the caller would; the other walkers are
%% stopped and nothing of them is left.
manifest_walker_fails(Config) ->
    Root = <<(?config(dir, Config))/binary, "/deep">>,
    [write(<<Root/binary, "/app", (integer_to_binary(A))/binary, "/ebin/f">>, <<"f">>)
     || A <- lists:seq(1, 30)],
    Half = lists:join($/, lists:duplicate(11, lists:duplicate(200, $d))),   % 2210 bytes
    %% The deep tree goes whatever happens: tools walking the logs may choke on it.
    try
        ok = cmd_ok("cd " ++ binary_to_list(Root) ++ "/app7 && mkdir -p " ++ Half ++
                    " && cd " ++ Half ++ " && mkdir -p " ++ Half),             % > PATH_MAX
        walker_fails(Root)
    after
        ok = cmd_ok("rm -rf " ++ binary_to_list(Root))
    end.

walker_fails(Root) ->
    {ok, _} = ?T:manifest(<<Root/binary, "/app1">>, #{}),       % the cache owner exists
    {Result, Walkers} = started_by(fun() -> ?T:manifest(Root, #{}) end),
    ?assertMatch({error, {_, enametoolong}}, Result),
    ?assertMatch({error, {_, enametoolong}}, ?T:manifest(Root, #{format => packed})),
    ?assertEqual({messages, []}, process_info(self(), messages)),
    ?assertEqual([], walker_keys(get())),
    {Trapped, Started} = started_by(fun() -> trapping_exits(fun() -> ?T:manifest(Root, #{}) end)
                                    end),
    ?assertMatch({error, {_, enametoolong}}, Trapped),
    ok = wait_for_exit(Walkers ++ Started).

%% Fun() in a process that traps exits; its result once that process has found
%% its mailbox empty and no walker left in its process dictionary.
trapping_exits(Fun) ->
    Self = self(),
    {Pid, Ref} = spawn_monitor(
                   fun() ->
                           process_flag(trap_exit, true),
                           Result = Fun(),
                           timer:sleep(50),                   % late 'EXIT's would be here now
                           {messages, []} = process_info(self(), messages),
                           [] = walker_keys(get()),
                           Self ! {self(), Result}
                   end),
    receive
        {Pid, Result} -> erlang:demonitor(Ref, [flush]), Result;
        {'DOWN', Ref, process, Pid, Why} -> error({trapping_caller_failed, Why})
    end.

walker_keys(Dict) -> [K || {{?T, walker, _} = K, _} <- Dict].

%% Fun()'s result and every process it started, directly or not (traced).
started_by(Fun) ->
    Tracer = spawn_link(fun() -> tracer([]) end),
    erlang:trace(self(), true, [procs, set_on_spawn, {tracer, Tracer}]),
    Result = try Fun() after erlang:trace(self(), false, [procs, set_on_spawn]) end,
    Ref = erlang:trace_delivered(all),
    receive {trace_delivered, all, Ref} -> ok end,
    Tracer ! {started, self()},
    receive {Tracer, Pids} -> {Result, Pids} end.

tracer(Pids) ->
    receive
        {trace, _, spawn, Pid, _} -> tracer([Pid | Pids]);
        {started, From} -> From ! {self(), Pids};
        _ -> tracer(Pids)
    end.

wait_for_exit(Pids) ->
    Refs = [monitor(process, P) || P <- Pids],
    [receive {'DOWN', R, process, _, _} -> ok after 5000 -> error(walker_left) end || R <- Refs],
    ok.

unpack(<<>>) -> [];
unpack(<<0, N:32, Rel:N/binary, Size:64, Mode:16, H:8, Hash:H/binary, Rest/binary>>) ->
    [{Rel, regular, Size, Mode, Hash} | unpack(Rest)];
unpack(<<1, N:32, Rel:N/binary, T:32, Target:T/binary, Rest/binary>>) ->
    [{Rel, symlink, Target} | unpack(Rest)].

%% The cache owner starts on demand exactly once even when many callers race,
%% is not linked to them, and survives reloading + purging relsync_target.
cache_owner(Config) ->
    Dir = ?config(dir, Config),
    _ = write(<<Dir/binary, "/f">>, <<"x">>),
    case whereis(relsync_target_state) of
        undefined -> ok;
        Old -> kill_and_wait(Old)
    end,
    ?assertEqual(undefined, ets:whereis(relsync_target_state)),
    Self = self(),
    Pids = [spawn(fun() -> Self ! {self(), ?T:manifest(Dir, #{})} end)
            || _ <- lists:seq(1, 20)],
    [receive {P, R} -> ?assertMatch({ok, [_]}, R) end || P <- Pids],
    Owner = whereis(relsync_target_state),
    ?assert(is_pid(Owner)),
    ?assertEqual(Owner, ets:info(relsync_target_state, owner)),
    ?assertEqual({links, []}, process_info(Owner, links)),
    %% Reload the helper twice; each purge kills processes running old code.
    {?T, Bin, File} = code:get_object_code(?T),
    [begin
         {module, ?T} = code:load_binary(?T, File, Bin),
         _ = code:purge(?T)
     end || _ <- [1, 2]],
    ?assert(is_process_alive(Owner)),
    ?assertEqual(Owner, whereis(relsync_target_state)),
    ?assertMatch({ok, [_]}, ?T:manifest(Dir, #{})),
    %% If it is killed, the next call simply starts a new one.
    kill_and_wait(Owner),
    ?assertMatch({ok, [_]}, ?T:manifest(Dir, #{})),
    ?assert(is_pid(whereis(relsync_target_state))).

%%% ------------------------------------------------------------- put_files

put_files_basic(Config) ->
    Dir = ?config(dir, Config),
    A = <<Dir/binary, "/new/deep/a">>,
    B = <<Dir/binary, "/b">>,
    Victim = write(<<Dir/binary, "/victim">>, <<"untouched">>),
    %% A leftover tmp file that is a symlink must be replaced, not written through.
    ok = file:make_symlink(Victim, <<Dir/binary, "/", (tmp_name(<<>>, <<"b">>))/binary>>),
    _ = write(B, <<"old b">>),
    {ok, _} = ?T:manifest(Dir, #{}),              % the cache exists
    ?assertEqual(ok, ?T:put_files([{A, 8#755, <<"aaa">>, sha(<<"aaa">>)},
                                   {B, 8#600, <<"new b">>, sha(<<"new b">>)},
                                   {<<Dir/binary, "/empty">>, 8#644, <<>>, sha(<<>>)}])),
    ?assertEqual({ok, <<"aaa">>}, file:read_file(A)),
    ?assertEqual({ok, <<"new b">>}, file:read_file(B)),
    ?assertEqual({ok, <<>>}, file:read_file(<<Dir/binary, "/empty">>)),
    ?assertEqual(8#755, mode(A)),
    ?assertEqual(8#600, mode(B)),
    ?assertEqual({ok, <<"untouched">>}, file:read_file(Victim)),
    ?assertEqual([], tmp_files(Dir)),
    %% put_files seeded the cache with what it wrote; the manifest agrees.
    {ok, #file_info{size = 5, mtime = Mtime, inode = Ino}} =
        file:read_file_info(B, [{time, posix}]),
    ?assertEqual([{B, {5, Mtime, Ino, sha(<<"new b">>)}}], ets:lookup(relsync_target_state, B)),
    {ok, M} = ?T:manifest(Dir, #{}),
    ?assertEqual({<<"b">>, regular, 5, 8#600, sha(<<"new b">>)},
                 lists:keyfind(<<"b">>, 1, M)),
    ?assertEqual(ok, ?T:put_files([])).

put_files_replaces_symlink(Config) ->
    Dir = ?config(dir, Config),
    Target = write(<<Dir/binary, "/target">>, <<"target">>),
    Link = <<Dir/binary, "/link">>,
    ok = file:make_symlink(<<"target">>, Link),
    ok = ?T:put_files([{Link, 8#644, <<"file now">>, sha(<<"file now">>)}]),
    ?assertMatch({ok, #file_info{type = regular}}, file:read_link_info(Link)),
    ?assertEqual({ok, <<"file now">>}, file:read_file(Link)),
    ?assertEqual({ok, <<"target">>}, file:read_file(Target)).

%% A running executable cannot be opened for writing (etxtbsy on Linux); the
%% rename-based replace works and leaves the running program alone.
%% A port's program is found by its path, also through a symlink to it (a
%% shadow tree), and only while it runs.
running_programs(Config) ->
    Dir = ?config(dir, Config),
    Prog = <<Dir/binary, "/prog">>,
    Link = <<Dir/binary, "/shadow-prog">>,
    {ok, _} = file:copy(os:find_executable("sleep"), Prog),
    ok = file:change_mode(Prog, 8#755),
    ok = file:make_symlink(Prog, Link),
    ?assertEqual([], ?T:running_programs([Prog, Link])),
    Port = open_port({spawn_executable, Prog}, [{args, ["60"]}, exit_status]),
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    Exe = "/proc/" ++ integer_to_list(OsPid) ++ "/exe",
    try
        wait_until(fun() -> file:read_link(Exe) =:= {ok, binary_to_list(Prog)} end, 5000),
        Self = self(),
        ?assertMatch([{Prog, OsPid, Self, _}], ?T:running_programs([Prog])),
        ?assertMatch([{Link, OsPid, Self, _}], ?T:running_programs([Link])),
        ?assertEqual([], ?T:running_programs([<<Dir/binary, "/other">>]))
    after
        os:cmd("kill " ++ integer_to_list(OsPid))
    end,
    receive {Port, {exit_status, _}} -> ok after 5000 -> ct:fail(sleep_not_killed) end.

put_files_running_executable(Config) ->
    Dir = ?config(dir, Config),
    Prog = <<Dir/binary, "/prog">>,
    {ok, _} = file:copy(os:find_executable("sleep"), Prog),
    ok = file:change_mode(Prog, 8#755),
    Port = open_port({spawn_executable, Prog}, [{args, ["60"]}, exit_status]),
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    Exe = "/proc/" ++ integer_to_list(OsPid) ++ "/exe",
    try
        %% The port returns before the child has exec'ed: opening the file
        %% for writing before that would make the exec itself fail.
        wait_until(fun() -> file:read_link(Exe) =:= {ok, binary_to_list(Prog)} end, 5000),
        InPlace = file:open(Prog, [read, write, raw]),
        ct:pal("opening the running executable for writing: ~p", [InPlace]),
        case InPlace of
            {ok, Fd} -> file:close(Fd);
            {error, etxtbsy} -> ok
        end,
        New = <<"#!/bin/sh\necho new\n">>,
        ?assertEqual(ok, ?T:put_files([{Prog, 8#755, New, sha(New)}])),
        ?assertEqual("new\n", os:cmd(binary_to_list(Prog))),
        ?assertEqual("0\n", os:cmd("kill -0 " ++ integer_to_list(OsPid) ++ "; echo $?")),
        case file:read_link(Exe) of
            {ok, L} -> ?assertEqual(" (deleted)", lists:nthtail(length(L) - 10, L));
            {error, _} -> ok
        end
    after
        os:cmd("kill " ++ integer_to_list(OsPid))
    end,
    receive {Port, {exit_status, _}} -> ok after 5000 -> ct:fail(sleep_not_killed) end.

put_files_hash_mismatch(Config) ->
    Dir = ?config(dir, Config),
    A = <<Dir/binary, "/a">>,
    B = write(<<Dir/binary, "/b">>, <<"old b">>),
    C = <<Dir/binary, "/c">>,
    ?assertEqual({error, B, hash_mismatch},
                 ?T:put_files([{A, 8#644, <<"a">>, sha(<<"a">>)},
                               {B, 8#644, <<"new b">>, sha(<<"something else">>)},
                               {C, 8#644, <<"c">>, sha(<<"c">>)}])),
    %% The files are written by several processes at once: the others are whole
    %% or absent (written, or not reached), the bad one untouched.
    ?assert(lists:member(file:read_file(A), [{ok, <<"a">>}, {error, enoent}])),
    ?assertEqual({ok, <<"old b">>}, file:read_file(B)),
    ?assert(lists:member(file:read_file(C), [{ok, <<"c">>}, {error, enoent}])),
    ?assertEqual([], tmp_files(Dir)),
    ?assertEqual({error, <<"rel">>, badarg}, ?T:put_files([<<"rel">>])).

%% Each file call is a trip to a dirty I/O scheduler (~25 us of a board's CPU):
%% a whole file into an existing directory takes open, write, fdatasync, close,
%% chmod, rename and one stat to seed the hash cache, nothing more. The bytes are
%% checked against their hash in memory, not read back; a leftover temporary
%% file or a missing directory costs a call more only when the open says so.
put_files_file_calls(Config) ->
    Dir = ?config(dir, Config),
    {ok, _} = ?T:manifest(Dir, #{}),              % the cache exists
    Data = <<"payload">>,
    Calls = fun(Files) ->
                    erlang:trace_pattern({file, '_', '_'}, true, [call_count]),
                    erlang:trace(self(), true, [call]),
                    try ?assertEqual(ok, ?T:put_files(Files))
                    after erlang:trace(self(), false, [call])
                    end,
                    Ops = [open, close, read, pread, write, pwrite, datasync, sync, delete,
                           rename, make_dir, list_dir, read_file_info, read_link_info,
                           write_file_info],
                    Counted = [{F, N} || {F, A} <- file:module_info(exports), lists:member(F, Ops),
                                         {call_count, N} <- [erlang:trace_info({file, F, A},
                                                                                call_count)],
                                         is_integer(N), N > 0],
                    erlang:trace_pattern({file, '_', '_'}, false, [call_count]),
                    lists:sort(Counted)
            end,
    ok = file:write_file(<<Dir/binary, "/made">>, <<>>),
    Made = mode(<<Dir/binary, "/made">>),              % what a new file gets here
    %% read_file_info: of our descriptor (what the cache records); read_link_info:
    %% the staged name is still that file, just before the rename. A file made
    %% with the mode it needs is not given it again.
    ?assertEqual([{close, 1}, {datasync, 1}, {open, 1}, {pwrite, 1}, {read_file_info, 1},
                  {read_link_info, 1}, {rename, 1}],
                 Calls([{<<Dir/binary, "/a">>, Made, Data, sha(Data)}])),
    ok = file:write_file(<<Dir/binary, "/", (tmp_name(<<>>, <<"b">>))/binary>>,
                         <<"left over">>),
    ?assertEqual([{close, 1}, {datasync, 1}, {delete, 1}, {open, 2}, {pwrite, 1},
                  {read_file_info, 1}, {read_link_info, 1}, {rename, 1}],
                 Calls([{<<Dir/binary, "/b">>, Made, Data, sha(Data)}])),
    ?assertEqual({ok, Data}, file:read_file(<<Dir/binary, "/b">>)),
    %% Another mode costs one call more; the hash cached matches the file installed.
    Exec = Made bxor 8#100,
    ?assertEqual([{close, 1}, {datasync, 1}, {open, 1}, {pwrite, 1}, {read_file_info, 1},
                  {read_link_info, 1}, {rename, 1}, {write_file_info, 1}],
                 Calls([{<<Dir/binary, "/c">>, Exec, Data, sha(Data)}])),
    C = <<Dir/binary, "/c">>,
    ?assertEqual(Exec, mode(C)),
    {ok, #file_info{size = S, mtime = M, inode = I}} = file:read_file_info(C, [{time, posix}]),
    ?assertEqual([{C, {S, M, I, sha(Data)}}], relsync_state:cache_lookup(C)),
    ?assertEqual([Made, Made], [mode(<<Dir/binary, F/binary>>) || F <- [<<"/a">>, <<"/b">>]]),
    ?assertEqual([], tmp_files(Dir)).

%% What is really tested here depends on who runs the suite:
%%  - always: a parent that is a regular file gives enotdir;
%%  - non-root: a chmod 0555 directory gives eacces;
%%  - root (permission bits do not stop root): an immutable directory
%%    (chattr +i) gives eperm, and a read-only tmpfs mount gives erofs.
%% Variants that cannot be set up are reported in the test comment.
put_files_unwritable(Config) ->
    Dir = ?config(dir, Config),
    Plain = write(<<Dir/binary, "/plain">>, <<"x">>),
    Under = <<Plain/binary, "/sub/f">>,
    ?assertEqual({error, Under, enotdir}, ?T:put_files([{Under, 8#644, <<"d">>, sha(<<"d">>)}])),
    ?assertEqual({error, enotdir}, ?T:put_chunk(Under, 0, <<"d">>)),
    Ro = <<Dir/binary, "/ro">>,
    ok = file:make_dir(Ro),
    Tested = [R || R <- [unwritable_dir(Ro), readonly_mount(<<Dir/binary, "/mnt">>)], R =/= false],
    {comment, lists:join(", ", ["tested: enotdir" | [atom_to_list(R) || R <- Tested]])}.

unwritable_dir(Ro) ->
    F = <<Ro/binary, "/f">>,
    {Setup, Undo, Expect} =
        case is_root() of
            false -> {fun() -> file:change_mode(Ro, 8#555) end,
                      fun() -> file:change_mode(Ro, 8#755) end, eacces};
            true -> {fun() -> cmd_ok("chattr +i " ++ binary_to_list(Ro)) end,
                     fun() -> cmd_ok("chattr -i " ++ binary_to_list(Ro)) end, eperm}
        end,
    case Setup() of
        ok ->
            try
                ?assertEqual({error, F, Expect}, ?T:put_files([{F, 8#644, <<"d">>, sha(<<"d">>)}])),
                ?assertEqual({error, Expect}, ?T:put_chunk(F, 0, <<"d">>)),
                ?assertEqual({error, <<Ro/binary, "/l">>, Expect},
                             ?T:make_symlinks([{<<Ro/binary, "/l">>, <<"x">>}])),
                Expect
            after
                Undo()
            end;
        Err ->
            ct:pal("cannot make ~s unwritable: ~p", [Ro, Err]),
            false
    end.

readonly_mount(Mnt) ->
    ok = file:make_dir(Mnt),
    M = binary_to_list(Mnt),
    case is_root() andalso cmd_ok("mount -t tmpfs -o ro,size=64k tmpfs " ++ M) of
        ok ->
            try
                F = <<Mnt/binary, "/f">>,
                ?assertEqual({error, F, erofs}, ?T:put_files([{F, 8#644, <<"d">>, sha(<<"d">>)}])),
                ?assertEqual({error, erofs}, ?T:put_chunk(F, 0, <<"d">>)),
                ?assertEqual({error, <<Mnt/binary, "/l">>, erofs},
                             ?T:make_symlinks([{<<Mnt/binary, "/l">>, <<"x">>}])),
                erofs
            after
                cmd_ok("umount " ++ M)
            end;
        Other ->
            ct:pal("no read-only mount (~p): erofs not tested", [Other]),
            false
    end.

%% Block sums of full blocks only; a file rebuilt from copies and literals is
%% checked against its hash before it replaces the old one.
delta(Config) ->
    Dir = ?config(dir, Config),
    Old = crypto:strong_rand_bytes(10000),
    Base = write(<<Dir/binary, "/base">>, Old),
    {ok, Sums} = ?T:block_signatures(Base, 4096),
    ?assertEqual([{erlang:adler32(binary:part(Old, 0, 4096)), erlang:md5(binary:part(Old, 0, 4096))},
                  {erlang:adler32(binary:part(Old, 4096, 4096)),
                   erlang:md5(binary:part(Old, 4096, 4096))}], Sums),
    New = <<(binary:part(Old, 4096, 4096))/binary, "middle", (binary:part(Old, 0, 4096))/binary>>,
    Ops = [{copy, 4096, 4096}, <<"middle">>, {copy, 0, 4096}],
    ?assertEqual({error, hash_mismatch}, ?T:put_delta(Base, Base, Ops, 8#600, sha(<<"x">>))),
    ?assertEqual({ok, Old}, file:read_file(Base)),
    ?assertEqual(ok, ?T:put_delta(Base, Base, Ops, 8#600, sha(New))),
    ?assertEqual({ok, New}, file:read_file(Base)),
    ?assertEqual(8#600, mode(Base)),
    ?assertEqual({error, einval}, ?T:put_delta(Base, Base, [{copy, 9000, 4096}], 8#600, sha(New))),
    ?assertEqual({error, enoent}, ?T:block_signatures(<<Dir/binary, "/missing">>, 4096)),
    %% Into a directory that does not exist yet (a shadow tree's first copy of the file).
    Deep = <<Dir/binary, "/new/sub/file">>,
    ?assertEqual(ok, ?T:put_delta(Deep, Base, [{copy, 0, 4096}, <<"!">>], 8#644,
                                  sha(<<(binary:part(New, 0, 4096))/binary, "!">>))),
    ?assertEqual({ok, <<(binary:part(New, 0, 4096))/binary, "!">>}, file:read_file(Deep)),
    ?assertEqual({error, enoent}, ?T:put_delta(Base, <<Dir/binary, "/missing">>, Ops, 8#600,
                                               sha(New))),
    ?assertEqual([], tmp_files(Dir)),
    ?assertEqual([], tmp_files(<<Dir/binary, "/new/sub">>)).

chunked_put_commit(Config) ->
    Dir = ?config(dir, Config),
    Path = <<Dir/binary, "/sub/big.bin">>,
    Data = crypto:strong_rand_bytes(5 * 1024 * 1024 + 777),
    ChunkSize = 1024 * 1024,
    %% A later chunk without a first one: nothing to write into.
    ?assertEqual({error, enoent}, ?T:put_chunk(Path, ChunkSize, <<"x">>)),
    ?assertEqual({error, enoent}, ?T:commit(Path, 8#644, sha(Data))),
    put_in_chunks(Path, Data, ChunkSize),
    ?assertEqual(ok, ?T:commit(Path, 8#640, sha(Data))),
    ?assertEqual({ok, Data}, file:read_file(Path)),
    ?assertEqual(8#640, mode(Path)),
    ?assertEqual([], tmp_files(filename:dirname(Path))),
    %% Restarting at offset 0 truncates a half-written tmp file.
    ok = ?T:put_chunk(Path, 0, <<"garbage garbage garbage">>),
    ok = ?T:put_chunk(Path, 0, <<"ab">>),
    ok = ?T:put_chunk(Path, 2, <<"cd">>),
    ?assertEqual(ok, ?T:commit(Path, 8#644, sha(<<"abcd">>))),
    ?assertEqual({ok, <<"abcd">>}, file:read_file(Path)),
    %% A missing chunk leaves a hole: caught by the hash; tmp removed, old kept.
    ok = ?T:put_chunk(Path, 0, <<"ab">>),
    ok = ?T:put_chunk(Path, 4, <<"ef">>),
    ?assertEqual({error, hash_mismatch}, ?T:commit(Path, 8#644, sha(<<"abcdef">>))),
    ?assertEqual({ok, <<"abcd">>}, file:read_file(Path)),
    ?assertEqual([], tmp_files(filename:dirname(Path))),
    %% A staged name that is not our regular file is never followed.
    Other = write(<<Dir/binary, "/other">>, <<"abcd">>),
    Staged = <<Dir/binary, "/sub/", (tmp_name(<<>>, <<"big.bin">>))/binary>>,
    ok = file:make_symlink(Other, Staged),
    ?assertEqual({error, einval}, ?T:put_chunk(Path, 2, <<"xx">>)),
    %% The refused chunk removed the bogus staged link (the link, not its target).
    ?assertEqual({error, enoent}, ?T:commit(Path, 8#777, sha(<<"abcd">>))),
    ?assertEqual({ok, <<"abcd">>}, file:read_file(Other)),
    ?assertEqual(8#644, mode(Other)),
    ?assertEqual([], tmp_files(filename:dirname(Path))).

put_in_chunks(Path, Data, ChunkSize) ->
    put_in_chunks(Path, Data, ChunkSize, 0).
put_in_chunks(_Path, <<>>, _ChunkSize, _Off) -> ok;
put_in_chunks(Path, Data, ChunkSize, Off) ->
    N = min(ChunkSize, byte_size(Data)),
    <<Chunk:N/binary, Rest/binary>> = Data,
    ?assertEqual(ok, ?T:put_chunk(Path, Off, Chunk)),
    put_in_chunks(Path, Rest, ChunkSize, Off + N).

%%% ------------------------------------------------ deleting and symlinks

delete_files(Config) ->
    Dir = ?config(dir, Config),
    F = write(<<Dir/binary, "/f">>, <<"f">>),
    Target = write(<<Dir/binary, "/target">>, <<"t">>),
    L = <<Dir/binary, "/l">>,
    ok = file:make_symlink(Target, L),
    Dangling = <<Dir/binary, "/dangling">>,
    ok = file:make_symlink(<<"/nonexistent">>, Dangling),
    SubDir = <<Dir/binary, "/subdir">>,
    ok = file:make_dir(SubDir),
    DirLink = <<Dir/binary, "/dirlink">>,
    ok = file:make_symlink(SubDir, DirLink),
    ?assertEqual(ok, ?T:delete_files([F, L, Dangling, DirLink, <<Dir/binary, "/missing">>])),
    ?assertEqual({ok, [<<"subdir">>, <<"target">>]}, ls(Dir)),
    %% A directory is an error; files after it are left alone.
    G = write(<<Dir/binary, "/g">>, <<"g">>),
    {error, SubDir, Reason} = ?T:delete_files([Target, SubDir, G]),
    ?assert(lists:member(Reason, [eperm, eisdir])),
    ?assertEqual({ok, [<<"g">>, <<"subdir">>]}, ls(Dir)).

delete_dirs(Config) ->
    Dir = ?config(dir, Config),
    A = <<Dir/binary, "/a">>,
    ok = filelib:ensure_dir(<<A/binary, "/b/c/x">>),
    ok = filelib:ensure_dir(<<A/binary, "/b2/x">>),
    %% Any order: removed deepest first.
    ?assertEqual(ok, ?T:delete_dirs([A, <<A/binary, "/b">>, <<A/binary, "/b/c">>,
                                     <<A/binary, "/b2">>, <<Dir/binary, "/missing">>])),
    ?assertEqual({ok, []}, ls(Dir)),
    ok = filelib:ensure_dir(<<A/binary, "/b/x">>),
    _ = write(<<A/binary, "/b/file">>, <<"x">>),
    ?assertEqual({error, <<A/binary, "/b">>, enotempty},
                 ?T:delete_dirs([A, <<A/binary, "/b">>])),
    ?assertEqual({error, <<A/binary, "/b/file">>, enotdir},
                 ?T:delete_dirs([<<A/binary, "/b/file">>])).

make_symlinks(Config) ->
    Dir = ?config(dir, Config),
    New = <<Dir/binary, "/x/y/new">>,
    File = write(<<Dir/binary, "/file">>, <<"f">>),
    OldLink = <<Dir/binary, "/oldlink">>,
    ok = file:make_symlink(<<"somewhere">>, OldLink),
    SubDir = <<Dir/binary, "/subdir">>,
    ok = file:make_dir(SubDir),
    DirLink = <<Dir/binary, "/dirlink">>,
    ok = file:make_symlink(<<"subdir">>, DirLink),
    _ = write(<<Dir/binary, "/real">>, <<"r">>),
    ?assertEqual(ok, ?T:make_symlinks([{New, <<"../../real">>},
                                       {File, <<"elsewhere">>},
                                       {OldLink, <<"lib/app-2">>},
                                       {DirLink, <<"/abs/target">>}])),
    ?assertEqual({ok, "../../real"}, file:read_link(New)),
    ?assertEqual({ok, <<"r">>}, file:read_file(New)),
    ?assertEqual({ok, "elsewhere"}, file:read_link(File)),
    ?assertEqual({ok, "lib/app-2"}, file:read_link(OldLink)),
    ?assertEqual({ok, "/abs/target"}, file:read_link(DirLink)),
    ?assertEqual({ok, []}, ls(SubDir)),           % replaced the link, not inside it
    %% A real directory is not replaced.
    {error, SubDir, Reason} = ?T:make_symlinks([{SubDir, <<"x">>}]),
    ct:pal("symlink over a directory: ~p", [Reason]),
    ?assertEqual([], tmp_files(Dir)),
    ?assertEqual(ok, ?T:make_symlinks([])).

%%% ------------------------------------------------------------- code path

update_code_path(Config) ->
    Dir = ?config(dir, Config),
    A = <<Dir/binary, "/a">>,
    B = <<Dir/binary, "/b">>,
    Rel = [<<"/lib/x-1/ebin">>, <<"/lib/y-1/ebin">>],
    [ok = filelib:ensure_dir(<<R/binary, S/binary, "/x">>) || R <- [A, B], S <- [<<>> | Rel]],
    Twin = <<Dir/binary, "/a2/ebin">>,              % starts with A, but not under A/
    ok = filelib:ensure_dir(<<Twin/binary, "/x">>),
    Base = [list_to_binary(P) || P <- code:get_path()],
    AddA = [<<A/binary, R/binary>> || R <- Rel] ++ [A, Twin],
    {ok, P1} = ?T:update_code_path(#{add => AddA}),
    ?assertEqual(Base ++ AddA, P1),
    ?assertEqual({ok, P1}, ?T:update_code_path(#{add => AddA})),   % idempotent
    ?assertEqual(P1, [list_to_binary(P) || P <- code:get_path()]),
    Switch = #{replace_prefix => {A, B}, add => [], remove => []},
    {ok, P2} = ?T:update_code_path(Switch),
    ?assertEqual(Base ++ [<<B/binary, R/binary>> || R <- Rel] ++ [B, Twin], P2),
    ?assertEqual({ok, P2}, ?T:update_code_path(Switch)),
    ?assertEqual(P2, [list_to_binary(P) || P <- code:get_path()]),
    %% ... and back again (a trailing slash on the prefixes does not matter).
    ?assertEqual({ok, P1}, ?T:update_code_path(#{replace_prefix => {<<B/binary, "/">>, A}})),
    %% Remove and add in one go.
    Y = <<A/binary, "/lib/y-1/ebin">>,
    YB = <<B/binary, "/lib/y-1/ebin">>,
    Op = #{replace_prefix => none, remove => [Y, Twin], add => [YB, YB]},
    {ok, P3} = ?T:update_code_path(Op),
    ?assertEqual(Base ++ [<<A/binary, "/lib/x-1/ebin">>, A, YB], P3),
    ?assertEqual({ok, P3}, ?T:update_code_path(Op)),
    %% A directory that does not exist is refused; nothing changes.
    Bad = <<Dir/binary, "/nope">>,
    ?assertEqual({error, {bad_directory, [Bad]}}, ?T:update_code_path(#{add => [Bad]})),
    ?assertEqual(P3, [list_to_binary(P) || P <- code:get_path()]).

%%% ---------------------------------------------------------- code loading

load_modules_basic(Config) ->
    Dir = ?config(dir, Config),
    V1 = compile_mod(Dir, "v1", rs_basic, "-export([v/0]). v() -> 1."),
    V2 = compile_mod(Dir, "v2", rs_basic, "-export([v/0]). v() -> 2."),
    code:purge(rs_basic), code:delete(rs_basic), code:purge(rs_basic),
    %% Brand-new module.
    ?assertEqual([{rs_basic, {loaded, []}}], ?T:load_modules([{rs_basic, V1}], soft)),
    ?assertEqual(1, rs_basic:v()),
    %% Changed module; nothing runs its old code.
    ?assertEqual([{rs_basic, {loaded, []}}], ?T:load_modules([{rs_basic, V2}], soft)),
    ?assertEqual(2, rs_basic:v()),
    ?assertEqual(binary_to_list(V2), code:which(rs_basic)),
    ?assertNot(erlang:check_old_code(rs_basic)),    % unused old code is purged
    %% Sticky modules are not touched; read and load errors are reported.
    Garbage = write(<<Dir/binary, "/garbage.beam">>, <<"not a beam">>),
    ct:pal("an error report about loading rs_garbage is expected next"),
    ?assertMatch([{lists, sticky},
                  {rs_missing, {error, enoent}},
                  {rs_garbage, {error, _}},
                  {rs_basic, {loaded, []}}],
                 ?T:load_modules([{lists, V1},
                                  {rs_missing, <<Dir/binary, "/missing.beam">>},
                                  {rs_garbage, Garbage},
                                  {rs_basic, V1}], brutal)),
    ?assertEqual(1, rs_basic:v()),
    ?assertEqual([], ?T:load_modules([], soft)).

%% With a hash: a file that does not match is refused, a loaded one is recorded
%% in loaded_shas/0 until the module is deleted.
load_modules_recorded(Config) ->
    Dir = ?config(dir, Config),
    V1 = compile_mod(Dir, "v1", rs_rec, "-export([v/0]). v() -> 1."),
    {ok, Bin} = file:read_file(V1),
    Sha = crypto:hash(sha256, Bin),
    ?assertEqual([{rs_rec, {error, hash_mismatch}}],
                 ?T:load_modules([{rs_rec, V1, crypto:hash(sha256, <<"other">>)}], soft)),
    ?assertEqual(false, code:is_loaded(rs_rec)),
    ?assertNot(maps:is_key(rs_rec, ?T:loaded_shas())),
    ?assertEqual([{rs_rec, {loaded, []}}], ?T:load_modules([{rs_rec, V1, Sha}], soft)),
    ?assertEqual(Sha, maps:get(rs_rec, ?T:loaded_shas())),
    ?assertEqual([{rs_rec, deleted}], ?T:delete_modules([rs_rec], soft)),
    ?assertNot(maps:is_key(rs_rec, ?T:loaded_shas())),
    %% Pending marks: set before a sync writes, cleared by a load or a delete.
    ok = ?T:mark_pending([rs_rec, rs_gone]),
    ?assertMatch(#{pending := [rs_gone, rs_rec]}, ?T:code_state()),
    [{rs_rec, {loaded, []}}] = ?T:load_modules([{rs_rec, V1, Sha}], soft),
    ?assertEqual(#{recorded => #{rs_rec => Sha}, pending => [rs_gone]},
                 maps:map(fun(recorded, R) -> maps:with([rs_rec], R); (_, V) -> V end,
                          ?T:code_state())),
    [{rs_gone, not_loaded}] = ?T:delete_modules([rs_gone], soft),
    ok = ?T:mark_pending([lists]),
    [{lists, sticky}] = ?T:load_modules([{lists, V1}], soft),   % final: no longer pending
    [{rs_rec, deleted}] = ?T:delete_modules([rs_rec], soft),
    ?assertMatch(#{pending := []}, ?T:code_state()).

load_modules_gen_server(Config) ->
    Dir = ?config(dir, Config),
    Src = fun(Tag) ->
                  "-behaviour(gen_server).\n"
                  "-export([init/1, handle_call/3, handle_cast/2]).\n"
                  "init(N) -> {ok, N}.\n"
                  "handle_call(get, _From, N) -> {reply, {" ++ Tag ++ ", N}, N}.\n"
                  "handle_cast(inc, N) -> {noreply, N + 1}.\n"
          end,
    V1 = compile_mod(Dir, "v1", rs_counter, Src("v1")),
    V2 = compile_mod(Dir, "v2", rs_counter, Src("v2")),
    [{rs_counter, {loaded, []}}] = ?T:load_modules([{rs_counter, V1}], soft),
    {ok, Pid} = gen_server:start({local, rs_counter}, rs_counter, 0, []),
    try
        [gen_server:cast(rs_counter, inc) || _ <- [1, 2, 3]],
        ?assertEqual({v1, 3}, gen_server:call(rs_counter, get)),
        ?assertEqual([{rs_counter, {loaded, []}}], ?T:load_modules([{rs_counter, V2}], soft)),
        ?assertEqual({v2, 3}, gen_server:call(rs_counter, get)),
        ?assertEqual(Pid, whereis(rs_counter))
    after
        gen_server:stop(rs_counter)
    end.

%% The beam of the code the VM runs (here a copy elsewhere, as a first sync
%% into a new directory has it) is recorded as loaded but not loaded again: a
%% reload would make the running code old for a process looping in it.
load_modules_same_code(Config) ->
    Dir = ?config(dir, Config),
    V1 = compile_mod(Dir, "v1", rs_same, "-export([start/0]).\n"
                     "start() -> spawn(fun loop/0).\nloop() -> receive stop -> ok end.\n"),
    {ok, Bin} = file:read_file(V1),
    Copy = write(<<Dir/binary, "/copy/rs_same.beam">>, Bin),
    Sha = crypto:hash(sha256, Bin),
    [{rs_same, {loaded, []}}] = ?T:load_modules([{rs_same, V1}], soft),
    Pid = rs_same:start(),
    try
        ?assertEqual([{rs_same, {loaded, []}}], ?T:load_modules([{rs_same, Copy, Sha}], soft)),
        ?assertNot(erlang:check_old_code(rs_same)),
        ?assertEqual(binary_to_list(V1), code:which(rs_same)),
        ?assertEqual(Sha, maps:get(rs_same, ?T:loaded_shas())),
        %% Other code is loaded, and the process is left in the old.
        V2 = compile_mod(Dir, "v2", rs_same, "-export([start/0, v/0]). v() -> 2.\n"
                         "start() -> spawn(fun loop/0).\nloop() -> receive stop -> ok end.\n"),
        ?assertMatch([{rs_same, {loaded, [{Pid, _}]}}], ?T:load_modules([{rs_same, V2}], soft)),
        ?assertEqual(binary_to_list(V2), code:which(rs_same))
    after
        Pid ! stop
    end,
    [{rs_same, deleted}] = ?T:delete_modules([rs_same], brutal).

%% outdated/1 names the modules whose loaded code is not the beam they were
%% loaded from as it is now (a build rewrote it: changed) and those not loaded
%% (new); a module whose beam still holds its code is not named.
outdated(Config) ->
    Dir = ?config(dir, Config),
    Beam = compile_mod(Dir, "v", rs_out, "-export([v/0]). v() -> 1.\n"),
    [{rs_out, {loaded, []}}] = ?T:load_modules([{rs_out, Beam}], soft),
    try
        ?assertEqual([{rs_not_loaded, new}], ?T:outdated([rs_out, rs_not_loaded])),
        {ok, _} = file:copy(compile_mod(Dir, "v2", rs_out, "-export([v/0]). v() -> 2.\n"),
                            Beam),
        ?assertEqual([{rs_out, changed}], ?T:outdated([rs_out])),
        ?assertEqual(1, rs_out:v())                         % nothing loaded
    after
        [{rs_out, deleted}] = ?T:delete_modules([rs_out], brutal)
    end.

%% load_fresh/1 loads only the modules the VM has no code of, together; a
%% loaded one, one with an on_load function (its files may not be there yet)
%% and a beam that does not match its hash are left for load_modules/2.
load_fresh(Config) ->
    Dir = ?config(dir, Config),
    Beam = fun(Mod, Body) ->
                   Path = compile_mod(Dir, "fresh", Mod, Body),
                   {ok, Bin} = file:read_file(Path),
                   {Mod, Path, crypto:hash(sha256, Bin)}
           end,
        A = Beam(rs_fresh_a, "-export([v/0]). v() -> rs_fresh_b:v() + 1."),
    B = Beam(rs_fresh_b, "-export([v/0]). v() -> 1."),
    OnLoad = Beam(rs_fresh_on_load, "-on_load(init/0). init() -> ok."),
    {Bad, BadPath, _} = Beam(rs_fresh_bad, ""),
    Loaded = Beam(rs_fresh_loaded, "-export([v/0]). v() -> 7."),
    [{rs_fresh_loaded, {loaded, []}}] = ?T:load_modules([Loaded], soft),
    ok = ?T:mark_pending([rs_fresh_a, rs_fresh_b]),
    ?assertEqual([{rs_fresh_a, {loaded, []}}, {rs_fresh_b, {loaded, []}}],
                 lists:sort(?T:load_fresh([A, B, OnLoad, {Bad, BadPath, <<0:256>>}, Loaded]))),
    ?assertEqual(2, rs_fresh_a:v()),
    ?assertEqual(false, code:is_loaded(rs_fresh_on_load)),
    ?assertEqual(false, code:is_loaded(rs_fresh_bad)),
    #{recorded := Recorded, pending := Pending} = ?T:code_state(),
    ?assertEqual(element(3, A), maps:get(rs_fresh_a, Recorded)),
    ?assertEqual([], [M || M <- Pending, M =:= rs_fresh_a orelse M =:= rs_fresh_b]),
    ?assertEqual([], ?T:load_fresh([A, B])),        % loaded now: nothing fresh left
    %% More than one group (?FRESH_GROUP): every module of every group is loaded,
    %% but the on_load one.
    Many = [Beam(list_to_atom("rs_fresh_" ++ integer_to_list(N)), "") || N <- lists:seq(1, 70)],
    OnLoad2 = Beam(rs_fresh_on_load2, "-on_load(init/0). init() -> ok."),
    Results = ?T:load_fresh([OnLoad2 | Many]),
    ?assertEqual(lists:sort([{M, {loaded, []}} || {M, _, _} <- Many]), lists:sort(Results)),
    ?assertEqual(false, code:is_loaded(rs_fresh_on_load2)),
    %% A NIF's loader is left out before its group is prepared: every other
    %% module is prepared once.
    Nif = Beam(rs_fresh_nif, "-on_load(init/0). init() -> erlang:load_nif(\"none\", 0)."),
    Few = [Beam(list_to_atom("rs_fresh_few_" ++ integer_to_list(N)), "") || N <- lists:seq(1, 5)],
    erlang:trace_pattern({erlang, prepare_loading, 2}, true, [call_count]),
    erlang:trace(all, true, [call]),
    try ?assertEqual(lists:sort([{M, {loaded, []}} || {M, _, _} <- Few]),
                     lists:sort(?T:load_fresh([Nif | Few])))
    after erlang:trace(all, false, [call])
    end,
    {call_count, Prepared} = erlang:trace_info({erlang, prepare_loading, 2}, call_count),
    erlang:trace_pattern({erlang, prepare_loading, 2}, false, [call_count]),
    ?assertEqual(length(Few), Prepared),
    ?assertEqual(false, code:is_loaded(rs_fresh_nif)),
    _ = ?T:delete_modules([M || {M, _, _} <- Many ++ Few], soft),
    [{_, deleted}, {_, deleted}, {_, deleted}] =
        ?T:delete_modules([rs_fresh_a, rs_fresh_b, rs_fresh_loaded], soft).

%% A process looping in a local function stays in the old code after a load.
load_modules_old_code(Config) ->
    Dir = ?config(dir, Config),
    Src = fun(V) ->
                  "-export([start/0, v/0]).\n"
                  "start() -> spawn(fun loop/0).\n"
                  "loop() -> receive stop -> ok end.\n"
                  "v() -> " ++ V ++ ".\n"
          end,
    [V1, V2, V3] = [compile_mod(Dir, V, rs_stuck, Src(V)) || V <- ["1", "2", "3"]],
    [{rs_stuck, {loaded, []}}] = ?T:load_modules([{rs_stuck, V1}], soft),
    Pid = rs_stuck:start(),
    true = register(rs_stuck_proc, Pid),
    ?assertEqual([{rs_stuck, {loaded, [{Pid, rs_stuck_proc}]}}],
                 ?T:load_modules([{rs_stuck, V2}], soft)),
    ?assertEqual(2, rs_stuck:v()),
    %% Version 1 is still in use: soft refuses to load version 3 ...
    ?assertEqual([{rs_stuck, {not_purged, [{Pid, rs_stuck_proc}]}}],
                 ?T:load_modules([{rs_stuck, V3}], soft)),
    ?assertEqual(2, rs_stuck:v()),
    ?assert(is_process_alive(Pid)),
    %% ... brutal kills the process and loads it.
    Ref = monitor(process, Pid),
    ?assertEqual([{rs_stuck, {loaded, []}}], ?T:load_modules([{rs_stuck, V3}], brutal)),
    receive {'DOWN', Ref, process, Pid, killed} -> ok after 5000 -> ct:fail(not_killed) end,
    ?assertEqual(3, rs_stuck:v()).

delete_modules(Config) ->
    Dir = ?config(dir, Config),
    Src = "-export([start/0]).\nstart() -> spawn(fun loop/0).\nloop() -> receive stop -> ok end.\n",
    Beam = compile_mod(Dir, "v1", rs_del, Src),
    [{rs_del, {loaded, []}}] = ?T:load_modules([{rs_del, Beam}], soft),
    ?assertEqual([{rs_del, deleted}, {lists, sticky}, {rs_never_loaded, not_loaded}],
                 ?T:delete_modules([rs_del, lists, rs_never_loaded], soft)),
    ?assertEqual(false, code:is_loaded(rs_del)),
    ?assertNot(erlang:check_old_code(rs_del)),
    ?assertEqual([{rs_del, not_loaded}], ?T:delete_modules([rs_del], soft)),
    %% With a process in its code: soft keeps it loaded, in use, and says by
    %% whom; brutal kills the process, deletes the module and still says so.
    [{rs_del, {loaded, []}}] = ?T:load_modules([{rs_del, Beam}], soft),
    Pid = rs_del:start(),
    ?assertEqual([{rs_del, {in_use, [{Pid, undefined}]}}], ?T:delete_modules([rs_del], soft)),
    ?assertMatch({file, _}, code:is_loaded(rs_del)),
    ?assertNot(erlang:check_old_code(rs_del)),
    ?assert(is_process_alive(Pid)),
    Ref = monitor(process, Pid),
    ?assertEqual([{rs_del, {deleted, [{Pid, undefined}]}}],
                 ?T:delete_modules([rs_del], brutal)),
    receive {'DOWN', Ref, process, Pid, killed} -> ok after 5000 -> ct:fail(not_killed) end,
    ?assertEqual(false, code:is_loaded(rs_del)),
    ?assertNot(erlang:check_old_code(rs_del)).

-define(USER_SRV,
        "-behaviour(gen_server).\n"
        "-export([start_link/1, init/1, handle_call/3, handle_cast/2]).\n"
        "start_link(Name) -> gen_server:start_link({local, Name}, ?MODULE, [], []).\n"
        "init([]) -> {ok, []}.\n"
        "handle_call(_, _, S) -> {reply, ok, S}.\n"
        "handle_cast(_, S) -> {noreply, S}.\n").
-define(USER_SUP,
        "-behaviour(supervisor).\n"
        "-export([start_link/0, init/1]).\n"
        "start_link() -> supervisor:start_link({local, rs_user_sup}, ?MODULE, []).\n"
        "init([]) ->\n"
        "    {ok, {#{}, [#{id => srv, start => {rs_user_srv, start_link, [rs_user_a]}},\n"
        "                #{id => named, start => {rs_user_srv, start_link, [rs_user_b]},\n"
        "                  modules => [rs_user_named]}]}}.\n").

%% A module's users keep it loaded (and pending): processes running it as
%% their callback module, a supervisor's child specs starting it or naming it
%% among their modules. A suspended supervisor is not asked (its processes are
%% still found); a module nobody uses goes; brutal unloads a used one anyway.
delete_modules_users(Config) ->
    Dir = ?config(dir, Config),
    Plain = "-export([x/0]).\nx() -> ok.\n",
    Mods = [{rs_user_srv, ?USER_SRV}, {rs_user_sup, ?USER_SUP}, {rs_user_named, Plain},
            {rs_user_free, Plain}],
    Beams = [{M, compile_mod(Dir, "v1", M, Src)} || {M, Src} <- Mods],
    [{_, {loaded, []}}, {_, {loaded, []}}, {_, {loaded, []}}, {_, {loaded, []}}] =
        ?T:load_modules(Beams, soft),
    {ok, Sup} = rs_user_sup:start_link(),
    unlink(Sup),
    {A, B} = {whereis(rs_user_a), whereis(rs_user_b)},
    Child = fun(Id) -> {child, Sup, rs_user_sup, Id} end,
    ok = ?T:mark_pending([M || {M, _} <- Mods]),
    [{rs_user_srv, {in_use, Srv}}, {rs_user_sup, {in_use, SupUsers}},
     {rs_user_named, {in_use, Named}}, {rs_user_free, deleted}] =
        ?T:delete_modules([M || {M, _} <- Mods], soft),
    ?assertEqual(lists:sort([{A, rs_user_a}, {B, rs_user_b}, Child(srv), Child(named)]),
                 lists:sort(Srv)),
    ?assertEqual([{Sup, rs_user_sup}], SupUsers),
    ?assertEqual([Child(named)], Named),
    [?assertMatch({file, _}, code:is_loaded(M)) || M <- [rs_user_srv, rs_user_sup, rs_user_named]],
    ?assertEqual(false, code:is_loaded(rs_user_free)),
    ?assertMatch(#{pending := [rs_user_named, rs_user_srv, rs_user_sup]}, ?T:code_state()),
    ok = sys:suspend(Sup),
    [{rs_user_srv, {in_use, Procs}}] = ?T:delete_modules([rs_user_srv], soft),
    ?assertEqual(lists:sort([{A, rs_user_a}, {B, rs_user_b}]), lists:sort(Procs)),
    ok = sys:resume(Sup),
    ?assertEqual([{rs_user_named, {deleted, [Child(named)]}}],
                 ?T:delete_modules([rs_user_named], brutal)),
    ?assertEqual(false, code:is_loaded(rs_user_named)),
    Ref = monitor(process, Sup),
    exit(Sup, shutdown),
    receive {'DOWN', Ref, process, Sup, shutdown} -> ok after 5000 -> ct:fail(sup_alive) end,
    ?assertEqual([{rs_user_srv, deleted}, {rs_user_sup, deleted}],
                 ?T:delete_modules([rs_user_srv, rs_user_sup], soft)),
    ?assertMatch(#{pending := []}, ?T:code_state()).

%%% ------------------------------------------------------------------ hooks

-define(HOOKS,
        "-export([ok_hook/0, crash/0, throws/0, slow/0, chatty/0, quiet/0]).\n"
        "ok_hook() ->\n"
        "    io:format(\"hello ~s~n\", [\"world\"]),\n"
        "    io:put_chars(<<\"bin\\n\">>),\n"
        "    io:format(\"~ts ~p~n\", [<<\"h\\x{e9}llo \\x{2713}\"/utf8>>, [1,2]]),\n"
        "    ok = io:request(group_leader(), {put_chars, latin1, <<233, $\\n>>}),\n"
        "    GL = group_leader(),\n"
        "    ok = io:request(GL, {put_chars, unicode, io_lib, format, [\"mfa~n\", []]}),\n"
        "    ok = io:requests(GL, [{put_chars, unicode, <<\"r1 \">>},\n"
        "                          {put_chars, unicode, <<\"r2\">>}]),\n"
        "    eof = io:get_line(\"prompt> \"),\n"
        "    {error, enotsup} = io:columns(),\n"
        "    {done, 42}.\n"
        "crash() -> io:format(\"before~n\"), erlang:error(boom).\n"
        "throws() -> throw(oops).\n"
        "slow() -> rs_hook_probe ! {hook_pid, self()}, io:format(\"started~n\"),\n"
        "          timer:sleep(infinity).\n"
        "chatty() -> E = binary:copy(<<\"\\x{e9}\"/utf8>>, 1000),\n"
        "            [io:put_chars(E) || _ <- lists:seq(1, 600)], ok.\n"
        "quiet() -> ok.\n").

run_hook_output(Config) ->
    load_hooks(Config),
    Before = processes(),
    ?assertEqual({ok, {done, 42},
                  <<"hello world\nbin\nh\x{e9}llo \x{2713} [1,2]\n\x{e9}\nmfa\nr1 r2"/utf8>>},
                 ?T:run_hook(rs_hooks, ok_hook, 5000)),
    ?assertEqual({ok, ok, <<>>}, ?T:run_hook(rs_hooks, quiet, 5000)),
    %% Output is capped at 1 MiB, without cutting a UTF-8 character in two.
    {ok, ok, Big} = ?T:run_hook(rs_hooks, chatty, 5000),
    ?assert(byte_size(Big) =< 1024 * 1024 + 100),
    ?assertMatch(<<_/binary>>, unicode:characters_to_binary(Big)),
    ?assertEqual([], processes() -- Before).

run_hook_exception(Config) ->
    load_hooks(Config),
    ?assertMatch({error, {error, boom, [{rs_hooks, crash, 0, _} | _]}, <<"before\n">>},
                 ?T:run_hook(rs_hooks, crash, 5000)),
    ?assertMatch({error, {throw, oops, [_ | _]}, <<>>}, ?T:run_hook(rs_hooks, throws, 5000)).

run_hook_timeout(Config) ->
    load_hooks(Config),
    true = register(rs_hook_probe, self()),
    Before = processes(),
    ?assertEqual({timeout, <<"started\n">>}, ?T:run_hook(rs_hooks, slow, 300)),
    HookPid = receive {hook_pid, P} -> P after 1000 -> ct:fail(no_hook_pid) end,
    ?assertNot(is_process_alive(HookPid)),
    ?assertEqual([], processes() -- Before).

%% If the rpc worker running run_hook is killed, the hook goes too.
run_hook_caller_dies(Config) ->
    load_hooks(Config),
    true = register(rs_hook_probe, self()),
    Caller = spawn(fun() -> ?T:run_hook(rs_hooks, slow, 60000) end),
    HookPid = receive {hook_pid, P} -> P after 5000 -> ct:fail(no_hook_pid) end,
    {group_leader, Cap} = process_info(HookPid, group_leader),
    Refs = [monitor(process, X) || X <- [HookPid, Cap]],
    exit(Caller, kill),
    [receive {'DOWN', R, process, _, _} -> ok after 5000 -> ct:fail(leaked) end || R <- Refs].

run_hook_not_exported(Config) ->
    load_hooks(Config),
    ?assertEqual({not_exported, <<>>}, ?T:run_hook(rs_hooks, nope, 1000)),
    ?assertEqual({not_exported, <<>>}, ?T:run_hook(rs_no_such_module, f, 1000)),
    ?assertMatch({error, {error, badarg, _}, <<>>}, ?T:run_hook(rs_hooks, quiet, -1)).

load_hooks(Config) ->
    Beam = compile_mod(?config(dir, Config), "hooks", rs_hooks, ?HOOKS),
    [{rs_hooks, {loaded, _}}] = ?T:load_modules([{rs_hooks, Beam}], brutal),
    ok.

%%% ------------------------------------------------------------- helpers

sha(Bin) -> crypto:hash(sha256, Bin).

write(Path, Data) ->
    ok = filelib:ensure_dir(Path),
    ok = file:write_file(Path, Data),
    ok = file:change_mode(Path, 8#644),
    Path.

mode(Path) ->
    {ok, #file_info{mode = M}} = file:read_file_info(Path),
    M band 8#7777.

%% The cached listing of directory Dir ([] when there is none).
listing(Dir) ->
    ets:lookup(relsync_target_state, {dir, Dir}).

set_mtime(Path, T) ->
    ok = file:write_file_info(Path, #file_info{mtime = T, atime = T}, [{time, posix}]).

ls(Dir) ->
    {ok, Names} = file:list_dir(Dir),
    {ok, lists:sort([list_to_binary(N) || N <- Names])}.

tmp_files(Dir) ->
    [list_to_binary(N) || N <- filelib:wildcard(".relsync-tmp.*", binary_to_list(Dir))].

%% The temporary name a write of Name stages (see relsync_files:tmp_path/2).
tmp_name(<<>>, Name) ->
    <<".relsync-tmp.", (binary:encode_hex(erlang:md5(Name)))/binary, ".part">>;
tmp_name(Token, Name) ->
    <<".relsync-tmp.", Token/binary, ".", (binary:encode_hex(erlang:md5(Name)))/binary,
      ".part">>.

%% bin/start, erts-*, lib/*, releases/*, an empty dir, symlinks, tmp files.
make_tree(Config) ->
    Root = <<(?config(dir, Config))/binary, "/root">>,
    W = fun(Rel, Data, Mode) ->
                P = write(<<Root/binary, "/", Rel/binary>>, Data),
                ok = file:change_mode(P, Mode)
        end,
    W(<<"bin/start">>, <<"start">>, 8#755),
    W(<<"erts-13.1/bin/beam">>, <<"beam">>, 8#644),
    W(<<"lib/app-1/ebin/app.beam">>, <<"app">>, 8#600),
    W(<<"lib/kernel-8.5/ebin/kernel.app">>, <<"k">>, 8#644),
    W(<<"lib/kernel-8.5x/ebin/other">>, <<"o">>, 8#644),
    W(<<"releases/1/sys.config">>, <<"[].">>, 8#640),
    W(<<"releases/1/.relsync-tmp.sys.config">>, <<"half">>, 8#644),
    ok = filelib:ensure_dir(<<Root/binary, "/empty/dir/x">>),
    ok = filelib:ensure_dir(<<Root/binary, "/lib/app-1/priv/x">>),
    ok = file:make_symlink(<<"../ebin/app.beam">>, <<Root/binary, "/lib/app-1/priv/link">>),
    ok = file:make_symlink(<<"/nonexistent/x">>, <<Root/binary, "/lib/app-1/priv/dangling">>),
    ok = file:make_symlink(<<"x">>, <<Root/binary, "/lib/app-1/priv/.relsync-tmp.l">>),
    ok = file:make_symlink(<<"lib">>, <<Root/binary, "/symdir">>),
    Root.

%% Compile a module from source into Dir/Sub/Mod.beam; returns the beam path.
compile_mod(Dir, Sub, Mod, Body) ->
    Out = filename:join(Dir, Sub),
    Src = filename:join(Out, atom_to_list(Mod) ++ ".erl"),
    ok = filelib:ensure_dir(Src),
    ok = file:write_file(Src, ["-module(", atom_to_list(Mod), ").\n", Body]),
    {ok, Mod} = compile:file(binary_to_list(Src), [{outdir, binary_to_list(Out)}, report]),
    filename:join(Out, atom_to_list(Mod) ++ ".beam").

%% Without /proc (not Linux) just give the child a moment.
wait_until(Fun, Ms) ->
    case filelib:is_dir("/proc/self") of
        false -> timer:sleep(500);
        true -> wait_until(Fun, Ms, erlang:monotonic_time(millisecond) + Ms)
    end.
wait_until(Fun, Ms, Deadline) ->
    case Fun() of
        true -> ok;
        false ->
            erlang:monotonic_time(millisecond) < Deadline orelse ct:fail(timeout),
            timer:sleep(20),
            wait_until(Fun, Ms, Deadline)
    end.

kill_and_wait(Pid) ->
    Ref = monitor(process, Pid),
    exit(Pid, kill),
    receive {'DOWN', Ref, process, Pid, _} -> ok end.

is_root() ->
    os:cmd("id -u") =:= "0\n".

cmd_ok(Cmd) ->
    case os:cmd(Cmd ++ " 2>&1; echo \"rc=$?\"") of
        Out ->
            case lists:suffix("rc=0\n", Out) of
                true -> ok;
                false -> {error, Out}
            end
    end.
