%% relsync_target: the target-side helper relsync pushes (erlang:load_module/2,
%% else code:load_binary/3) and drives through rpc. It only offers small, generic
%% primitives; every sync decision is made on the Python side.
%%
%% Needs only kernel and stdlib; uses crypto's SHA-256 when the VM can load it,
%% else MD5 (erlang:md5_* BIFs): see relsync_hash:hash_algo/0. Compiled on
%% OTP 25, must load on 25-27.
%% Conventions: paths are absolute binaries; expected failures are returned as
%% error tuples carrying posix atoms, never raised to the rpc caller.
%%
%% This module is the wire API: what relsync calls over distribution and what
%% relsyncd's control channel allows is its export list. It answers info/0 and
%% sync_state/3,4 itself and hands the rest to the module for the job:
%% relsync_state (the sync lock, the state table), relsync_hash, relsync_manifest,
%% relsync_files, relsync_code and relsync_hook_runner. relsync pushes them all.
-module(relsync_target).

-export([sync_state/3, sync_state/4, unlock/1, info/0, list_dir/1, manifest/2,
         put_files/1, put_files/2, put_chunk/3, put_chunk/4, commit/3, commit/4,
         block_signatures/2, put_delta/5,
         delete_files/1, delete_dirs/1, make_symlinks/1, update_code_path/1,
         load_fresh/1, load_modules/2, delete_modules/2, loaded_shas/0, mark_pending/1, code_state/0,
         running_programs/1, stash_code/1, upgrade/2, old_code/0, suspended/0, check_beams/1,
         missing_apps/1, outdated/1,
         run_hook/3]).

-include("relsync_target.hrl").

%% temp_names: the temporary files of writes are named by the MD5 of the name
%% (relsync_files:tmp_path/2); a helper from before says nothing and names them
%% by the name itself (which may not fit NAME_MAX). compress: put_files takes
%% files as {zlib, Size, Deflated} too (relsync_files:payload/1).
-spec info() -> #{otp_release := binary(), node := atom(), root_dir := binary(),
                  release_root := binary() | none, code_path := [binary()],
                  crypto := boolean(), hash := sha256 | md5, helper_vsn := 1,
                  temp_names := md5, compress := [zlib]}.
info() ->
    #{otp_release => list_to_binary(erlang:system_info(otp_release)),
      crypto => relsync_hash:ensure_crypto(),
      hash => relsync_hash:hash_algo(),
      node => node(),
      root_dir => relsync_hash:name_bin(code:root_dir()),
      release_root => release_root(),
      code_path => [relsync_hash:name_bin(P) || P <- code:get_path()],
      helper_vsn => 1,
      temp_names => md5,
      compress => [zlib]}.

%% The directory of the release the VM was booted from (its boot script is
%% ROOT/releases/VSN/NAME), or none for a VM booted from OTP's own scripts.
release_root() ->
    case init:get_argument(boot) of
        {ok, [[Boot | _] | _]} ->
            Abs = filename:absname(Boot),
            VsnDir = filename:dirname(Abs),
            Releases = filename:dirname(VsnDir),
            case filename:basename(Releases) of
                "releases" -> relsync_hash:name_bin(filename:dirname(Releases));
                _ -> none
            end;
        _ ->
            none
    end.

%% Everything a sync reads before it plans, in one call (one round trip and one
%% rpc worker instead of six): info/0, code_state/0, the manifest of the release
%% at Dest without the Excl prefixes and, with a shadow tree at Rw (none: no
%% shadow tree), the shadow tree's manifest, the names in Dest and Dest/lib and
%% both paths as the board resolves them (resolved: see real_path/1).
-spec sync_state(binary(), [binary()], binary() | none) ->
          #{info := map(), code := map(),
            original | shadow := {ok, binary()} | {error, {binary(), posix()}},
            top | lib := {ok, [binary()]} | {error, posix()},
            resolved => {binary(), binary()}}.
sync_state(Dest, Excl, Rw) when is_binary(Dest), is_list(Excl),
                                (is_binary(Rw) orelse Rw =:= none) ->
    Packed = #{format => packed},
    Shadow = case Rw of
                 none -> #{shadow => {ok, <<>>}, top => {ok, []}, lib => {ok, []}};
                 _ -> #{shadow => relsync_manifest:manifest(Rw, Packed),
                        resolved => {real_path(Dest), real_path(Rw)},
                        top => relsync_manifest:list_dir(Dest),
                        lib => relsync_manifest:list_dir(<<Dest/binary, "/lib">>)}
             end,
    Shadow#{info => info(), code => relsync_state:code_state(),
            original => relsync_manifest:manifest(Dest, Packed#{exclude => Excl})}.

%% sync_state/3, and what Dest is (directory, or why not). With lock (a sync
%% about to write), first take the VM's sync lock for Who (a label shown to a
%% client that finds the VM busy), held until Owner (default: the calling
%% process) goes, or unlock/1. Busy: only #{lock => {busy, Holder}}, nothing read.
-spec sync_state(binary(), [binary()], binary() | none, #{lock => binary(), owner => pid()}) ->
          #{lock => {ok, binary()} | {busy, map()} | {error, term()}, atom() => term()}.
sync_state(Dest, Excl, Rw, Opts) when is_binary(Dest), is_map(Opts) ->
    Locked = case Opts of
                 #{lock := Who} when is_binary(Who) ->
                     relsync_state:lock(maps:get(owner, Opts, self()), Who);
                 _ -> none
             end,
    case Locked of
        {ok, _} -> (sync_state(Dest, Excl, Rw))#{lock => Locked, dest => dest_type(Dest)};
        none -> (sync_state(Dest, Excl, Rw))#{dest => dest_type(Dest)};
        _ -> #{lock => Locked}
    end.

%% Path with every symlink in it resolved, as realpath(3) does, "." and ".."
%% too; what lies below the deepest existing directory is kept as it is (a -q
%% not made yet). A loop (more than 40 links) gives up with the path so far.
-spec real_path(binary()) -> binary().
real_path(Path) ->
    [Root | Parts] = filename:split(Path),
    real_path([Root], Parts, 0).

real_path(Done, [], _) -> filename:join(Done);
real_path(Done, Rest, 40) -> filename:join(Done ++ Rest);
real_path(Done, [<<".">> | Rest], N) -> real_path(Done, Rest, N);
real_path([Root], [<<"..">> | Rest], N) -> real_path([Root], Rest, N);
real_path(Done, [<<"..">> | Rest], N) -> real_path(lists:droplast(Done), Rest, N);
real_path(Done, [Name | Rest], N) ->
    Here = filename:join(Done ++ [Name]),
    case file:read_link_all(Here) of
        {ok, Target} ->
            case filename:split(relsync_hash:name_bin(Target)) of
                [<<"/">> | Parts] -> real_path([<<"/">>], Parts ++ Rest, N + 1);
                Parts -> real_path(Done, Parts ++ Rest, N + 1)
            end;
        {error, _} ->
            real_path(Done ++ [Name], Rest, N)
    end.

dest_type(Dest) ->
    case file:read_file_info(Dest, ?INFO) of
        {ok, #file_info{type = Type}} -> Type;
        {error, Reason} -> Reason
    end.

%%% ------------------------------------------------------- the rest of the API
%% Handed to the module for the job.

unlock(A1) -> relsync_state:unlock(A1).
list_dir(A1) -> relsync_manifest:list_dir(A1).
manifest(A1, A2) -> relsync_manifest:manifest(A1, A2).
put_files(A1) -> relsync_files:put_files(A1).
put_files(A1, A2) -> relsync_files:put_files(A1, A2).
put_chunk(A1, A2, A3) -> relsync_files:put_chunk(A1, A2, A3).
put_chunk(A1, A2, A3, A4) -> relsync_files:put_chunk(A1, A2, A3, A4).
commit(A1, A2, A3) -> relsync_files:commit(A1, A2, A3).
commit(A1, A2, A3, A4) -> relsync_files:commit(A1, A2, A3, A4).
block_signatures(A1, A2) -> relsync_files:block_signatures(A1, A2).
put_delta(A1, A2, A3, A4, A5) -> relsync_files:put_delta(A1, A2, A3, A4, A5).
delete_files(A1) -> relsync_files:delete_files(A1).
delete_dirs(A1) -> relsync_files:delete_dirs(A1).
make_symlinks(A1) -> relsync_files:make_symlinks(A1).
update_code_path(A1) -> relsync_code:update_code_path(A1).
load_fresh(A1) -> relsync_code:load_fresh(A1).
load_modules(A1, A2) -> relsync_code:load_modules(A1, A2).
delete_modules(A1, A2) -> relsync_code:delete_modules(A1, A2).
loaded_shas() -> relsync_code:loaded_shas().
mark_pending(A1) -> relsync_state:mark_pending(A1).
code_state() -> relsync_state:code_state().
running_programs(A1) -> relsync_code:running_programs(A1).
stash_code(A1) -> relsync_code:stash_code(A1).
upgrade(A1, A2) -> relsync_code:upgrade(A1, A2).
old_code() -> relsync_code:old_code().
suspended() -> relsync_code:suspended().
check_beams(A1) -> relsync_code:check_beams(A1).
missing_apps(A1) -> relsync_code:missing_apps(A1).
outdated(A1) -> relsync_code:outdated(A1).
run_hook(A1, A2, A3) -> relsync_hook_runner:run_hook(A1, A2, A3).
