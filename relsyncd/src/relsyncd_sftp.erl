%% relsyncd_sftp: an ssh_sftpd_file_api handler that performs file operations
%% like ssh_sftpd_file but refuses, with eacces (SFTP "permission denied"),
%% every path outside the allowed prefixes or among the denied paths (see
%% relsyncd_paths). Each operation gets the path as it was checked
%% (normalized). Links made here must point inside (check_target); renames
%% move files only (a directory or link moved elsewhere would carry relative
%% links with it); setstat sets permission bits only (no setuid, setgid or
%% sticky bit), never changes the owner and is refused on a symlink. A channel
%% holds at most ?MAX_HANDLES open files (OTP's default, 1000, times a few
%% channels ran the VM out of file descriptors).
%%
%% Used as `{file_handler, {relsyncd_sftp, relsyncd_sftp:init_state(Allowed, Denied)}}`
%% in ssh_sftpd:subsystem_spec/1; subsystem_spec/1 below builds that.
-module(relsyncd_sftp).

-behaviour(ssh_sftpd_file_api).

-export([subsystem_spec/1, init_state/2]).
-export([close/2, delete/2, del_dir/2, get_cwd/1, is_dir/2, list_dir/2,
         make_dir/2, make_symlink/3, open/3, position/3, read/3,
         read_file_info/2, read_link/2, read_link_info/2, rename/3,
         write/3, write_file_info/3]).

-include_lib("kernel/include/file.hrl").

-define(MAX_HANDLES, 32).

-record(st, {jail :: relsyncd_paths:jail(), cwd :: string()}).
-opaque state() :: #st{}.
-export_type([state/0]).

%% Opts: #{allowed_paths := [file:name_all()], denied_paths => [file:name_all()],
%%         sftp_cwd => file:name_all()}.
-spec subsystem_spec(map()) -> ssh:subsystem_spec().
subsystem_spec(#{allowed_paths := Allowed} = Opts) ->
    State = init_state(Allowed, maps:get(denied_paths, Opts, [])),
    Cwd = case maps:get(sftp_cwd, Opts, undefined) of
              undefined -> State#st.cwd;
              C -> to_list(relsyncd_paths:to_bin(C))
          end,
    ssh_sftpd:subsystem_spec([{file_handler, {?MODULE, State#st{cwd = Cwd}}},
                              {cwd, Cwd}, {max_handles, ?MAX_HANDLES}]).

-spec init_state([file:name_all()], [file:name_all()]) -> state().
init_state(Allowed0, Denied) ->
    Allowed = [relsyncd_paths:to_bin(A) || A <- Allowed0],
    Cwd = case Allowed of
              [First | _] -> to_list(First);
              [] -> "/"
          end,
    #st{jail = #{allowed => Allowed, denied => [relsyncd_paths:to_bin(D) || D <- Denied]},
        cwd = Cwd}.

%%% ----------------------------------------------------------- callbacks

-spec close(file:io_device(), state()) -> {ok | {error, term()}, state()}.
close(Fd, S) -> {file:close(Fd), S}.

-spec delete(file:name(), state()) -> {ok | {error, term()}, state()}.
delete(Path, S) -> guarded(Path, nofollow, S, fun(P) -> file:delete(P) end).

-spec del_dir(file:name(), state()) -> {ok | {error, term()}, state()}.
del_dir(Path, S) -> guarded(Path, nofollow, S, fun(P) -> file:del_dir(P) end).

-spec get_cwd(state()) -> {{ok, string()}, state()}.
get_cwd(S) -> {{ok, S#st.cwd}, S}.

-spec is_dir(file:name(), state()) -> {boolean(), state()}.
is_dir(Path, S) ->
    case allowed(Path, follow, S) of
        {ok, P} -> {filelib:is_dir(P), S};
        error -> {false, S}
    end.

-spec list_dir(file:name(), state()) -> {{ok, [string()]} | {error, term()}, state()}.
list_dir(Path, S) -> guarded(Path, follow, S, fun(P) -> file:list_dir(P) end).

-spec make_dir(file:name(), state()) -> {ok | {error, term()}, state()}.
make_dir(Path, S) -> guarded(Path, nofollow, S, fun(P) -> file:make_dir(P) end).

%% The target must be allowed as well (ssh_sftpd hands it over made absolute),
%% and be a target the control channel's make_symlinks could make.
-spec make_symlink(file:name(), file:name(), state()) -> {ok | {error, term()}, state()}.
make_symlink(Target, Link, #st{jail = J} = S) ->
    case {allowed(Target, follow, S), allowed(Link, nofollow, S)} of
        {{ok, T}, {ok, L}} ->
            case relsyncd_paths:check_target(L, T, J) of
                ok -> {file:make_symlink(T, L), S};
                {error, _} -> {{error, eacces}, S}
            end;
        _ -> {{error, eacces}, S}
    end.

-spec open(file:name(), [term()], state()) -> {{ok, file:io_device()} | {error, term()}, state()}.
open(Path, Flags, S) -> guarded(Path, follow, S, fun(P) -> file:open(P, Flags) end).

-spec position(file:io_device(), term(), state()) ->
          {{ok, non_neg_integer()} | {error, term()}, state()}.
position(Fd, Offs, S) -> {file:position(Fd, Offs), S}.

-spec read(file:io_device(), non_neg_integer(), state()) ->
          {{ok, string() | binary()} | eof | {error, term()}, state()}.
read(Fd, Len, S) -> {file:read(Fd, Len), S}.

%% ssh_sftpd's REALPATH reads the links of every ancestor of a path ("/",
%% "/data", ...): allow that for the ancestors of the allowed prefixes, which
%% reveals no more than where the allowed directories are.
-spec read_link(file:name(), state()) -> {{ok, string()} | {error, term()}, state()}.
read_link(Path, S) ->
    case allowed(Path, nofollow, S) of
        {ok, P} -> {file:read_link(to_list(P)), S};
        error ->
            case ancestor(Path, S) of
                {ok, P} -> {file:read_link(to_list(P)), S};
                error -> {{error, eacces}, S}
            end
    end.

-spec read_link_info(file:name(), state()) -> {{ok, #file_info{}} | {error, term()}, state()}.
read_link_info(Path, S) ->
    guarded(Path, nofollow_or_root, S, fun(P) -> file:read_link_info(P) end).

-spec read_file_info(file:name(), state()) -> {{ok, #file_info{}} | {error, term()}, state()}.
read_file_info(Path, S) -> guarded(Path, follow, S, fun(P) -> file:read_file_info(P) end).

-spec rename(file:name(), file:name(), state()) -> {ok | {error, term()}, state()}.
rename(From, To, S) ->
    case allowed(From, nofollow, S) of
        {ok, F} ->
            case file:read_link_info(F) of
                {ok, #file_info{type = regular}} ->
                    guarded(To, nofollow, S, fun(T) -> file:rename(F, T) end);
                {ok, _} -> {{error, eacces}, S};
                {error, _} = E -> {E, S}
            end;
        error -> {{error, eacces}, S}
    end.

-spec write(file:io_device(), iodata(), state()) -> {ok | {error, term()}, state()}.
write(Fd, Data, S) -> {file:write(Fd, Data), S}.

-spec write_file_info(file:name(), #file_info{}, state()) -> {ok | {error, term()}, state()}.
write_file_info(Path, Info, S) ->
    guarded(Path, follow, S, fun(P) -> set_info(P, Info) end).

%% ssh_sftpd fills in what the client left out from the file's current info:
%% an owner that is not the current one is a chown, refused. It reads that info
%% without following a last link (a link's mode is 0777), so a link is refused:
%% setting its times would give where it leads that mode.
set_info(P, #file_info{mode = Mode, uid = Uid, gid = Gid, atime = A, mtime = M}) ->
    case file:read_link_info(P) of
        {ok, #file_info{type = symlink}} -> {error, eperm};
        {ok, #file_info{uid = U, gid = G}} when (Uid =:= undefined orelse Uid =:= U),
                                                (Gid =:= undefined orelse Gid =:= G) ->
            Perm = case Mode of
                       undefined -> undefined;
                       _ -> Mode band 8#777
                   end,
            file:write_file_info(P, #file_info{mode = Perm, atime = A, mtime = M});
        {ok, _} -> {error, eperm};
        {error, _} = E -> E
    end.

%%% ------------------------------------------------------------- helpers

guarded(Path, Mode, S, Fun) ->
    case allowed(Path, Mode, S) of
        {ok, P} -> {try Fun(to_list(P)) catch _:_ -> {error, eacces} end, S};
        error -> {{error, eacces}, S}
    end.

%% lstat of an allowed prefix itself is fine (directory listings stat ".").
allowed(Path, nofollow_or_root, S) ->
    case allowed(Path, nofollow, S) of
        {ok, _} = Ok -> Ok;
        error -> allowed(Path, follow, S)
    end;
allowed(Path, Mode, #st{jail = Jail}) ->
    case relsyncd_paths:check(Path, Mode, Jail) of
        {ok, P} -> {ok, P};
        {error, _} -> error
    end.

ancestor(Path, #st{jail = #{allowed := Allowed}}) ->
    case relsyncd_paths:normalize(Path) of
        {ok, P} ->
            case lists:any(fun(A) -> relsyncd_paths:is_ancestor(P, A) end,
                           [N || A <- Allowed, {ok, N} <- [relsyncd_paths:normalize(A)]]) of
                true -> {ok, P};
                false -> error
            end;
        _ -> error
    end.

to_list(B) ->
    case unicode:characters_to_list(B, file:native_name_encoding()) of
        L when is_list(L) -> L;
        _ -> binary_to_list(B)
    end.
