%% relsyncd_keys: the daemon's key callback (ssh_server_key_api).
%%
%% - Host key: one ECDSA P-256 key, generated on the first start and stored as
%%   a PEM "EC PRIVATE KEY" file `ssh_host_ecdsa_key` (mode 0600) in
%%   host_key_dir, the same format and name ssh_file (OTP's default key
%%   callback) reads from a system_dir. Later starts reuse it, so clients can
%%   pin it. If the directory cannot be written, an in-memory key is used for
%%   this run only and a warning is logged.
%% - User keys: only `user` may log in, only with a public key listed in the
%%   OpenSSH authorized_keys file (re-read at every login, so keys can be
%%   added without a restart) or in the inline authorized_public_keys list.
%%   authorized_keys options (command=, from=, ...) are ignored.
-module(relsyncd_keys).

-behaviour(ssh_server_key_api).

-export([host_key/2, is_auth_key/3]).
-export([load_or_create_host_key/1, host_key_file/1, fingerprint/1, decode_keys/1]).

-include_lib("public_key/include/public_key.hrl").

-define(HOST_KEY_FILE, "ssh_host_ecdsa_key").
-define(P256, {namedCurve, ?'secp256r1'}).

%%% ------------------------------------------------- ssh_server_key_api

-spec host_key(ssh:pubkey_alg(), ssh_server_key_api:daemon_key_cb_options(term())) ->
          {ok, public_key:private_key()} | {error, term()}.
host_key('ecdsa-sha2-nistp256', Opts) ->
    case proplists:get_value(host_key, private(Opts)) of
        #'ECPrivateKey'{} = Key -> {ok, Key};
        _ -> {error, no_host_key}
    end;
host_key(_Alg, _Opts) ->
    {error, no_host_key}.

-spec is_auth_key(public_key:public_key(), string(),
                  ssh_server_key_api:daemon_key_cb_options(term())) -> boolean().
is_auth_key(Key, User, Opts) ->
    P = private(Opts),
    try
        User =:= proplists:get_value(user, P) andalso
            lists:member(Key, authorized(P))
    catch C:R ->
            logger:warning("relsyncd: checking a public key failed: ~p:~p", [C, R]),
            false
    end.

private(Opts) ->
    case proplists:get_value(key_cb_private, Opts, []) of
        L when is_list(L) -> L;
        _ -> []
    end.

authorized(P) ->
    FromFile = case proplists:get_value(authorized_keys, P) of
                   undefined -> [];
                   File ->
                       case file:read_file(File) of
                           {ok, Bin} -> decode_keys(Bin);
                           {error, _} -> []
                       end
               end,
    FromFile ++ proplists:get_value(authorized_public_keys, P, []).

%% Public keys of an authorized_keys text; lines that do not parse are skipped.
-spec decode_keys(iodata()) -> [public_key:public_key()].
decode_keys(Text) ->
    Lines = binary:split(iolist_to_binary(Text), [<<"\n">>, <<"\r">>], [global, trim_all]),
    lists:append([decode_line(L) || L <- Lines]).

decode_line(Line) ->
    try ssh_file:decode(<<Line/binary, "\n">>, auth_keys) of
        Keys when is_list(Keys) -> [K || {K, _Attrs} <- Keys];
        _ -> []
    catch _:_ -> []
    end.

%%% ------------------------------------------------------------ host key

-spec host_key_file(file:name_all()) -> file:filename_all().
host_key_file(Dir) -> filename:join(Dir, ?HOST_KEY_FILE).

-spec load_or_create_host_key(file:name_all()) ->
          {ok, #'ECPrivateKey'{}} | {error, term()}.
load_or_create_host_key(Dir) ->
    File = host_key_file(Dir),
    case file:read_file(File) of
        {ok, Pem} ->
            case decode_host_key(Pem) of
                {ok, _} = Ok -> Ok;
                error -> {error, {bad_host_key, File}}
            end;
        {error, enoent} ->
            Key = public_key:generate_key(?P256),
            case store(Dir, File, Key) of
                ok -> {ok, Key};
                {error, Reason} ->
                    logger:warning("relsyncd: cannot store host key in ~ts (~p); "
                                   "using a temporary key for this run", [File, Reason]),
                    {ok, Key}
            end;
        {error, Reason} ->
            {error, {Reason, File}}
    end.

decode_host_key(Pem) ->
    try public_key:pem_decode(Pem) of
        [{'ECPrivateKey', _, not_encrypted} = Entry | _] ->
            case public_key:pem_entry_decode(Entry) of
                #'ECPrivateKey'{parameters = ?P256} = Key -> {ok, Key};
                _ -> error
            end;
        _ -> error
    catch _:_ -> error
    end.

%% Written to a temporary file (0600 before any key byte lands in it), synced
%% and renamed, so a power cut never leaves a half-written key behind.
store(Dir, File, Key) ->
    Pem = public_key:pem_encode([public_key:pem_entry_encode('ECPrivateKey', Key)]),
    Tmp = iolist_to_binary([relsyncd_paths:to_bin(File), ".tmp"]),
    Steps = [fun() -> filelib:ensure_dir(filename:join(Dir, "x")) end,
             fun() -> _ = file:delete(Tmp), ok end,
             fun() -> file:write_file(Tmp, <<>>, [exclusive]) end,
             fun() -> file:change_mode(Tmp, 8#600) end,
             fun() -> write_sync(Tmp, Pem) end,
             fun() -> file:rename(Tmp, File) end],
    case run(Steps) of
        ok -> ok;
        Err -> _ = file:delete(Tmp), Err
    end.

write_sync(File, Data) ->
    case file:open(File, [write, raw, binary]) of
        {ok, Fd} ->
            R = run([fun() -> file:write(Fd, Data) end, fun() -> file:sync(Fd) end]),
            _ = file:close(Fd),
            R;
        Err -> Err
    end.

run([]) -> ok;
run([F | Fs]) ->
    case F() of
        ok -> run(Fs);
        Err -> Err
    end.

%% "SHA256:..." as OpenSSH prints it, for logs and the README's pinning advice.
-spec fingerprint(#'ECPrivateKey'{}) -> string().
fingerprint(#'ECPrivateKey'{parameters = Params, publicKey = Pub}) ->
    ssh:hostkey_fingerprint(sha256, {#'ECPoint'{point = Pub}, Params}).
