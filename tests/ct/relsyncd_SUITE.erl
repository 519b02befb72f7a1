%% Common Test suite for relsyncd: a real ssh daemon on 127.0.0.1 (ephemeral
%% port), started with relsyncd:start_daemon/1, driven with OTP's ssh client.
%%
%% Layout under priv_dir (per suite):
%%   rel/      the "release" path (allowed)
%%   data/     the writable path (allowed)
%%   outside/  not allowed; holds `secret`
%%   keys/     host_key_dir and authorized_keys
%%   client/   the good client key (id_ecdsa), client_bad/: a key not authorized
-module(relsyncd_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("kernel/include/file.hrl").
-include_lib("stdlib/include/assert.hrl").
-include_lib("public_key/include/public_key.hrl").

-export([all/0, groups/0, init_per_suite/1, end_per_suite/1,
         init_per_testcase/2, end_per_testcase/2]).
-export([connect_ok/1, inline_rsa_key_ok/1, wrong_key_refused/1, unknown_user_refused/1,
         password_refused/1, shell_exec_refused/1, host_key_persisted/1,
         sftp_inside/1, sftp_shadow_symlinks/1, sftp_escapes_refused/1,
         sftp_generated_bad_paths/1,
         ctl_ping_info/1, ctl_manifest/1, ctl_put_commit/1, ctl_put_files_chunks/1,
         ctl_delete_files/1, ctl_make_symlinks/1, ctl_update_code_path/1,
         ctl_load_modules/1, ctl_run_hook/1, ctl_forbidden/1, ctl_unknown_function/1,
         ctl_bad_request/1, ctl_undecodable_closes/1, ctl_split_frames/1,
         ctl_in_order/1, ctl_long_hook_not_blocking/1, ctl_close_kills_worker/1,
         ctl_eof_finishes_queue/1, ctl_oversized_refused/1, env_accepted/1,
         max_channels_capped/1,
         paths_unit/1, app_starts_daemon/1, app_disabled/1, app_retries/1]).

-define(USER, "relsync").
-define(SECRET, <<"top secret">>).
-define(T, 10000).

all() ->
    [paths_unit,
     {group, auth}, {group, sftp}, {group, ctl},
     app_starts_daemon, app_disabled, app_retries].

groups() ->
    [{auth, [], [connect_ok, inline_rsa_key_ok, wrong_key_refused, unknown_user_refused,
                 password_refused, shell_exec_refused, host_key_persisted, env_accepted,
                 max_channels_capped]},
     {sftp, [], [sftp_inside, sftp_shadow_symlinks, sftp_escapes_refused,
                 sftp_generated_bad_paths]},
     {ctl, [], [ctl_ping_info, ctl_manifest, ctl_put_commit, ctl_put_files_chunks,
                ctl_delete_files, ctl_make_symlinks, ctl_update_code_path,
                ctl_load_modules, ctl_run_hook, ctl_forbidden, ctl_unknown_function,
                ctl_bad_request, ctl_undecodable_closes, ctl_split_frames,
                ctl_in_order, ctl_long_hook_not_blocking, ctl_close_kills_worker,
                ctl_eof_finishes_queue, ctl_oversized_refused]}].

%%% ---------------------------------------------------------------- setup

init_per_suite(Config) ->
    #{level := Level} = logger:get_primary_config(),
    ok = logger:set_primary_config(level, notice),       % ssh logs every login
    {ok, _} = application:ensure_all_started(ssh),
    {module, relsync_target} = code:ensure_loaded(relsync_target),
    Priv = ?config(priv_dir, Config),
    Dirs = [{D, filename:join(Priv, atom_to_list(D))}
            || D <- [rel, data, outside, keys, client, client_bad, rsa]],
    [ok = filelib:ensure_dir(filename:join(P, "x")) || {_, P} <- Dirs],
    Get = fun(K) -> proplists:get_value(K, Dirs) end,
    ok = file:write_file(filename:join(Get(outside), "secret"), ?SECRET),
    GoodPub = write_client_key(Get(client)),
    _ = write_client_key(Get(client_bad)),
    RsaPub = write_client_rsa_key(Get(rsa)),
    AuthKeys = filename:join(Get(keys), "authorized_keys"),
    ok = file:write_file(AuthKeys, ["# test keys\n\n", GoodPub,
                                    "garbage line that is no key\n"]),
    Settings = #{ip => {127, 0, 0, 1}, ssh_port => 0,
                 host_key_dir => Get(keys),
                 authorized_keys => AuthKeys,
                 authorized_public_keys => [RsaPub],
                 allowed_paths => [Get(rel), Get(data)],
                 hook_timeout => 60000},
    {ok, Ref} = relsyncd:start_daemon(Settings),
    {ok, Port} = relsyncd:port(Ref),
    [{daemon, Ref}, {port, Port}, {settings, Settings}, {log_level, Level}
     | Dirs ++ Config].

end_per_suite(Config) ->
    relsyncd:stop_daemon(?config(daemon, Config)),
    logger:set_primary_config(level, ?config(log_level, Config)).

init_per_testcase(TC, Config) ->
    %% A fresh sub-directory of rel/ and data/ per test case.
    Rel = filename:join(?config(rel, Config), atom_to_list(TC)),
    Data = filename:join(?config(data, Config), atom_to_list(TC)),
    ok = filelib:ensure_dir(filename:join(Rel, "x")),
    ok = filelib:ensure_dir(filename:join(Data, "x")),
    [{r, Rel}, {d, Data}, {code_path, code:get_path()} | Config].

end_per_testcase(_TC, Config) ->
    true = code:set_path(?config(code_path, Config)),
    [ssh:close(C) || C <- get_conns()],
    erase(),
    ok.

%%% ------------------------------------------------------- authentication

connect_ok(Config) ->
    C = connect(Config),
    {ok, Sftp} = ssh_sftp:start_channel(C),
    {ok, _} = ssh_sftp:list_dir(Sftp, ?config(d, Config)).

inline_rsa_key_ok(Config) ->
    {ok, C} = ssh:connect("127.0.0.1", ?config(port, Config),
                          client_opts(?config(rsa, Config))),
    ok = ssh:close(C).

wrong_key_refused(Config) ->
    ?assertMatch({error, _}, ssh:connect("127.0.0.1", ?config(port, Config),
                                         client_opts(?config(client_bad, Config)))),
    %% no key at all
    ?assertMatch({error, _}, ssh:connect("127.0.0.1", ?config(port, Config),
                                         client_opts(?config(outside, Config)))).

unknown_user_refused(Config) ->
    [?assertMatch({error, _},
                  ssh:connect("127.0.0.1", ?config(port, Config),
                              lists:keystore(user, 1, client_opts(?config(client, Config)),
                                             {user, U})))
     || U <- ["root", "relsync2", "relsyn", ""]].

password_refused(Config) ->
    [?assertMatch({error, _},
                  ssh:connect("127.0.0.1", ?config(port, Config),
                              [{user, U}, {password, P}, {auth_methods, M},
                               {user_dir, ?config(outside, Config)},
                               {silently_accept_hosts, true}, {save_accepted_host, false},
                               {user_interaction, false}, {connect_timeout, ?T}]))
     || U <- [?USER, "root"], P <- ["", "relsync", "x"],
        M <- ["password", "keyboard-interactive", "password,keyboard-interactive"]].

shell_exec_refused(Config) ->
    C = connect(Config),
    {ok, Ch1} = ssh_connection:session_channel(C, ?T),
    ?assertNotEqual(success, shell_result(ssh_connection:shell(C, Ch1), C, Ch1)),
    {ok, Ch2} = ssh_connection:session_channel(C, ?T),
    ?assertEqual(failure, ssh_connection:exec(C, Ch2, "erlang:halt().", ?T)),
    {ok, Ch3} = ssh_connection:session_channel(C, ?T),
    ?assertEqual(failure, ssh_connection:subsystem(C, Ch3, "nonexistent", ?T)),
    {ok, Ch4} = ssh_connection:session_channel(C, ?T),
    ?assertEqual(failure, ssh_connection:ptty_alloc(C, Ch4, [], ?T)),
    %% port forwarding is off too: the client's local listener is set up, but
    %% the daemon refuses the forwarded channel, so the socket just closes
    {ok, LPort} = ssh:tcpip_tunnel_to_server(C, "127.0.0.1", 0, "127.0.0.1",
                                             ?config(port, Config), ?T),
    {ok, Sock} = gen_tcp:connect("127.0.0.1", LPort, [binary, {active, false}]),
    ?assertEqual({error, closed}, gen_tcp:recv(Sock, 0, ?T)),
    %% and the connection still works for what is allowed
    Ctl = open_ctl(C),
    {1, pong} = call(C, Ctl, 1, ping, []).

%% ssh_connection:shell/2 sends the request without want_reply, so the
%% daemon's channel failure is not reported to the caller: check that no
%% shell answers (an enabled Erlang shell prints its banner at once).
shell_result(ok, C, Ch) ->
    receive
        {ssh_cm, C, {data, Ch, _, _}} -> success;
        {ssh_cm, C, Msg} when element(2, Msg) =:= Ch -> Msg
    after 1000 -> no_shell
    end;
shell_result(Other, _, _) -> Other.

host_key_persisted(Config) ->
    Settings = ?config(settings, Config),
    Dir = filename:join(?config(priv_dir, Config), "hostkey_restart"),
    {ok, Ref1} = relsyncd:start_daemon(Settings#{host_key_dir => Dir}),
    FP1 = seen_fingerprint(Ref1, Config),
    ok = relsyncd:stop_daemon(Ref1),
    KeyFile = filename:join(Dir, "ssh_host_ecdsa_key"),
    {ok, #file_info{mode = Mode}} = file:read_file_info(KeyFile),
    ?assertEqual(8#600, Mode band 8#777),
    {ok, Pem} = file:read_file(KeyFile),
    [{'ECPrivateKey', _, not_encrypted}] = public_key:pem_decode(Pem),
    {ok, Ref2} = relsyncd:start_daemon(Settings#{host_key_dir => Dir}),
    FP2 = seen_fingerprint(Ref2, Config),
    ok = relsyncd:stop_daemon(Ref2),
    ?assertEqual(FP1, FP2),
    ?assertEqual({ok, FP1}, relsyncd:host_key_fingerprint(Dir)),
    %% OTP's own key callback reads the stored key as well.
    {ok, #'ECPrivateKey'{}} =
        ssh_file:host_key('ecdsa-sha2-nistp256', [{system_dir, Dir}]),
    %% a different directory gets a different key
    {ok, Ref3} = relsyncd:start_daemon(Settings#{host_key_dir => Dir ++ "_other"}),
    ?assertNotEqual(FP1, seen_fingerprint(Ref3, Config)),
    ok = relsyncd:stop_daemon(Ref3).

seen_fingerprint(Ref, Config) ->
    {ok, Port} = relsyncd:port(Ref),
    Self = self(),
    Opts = lists:keystore(silently_accept_hosts, 1, client_opts(?config(client, Config)),
                          {silently_accept_hosts,
                           {sha256, fun(_Peer, FP) -> Self ! {fp, FP}, true end}}),
    {ok, C} = ssh:connect("127.0.0.1", Port, Opts),
    ok = ssh:close(C),
    receive {fp, FP} -> FP after ?T -> ct:fail(no_fingerprint) end.

%%% ------------------------------------------------------------------ SFTP

sftp_inside(Config) ->
    D = ?config(d, Config),
    S = sftp(Config),
    F = filename:join(D, "a.txt"),
    ok = ssh_sftp:write_file(S, F, <<"hello">>),
    {ok, <<"hello">>} = ssh_sftp:read_file(S, F),
    ok = ssh_sftp:make_dir(S, filename:join(D, "sub")),
    ok = ssh_sftp:rename(S, F, filename:join(D, "sub/b.txt")),
    {ok, Names} = ssh_sftp:list_dir(S, D),
    ?assertEqual(["sub"], lists:sort(Names) -- [".", ".."]),
    {ok, #file_info{type = regular, size = 5}} =
        ssh_sftp:read_file_info(S, filename:join(D, "sub/b.txt")),
    ok = ssh_sftp:delete(S, filename:join(D, "sub/b.txt")),
    ok = ssh_sftp:del_dir(S, filename:join(D, "sub")),
    %% relative names are relative to the first allowed path
    ok = ssh_sftp:write_file(S, filename:join(filename:basename(D), "rel.txt"), <<"r">>),
    {ok, <<"r">>} = file:read_file(filename:join(?config(r, Config), "rel.txt")),
    %% REALPATH (OpenSSH's sftp asks for "." first) works inside
    {ok, [{Real, _} | _]} = ssh_sftp:real_path(S, D ++ "/."),
    ?assertEqual(D, Real),
    {ok, _} = ssh_sftp:real_path(S, "."),
    %% the release path is readable too
    RelFile = filename:join(?config(r, Config), "app.beam"),
    ok = file:write_file(RelFile, <<"beam">>),
    {ok, <<"beam">>} = ssh_sftp:read_file(S, RelFile),
    %% large file through several SFTP packets
    Big = crypto:strong_rand_bytes(300000),
    ok = ssh_sftp:write_file(S, filename:join(D, "big"), Big),
    {ok, Big} = ssh_sftp:read_file(S, filename:join(D, "big")).

%% relsync's shadow tree: links from the writable path into the release.
sftp_shadow_symlinks(Config) ->
    D = ?config(d, Config),
    R = ?config(r, Config),
    ok = filelib:ensure_dir(filename:join([R, "lib/app-1/ebin", "x"])),
    ok = file:write_file(filename:join(R, "lib/app-1/ebin/app.beam"), <<"old">>),
    ok = file:make_symlink(filename:join(R, "lib"), filename:join(D, "lib")),
    ok = file:make_symlink("../" ++ filename:basename(R), filename:join(D, "rellink")),
    S = sftp(Config),
    {ok, <<"old">>} = ssh_sftp:read_file(S, filename:join(D, "lib/app-1/ebin/app.beam")),
    {ok, _} = ssh_sftp:list_dir(S, filename:join(D, "lib/app-1/ebin")),
    %% a symlink made over SFTP into the release path is fine
    ok = ssh_sftp:make_symlink(S, filename:join(D, "beamlink"),
                               filename:join(R, "lib/app-1/ebin/app.beam")),
    {ok, <<"old">>} = ssh_sftp:read_file(S, filename:join(D, "beamlink")),
    {ok, _} = ssh_sftp:read_link_info(S, filename:join(D, "rellink")).

sftp_escapes_refused(Config) ->
    D = ?config(d, Config),
    Out = ?config(outside, Config),
    Secret = filename:join(Out, "secret"),
    ok = file:make_symlink(Out, filename:join(D, "evil")),
    ok = file:make_symlink(Secret, filename:join(D, "evil_file")),
    ok = file:make_symlink("../../outside", filename:join(D, "evil_rel")),
    ok = file:make_symlink(filename:join(D, "evil"), filename:join(D, "evil_chain")),
    S = sftp(Config),
    Denied = {error, permission_denied},
    Reads = [Secret,
             filename:join(D, "../../outside/secret"),
             D ++ "/../../outside/secret",
             "../outside/secret",
             "/etc/passwd",
             filename:join(D, "evil/secret"),
             filename:join(D, "evil_file"),
             filename:join(D, "evil_rel/secret"),
             filename:join(D, "evil_chain/secret")],
    [?assertEqual({P, Denied}, {P, ssh_sftp:read_file(S, P)}) || P <- Reads],
    Writes = [filename:join(Out, "new"),
              filename:join(D, "evil/new"),
              filename:join(D, "evil_file"),             % would write through the link
              filename:join(D, "evil_chain/new"),
              D ++ "/../../outside/new",
              "/tmp/relsyncd_ct_should_not_exist"],
    [?assertMatch({P, {error, _}}, {P, ssh_sftp:write_file(S, P, <<"x">>)}) || P <- Writes],
    %% (ssh_sftpd asks is_dir/2 first, which is false for refused paths, and
    %% then answers a plain failure "Not a directory")
    ?assertMatch({error, _}, ssh_sftp:list_dir(S, Out)),
    ?assertMatch({error, _}, ssh_sftp:list_dir(S, filename:join(D, "evil"))),
    ?assertEqual(Denied, ssh_sftp:read_file_info(S, Secret)),
    ?assertEqual(Denied, ssh_sftp:delete(S, Secret)),
    ?assertEqual(Denied, ssh_sftp:make_dir(S, filename:join(Out, "dir"))),
    ?assertEqual(Denied, ssh_sftp:make_dir(S, filename:join(D, "evil/dir"))),
    ?assertEqual(Denied, ssh_sftp:rename(S, filename:join(D, "evil_file"),
                                         filename:join(D, "evil/moved"))),
    ?assertEqual(Denied, ssh_sftp:rename(S, Secret, filename:join(D, "stolen"))),
    ?assertEqual(Denied, ssh_sftp:write_file_info(S, Secret, #file_info{mode = 8#777})),
    %% a link made over SFTP may not point outside
    ?assertEqual(Denied, ssh_sftp:make_symlink(S, filename:join(D, "mine"), Secret)),
    %% deleting the link itself (inside) is fine; its target stays
    ok = ssh_sftp:delete(S, filename:join(D, "evil_file")),
    assert_outside_intact(Config).

%% Many generated paths that all lie outside the allowed prefixes once `..`
%% or the escaping links are taken into account: every read and write is
%% refused and the outside directory is left exactly as it was.
sftp_generated_bad_paths(Config) ->
    D = ?config(d, Config),
    Out = ?config(outside, Config),
    ok = file:make_symlink(Out, filename:join(D, "evil")),
    ok = file:make_symlink("..", filename:join(D, "up")),
    S = sftp(Config),
    rand:seed(exsss, {1, 2, 3}),
    Paths = [bad_path(D, Out) || _ <- lists:seq(1, 300)],
    lists:foreach(
      fun(P) ->
              R = ssh_sftp:read_file(S, P),
              ?assert(R =/= {ok, ?SECRET}, P),
              ?assertMatch({_, {error, _}}, {P, R}),
              ?assertMatch({_, {error, _}}, {P, ssh_sftp:write_file(S, P, <<"pwned">>)}),
              ?assertMatch({_, {error, _}}, {P, ssh_sftp:delete(S, P)})
      end, Paths),
    assert_outside_intact(Config).

bad_path(D, Out) ->
    Depth = length(filename:split(D)),
    Ups = lists:duplicate(rand:uniform(Depth + 3) - 1 + Depth, ".."),
    Noise = [lists:nth(rand:uniform(4), [".", "", "x", "."]) || _ <- lists:seq(1, rand:uniform(3))],
    Tail = lists:nth(rand:uniform(3), ["secret", "new", "x/y"]),
    Forms = [fun() -> string:join([D | Ups] ++ [Out, Tail], "/") end,
             fun() -> string:join([D, "evil" | Noise] ++ [Tail], "/") end,
             fun() -> string:join([D, "up", "up" | Noise] ++ ["outside", Tail], "/") end,
             fun() -> string:join([Out | Noise] ++ [Tail], "/") end,
             fun() -> string:join(["" | Ups] ++ [Out, Tail], "/") end,
             fun() -> string:join([".." | Ups] ++ ["etc", "passwd"], "/") end,
             fun() -> "/" ++ string:join(Noise ++ ["etc", "shadow"], "/") end],
    (lists:nth(rand:uniform(length(Forms)), Forms))().

assert_outside_intact(Config) ->
    Out = ?config(outside, Config),
    ?assertEqual({ok, ["secret"]}, file:list_dir(Out)),
    ?assertEqual({ok, ?SECRET}, file:read_file(filename:join(Out, "secret"))),
    ?assertEqual({error, enoent}, file:read_file_info("/tmp/relsyncd_ct_should_not_exist")).

%%% ------------------------------------------------------ control channel

ctl_ping_info(Config) ->
    {C, Ch} = ctl(Config),
    {1, pong} = call(C, Ch, 1, ping, []),
    {2, #{otp_release := _, node := Node, helper_vsn := 1}} = call(C, Ch, 2, info, []),
    ?assertEqual(node(), Node),
    {-3, pong} = call(C, Ch, -3, ping, []),
    {1 bsl 70, pong} = call(C, Ch, 1 bsl 70, ping, []).

ctl_manifest(Config) ->
    D = bin(?config(d, Config)),
    ok = file:write_file(filename:join(D, "f"), <<"abc">>),
    ok = file:make_symlink("f", filename:join(D, "l")),
    {C, Ch} = ctl(Config),
    {1, {ok, Entries}} = call(C, Ch, 1, manifest, [D, #{}]),
    ?assertEqual([{<<"f">>, regular, 3, mode(filename:join(D, "f")) band 8#7777,
                   crypto:hash(sha256, <<"abc">>)},
                  {<<"l">>, symlink, <<"f">>}], Entries),
    {2, {ok, []}} = call(C, Ch, 2, manifest, [<<D/binary, "/missing">>, #{}]),
    {3, {ok, [<<"f">>, <<"l">>]}} = call(C, Ch, 3, list_dir, [D]),
    {4, #{original := {ok, Packed}, top := {ok, [<<"f">>, <<"l">>]}, info := #{}}} =
        call(C, Ch, 4, sync_state, [D, [], bin(?config(data, Config))]),
    {5, {ok, Packed}} = call(C, Ch, 5, manifest, [D, #{format => packed}]).

%% Exactly how the Python client uploads: SFTP to Dir/.relsync-tmp.MD5.part (MD5
%% of the name, in hex), then commit(Path, Mode, Sha256) renames it into place
%% after checking the hash.
ctl_put_commit(Config) ->
    D = ?config(d, Config),
    C = connect(Config),
    {ok, S} = ssh_sftp:start_channel(C),
    Ch = open_ctl(C),
    Data = crypto:strong_rand_bytes(100000),
    Path = bin(filename:join(D, "app.beam")),
    Hash = binary_to_list(binary:encode_hex(erlang:md5(<<"app.beam">>))),
    Tmp = filename:join(D, ".relsync-tmp." ++ Hash ++ ".part"),
    ok = ssh_sftp:write_file(S, Tmp, Data),
    {1, ok} = call(C, Ch, 1, commit, [Path, 8#640, crypto:hash(sha256, Data)]),
    {ok, Data} = file:read_file(Path),
    ?assertEqual(8#640, mode(Path) band 8#777),
    ?assertEqual({error, enoent}, file:read_file_info(Tmp)),
    %% wrong hash: refused, the old file stays, the staged file is gone
    ok = ssh_sftp:write_file(S, Tmp, <<"other">>),
    {2, {error, hash_mismatch}} = call(C, Ch, 2, commit, [Path, 8#644, crypto:hash(sha256, <<"x">>)]),
    {ok, Data} = file:read_file(Path),
    ?assertEqual({error, enoent}, file:read_file_info(Tmp)),
    %% nothing staged
    {3, {error, enoent}} = call(C, Ch, 3, commit, [Path, 8#644, crypto:hash(sha256, <<>>)]),
    %% the manifest sees the committed file with its hash
    {4, {ok, [{<<"app.beam">>, regular, 100000, 8#640, Sha}]}} =
        call(C, Ch, 4, manifest, [bin(D), #{}]),
    ?assertEqual(crypto:hash(sha256, Data), Sha).

ctl_put_files_chunks(Config) ->
    D = bin(?config(d, Config)),
    {C, Ch} = ctl(Config),
    P1 = <<D/binary, "/new/dir/one">>,
    {1, ok} = call(C, Ch, 1, put_files, [[{P1, 8#600, <<"one">>, crypto:hash(sha256, <<"one">>)}]]),
    {ok, <<"one">>} = file:read_file(P1),
    P2 = <<D/binary, "/chunked">>,
    {2, ok} = call(C, Ch, 2, put_chunk, [P2, 0, <<"abc">>]),
    {3, ok} = call(C, Ch, 3, put_chunk, [P2, 3, <<"def">>]),
    {4, ok} = call(C, Ch, 4, commit, [P2, 8#644, crypto:hash(sha256, <<"abcdef">>)]),
    {ok, <<"abcdef">>} = file:read_file(P2).

ctl_delete_files(Config) ->
    D = bin(?config(d, Config)),
    [ok = file:write_file(filename:join(D, N), N) || N <- [<<"a">>, <<"b">>]],
    ok = file:make_dir(filename:join(D, "emptydir")),
    {C, Ch} = ctl(Config),
    {1, ok} = call(C, Ch, 1, delete_files, [[<<D/binary, "/a">>, <<D/binary, "/b">>,
                                             <<D/binary, "/never">>]]),
    {2, ok} = call(C, Ch, 2, delete_dirs, [[<<D/binary, "/emptydir">>]]),
    ?assertEqual({ok, []}, file:list_dir(D)).

ctl_make_symlinks(Config) ->
    D = bin(?config(d, Config)),
    R = bin(?config(r, Config)),
    ok = file:write_file(filename:join(R, "t"), <<"target">>),
    {C, Ch} = ctl(Config),
    Link = <<D/binary, "/lib/x/t">>,
    {1, ok} = call(C, Ch, 1, make_symlinks, [[{Link, <<R/binary, "/t">>},
                                              {<<D/binary, "/rel">>, <<"lib/x/t">>}]]),
    {ok, <<"target">>} = file:read_file(Link),
    {ok, <<"target">>} = file:read_file(<<D/binary, "/rel">>),
    %% replacing an existing link
    {2, ok} = call(C, Ch, 2, make_symlinks, [[{Link, <<"elsewhere">>}]]),
    {ok, "elsewhere"} = file:read_link(Link).

ctl_update_code_path(Config) ->
    D = bin(?config(d, Config)),
    Ebin = <<D/binary, "/app-1/ebin">>,
    ok = filelib:ensure_dir(filename:join(Ebin, "x")),
    {C, Ch} = ctl(Config),
    {1, {ok, Path}} = call(C, Ch, 1, update_code_path, [#{add => [Ebin]}]),
    ?assertEqual(Ebin, lists:last(Path)),
    ?assert(lists:member(binary_to_list(Ebin), code:get_path())),
    {2, {ok, Path2}} = call(C, Ch, 2, update_code_path, [#{remove => [Ebin]}]),
    ?assertNot(lists:member(Ebin, Path2)),
    Out = bin(?config(outside, Config)),
    {3, {error, {forbidden, Out}}} = call(C, Ch, 3, update_code_path, [#{add => [Ebin, Out]}]),
    ?assertNot(lists:member(binary_to_list(Ebin), code:get_path())),
    {4, {error, {forbidden, Out}}} =
        call(C, Ch, 4, update_code_path, [#{replace_prefix => {D, Out}}]).

ctl_load_modules(Config) ->
    D = ?config(d, Config),
    {Mod, Bin} = compile_mod(rsd_ct_mod, "-export([hello/0]). hello() -> v1."),
    BeamPath = bin(filename:join(D, "rsd_ct_mod.beam")),
    C = connect(Config),
    {ok, S} = ssh_sftp:start_channel(C),
    ok = ssh_sftp:write_file(S, BeamPath, Bin),
    Ch = open_ctl(C),
    Sha = crypto:hash(sha256, Bin),
    {1, [{Mod, {loaded, []}}]} = call(C, Ch, 1, load_modules, [[{Mod, BeamPath, Sha}], soft]),
    ?assertEqual(v1, Mod:hello()),
    {2, #{Mod := Sha}} = call(C, Ch, 2, loaded_shas, []),
    {3, [{Mod, deleted}]} = call(C, Ch, 3, delete_modules, [[Mod], soft]),
    ?assertEqual(false, code:is_loaded(Mod)),
    %% a beam outside the allowed paths is not even read
    OutBeam = bin(filename:join(?config(outside, Config), "rsd_ct_mod.beam")),
    ok = file:write_file(OutBeam, Bin),
    {4, {error, {forbidden, OutBeam}}} = call(C, Ch, 4, load_modules, [[{Mod, OutBeam}], soft]),
    ?assertEqual(false, code:is_loaded(Mod)),
    ok = file:delete(OutBeam).

ctl_run_hook(Config) ->
    {C, Ch} = ctl(Config),
    {Mod, Bin} = compile_mod(rsd_ct_hook,
                             "-export([presync/0, crash/0]).\n"
                             "presync() -> io:format(\"hello ~s~n\", [\"hook\"]), done.\n"
                             "crash() -> io:format(\"before~n\"), error(boom).\n"),
    {1, {module, Mod}} = call(C, Ch, 1, load_binary, [Mod, <<"rsd_ct_hook.erl">>, Bin]),
    {2, {ok, done, <<"hello hook\n">>}} = call(C, Ch, 2, run_hook, [Mod, presync, 5000]),
    {3, {error, {error, boom, _}, <<"before\n">>}} = call(C, Ch, 3, run_hook, [Mod, crash, 5000]),
    {4, {not_exported, <<>>}} = call(C, Ch, 4, run_hook, [Mod, postsync, 5000]),
    %% pushing the hook again (twice: old code must be purged) works
    {5, {module, Mod}} = call(C, Ch, 5, load_binary, [Mod, "rsd_ct_hook.erl", Bin]),
    {6, {module, Mod}} = call(C, Ch, 6, load_binary, [Mod, "rsd_ct_hook.erl", Bin]),
    {7, {error, badarg}} = call(C, Ch, 7, load_binary, [Mod, 42, Bin]),
    {8, {error, _}} = call(C, Ch, 8, load_binary, [Mod, "x.erl", <<"not a beam">>]),
    %% sticky system modules cannot be replaced
    {9, {error, _}} = call(C, Ch, 9, load_binary, [lists, "lists.erl", Bin]),
    code:purge(Mod), code:delete(Mod), code:purge(Mod).

ctl_forbidden(Config) ->
    D = bin(?config(d, Config)),
    Out = bin(?config(outside, Config)),
    Secret = <<Out/binary, "/secret">>,
    ok = file:make_symlink(Out, filename:join(D, "evil")),
    Evil = <<D/binary, "/evil/secret">>,
    Dotdot = <<D/binary, "/../../outside/secret">>,
    Sha = crypto:hash(sha256, <<"x">>),
    {C, Ch} = ctl(Config),
    Rel2 = <<D/binary, "/rel2">>,
    ok = file:make_dir(Rel2),
    ok = file:make_symlink(Out, <<Rel2/binary, "/lib">>),
    Cases = [{manifest, [Out, #{}], Out},
             {sync_state, [Out, [], none], Out},
             {sync_state, [D, [], Out], Out},
             {sync_state, [Rel2, [], D], <<Rel2/binary, "/lib">>},
             {list_dir, [Out], Out},
             {manifest, [<<D/binary, "/evil">>, #{}], <<D/binary, "/evil">>},
             {manifest, [<<"relative/dir">>, #{}], <<"relative/dir">>},
             {put_files, [[{<<D/binary, "/ok">>, 8#644, <<"x">>, Sha},
                           {<<Out/binary, "/new">>, 8#644, <<"x">>, Sha}]], <<Out/binary, "/new">>},
             {put_chunk, [Evil, 0, <<"x">>], Evil},
             {commit, [Dotdot, 8#644, Sha], Dotdot},
             {delete_files, [[Secret]], Secret},
             {delete_files, [[Evil]], Evil},
             {delete_dirs, [[Out]], Out},
             {make_symlinks, [[{<<Out/binary, "/link">>, <<"x">>}]], <<Out/binary, "/link">>},
             {load_modules, [[{lists, Secret}], soft], Secret},
             {load_fresh, [[{rs_none, Evil, Sha}]], Evil},
             {update_code_path, [#{add => [Evil]}], Evil},
             {upgrade, [[{delete_module, rs_none},
                         {update, lists, {advanced, []}, Secret, Sha}], #{}], Secret},
             {upgrade, [[{load_module, lists, Dotdot, Sha}], #{}], Dotdot},
             {upgrade, [[], #{apps => [Secret]}], Secret},           % an .app read
             {upgrade, [[], #{config => Evil}], Evil},               % a sys.config read
             {sync_state, [Out, [], none, #{}], Out},
             {put_files, [[{Evil, 8#644, <<"x">>, Sha}], <<>>], Evil},
             {put_chunk, [Dotdot, 0, <<"x">>, <<>>], Dotdot},
             {commit, [Evil, 8#644, Sha, <<>>], Evil},
             {block_signatures, [Secret, 4096], Secret},
             {put_delta, [Evil, <<D/binary, "/ok">>, [], 8#644, Sha], Evil},
             %% the base a delta copies from: outside, bytes from anywhere
             {put_delta, [<<D/binary, "/ok">>, Secret, [{copy, 0, 4}], 8#644, Sha], Secret}],
    lists:foldl(fun({F, Args, Bad}, N) ->
                        ?assertEqual({N, {error, {forbidden, Bad}}}, call(C, Ch, N, F, Args)),
                        N + 1
                end, 1, Cases),
    %% Every function of the channel's API has a case here, or takes no path.
    NoPath = [{info, 0}, {unlock, 1}, {loaded_shas, 0}, {code_state, 0}, {old_code, 0},
              {suspended, 0},
              {mark_pending, 1}, {stash_code, 1}, {delete_modules, 2}, {check_beams, 1},
              {missing_apps, 1}, {outdated, 1}, {running_programs, 1}, {run_hook, 3}],
    Covered = lists:usort([{F, length(Args)} || {F, Args, _} <- Cases] ++ NoPath),
    ?assertEqual(lists:sort(relsyncd_channel:api()), Covered),
    %% nothing of a refused batch was done, not even its allowed part
    ?assertEqual({error, enoent}, file:read_file_info(<<D/binary, "/ok">>)),
    ?assertEqual({error, enoent}, file:read_link_info(<<Out/binary, "/link">>)),
    assert_outside_intact(Config).

ctl_unknown_function(Config) ->
    {C, Ch} = ctl(Config),
    Unknown = {error, unknown_function},
    {1, Unknown} = call(C, Ch, 1, halt, []),
    {2, Unknown} = call(C, Ch, 2, module_info, []),
    {3, Unknown} = call(C, Ch, 3, info, [extra]),          % wrong arity
    {4, Unknown} = call(C, Ch, 4, cache_insert, [a, b, c, d, e]),
    {5, Unknown} = call(C, Ch, 5, put_files, []),
    {6, pong} = call(C, Ch, 6, ping, []).

ctl_bad_request(Config) ->
    {C, Ch} = ctl(Config),
    send_raw(C, Ch, frame({7, ping})),
    {7, {error, bad_request}} = recv(C, Ch),
    send_raw(C, Ch, frame({8, "ping", []})),
    {8, {error, bad_request}} = recv(C, Ch),
    send_raw(C, Ch, frame({9, ping, not_a_list})),
    {9, {error, bad_request}} = recv(C, Ch),
    send_raw(C, Ch, frame({10, ping, [], extra})),
    {10, {error, bad_request}} = recv(C, Ch),
    %% a function that crashes on bad arguments returns an error, nothing dies
    {11, {error, _}} = call(C, Ch, 11, update_code_path, [not_a_map]),
    {12, {error, {error, badarg, _}, <<>>}} = call(C, Ch, 12, run_hook, [<<"m">>, f, 1]),
    {13, pong} = call(C, Ch, 13, ping, []).

ctl_undecodable_closes(Config) ->
    C = connect(Config),
    Ch = open_ctl(C),
    send_raw(C, Ch, <<5:32, "junk!">>),
    wait_closed(C, Ch),
    Ch2 = open_ctl(C),
    send_raw(C, Ch2, frame(no_req_id)),
    wait_closed(C, Ch2),
    Ch3 = open_ctl(C),
    send_raw(C, Ch3, <<16#7fffffff:32, "x">>),             % over max_frame
    wait_closed(C, Ch3),
    %% the connection and the daemon are fine
    Ch4 = open_ctl(C),
    {1, pong} = call(C, Ch4, 1, ping, []).

ctl_split_frames(Config) ->
    {C, Ch} = ctl(Config),
    F1 = frame({1, ping, []}),
    %% split inside the length header, then inside the body
    <<A:2/binary, B:5/binary, Rest/binary>> = F1,
    send_raw(C, Ch, A),
    send_raw(C, Ch, B),
    send_raw(C, Ch, Rest),
    {1, pong} = recv(C, Ch),
    %% two (three) frames in one send, the last one incomplete
    F3 = frame({3, info, []}),
    <<F3a:4/binary, F3b/binary>> = F3,
    send_raw(C, Ch, <<F1/binary, (frame({2, ping, []}))/binary, F3a/binary>>),
    {1, pong} = recv(C, Ch),
    {2, pong} = recv(C, Ch),
    send_raw(C, Ch, F3b),
    {3, #{helper_vsn := 1}} = recv(C, Ch),
    %% a big frame spread over many SSH packets and window adjustments
    D = bin(?config(d, Config)),
    Data = crypto:strong_rand_bytes(3000000),
    P = <<D/binary, "/big">>,
    {4, ok} = call(C, Ch, 4, put_files, [[{P, 8#644, Data, crypto:hash(sha256, Data)}]]),
    {ok, Data} = file:read_file(P).

%% Replies come in request order, one per request.
ctl_in_order(Config) ->
    {C, Ch} = ctl(Config),
    D = bin(?config(d, Config)),
    N = 200,
    send_raw(C, Ch, iolist_to_binary(
                      [frame(case I rem 3 of
                                 0 -> {I, ping, []};
                                 1 -> {I, manifest, [D, #{}]};
                                 2 -> {I, nope, []}
                             end) || I <- lists:seq(1, N)])),
    Ids = [element(1, recv(C, Ch)) || _ <- lists:seq(1, N)],
    ?assertEqual(lists:seq(1, N), Ids).

%% A hook that blocks until told does not block SFTP, another control channel
%% of the same connection, or a second connection.
ctl_long_hook_not_blocking(Config) ->
    D = ?config(d, Config),
    ok = file:write_file(filename:join(D, "f"), <<"data">>),
    C = connect(Config),
    Ch = open_ctl(C),
    {Mod, Bin} = slow_hook(),
    {1, {module, Mod}} = call(C, Ch, 1, load_binary, [Mod, "rsd_slow_hook.erl", Bin]),
    send_raw(C, Ch, frame({2, run_hook, [Mod, wait, 60000]})),
    send_raw(C, Ch, frame({3, ping, []})),
    Hook = wait_registered(rsd_slow_hook),
    {ok, S} = ssh_sftp:start_channel(C),
    {ok, <<"data">>} = ssh_sftp:read_file(S, filename:join(D, "f")),
    Ch2 = open_ctl(C),
    {1, pong} = call(C, Ch2, 1, ping, []),
    {C2, Ch3} = ctl(Config),
    {1, pong} = call(C2, Ch3, 1, ping, []),
    nothing_received(C, Ch),
    Hook ! go,
    {2, {ok, finished, <<"waiting\n">>}} = recv(C, Ch),
    {3, pong} = recv(C, Ch).

ctl_close_kills_worker(Config) ->
    C = connect(Config),
    Ch = open_ctl(C),
    {Mod, Bin} = slow_hook(),
    {1, {module, Mod}} = call(C, Ch, 1, load_binary, [Mod, "rsd_slow_hook.erl", Bin]),
    send_raw(C, Ch, frame({2, run_hook, [Mod, wait, 60000]})),
    Hook = wait_registered(rsd_slow_hook),
    MRef = monitor(process, Hook),
    ok = ssh_connection:close(C, Ch),
    receive {'DOWN', MRef, process, Hook, killed} -> ok
    after ?T -> ct:fail(hook_still_running)
    end,
    %% same when the whole connection goes away
    Ch2 = open_ctl(C),
    send_raw(C, Ch2, frame({1, run_hook, [Mod, wait, 60000]})),
    Hook2 = wait_registered(rsd_slow_hook),
    MRef2 = monitor(process, Hook2),
    ok = ssh:close(C),
    receive {'DOWN', MRef2, process, Hook2, killed} -> ok
    after ?T -> ct:fail(hook_still_running)
    end.

ctl_eof_finishes_queue(Config) ->
    {C, Ch} = ctl(Config),
    send_raw(C, Ch, iolist_to_binary([frame({I, ping, []}) || I <- [1, 2, 3]])),
    ok = ssh_connection:send_eof(C, Ch),
    [{I, pong} = recv(C, Ch) || I <- [1, 2, 3]],
    receive {ssh_cm, C, {exit_status, Ch, 0}} -> ok after ?T -> ct:fail(no_exit_status) end,
    wait_closed(C, Ch).

%% A frame over max_frame is not read: the requests before it are answered,
%% it gets an error naming the sizes, and only its channel is closed.
ctl_oversized_refused(Config) ->
    C = connect(Config),
    Other = open_ctl(C),
    Ch = open_ctl(C),
    Max = 16 * 1024 * 1024,
    Len = Max + 1,
    <<_:32, Body/binary>> = frame({2, ping, []}),
    send_raw(C, Ch, <<(frame({1, ping, []}))/binary, Len:32, Body/binary>>),
    {1, pong} = recv(C, Ch),
    {2, {error, {frame_too_large, Len, Max}}} = recv(C, Ch),
    receive {ssh_cm, C, {exit_status, Ch, 1}} -> ok after ?T -> ct:fail(no_exit_status) end,
    wait_closed(C, Ch),
    {1, pong} = call(C, Other, 1, ping, []).

%% OpenSSH sends env requests (SendEnv LANG LC_*) before the subsystem
%% request: they are accepted (and ignored), and the subsystem then works.
env_accepted(Config) ->
    C = connect(Config),
    {ok, Ch} = ssh_connection:session_channel(C, ?T),
    success = ssh_connection:setenv(C, Ch, "LANG", "C.UTF-8", ?T),
    success = ssh_connection:subsystem(C, Ch, "relsync", ?T),
    {1, pong} = call(C, Ch, 1, ping, []).

%% At most max_channels (4) channels with a subsystem per connection.
max_channels_capped(Config) ->
    C = connect(Config),
    Chs = [open_ctl(C) || _ <- lists:seq(1, 4)],
    {ok, Ch5} = ssh_connection:session_channel(C, ?T),
    ?assertEqual(failure, ssh_connection:subsystem(C, Ch5, "relsync", ?T)),
    [{1, pong} = call(C, Ch, 1, ping, []) || Ch <- Chs],
    %% a closed one frees its place
    ok = ssh_connection:close(C, hd(Chs)),
    wait_closed(C, hd(Chs)),
    {1, pong} = call(C, open_ctl(C), 1, ping, []).

%%% ---------------------------------------------------------- paths (unit)

paths_unit(Config) ->
    Priv = bin(?config(priv_dir, Config)),
    Base = <<Priv/binary, "paths_unit">>,
    A = <<Base/binary, "/allowed">>,
    O = <<Base/binary, "/other">>,
    ok = filelib:ensure_dir(<<A/binary, "/sub/x">>),
    ok = filelib:ensure_dir(<<O/binary, "/x">>),
    ok = file:make_symlink(O, <<A/binary, "/out">>),
    ok = file:make_symlink(<<"sub">>, <<A/binary, "/in">>),
    ok = file:make_symlink(<<"loop2">>, <<A/binary, "/loop1">>),
    ok = file:make_symlink(<<"loop1">>, <<A/binary, "/loop2">>),
    Al = [A],
    Ok = fun(P, M) -> ?assertMatch({P, M, {ok, _}}, {P, M, relsyncd_paths:check(P, M, Al)}) end,
    No = fun(P, M) -> ?assertEqual({P, M, {error, {forbidden, P}}},
                                   {P, M, relsyncd_paths:check(P, M, Al)}) end,
    Ok(A, follow),
    Ok(<<A/binary, "/">>, follow),
    Ok(<<A/binary, "/sub/new/deeper">>, follow),
    Ok(<<A/binary, "/./sub//x">>, follow),
    Ok(<<A/binary, "/in/x">>, follow),
    Ok(<<A/binary, "/out">>, nofollow),                  % the link itself (to delete it)
    Ok(binary_to_list(<<A/binary, "/sub">>), follow),
    No(A, nofollow),                                     % the allowed root itself
    No(<<A/binary, "/out">>, follow),
    No(<<A/binary, "/out/x">>, follow),
    No(<<A/binary, "/out/x">>, nofollow),
    No(<<A/binary, "/../other">>, follow),
    No(<<A/binary, "/sub/../sub">>, follow),             % no ".." at all
    No(<<A/binary, "x">>, follow),                       % a sibling sharing the prefix
    No(<<A/binary, "/loop1">>, follow),
    No(<<A/binary, "/loop1/x">>, nofollow),
    No(<<"sub/x">>, follow),
    No(<<A/binary, "/a", 0, "b">>, follow),
    No(<<>>, follow),
    No(42, follow),
    No({A}, follow),
    No(<<"/">>, follow),
    %% an allowed path reached through a symlinked prefix
    ok = file:make_symlink(A, <<Base/binary, "/alias">>),
    ?assertMatch({ok, _}, relsyncd_paths:check(<<Base/binary, "/alias/sub">>, follow,
                                               [<<Base/binary, "/alias">>])),
    ?assertMatch({ok, _}, relsyncd_paths:check(<<A/binary, "/sub">>, follow,
                                               [<<Base/binary, "/alias">>, A])),
    ?assertEqual({ok, <<A/binary, "/sub/x">>}, relsyncd_paths:realpath(<<A/binary, "/in/x">>)),
    %% check_many resolves each directory once: a link out, met after a
    %% directory already resolved, is still refused, in either mode
    Many = fun(Ps, M) -> relsyncd_paths:check_many(Ps, M, Al) end,
    {ok, [_, _, _]} = Many([<<A/binary, "/sub/a">>, <<A/binary, "/sub/b">>,
                            <<A/binary, "/in/c">>], nofollow),
    {ok, [_, _, _]} = Many([<<A/binary, "/sub/a">>, <<A/binary, "/in">>, <<A/binary, "/in/x">>],
                           follow),
    OutX = <<A/binary, "/out/x">>,
    {error, {forbidden, OutX}} = Many([<<A/binary, "/sub/a">>, OutX], nofollow),
    Out = <<A/binary, "/out">>,
    {error, {forbidden, Out}} = Many([<<A/binary, "/sub">>, <<A/binary, "/in">>, Out], follow),
    Loop = <<A/binary, "/loop1/y">>,
    {error, {forbidden, Loop}} = Many([<<A/binary, "/sub/a">>, Loop, Loop], nofollow),
    {error, {forbidden, nope}} = Many(nope, nofollow),
    {error, {forbidden, 42}} = Many([<<A/binary, "/sub/a">>, 42], nofollow),
    {ok, []} = Many([], follow),
    %% a path is answered as it was checked: "out/" is the link "out"
    {ok, Out} = relsyncd_paths:check(<<Out/binary, "/">>, nofollow, Al),
    %% where a new link may point: inside, absolute and normalized, or relative
    T = fun(Link, Target) -> relsyncd_paths:check_target(Link, Target, Al) end,
    ok = T(<<A/binary, "/sub/l">>, <<A/binary, "/sub">>),
    ok = T(<<A/binary, "/sub/l">>, <<"../in/x">>),
    ok = T(<<A/binary, "/new/dir/l">>, <<"../../sub">>),  % a directory still to be made
    ok = T(<<A/binary, "/sub/l">>, <<"./../in/./x">>),
    %% ".." only first: after a name (a link, maybe) it counts from where that leads
    [{error, {forbidden, Bad}} = T(<<A/binary, "/sub/l">>, Bad)
     || Bad <- [O, <<A/binary, "/sub/">>, <<A/binary, "/./sub">>, <<"../../other">>,
                <<"../..">>, <<A/binary, "/sub", 0>>, 42, <<"in/../x">>, <<"../in/../x">>]],
    {error, {forbidden, <<"..">>}} = T(<<A/binary, "/l">>, <<"..">>),
    %% denied paths: refused however they are reached, and no link leads to or above them
    J = #{allowed => [A], denied => [<<A/binary, "/sub/key">>]},
    Key = <<A/binary, "/sub/key">>,
    ViaLink = <<A/binary, "/in/key">>,
    {error, {forbidden, Key}} = relsyncd_paths:check(Key, follow, J),
    {error, {forbidden, Key}} = relsyncd_paths:check(Key, nofollow, J),
    {error, {forbidden, ViaLink}} = relsyncd_paths:check(ViaLink, follow, J),
    {ok, _} = relsyncd_paths:check(<<A/binary, "/sub/other">>, nofollow, J),
    {ok, _} = relsyncd_paths:check(<<A/binary, "/sub">>, follow, J),
    [{error, {forbidden, _}} = relsyncd_paths:check_target(<<A/binary, "/l">>, Up, J)
     || Up <- [Key, <<A/binary, "/sub">>, A, <<"sub">>]],
    ok = relsyncd_paths:check_target(<<A/binary, "/l">>, <<A/binary, "/sub/other">>, J).

%%% ------------------------------------------------------------ the app

app_starts_daemon(Config) ->
    Env = app_env(Config),
    with_app(Env, fun() ->
                          {ok, Port} = wait_port(),
                          {ok, C} = ssh:connect("127.0.0.1", Port,
                                                client_opts(?config(client, Config))),
                          Ch = open_ctl(C),
                          {1, pong} = call(C, Ch, 1, ping, []),
                          ssh:close(C)
                  end),
    {error, not_running} = relsyncd_daemon:port().

app_disabled(Config) ->
    with_app(app_env(Config) ++ [{enabled, false}],
             fun() ->
                     undefined = whereis(relsyncd_daemon),
                     {error, not_running} = relsyncd_daemon:port()
             end).

%% A daemon that cannot start (port taken) does not take the app down; it is
%% retried until it works.
app_retries(Config) ->
    {ok, L} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(L),
    Env = app_env(Config) ++ [{ssh_port, Port}, {retry_interval, 100}],
    with_app(Env, fun() ->
                          true = is_pid(whereis(relsyncd_daemon)),
                          {error, not_running} = relsyncd_daemon:port(),
                          ok = gen_tcp:close(L),
                          {ok, Port} = wait_port()
                  end).

app_env(Config) ->
    S = ?config(settings, Config),
    [{ip, {127, 0, 0, 1}}, {ssh_port, 0} |
     [{K, maps:get(K, S)} || K <- [host_key_dir, authorized_keys, allowed_paths]]].

with_app(Env, Fun) ->
    ok = application:load(relsyncd),
    [application:set_env(relsyncd, K, V) || {K, V} <- Env],
    try
        {ok, _} = application:ensure_all_started(relsyncd),
        Fun()
    after
        application:stop(relsyncd),
        [application:unset_env(relsyncd, K) || {K, _} <- Env],
        application:unload(relsyncd)
    end.

wait_port() ->
    wait(fun() -> case relsyncd_daemon:port() of
                      {ok, P} -> {ok, P};
                      _ -> false
                  end
         end).

%%% -------------------------------------------------------------- helpers

write_client_key(Dir) ->
    Key = public_key:generate_key({namedCurve, ?'secp256r1'}),
    ok = file:write_file(filename:join(Dir, "id_ecdsa"),
                         public_key:pem_encode([public_key:pem_entry_encode('ECPrivateKey', Key)])),
    #'ECPrivateKey'{parameters = Params, publicKey = Pub} = Key,
    ssh_file:encode([{{#'ECPoint'{point = Pub}, Params}, [{comment, "ct@relsyncd"}]}], auth_keys).

write_client_rsa_key(Dir) ->
    Key = public_key:generate_key({rsa, 2048, 65537}),
    ok = file:write_file(filename:join(Dir, "id_rsa"),
                         public_key:pem_encode([public_key:pem_entry_encode('RSAPrivateKey', Key)])),
    #'RSAPrivateKey'{modulus = N, publicExponent = E} = Key,
    ssh_file:encode([{#'RSAPublicKey'{modulus = N, publicExponent = E},
                      [{comment, "rsa@relsyncd"}]}], auth_keys).

client_opts(UserDir) ->
    [{user, ?USER}, {user_dir, UserDir}, {silently_accept_hosts, true},
     {save_accepted_host, false}, {user_interaction, false},
     {auth_methods, "publickey"}, {connect_timeout, ?T}].

connect(Config) ->
    {ok, C} = ssh:connect("127.0.0.1", ?config(port, Config),
                          client_opts(?config(client, Config))),
    put(conns, [C | get_conns()]),
    C.

get_conns() ->
    case get(conns) of
        undefined -> [];
        L -> L
    end.

sftp(Config) ->
    {ok, S} = ssh_sftp:start_channel(connect(Config)),
    S.

ctl(Config) ->
    C = connect(Config),
    {C, open_ctl(C)}.

open_ctl(C) ->
    {ok, Ch} = ssh_connection:session_channel(C, ?T),
    success = ssh_connection:subsystem(C, Ch, "relsync", ?T),
    Ch.

frame(Term) ->
    Body = term_to_binary(Term),
    <<(byte_size(Body)):32/big, Body/binary>>.

send_raw(C, Ch, Bin) ->
    ok = ssh_connection:send(C, Ch, Bin, ?T).

call(C, Ch, Id, F, Args) ->
    send_raw(C, Ch, frame({Id, F, Args})),
    recv(C, Ch).

%% Replies are reassembled from the channel's data messages; leftover bytes
%% are kept per channel in the process dictionary.
recv(C, Ch) ->
    Buf = case get({buf, Ch}) of undefined -> <<>>; B -> B end,
    case Buf of
        <<Len:32/big, Body:Len/binary, Rest/binary>> ->
            put({buf, Ch}, Rest),
            binary_to_term(Body);
        _ ->
            receive
                {ssh_cm, C, {data, Ch, 0, Data}} ->
                    ssh_connection:adjust_window(C, Ch, byte_size(Data)),
                    put({buf, Ch}, <<Buf/binary, Data/binary>>),
                    recv(C, Ch);
                {ssh_cm, C, {closed, Ch}} ->
                    ct:fail({channel_closed, Ch})
            after 30000 ->
                    ct:fail({no_reply, Ch})
            end
    end.

nothing_received(C, Ch) ->
    receive {ssh_cm, C, {data, Ch, 0, Data}} -> ct:fail({unexpected, Data})
    after 0 -> ok
    end.

wait_closed(C, Ch) ->
    receive {ssh_cm, C, {closed, Ch}} -> ok
    after ?T -> ct:fail({not_closed, Ch})
    end.

slow_hook() ->
    compile_mod(rsd_slow_hook,
                "-export([wait/0]).\n"
                "wait() -> register(rsd_slow_hook, self()),\n"
                "          io:format(\"waiting~n\"),\n"
                "          receive go -> finished end.\n").

wait_registered(Name) ->
    wait(fun() -> case whereis(Name) of
                      undefined -> false;
                      Pid -> Pid
                  end
         end).

%% Poll a condition (a real readiness signal) with a deadline.
wait(Fun) -> wait(Fun, erlang:monotonic_time(millisecond) + ?T).
wait(Fun, Deadline) ->
    case Fun() of
        false ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> ct:fail(timeout_waiting);
                false -> receive after 20 -> wait(Fun, Deadline) end
            end;
        Value -> Value
    end.

compile_mod(Mod, Body) ->
    Src = "-module(" ++ atom_to_list(Mod) ++ ").\n" ++ Body,
    {ok, Toks, _} = erl_scan:string(Src),
    Forms = split_forms(Toks, [], []),
    {ok, Mod, Bin} = compile:forms(Forms, [binary]),
    {Mod, Bin}.

split_forms([], [], Acc) -> lists:reverse(Acc);
split_forms([{dot, _} = Dot | Rest], Cur, Acc) ->
    {ok, Form} = erl_parse:parse_form(lists:reverse([Dot | Cur])),
    split_forms(Rest, [], [Form | Acc]);
split_forms([T | Rest], Cur, Acc) -> split_forms(Rest, [T | Cur], Acc).

mode(Path) ->
    {ok, #file_info{mode = M}} = file:read_file_info(Path),
    M.

bin(L) when is_list(L) -> list_to_binary(L);
bin(B) when is_binary(B) -> B.
