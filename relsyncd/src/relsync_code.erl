%% relsync_code: part of relsync's target-side helper (see relsync_target).
%% Code: the code path, loading and deleting modules, checks of beams and
%% applications against this VM, port programs, upgrades.
-module(relsync_code).

-export([check_beams/1, delete_modules/2, otp_own/1, load_fresh/1, load_modules/2, loaded_shas/0,
         missing_apps/1, outdated/1,
         old_code/0, suspended/0, otp_libs/0, running_programs/1, stash_code/1, strip_slash/1,
         update_code_path/1, upgrade/2]).

-include("relsync_target.hrl").

%% OTP's applications (OTP 25 to 27): their modules are OTP's own (otp_own/1).
-define(OTP_APPS, ["asn1", "common_test", "compiler", "crypto", "debugger", "dialyzer",
                   "diameter", "edoc", "eldap", "erl_docgen", "erl_interface", "erts", "et",
                   "eunit", "ftp", "inets", "jinterface", "kernel", "megaco", "mnesia",
                   "observer", "odbc", "os_mon", "parsetools", "public_key", "reltool",
                   "runtime_tools", "sasl", "snmp", "ssh", "ssl", "stdlib", "syntax_tools",
                   "tftp", "tools", "wx", "xmerl"]).

%% The target helper's modules: never deleted here (see own/1).
-define(HELPER_MODULES, [relsync_target, relsync_state, relsync_hash, relsync_manifest,
                         relsync_files, relsync_code, relsync_hook_runner, relsync_upgrade]).

%% Fresh modules loaded together at most (see load_fresh/1).
-define(FRESH_GROUP, 64).

%% How long a supervisor may take to answer which children it has (see users/1).
-define(ASK_TIMEOUT, 2000).

%% What still needs a module's code: a process ({Pid, RegisteredName}), a
%% supervisor's child ({child, Sup, SupName, Id}), an application.
-type user() :: {pid(), atom()} | {child, pid(), atom(), term()} | {application, atom()}.

%% The new path is installed with one code:set_path/1 call, which validates
%% every entry; non-directories are reported as {error, {bad_directory, Dirs}}.
%% replace_prefix: one {From, To} or a list of them, applied in order.
-spec update_code_path(#{replace_prefix => {binary(), binary()} | [{binary(), binary()}] | none,
                         add => [binary()], remove => [binary()]}) ->
          {ok, [binary()]} | {error, {bad_directory, [binary()]}}.
update_code_path(Opts) when is_map(Opts) ->
    Old = [relsync_hash:name_bin(P) || P <- code:get_path()],
    Pairs = case maps:get(replace_prefix, Opts, none) of
                none -> [];
                {_, _} = Pair -> [Pair];
                List when is_list(List) -> List
            end,
    Replaced = lists:foldl(fun({From, To}, Path) ->
                                   [rewrite(P, strip_slash(From), strip_slash(To)) || P <- Path]
                           end, Old, Pairs),
    Remove = maps:get(remove, Opts, []),
    Kept = [P || P <- Replaced, not lists:member(P, Remove)],
    New = dedup(Kept ++ maps:get(add, Opts, [])),
    case New =:= Old of
        true -> {ok, Old};
        false ->
            case code:set_path([relsync_hash:to_list(P) || P <- New]) of
                true -> {ok, [relsync_hash:name_bin(P) || P <- code:get_path()]};
                _BadDirectory ->
                    {error, {bad_directory, [P || P <- New, not filelib:is_dir(P)]}}
            end
    end.

rewrite(From, From, To) -> To;
rewrite(P, From, To) ->
    N = byte_size(From),
    case P of
        <<From:N/binary, "/", Rest/binary>> -> <<To/binary, "/", Rest/binary>>;
        _ -> P
    end.

strip_slash(<<"/">>) -> <<"/">>;
strip_slash(P) ->
    case binary:last(P) of
        $/ -> strip_slash(binary:part(P, 0, byte_size(P) - 1));
        _ -> P
    end.

dedup(L) -> dedup(L, #{}).
dedup([], _) -> [];
dedup([X | T], Seen) when is_map_key(X, Seen) -> dedup(T, Seen);
dedup([X | T], Seen) -> [X | dedup(T, Seen#{X => true})].

%% Which of Paths are running right now as the program of one of this VM's
%% ports (found through /proc/<os pid>/exe; [] where there is no /proc). A
%% program replaced by rename keeps running its old binary until restarted.
-spec running_programs([binary()]) -> [{binary(), integer(), pid() | undefined, atom()}].
running_programs(Paths) when is_list(Paths) ->
    Wanted = maps:from_list([{real_path(P), P} || P <- Paths, is_binary(P)]),
    lists:filtermap(
      fun(Port) ->
              case {erlang:port_info(Port, os_pid), erlang:port_info(Port, connected)} of
                  {{os_pid, OsPid}, {connected, Owner}} when is_integer(OsPid) ->
                      Exe = exe_of(OsPid),
                      case maps:find(Exe, Wanted) of
                          {ok, Path} -> {true, {Path, OsPid, Owner, reg_name(Owner)}};
                          error -> false
                      end;
                  _ -> false
              end
      end, erlang:ports());
running_programs(_) ->
    [].

exe_of(OsPid) ->
    case file:read_link_all("/proc/" ++ integer_to_list(OsPid) ++ "/exe") of
        {ok, Exe} -> relsync_hash:name_bin(Exe);
        {error, _} -> undefined
    end.

%% The path with every symlink resolved (as /proc/PID/exe shows it).
real_path(Path) -> real_path(filename:split(Path), <<"/">>, 0).

real_path([], Acc, _) -> Acc;
real_path(_, Acc, Depth) when Depth > 40 -> Acc;
real_path([<<"/">> | Rest], _Acc, Depth) -> real_path(Rest, <<"/">>, Depth);
real_path([Part | Rest], Acc, Depth) ->
    Next = filename:join(Acc, Part),
    case file:read_link_all(Next) of
        {ok, Target} ->
            Abs = filename:absname(relsync_hash:name_bin(Target), Acc),
            real_path(filename:split(Abs) ++ Rest, <<"/">>, Depth + 1);
        {error, _} -> real_path(Rest, Next, Depth)
    end.

%% With {Module, BeamPath, Sha256} the file must have that hash, and the hash is
%% recorded (in the cache table, as {{loaded, Module}, Sha256}) once it is loaded:
%% loaded_shas/0 then tells the next sync what this VM really runs, even if an
%% earlier sync died between writing files and reloading them. The record lives
%% in memory only, so a reboot forgets it along with the code it describes.
-spec load_modules([{module(), binary()} | {module(), binary(), binary()}], purge()) ->
          [{module(), {loaded, procs()} | {not_purged, procs()} | sticky | {error, term()}}].
load_modules(Mods, Purge) ->
    relsync_state:ensure_state(),
    Staged = [{element(1, Mod), stage(Mod, Purge)} || Mod <- Mods],
    Loaded = load_all([{M, Path, Sha, Bin} || {M, {staged, Path, Sha, Bin}} <- Staged]),
    [{M, case R of {staged, _, _, _} -> maps:get(M, Loaded); _ -> R end} || {M, R} <- Staged].

stage({M, Path}, Purge) -> stage(M, Path, any, Purge);
stage({M, Path, Sha}, Purge) -> stage(M, Path, Sha, Purge).

%% Read and check a module's beam and purge its old code, ready to load. When
%% the VM runs that very code already, it is recorded as loaded and left be.
stage(M, Path, Sha, Purge) ->
    case otp_own(M) of
        true -> relsync_state:clear_pending(M), sticky;           % final: never loadable here
        false ->
            case read_beam(Path, Sha) of
                {ok, Bin} ->
                    case runs(M, Bin) of
                        true -> record_loaded(M, Sha, {loaded, []});
                        false -> purge_staged(M, Path, Sha, Bin, Purge)
                    end;
                {error, _} = E -> E
            end
    end.

purge_staged(M, Path, Sha, Bin, Purge) ->
    case purge_old(M, Purge) of
        ok -> {staged, Path, Sha, Bin};
        NotPurged -> NotPurged
    end.

%% Whether M's loaded code is the beam's (its MD5 covers the code, not the
%% compile time and other attributes): a reload would change nothing, but
%% would make the running code old, for every process running it to leave.
runs(M, Bin) ->
    code:is_loaded(M) =/= false andalso
        case beam_lib:md5(Bin) of
            {ok, {M, Md5}} -> erlang:get_module_info(M, md5) =:= Md5;
            _ -> false
        end.

%% The staged modules loaded together (code:atomic_load/1: the VM's export
%% table is staged once for all of them, not once a module); those it refuses
%% (an on_load function, a bad beam) are loaded one at a time, as are all when
%% the rest is refused again. Module -> its result.
load_all(Staged) ->
    {Loaded, Refused} = together(Staged),
    maps:from_list(Loaded ++ [load_one(S) || S <- Refused]).

%% The staged modules the VM loads together, with their results, and those it
%% would not: the ones it refused, or all when it refuses the rest again.
together(Staged) ->
    case atomic_load(Staged) of
        ok -> {loaded(Staged), []};
        {error, Errors} ->
            Refuses = fun({M, _, _, _}) -> lists:keymember(M, 1, Errors) end,
            {Refused, Rest} = lists:partition(Refuses, Staged),
            case atomic_load(Rest) of
                ok -> {loaded(Rest), Refused};
                {error, _} -> {[], Staged}
            end
    end.

%% The modules of Mods this VM has no code of at all (not loaded, no old code),
%% loaded while the rest of a sync's files are still on their way: nothing runs
%% them, so nothing sees them change. They are loaded ?FRESH_GROUP at a time: a
%% group the VM refuses (an on_load function, which may need files not written
%% yet) is prepared again without the refused, and a small group costs less to
%% prepare again. The refused and the others are left to load_modules/2, once
%% every file is in place. Returns the results of those it loaded, recorded as
%% load_modules/2 records them.
-spec load_fresh([{module(), binary(), binary()}]) -> [{module(), {loaded, procs()}}].
load_fresh(Mods) when is_list(Mods) ->
    relsync_state:ensure_state(),
    Staged = [{M, Path, Sha, Bin} || {M, Path, Sha} <- Mods, is_atom(M), is_binary(Sha),
                                     fresh(M), {ok, Bin} <- [read_beam(Path, Sha)],
                                     not loads_nif(Bin)],
    lists:append([element(1, together(Group)) || Group <- groups(Staged)]).

groups(L) when length(L) =< ?FRESH_GROUP -> [L];
groups(L) ->
    {Group, Rest} = lists:split(?FRESH_GROUP, L),
    [Group | groups(Rest)].

fresh(M) ->
    code:is_loaded(M) =:= false andalso not erlang:check_old_code(M)
        andalso not otp_own(M).

%% Whether a beam names load_nif (a NIF's loader, nearly always from an on_load
%% function). A module with an on_load function makes code:atomic_load/1 refuse
%% its whole group, which is then prepared again without it: those are left
%% out of the groups up front, for the load after every file is in place. Only
%% the speed depends on this guess: an on_load module it misses is refused, a
%% module it wrongly names is loaded later. Not in together/1: for modules the
%% VM runs, a wrong guess would load one apart from the others it goes with.
loads_nif(Bin) ->
    binary:match(Bin, <<"load_nif">>) =/= nomatch.

atomic_load([]) -> ok;
atomic_load(Staged) ->
    code:atomic_load([{M, relsync_hash:to_list(Path), Bin} || {M, Path, _, Bin} <- Staged]).

loaded(Staged) ->
    [{M, record_loaded(M, Sha, {loaded, lingering(M)})} || {M, _, Sha, _} <- Staged].

load_one({M, Path, Sha, Bin}) ->
    {M, record_loaded(M, Sha, load_binary(M, Path, Bin))}.

%% One module read, checked, purged and loaded (an upgrade's steps, one by one).
load_module(M, Path, Sha, Purge) ->
    case stage(M, Path, Sha, Purge) of
        {staged, _, _, Bin} -> element(2, load_one({M, Path, Sha, Bin}));
        NotStaged -> NotStaged
    end.

read_beam(Path, Sha) ->
    case file:read_file(Path) of
        {ok, Bin} when Sha =:= any -> {ok, Bin};
        {ok, Bin} ->
            case relsync_hash:hash(Bin) of
                Sha -> {ok, Bin};
                _ -> {error, hash_mismatch}
            end;
        {error, _} = E -> E
    end.

record_loaded(M, Sha, {loaded, _} = Result) when is_binary(Sha) ->
    ok = relsync_state:record_loaded(M, Sha),
    Result;
record_loaded(M, _Sha, {loaded, _} = Result) ->
    relsync_state:clear_pending(M),
    Result;
record_loaded(_M, _Sha, Result) ->
    Result.

%% Modules relsync loaded into this VM (and still loaded) -> SHA-256 of their beam.
-spec loaded_shas() -> #{module() => binary()}.
loaded_shas() ->
    maps:from_list([{M, Sha} || {M, Sha} <- relsync_state:loaded_records(),
                                code:is_loaded(M) =/= false]).

%% Whether M is OTP's own, never loaded or deleted here (replacing lists or
%% deleting it takes the VM down): sticky, preloaded, loaded from one of OTP's
%% applications (lib/App-Vsn/ebin, wherever OTP's lib is: an embedded VM's
%% code server may stick no directory at all), or, not loaded, a module of one
%% of them (tftp, which an OTP application would load later).
-spec otp_own(module()) -> boolean().
otp_own(M) ->
    code:is_sticky(M) orelse
        case code:is_loaded(M) of
            {file, preloaded} -> true;
            {file, File} when is_list(File) -> otp_file(File);
            _ -> is_map_key(atom_to_binary(M), otp_modules())
        end.

%% A beam in the ebin of one of OTP's applications.
otp_file(File) ->
    App = filename:basename(filename:dirname(filename:dirname(File))),
    lists:member(hd(string:split(App, "-")), ?OTP_APPS).

%% The names of the modules of OTP's applications, read once in the VM's life:
%% the beams in their ebin directories in otp_libs/0, in the lib directory of
%% the OTP the VM's runtime comes from, and in those the VM loaded OTP's
%% modules from (a slim release's own lib may lack tftp, the board's OTP not).
otp_modules() ->
    case persistent_term:get({?MODULE, otp_modules}, undefined) of
        undefined ->
            Runtime = case os:getenv("BINDIR") of     % ROOT/erts-VSN/bin
                          false -> [];
                          Bin -> [filename:join(filename:dirname(filename:dirname(Bin)), "lib")]
                      end,
            Loaded = [filename:dirname(filename:dirname(filename:dirname(F)))
                      || {_, F} <- code:all_loaded(), is_list(F), otp_file(F)],
            Mods = maps:from_list(
                     [{list_to_binary(filename:basename(B, ".beam")), true}
                      || L <- lists:usort(otp_libs() ++ Runtime ++ Loaded), App <- ?OTP_APPS,
                         B <- filelib:wildcard(filename:join([L, App ++ "-*", "ebin", "*.beam"]))]),
            persistent_term:put({?MODULE, otp_modules}, Mods),
            Mods;
        Mods -> Mods
    end.

%% Whether M is relsyncd's (loaded from relsyncd's ebin) or the helper's own:
%% never deleted (a newer version may replace it).
own(M) ->
    lists:member(M, ?HELPER_MODULES) orelse
        case {code:is_loaded(M), code:is_loaded(relsyncd)} of
            {{file, F}, {file, D}} when is_list(F), is_list(D) ->
                filename:dirname(F) =:= filename:dirname(D);
            _ -> false
        end.

load_binary(M, Path, Bin) ->
    case code:load_binary(M, relsync_hash:to_list(Path), Bin) of
        {module, M} -> {loaded, lingering(M)};
        {error, _} = E -> E
    end.

%% Modules whose beams the release no longer has, unloaded unless something
%% still needs their code (see users/1): such a module stays loaded and
%% pending, {in_use, Users}, so the next sync tries again; brutal unloads it
%% anyway and says who used it, {deleted, Users}.
-spec delete_modules([module()], purge()) ->
          [{module(), deleted | {deleted, [user()]} | not_loaded | sticky | {in_use, [user()]}
                    | {not_purged, procs()}}].
delete_modules(Mods, Purge) ->
    relsync_state:ensure_state(),
    Users = users([M || M <- Mods, is_atom(M), code:is_loaded(M) =/= false,
                        not otp_own(M), not own(M)]),
    [{M, settled(M, delete_module(M, maps:get(M, Users, []), Purge))} || M <- Mods].

settled(M, Result) when Result =:= deleted; Result =:= not_loaded; Result =:= sticky;
                        element(1, Result) =:= deleted ->
    relsync_state:clear_pending(M),
    Result;
settled(_M, Result) ->
    Result.

%% A {not_purged, _} from the second purge means the current code is gone but
%% the listed processes still run the (now old) code.
delete_module(M, Users, Purge) ->
    case {otp_own(M) orelse own(M), code:is_loaded(M), erlang:check_old_code(M)} of
        {true, _, _} -> sticky;
        {_, false, false} -> not_loaded;
        {_, {file, _}, _} when Users =/= [], Purge =/= brutal -> {in_use, Users};
        {_, Loaded, _} ->
            ok = relsync_state:forget_loaded(M),
            case purge_old(M, Purge) of
                ok when Loaded =:= false -> deleted;
                ok -> _ = code:delete(M),
                      case purge_old(M, Purge) of
                          ok when Users =:= [] -> deleted;
                          ok -> {deleted, Users};
                          NotPurged -> NotPurged
                      end;
                NotPurged -> NotPurged
            end
    end.

%% Who still needs the current code of each of Mods, found without unloading
%% it and without waiting on a process that does not answer (a suspended one
%% is not asked): a process executing it (in its stack) or running it as its
%% callback module (proc_lib's initial call: gen_server, gen_statem,
%% supervisor...), a running supervisor's child spec starting it or naming it
%% among its modules (it would be restarted with it), an application whose
%% callback module it is. Module -> its users (only modules that have some).
%% The stack is read as far as the VM's backtrace depth; code deeper down is
%% still found by the soft purge after the delete ({not_purged, _}).
-spec users([module()]) -> #{module() => [user()]}.
users([]) -> #{};
users(Mods) ->
    Wanted = maps:from_list([{M, true} || M <- Mods]),
    Procs = [{P, initial_call(P)} || P <- processes(), P =/= self()],
    Found = [{M, {P, reg_name(P)}} || {P, {_, Initial}} <- Procs,
                                      M <- lists:usort([Initial | stack(P)]),
                                      is_map_key(M, Wanted)]
        ++ [{M, {child, Sup, reg_name(Sup), Id}} || {Sup, {supervisor, _}} <- Procs,
                                                   {Id, Named} <- children(Sup),
                                                   M <- Named, is_map_key(M, Wanted)]
        ++ [{M, {application, App}} || {App, M} <- app_modules(), is_map_key(M, Wanted)],
    maps:groups_from_list(fun({M, _}) -> M end, fun({_, U}) -> U end, Found).

%% {supervisor | process, the callback module it runs} from proc_lib's record
%% of how a process started (the spawned module for others).
initial_call(P) ->
    case catch proc_lib:translate_initial_call(P) of
        {supervisor, M, 1} -> {supervisor, M};
        {supervisor_bridge, M, 1} -> {process, M};
        {M, _, _} when is_atom(M) -> {process, M};
        _ -> {process, undefined}
    end.

stack(P) ->
    case process_info(P, current_stacktrace) of
        {current_stacktrace, Frames} -> [M || {M, _, _, _} <- Frames];
        undefined -> []
    end.

%% {Id, Modules} for each child of a supervisor: its start function's module
%% and the modules its spec declares. A simple_one_for_one supervisor's
%% children share one spec, asked for by its first child's pid.
children(Sup) ->
    case ask(Sup, which_children) of
        [{undefined, Pid, _, Mods} | _] when is_pid(Pid) -> [{Pid, spec_modules(Sup, Pid, Mods)}];
        Children when is_list(Children) ->
            [{Id, spec_modules(Sup, Id, Mods)} || {Id, _, _, Mods} <- Children, Id =/= undefined];
        error -> []
    end.

spec_modules(Sup, Key, Mods) ->
    Start = case ask(Sup, {get_childspec, Key}) of
                {ok, #{start := {M, _, _}}} -> [M];
                _ -> []
            end,
    lists:usort(Start ++ [M || is_list(Mods), M <- Mods]).

%% A supervisor's answer to one of its calls (as supervisor:which_children/1
%% and get_childspec/2 ask), within ?ASK_TIMEOUT; error from one that is
%% suspended (erlang:suspend_process/1, or in sys's loop: sys:suspend/1) or
%% that does not answer in time.
ask(Sup, Request) ->
    case process_info(Sup, [status, current_function]) of
        [{status, Status}, {current_function, {Mod, _, _}}] when Status =/= suspended,
                                                                Mod =/= sys ->
            try gen_server:call(Sup, Request, ?ASK_TIMEOUT) catch exit:_ -> error end;
        _ -> error
    end.

%% {Application, its callback module} for each running application.
app_modules() ->
    case catch application:which_applications(?ASK_TIMEOUT) of
        Apps when is_list(Apps) ->
            [{App, M} || {App, _, _} <- Apps, {ok, {M, _}} <- [application:get_key(App, mod)]];
        _ -> []
    end.

purge_old(M, Purge) ->
    case erlang:check_old_code(M) andalso not code:soft_purge(M) of
        false -> ok;
        true when Purge =:= brutal -> _ = code:purge(M), ok;
        true -> {not_purged, lingering(M)}
    end.

%% Processes still executing the old code of M (none if it can be purged
%% softly, in which case we do so right away: nothing needs it any more).
lingering(M) ->
    case erlang:check_old_code(M) andalso not code:soft_purge(M) of
        false -> [];
        true -> [{P, reg_name(P)} || P <- processes(), P =/= self(), uses_old(P, M)]
    end.

uses_old(Pid, M) ->
    try erlang:check_process_code(Pid, M) catch error:_ -> false end.

reg_name(Pid) ->
    case process_info(Pid, registered_name) of
        {registered_name, Name} -> Name;
        _ -> undefined
    end.

%% Whether this VM can load each beam, without loading it (erlang:prepare_loading
%% checks the code as a load would): a beam from a newer OTP is refused here,
%% before anything is written. Answers the modules it cannot load, with why.
-spec check_beams([{module(), binary()}]) -> [{module(), term()}].
check_beams(Beams) when is_list(Beams) ->
    [{M, Why} || {M, Bin} <- Beams, is_atom(M), is_binary(Bin),
                 {error, Why} <- [prepare(M, Bin)]].

prepare(M, Bin) ->
    try erlang:prepare_loading(M, Bin) of
        {error, _} = E -> E;
        _Prepared -> ok
    catch error:Why -> {error, Why}
    end.

%% Which of Apps (applications a slim release expects from the board's OTP) this
%% VM has neither on its code path nor among the OTP libraries beside it.
-spec missing_apps([atom()]) -> [atom()].
missing_apps(Apps) when is_list(Apps) ->
    Libs = otp_libs(),
    [A || A <- Apps, is_atom(A), not has_app(A, Libs)].

%% Where OTP's libraries are: the root's lib, and where kernel comes from (the
%% board's OTP, in a slim release).
otp_libs() ->
    lists:usort([filename:join(code:root_dir(), "lib"), filename:dirname(code:lib_dir(kernel))]).

has_app(A, Libs) ->
    case code:lib_dir(A) of
        {error, _} ->
            Name = atom_to_list(A),
            lists:any(fun(L) -> filelib:wildcard(filename:join(L, Name ++ "-*")) =/= [] end,
                      Libs);
        _ -> true
    end.

%% Of Mods, those whose loaded code is not the beam it was loaded from as that
%% file is now (changed: a build replaced it), or that are not loaded (new):
%% what a VM running the very release relsync syncs from has to load.
-spec outdated([module()]) -> [{module(), changed | new}].
outdated(Mods) when is_list(Mods) ->
    [{M, How} || M <- Mods, is_atom(M),
                 How <- case code:is_loaded(M) of
                            false -> [new];
                            {file, File} when is_list(File) ->
                                [changed || not is_tuple(running_beam(M, File))];
                            _ -> [changed]
                        end].

%% Before the files change, keep the code each module runs now ({File, Beam}
%% in the state table, checked against the loaded code's MD5), so that an
%% upgrade step that fails can load it again. Not loaded: nothing kept.
-spec stash_code([module()]) -> ok.
stash_code(Mods) when is_list(Mods) ->
    relsync_state:ensure_state(),
    lists:foreach(fun stash/1, [M || M <- Mods, is_atom(M)]).

stash(M) ->
    Kept = case code:is_loaded(M) of
               {file, File} when is_list(File) -> running_or_copy(M, File);
               false -> none;
               _ -> unavailable
           end,
    case {Kept, relsync_state:old_code(M)} of
        {unavailable, {ok, {_, Bin} = Stashed}} ->
            %% The file changed since an upgrade killed after the files were
            %% replaced stashed it: the code it stashed is what still runs.
            case runs(M, Bin) of
                true -> relsync_state:keep_old_code(M, Stashed);
                false -> relsync_state:keep_old_code(M, Kept)
            end;
        _ -> relsync_state:keep_old_code(M, Kept)
    end.

%% The beam M runs: File, else (File gone or replaced since, say the shadow
%% tree it was loaded from removed) the one the code path finds now, when its
%% MD5 is the loaded code's (the pristine release's copy of the same code).
running_or_copy(M, File) ->
    case running_beam(M, File) of
        unavailable ->
            case code:where_is_file(atom_to_list(M) ++ ".beam") of
                Found when is_list(Found), Found =/= File -> running_beam(M, Found);
                _ -> unavailable
            end;
        Kept -> Kept
    end.

running_beam(M, File) ->
    case file:read_file(File) of
        {ok, Bin} ->
            case runs(M, Bin) of
                true -> {relsync_hash:name_bin(File), Bin};
                false -> unavailable
            end;
        {error, _} -> unavailable
    end.

%% Carry out upgrade steps (see relsync_upgrade) with this module's loading and
%% records: a module loaded is recorded as by load_modules/2; one whose load
%% is undone is marked pending, so the next sync loads it whatever the files
%% say. Opts: direction (up | down), timeout (ms, per process call), purge,
%% apps (.app files whose specs replace the loaded applications') and config
%% (the release's sys.config, or none), lost_code (allow: go on when the code a
%% module runs is no longer in its beam, e.g. a VM run from the very release a
%% build replaced; a failing step leaves that module on its new code).
-spec upgrade([relsync_upgrade:step()], #{direction => up | down, timeout => timeout(),
                                          purge => purge(), apps => [binary()],
                                          config => binary() | none,
                                          lost_code => allow | refuse}) -> map().
upgrade(Steps, Opts) when is_list(Steps), is_map(Opts) ->
    relsync_state:ensure_state(),
    Caller = self(),
    Ref = make_ref(),
    {Pid, MRef} = spawn_monitor(fun() -> Caller ! {Ref, transaction(Steps, Opts)} end),
    receive
        {Ref, Result} -> erlang:demonitor(MRef, [flush]), Result;
        {'DOWN', MRef, process, Pid, Why} ->
            #{result => {error, {crashed, Why}}, undone => false, events => [], modules => []}
    end.

%% The upgrade as one transaction, in a process of its own that the board
%% owns: it keeps the sync lock (Opts' token) until it is over, whatever
%% happens to the client that asked for it, and finishes or undoes itself.
transaction(Steps, Opts) ->
    case whereis(init) of
        undefined -> ok;
        Init -> group_leader(Init, self())
    end,
    case relsync_state:pin(maps:get(token, Opts, <<>>), self()) of
        ok -> pinned(Steps, Opts);
        {error, _} = E -> #{result => E, undone => false, events => [], modules => []}
    end.

pinned(Steps, Opts) ->
    relsync_state:ensure_state(),
    Purge = maps:get(purge, Opts, soft),
    Mods = [element(2, S) || S <- Steps, is_tuple(S), tuple_size(S) >= 2],
    Old = maps:from_list([{M, stashed(M)} || M <- Mods]),
    ok = relsync_state:drop_old_code(Mods),
    case [M || {M, unavailable} <- maps:to_list(Old),
               maps:get(lost_code, Opts, refuse) =/= allow] of
        [M | _] ->
            #{result => {error, {no_old_code, M}}, events => [], modules => []};
        [] ->
            EnvBefore = application_controller:prep_config_change(),
            Specs = [S || P <- maps:get(apps, Opts, []), {ok, [S]} <- [file:consult(P)]],
            Before = change_apps(Specs, config(maps:get(config, Opts, none), Specs)),
            Result = relsync_upgrade:run(
                       Steps,
                       #{direction => maps:get(direction, Opts, up),
                         timeout => maps:get(timeout, Opts, 5000),
                         load => fun(M, Path, Sha) -> load_module(M, Path, Sha, Purge) end,
                         restore => fun(M, OldCode) -> restore(M, OldCode, Purge) end,
                         purge => Purge,
                         delete => fun(M) -> [{M, R}] = delete_modules([M], Purge), R end,
                         old_code => maps:filter(fun(_, V) -> V =/= none end, Old)}),
            _ = case Result of
                    #{undone := true} -> change_apps(Before, []);
                    _ -> ok
                end,
            _ = application_controller:config_change(EnvBefore),
            Result
    end.

%% The loaded applications' specs (vsn, keys, env) replaced by those of Specs,
%% with the env of Config (a sys.config's terms), as release_handler does on an
%% upgrade (config_change/3 follows once the steps are done). Returns the
%% specs replaced, with the env each had, to put them back.
change_apps([], _Config) -> [];
change_apps(Specs, Config) ->
    Before = [{application, App, [{env, application:get_all_env(App)} | Keys]}
              || {application, App, _} <- Specs, {ok, Keys} <- [application:get_all_key(App)]],
    _ = application_controller:change_application_data(Specs, Config),
    Before.

%% The env the applications get besides their .app files': the release's
%% sys.config, as release_handler reads it; without one (a sys.config made from
%% a .src at boot), the env they have now, so only keys new to them are added.
config(none, Specs) ->
    [{App, application:get_all_env(App)} || {application, App, _} <- Specs];
config(Path, _Specs) ->
    case file:consult(Path) of
        {ok, [Config]} when is_list(Config) -> Config;
        _ -> []
    end.

%% What a module ran before: stashed by stash_code/1, else what it runs now.
stashed(M) ->
    case relsync_state:old_code(M) of
        {ok, Kept} -> Kept;
        error -> ok = stash(M), stashed(M)
    end.

%% M's code from before loaded again (relsync_upgrade checked that, under soft
%% purge, no process runs M's old code: nothing is killed).
restore(M, Old, Purge) ->
    ok = relsync_state:forget_loaded(M),
    ok = relsync_state:mark_pending([M]),
    _ = purge_old(M, Purge),
    case Old of
        none -> _ = code:delete(M), _ = purge_old(M, Purge), ok;
        {File, Bin} ->
            {module, M} = code:load_binary(M, relsync_hash:to_list(File), Bin),
            _ = code:soft_purge(M),             % the newer code, unless something runs it
            ok
    end.

%% Processes suspended now (sys:suspend/1, waiting in sys's suspend loop): an
%% upgrade resumes every process it suspends, but another tool may not.
-spec suspended() -> procs().
suspended() ->
    [{P, reg_name(P)} || P <- processes(),
                         case process_info(P, current_function) of
                             {current_function, {sys, F, 6}} ->
                                 F =:= suspend_loop orelse F =:= suspend_loop_hib;
                             _ -> false
                         end].

%% Modules whose old code some process still runs, with those processes.
-spec old_code() -> [{module(), procs()}].
old_code() ->
    [{M, Procs} || {M, _} <- code:all_loaded(), erlang:check_old_code(M),
                   (Procs = lingering(M)) =/= []].
