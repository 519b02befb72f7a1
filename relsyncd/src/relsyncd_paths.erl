%% relsyncd_paths: confinement of every path SFTP or the control channel
%% touches to a list of allowed directory prefixes (the jail), less the
%% daemon's own files (its host key, authorized_keys, the crash dump).
%%
%% A path is allowed when
%%   1. it is absolute, has no NUL byte and no ".." segment,
%%   2. lexically, it lies under one of the allowed prefixes, and
%%   3. its real location (symlinks resolved, see below) lies under the real
%%      location of one of the allowed prefixes,
%%   4. and neither its lexical nor its real location is a denied path or
%%      lies below one.
%% For `follow` checks (reads, opens, stats, listing, code path entries) the
%% whole path is resolved, so a symlink as the last component counts where it
%% points. For `nofollow` checks (delete, rename, creating a link, reading a
%% link) only the parent directory is resolved, and the path must lie strictly
%% under an allowed prefix. Missing components are taken lexically (there is
%% no link to follow in what does not exist yet). check/3 answers the path
%% normalized ("." and duplicate or trailing slashes removed): that is the
%% spelling that was checked, and the only one callers may use.
%%
%% Symlinks between allowed prefixes (relsync's shadow tree on the writable
%% path links into the read-only release) are fine. A link relsyncd makes
%% must point inside the jail whatever the links it passes lead to
%% (check_target/3), so a client that swaps a checked directory for a link of
%% its own between the check and the use stays inside. Links the board itself
%% placed inside the allowed prefixes that point out (a release's lib/kernel-X
%% into OTP) remain ways out for such a race.
-module(relsyncd_paths).

-export([check/3, check_many/3, check_target/3, realpath/1, normalize/1, to_bin/1,
         within/2, is_ancestor/2]).

-type mode() :: follow | nofollow.
%% The allowed prefixes alone, or with the paths refused inside them.
-type jail() :: [binary()] | #{allowed := [binary()], denied := [binary()]}.
-export_type([mode/0, jail/0]).

-define(MAX_LINKS, 40).

%% Returns the normalized absolute path, or a forbidden error naming the path as
%% it was given.
-spec check(file:name_all() | term(), mode(), jail()) ->
          {ok, binary()} | {error, {forbidden, term()}}.
check(Path, Mode, Jail) ->
    {Result, _} = check(Path, Mode, roots(Jail), #{}),
    Result.

%% Checks every path of a request (see check/3) before any of it is done, and
%% answers them normalized. The allowed prefixes are resolved once, and each
%% directory once: a batch of a hundred files in a few directories costs a few
%% lookups, not a hundred.
-spec check_many([term()], mode(), jail()) -> {ok, [binary()]} | {error, {forbidden, term()}}.
check_many(Paths, Mode, Jail) ->
    many(Paths, Mode, roots(Jail), #{}, []).

many([], _Mode, _Roots, _Seen, Acc) -> {ok, lists:reverse(Acc)};
many([P | Ps], Mode, Roots, Seen0, Acc) ->
    case check(P, Mode, Roots, Seen0) of
        {{ok, N}, Seen} -> many(Ps, Mode, Roots, Seen, [N | Acc]);
        {Err, _} -> Err
    end;
many(Bad, _Mode, _Roots, _Seen, _Acc) -> {error, {forbidden, Bad}}.

%% Where a new link Link (already checked, normalized) may point: an absolute
%% Target must be normalized already and lie lexically inside an allowed
%% prefix; a relative one may have ".." as leading components only
%% ("../../x/y", never "s/../x": the kernel takes a ".." after a link from
%% where that link leads) and must lead inside one both from Link's directory
%% as written and from where that directory really is. Neither may name a
%% denied path, lie below one or be the ancestor of one (a link to "/data"
%% would lead to "/data/relsyncd" by another spelling). Targets are not
%% resolved further: what follows the leading ".."s are names, and a name that
%% is a link made here leads inside by this same rule, so no sequence of links
%% made here (or swapped for one another) leads out.
-spec check_target(binary(), term(), jail()) -> ok | {error, {forbidden, term()}}.
check_target(Link, Target, Jail) ->
    {Roots, RealRoots, Denied} = roots(Jail),
    try
        T = to_bin(Target),
        nomatch = binary:match(T, <<0>>),
        Dir = filename:dirname(Link),
        Ends = case filename:pathtype(T) of
                   absolute -> {ok, T} = normalize(T), [{T, Roots}];
                   relative ->
                       Parts = [P || P <- filename:split(T), P =/= <<".">>],
                       {_Ups, Names} = lists:splitwith(fun(P) -> P =:= <<"..">> end, Parts),
                       false = lists:member(<<"..">>, Names),
                       {ok, RealDir} = realpath(Dir),
                       [{join_lexical(Dir, T), Roots}, {join_lexical(RealDir, T), RealRoots}]
               end,
        true = lists:all(fun({End, Rs}) ->
                                 lists:any(fun(R) -> within(End, R) end, Rs) andalso
                                     not lists:any(fun(D) -> within(End, D) orelse
                                                                 within(D, End) end, Denied)
                         end, Ends),
        ok
    catch _:_ -> {error, {forbidden, Target}}
    end.

join_lexical(Dir, Rel) ->
    {ok, P} = lexical(Dir, filename:split(Rel)),
    P.

-type roots() :: {Lexical :: [binary()], Real :: [binary()], Denied :: [binary()]}.
-type seen() :: #{binary() => {ok, binary()} | {error, eloop}}.  % directory -> realpath

-spec roots(jail() | roots()) -> roots().
roots({_, _, _} = Roots) -> Roots;
roots(Allowed) when is_list(Allowed) -> roots(#{allowed => Allowed, denied => []});
roots(#{allowed := Allowed, denied := Denied}) ->
    Roots = norms(Allowed),
    DeniedLex = norms(Denied),
    {Roots, reals(Roots), lists:usort(DeniedLex ++ reals(DeniedLex))}.

norms(Paths) -> [N || P <- Paths, {ok, N} <- [normalize(P)]].
reals(Paths) -> [R || P <- Paths, {ok, R} <- [realpath(P)]].

-spec check(term(), mode(), roots(), seen()) ->
          {{ok, binary()} | {error, {forbidden, term()}}, seen()}.
check(Path, Mode, Roots, Seen) ->
    try check1(Path, Mode, Roots, Seen)
    catch _:_ -> {{error, {forbidden, Path}}, Seen}     % any failed step refuses
    end.

check1(Path, Mode, {Roots, RealRoots, Denied}, Seen0) ->
    {ok, Lex} = normalize(Path),
    true = lists:any(fun(R) -> inside(Lex, R, Mode) end, Roots),
    {Real, Seen} = real(Lex, Mode, Seen0),
    {ok, RealPath} = Real,
    true = lists:any(fun(R) -> inside(RealPath, R, Mode) end, RealRoots),
    false = lists:any(fun(D) -> within(Lex, D) orelse within(RealPath, D) end, Denied),
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
