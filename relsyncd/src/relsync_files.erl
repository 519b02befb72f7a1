%% relsync_files: part of relsync's target-side helper (see relsync_target).
%% File operations: files staged, checked and renamed into place (whole, in
%% chunks or as block deltas), deletions and symlinks.
-module(relsync_files).

-export([block_signatures/2, commit/3, commit/4, delete_dirs/1, delete_files/1,
         make_symlinks/1, put_chunk/3, put_chunk/4, put_delta/5, put_files/1, put_files/2,
         with_fd/3]).

-include("relsync_target.hrl").

%% The most a compressed file of put_files may inflate to (the client sends
%% larger files in chunks, uncompressed).
-define(MAX_INFLATED, (4 * 1024 * 1024)).

%% Bounds of block_signatures/2.
-define(MIN_BLOCK, 1024).
-define(MAX_BLOCK, (1024 * 1024)).
-define(MAX_BLOCKS, 65536).

%% A file's bytes in a put_files call: as they are, or {zlib, Size, Deflated}
%% (zlib's format, see payload/1).
-type payload() :: binary() | {zlib, non_neg_integer(), binary()}.
-type put_error() :: posix() | hash_mismatch | bad_compressed_data.

-spec put_files([{binary(), integer(), payload(), binary()}]) ->
          ok | {error, binary(), put_error()}.
put_files(Files) -> put_files(Files, <<>>).

%% Token: the sync's (see sync_state/4), which names its temporary files and
%% must still hold the lock; <<>> for a client that takes no lock.
-spec put_files([{binary(), integer(), payload(), binary()}], binary()) ->
          ok | {error, lock_lost} | {error, binary(), put_error()}.
put_files(Files, Token) when is_list(Files), is_binary(Token) ->
    case relsync_state:holds_lock(Token) of
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
put_each([{Path, Mode, Payload, Sha} | Rest], Token) when is_binary(Path), is_integer(Mode),
                                                         is_binary(Sha) ->
    Tmp = tmp_path(Path, Token),
    Result = case payload(Payload) of
                 {ok, Data} -> put_one(Tmp, Data, Path, Mode, Sha);
                 {error, _} = E -> E
             end,
    case Result of
        ok -> put_each(Rest, Token);
        {error, Reason} -> _ = file:delete(Tmp), {error, Path, Reason}
    end;
put_each([Bad | _], _Token) -> {error, Bad, badarg}.

put_one(Tmp, Data, Path, Mode, Sha) ->
    case relsync_hash:hash(Data) of
        Sha -> case write_new(Tmp, Data, sync) of
                   {ok, Written} -> install(Tmp, Written, Path, Mode, Sha);
                   Err -> Err
               end;
        _ -> {error, hash_mismatch}
    end.

%% A file's bytes from what put_files got. A compressed file declares its size,
%% checked against ?MAX_INFLATED before anything is inflated; it is inflated a
%% piece at a time (zlib:safeInflate/2) and given up on as soon as it grows past
%% the size it declared, so a small payload cannot make a big binary. It must
%% come to exactly that size (its hash is checked after).
-spec payload(term()) -> {ok, binary()} | {error, badarg | bad_compressed_data}.
payload(Data) when is_binary(Data) -> {ok, Data};
payload({zlib, Size, Z}) when is_integer(Size), Size >= 0, Size =< ?MAX_INFLATED,
                              is_binary(Z) ->
    S = zlib:open(),
    try
        ok = zlib:inflateInit(S),
        inflate(S, zlib:safeInflate(S, Z), Size, [], 0)
    catch
        error:_ -> {error, bad_compressed_data}
    after
        zlib:close(S)
    end;
payload(_) -> {error, badarg}.

inflate(S, {Status, Out}, Size, Acc, Sofar) ->
    N = Sofar + iolist_size(Out),
    if
        N > Size -> {error, bad_compressed_data};
        Status =:= continue -> inflate(S, zlib:safeInflate(S, []), Size, [Out | Acc], N);
        Status =:= finished, N =:= Size -> {ok, iolist_to_binary(lists:reverse(Acc, [Out]))};
        true -> {error, bad_compressed_data}
    end.

put_chunk(Path, Offset, Data) -> put_chunk(Path, Offset, Data, <<>>).

-spec put_chunk(binary(), non_neg_integer(), binary(), binary()) ->
          ok | {error, posix() | lock_lost}.
put_chunk(Path, Offset, Data, Token) when is_binary(Path), is_integer(Offset), Offset >= 0,
                                          is_binary(Data), is_binary(Token) ->
    Tmp = tmp_path(Path, Token),
    Written = case {relsync_state:holds_lock(Token), Offset} of
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
    case do_steps([fun() -> relsync_state:holds_lock(Token) end,
                   fun() -> finish(Tmp, Path, Mode, Sha) end]) of
        ok -> ok;
        {error, enoent} = E -> E;               % nothing staged
        {error, _} = E -> _ = file:delete(Tmp), E
    end;
commit(_, _, _, _) -> {error, badarg}.

%% Block delta (see relsync/delta.py): the sums of Path's consecutive full
%% blocks, then a new file built from copies of Base's bytes and literal data.
%% Blocks of ?MIN_BLOCK to ?MAX_BLOCK bytes, at most ?MAX_BLOCKS of them (a
%% sum a byte of a big file took a GB): a longer file is efbig (sent whole).
-spec block_signatures(binary(), pos_integer()) ->
          {ok, [{non_neg_integer(), binary()}]} | {error, posix()}.
block_signatures(Path, Block) when is_binary(Path), is_integer(Block), Block >= ?MIN_BLOCK,
                                   Block =< ?MAX_BLOCK ->
    with_fd(Path, [read, raw, binary, read_ahead],
            fun(Fd) -> block_sums(Fd, Block, ?MAX_BLOCKS, []) end);
block_signatures(_, _) ->
    {error, badarg}.

block_sums(Fd, Block, Left, Acc) ->
    case file:read(Fd, Block) of
        {ok, Data} when byte_size(Data) =:= Block, Left =:= 0 -> {error, efbig};
        {ok, Data} when byte_size(Data) =:= Block ->
            block_sums(Fd, Block, Left - 1, [{erlang:adler32(Data), erlang:md5(Data)} | Acc]);
        _ -> {ok, lists:reverse(Acc)}             % a short tail block is sent as data
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

%% Dir/.relsync-tmp.<Token>.<Hash>.part (no token: Dir/.relsync-tmp.<Hash>.part):
%% Hash is the MD5 of Path's name in upper-case hex, short whatever the name (a
%% 255-byte name still fits NAME_MAX), never named like a module (*.beam) or an
%% app file, and one sync's own. relsync/target.py's temp_path/2 names them too.
tmp_path(Path, Token) ->
    Hash = binary:encode_hex(erlang:md5(filename:basename(Path))),
    Name = case Token of
               <<>> -> <<?TMP_PREFIX, Hash/binary, ".part">>;
               _ -> <<?TMP_PREFIX, Token/binary, ".", Hash/binary, ".part">>
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
        ok -> file:read_file_info(Fd, ?INFO);
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
                   %% permission bits only: no setuid, setgid or sticky file
                   fun() -> set_mode(Tmp, Info, Mode band 8#777) end,
                   fun() -> file:rename(Tmp, Path) end]) of
        ok -> relsync_state:cache_known(Path, Info, Sha);
        Err -> Err
    end.

%% Most files are made with the mode they need (0666 less the umask): leave
%% those be. file:write_file_info/3 also sets the owner and both times (three
%% calls to the file system, each a trip to a dirty I/O scheduler): the times
%% it sets are Info's, so the hash cached for Info still matches the file.
set_mode(_Tmp, #file_info{mode = Made}, Mode) when Made band 8#7777 =:= Mode -> ok;
set_mode(Tmp, #file_info{atime = Atime, mtime = Mtime}, Mode) ->
    file:write_file_info(Tmp, #file_info{mode = Mode, atime = Atime, mtime = Mtime},
                         ?INFO).

same_inode(Tmp, Ino) ->
    case file:read_link_info(Tmp, ?INFO) of
        {ok, #file_info{type = regular, inode = Ino}} -> ok;
        {ok, _} -> {error, staged_file_replaced};
        Err -> Err
    end.

verify_and_sync(Fd, Sha) ->
    case relsync_hash:hash_fd(Fd, relsync_hash:hash_init()) of
        {ok, Sha} -> synced_info(Fd);
        {ok, _} -> {error, hash_mismatch};
        Err -> Err
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
    case file:read_link_info(Tmp, ?INFO) of
        {ok, #file_info{type = regular}} -> ok;
        {ok, _} -> {error, einval};
        Err -> Err
    end.

%% Create Dir and its parents; an existing non-directory is enotdir. A
%% dangling symlink on the way is enoent: it is there (make_dir says eexist)
%% and leads nowhere (read_file_info says enoent).
mkdir_p(Dir) ->
    case dir_info(Dir) of
        {error, enoent} ->
            Parent = filename:dirname(Dir),
            case Parent =:= Dir orelse mkdir_p(Parent) of
                true -> {error, enoent};
                ok -> case file:make_dir(Dir) of
                          {error, eexist} -> dir_info(Dir);  % lost a race, or dangling
                          R -> R
                      end;
                Err -> Err
            end;
        Known -> Known
    end.

dir_info(Dir) ->
    case file:read_file_info(Dir, ?INFO) of
        {ok, #file_info{type = directory}} -> ok;
        {ok, _} -> {error, enotdir};
        Err -> Err
    end.

do_steps([]) -> ok;
do_steps([F | Fs]) ->
    case F() of
        ok -> do_steps(Fs);
        {ok, _} -> do_steps(Fs);
        {error, _} = E -> E
    end.

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
