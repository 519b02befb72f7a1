%% relsyncd_paths: confinement of every path SFTP or the control channel
%% touches to a list of allowed directory prefixes.
%%
%% A path is allowed when
%%   1. it is absolute, has no NUL byte and no ".." segment,
%%   2. lexically, it lies under one of the allowed prefixes, and
%%   3. its real location (symlinks resolved, see below) lies under the real
%%      location of one of the allowed prefixes.
%% For `follow` checks (reads, opens, stats, listing, code path entries) the
%% whole path is resolved, so a symlink as the last component counts where it
%% points. For `nofollow` checks (delete, rename, creating a link, reading a
%% link) only the parent directory is resolved, and the path must lie strictly
%% under an allowed prefix. Missing components are taken lexically (there is
%% no link to follow in what does not exist yet).
%%
%% Symlinks between allowed prefixes (relsync's shadow tree on the writable
%% path links into the read-only release) are fine. The check runs right before
%% the operation; it does not defend against a concurrent local process that
%% swaps a directory for a symlink between check and use.
-module(relsyncd_paths).

-export([check/3, check_many/3, realpath/1, normalize/1, to_bin/1, within/2,
         is_ancestor/2]).

-type mode() :: follow | nofollow.
-export_type([mode/0]).

-define(MAX_LINKS, 40).

%% Returns the normalized absolute path, or a forbidden error naming the path as
%% it was given.
-spec check(file:name_all() | term(), mode(), [binary()]) ->
          {ok, binary()} | {error, {forbidden, term()}}.
check(Path, Mode, Allowed) ->
    {Result, _} = check(Path, Mode, roots(Allowed), #{}),
    Result.

%% Checks every path of a request (see check/3) before any of it is done. The
%% allowed prefixes are resolved once, and each directory once: a batch of a
%% hundred files in a few directories costs a few lookups, not a hundred.
-spec check_many([term()], mode(), [binary()]) -> ok | {error, {forbidden, term()}}.
check_many(Paths, Mode, Allowed) ->
    many(Paths, Mode, roots(Allowed), #{}).

many([], _Mode, _Roots, _Seen) -> ok;
many([P | Ps], Mode, Roots, Seen0) ->
    case check(P, Mode, Roots, Seen0) of
        {{ok, _}, Seen} -> many(Ps, Mode, Roots, Seen);
        {Err, _} -> Err
    end;
many(Bad, _Mode, _Roots, _Seen) -> {error, {forbidden, Bad}}.

-type roots() :: {Lexical :: [binary()], Real :: [binary()]}.
-type seen() :: #{binary() => {ok, binary()} | {error, eloop}}.  % directory -> realpath

-spec roots([binary()]) -> roots().
roots(Allowed) ->
    Roots = [R || A <- Allowed, {ok, R} <- [normalize(A)]],
    {Roots, [RR || R <- Roots, {ok, RR} <- [realpath(R)]]}.

-spec check(term(), mode(), roots(), seen()) ->
          {{ok, binary()} | {error, {forbidden, term()}}, seen()}.
check(Path, Mode, Roots, Seen) ->
    try check1(Path, Mode, Roots, Seen)
    catch _:_ -> {{error, {forbidden, Path}}, Seen}     % any failed step refuses
    end.

check1(Path, Mode, {Roots, RealRoots}, Seen0) ->
    {ok, Lex} = normalize(Path),
    true = lists:any(fun(R) -> inside(Lex, R, Mode) end, Roots),
    {Real, Seen} = real(Lex, Mode, Seen0),
    {ok, RealPath} = Real,
    true = lists:any(fun(R) -> inside(RealPath, R, Mode) end, RealRoots),
    {{ok, Lex}, Seen}.

%% Where Lex really is: its parent directory resolved (remembered in Seen),
%% then, for follow, its last component.
real(<<"/">>, _Mode, Seen) ->
    {{ok, <<"/">>}, Seen};
real(Lex, Mode, Seen0) ->
    Dir = filename:dirname(Lex),
    {{ok, D}, Seen} = case Seen0 of
                          #{Dir := Known} -> {Known, Seen0};
                          _ -> R = realpath(Dir), {R, Seen0#{Dir => R}}
                      end,
    Base = filename:basename(Lex),
    case Mode of
        follow -> {resolve(D, [Base], ?MAX_LINKS), Seen};
        nofollow -> {{ok, filename:join(D, Base)}, Seen}
    end.

inside(Path, Root, follow) -> within(Path, Root);
inside(Path, Root, nofollow) -> Path =/= Root andalso within(Path, Root).

%% Absolute, NUL-free, no "..", "." and duplicate slashes removed.
-spec normalize(term()) -> {ok, binary()} | {error, badarg}.
normalize(Path) ->
    try to_bin(Path) of
        Bin ->
            case binary:match(Bin, <<0>>) =:= nomatch andalso
                filename:pathtype(Bin) =:= absolute of
                false -> {error, badarg};
                true ->
                    Parts = [P || P <- filename:split(Bin), P =/= <<".">>],
                    case lists:member(<<"..">>, Parts) of
                        true -> {error, badarg};
                        false -> {ok, filename:join(Parts)}
                    end
            end
    catch _:_ -> {error, badarg}
    end.

%% Path equals Root or lies below it (component-wise).
-spec within(binary(), binary()) -> boolean().
within(Path, Root) ->
    lists:prefix(filename:split(Root), filename:split(Path)).

%% Path is Root or one of its ancestors ("/", "/data" for "/data/relsync").
-spec is_ancestor(binary(), binary()) -> boolean().
is_ancestor(Path, Root) -> within(Root, Path).

%% Resolve every symlink of an absolute, normalized path. Components that do
%% not exist are appended as they are.
-spec realpath(binary()) -> {ok, binary()} | {error, eloop}.
realpath(Path) ->
    [<<"/">> | Parts] = filename:split(Path),
    resolve(<<"/">>, Parts, ?MAX_LINKS).

resolve(_Acc, _Parts, 0) -> {error, eloop};
resolve(Acc, [], _N) -> {ok, Acc};
resolve(Acc, [<<".">> | Rest], N) -> resolve(Acc, Rest, N);
resolve(Acc, [<<"..">> | Rest], N) -> resolve(filename:dirname(Acc), Rest, N);
resolve(Acc, [C | Rest], N) ->
    P = filename:join(Acc, C),
    case file:read_link_all(P) of
        {ok, Target0} ->
            Target = to_bin(Target0),
            case filename:split(Target) of
                [<<"/">> | TParts] -> resolve(<<"/">>, TParts ++ Rest, N - 1);
                TParts -> resolve(Acc, TParts ++ Rest, N - 1)
            end;
        {error, einval} -> resolve(P, Rest, N);      % exists, not a link
        {error, _} -> lexical(P, Rest)                % missing (or unreadable)
    end.

lexical(Acc, []) -> {ok, Acc};
lexical(Acc, [<<".">> | Rest]) -> lexical(Acc, Rest);
lexical(Acc, [<<"..">> | Rest]) -> lexical(filename:dirname(Acc), Rest);
lexical(Acc, [C | Rest]) -> lexical(filename:join(Acc, C), Rest).

%% File names as binaries, encoded like the file module does.
-spec to_bin(file:name_all()) -> binary().
to_bin(B) when is_binary(B) -> B;
to_bin(L) when is_list(L) ->
    case unicode:characters_to_binary(L, unicode, file:native_name_encoding()) of
        B when is_binary(B) -> B;
        _ -> iolist_to_binary(L)
    end;
to_bin(A) when is_atom(A) -> atom_to_binary(A, utf8).
