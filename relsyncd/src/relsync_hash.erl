%% relsync_hash: part of relsync's target-side helper (see relsync_target).
%% Content hashes (SHA-256 with crypto, else MD5) and file-name encoding.
-module(relsync_hash).

-export([ensure_crypto/0, hash/1, hash_algo/0, hash_fd/2, hash_file/1, hash_init/0,
         hash_size/0, name_bin/1, random_bytes/1, to_list/1]).

-include("relsync_target.hrl").

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
    Libs = relsync_code:otp_libs(),
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

hash_file(Path) ->
    relsync_files:with_fd(Path, [read, raw, binary], fun(Fd) -> hash_fd(Fd, hash_init()) end).

hash_fd(Fd, Ctx) ->
    case file:read(Fd, ?CHUNK) of
        {ok, Bin} -> hash_fd(Fd, hash_update(Ctx, Bin));
        eof -> {ok, hash_final(Ctx)};
        {error, _} = E -> E
    end.

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
