%% A code upgrade (or downgrade) the way release_handler runs a relup, without
%% sasl: each step is its own group, as systools makes of an appup whose
%% instructions name no DepMods. For an update, the processes running the
%% module (found through every application's supervision tree, as
%% release_handler finds them, and by their initial call) are suspended, the
%% module is loaded, each process's state is converted with sys:change_code
%% (a supervisor's code_change re-reads its child specs inside the supervisor,
%% as OTP does; relsync never calls a user's init/1), and they are resumed
%% before the next step: a code_change may call a server upgraded earlier.
%%
%% A step that fails undoes the steps before it, last first: its processes are
%% suspended again, converted back ({down, Vsn} in the newer code), the code
%% from before is loaded again, they are resumed. Under soft purge the undo
%% never kills: a module whose old code some process still runs is left on
%% its new code (and said so: undone is then false), as is one with a process
%% still busy at the timeout or whose state does not convert back (the old
%% code never runs with the new state). Nothing is left suspended, whatever
%% happens.
%%
%% Once every step went through (the point of no return), a supervisor starts
%% the children it gained, children whose module is deleted are stopped (as an
%% appup's supervisor:terminate_child and delete_child would), the appup's
%% apply instructions run (each bounded by the timeout), deleted modules go.
%% Down, the supervisors of an application whose modules come back re-read
%% their older specs too and start the children they name and no longer run.
%% A failure there keeps the new code (undone is false).
%%
%% Steps (relsync builds them from its plan, in dependency order):
%%   {add_module, M, BeamPath, Sha256}      load a module the VM did not have
%%   {load_module, M, BeamPath, Sha256}     reload, no process touched
%%   {update, M, supervisor, BeamPath, Sha256}
%%                                          suspend, reload, sys:change_code
%%   {update, M, {advanced, Extra}, BeamPath, Sha256}
%%                                          suspend, reload, code_change
%%   {update, M, soft, BeamPath, Sha256}    reload with M's processes suspended
%%   {apply, M, F, Args}                    M:F(Args...) after the last step
%%   {delete_module, M}                     purge it once the rest is done
%% With direction down, code_change gets {down, Vsn} (Vsn: the vsn of the code
%% being loaded) and runs before the load, in the newer code that knows both
%% state formats; a supervisor always re-reads its specs after the load.
%%
%% The caller supplies the loading (Load(M, Path, Sha) -> {loaded, Procs} |
%% Error, which checks the hash and keeps its own records), the undo of a load
%% (Restore(M, OldCodeOrNone) -> ok: OldCode is {File, Beam} as stashed
%% before the files changed, none for a module that was not loaded; called
%% only once M's old code is purged, unless purge is brutal) and the deletion
%% of a module.
-module(relsync_upgrade).

-export([run/2]).

-type step() :: {add_module | load_module, module(), binary(), binary()}
              | {update, module(), supervisor | soft | {advanced, term()}, binary(), binary()}
              | {apply, module(), atom(), list()}
              | {delete_module, module()}.
-type event() :: {suspended | resumed | converted | converted_back, module(), pid(), atom()}
               | {started_child | stopped_child | applied, module(), term()}
               | {not_undone, module(), term()}.
-type opts() :: #{direction := up | down, timeout := timeout(),
                  load := fun((module(), binary(), binary()) -> term()),
                  restore := fun((module(), term()) -> ok),
                  purge => soft | brutal,
                  delete := fun((module()) -> term()),
                  old_code := #{module() => {binary(), binary()}}}.

-export_type([step/0, event/0]).

%% The processes this upgrade holds suspended (in its process dictionary).
-define(SUSPENDED, relsync_upgrade_suspended).

%% A process an update touches: {Supervisor | undefined, ChildId, Pid, Modules}.
-type proc() :: {pid() | undefined, term(), pid(), [module()]}.

%% Result: #{result => ok | {error, Why}, undone => boolean(), events =>
%% [event()] (in order), modules => [{M, {loaded, Procs} | {deleted, Result}}]}.
%% Why names the step: {suspend, M, Pid, Name, Reason}, {load, M, Reason},
%% {code_change, M, Pid, Name, Reason}, {child, M, Id, Reason}, {apply, M, F,
%% Why}. undone: every step before the failing one was undone (the code and
%% state from before run); false after the point of no return or when a
%% module could not be undone without killing (a not_undone event names it).
-spec run([step()], opts()) -> #{result := ok | {error, term()}, undone := boolean(),
                                 events := [event()], modules := [{module(), term()}]}.
run(Steps, Opts) ->
    try transaction(Steps, Opts)
    catch Class:Reason:Stack ->
            %% A bug of ours: whatever it did, nothing stays suspended.
            _ = [catch sys:resume(P, 5000) || P <- suspended_by_us()],
            #{result => {error, {crashed, {Class, Reason, Stack}}}, undone => false,
              events => [], modules => []}
    after
        erase(?SUSPENDED)
    end.

transaction(Steps, Opts) ->
    St0 = #{events => [], done => [], modules => [], opts => Opts, sups => []},
    Loads = [S || S <- Steps, not lists:member(element(1, S), [delete_module, apply])],
    St1 = lists:foldl(fun step/2, St0, Loads),
    St2 = case St1 of
              #{error := _} -> undo(St1);
              _ -> no_return(Steps, St1)
          end,
    #{result => case St2 of #{error := E} -> {error, E}; _ -> ok end,
      undone => maps:get(undone, St2, false),
      events => lists:reverse(maps:get(events, St2)),
      modules => lists:reverse(maps:get(modules, St2))}.

%% After the point of no return: gained children started, children of deleted
%% modules stopped, applies run, modules deleted; the first failure stops it.
no_return(Steps, #{sups := Sups} = St) ->
    Deleted = [M || {delete_module, M} <- Steps],
    Then = [{start, S} || S <- lists:reverse(Sups)]
        ++ [{reread, S} || S <- older_sups(Steps, St)]
        ++ [{stop, P} || P <- procs(Deleted)]
        ++ [S || {apply, _, _, _} = S <- Steps]
        ++ [{delete, M} || M <- Deleted],
    lists:foldl(fun after_step/2, St, Then).

after_step(_, #{error := _} = St) -> St;
after_step({start, {M, Sup, Old}}, St) ->
    New = [Id || {Id, undefined, _, _} <- children(Sup), not lists:member(Id, Old)],
    lists:foldl(fun(Id, S) -> start_child(Sup, M, Id, S) end, St, New);
after_step({reread, {M, Sup}}, St) ->
    Old = [Id || {Id, _, _, _} <- children(Sup)],
    case suspend([Sup], M, St) of
        #{error := _} = Failed -> Failed;
        Suspended ->
            {_, Read} = convert([Sup], M, {down, loaded_vsn(M)}, [], Suspended),
            after_step({start, {M, Sup, Old}}, resume([Sup], M, Read))
    end;
after_step({stop, {Sup, Id, Pid, _Mods}}, St) when is_pid(Sup) ->
    _ = case Id of
            undefined -> catch supervisor:terminate_child(Sup, Pid);     % simple_one_for_one
            _ -> catch supervisor:terminate_child(Sup, Id),
                 catch supervisor:delete_child(Sup, Id)
        end,
    event({stopped_child, hd(sup_mods(Sup) ++ [undefined]), Id}, St);
after_step({stop, _}, St) -> St;
after_step({apply, M, F, A}, St) -> apply_step(M, F, A, St);
after_step({delete, M}, #{opts := #{delete := Delete}} = St) ->
    St#{modules := [{M, {deleted, Delete(M)}} | maps:get(modules, St)]}.

%% Down: the supervisors of the applications whose modules come back (an
%% upgrade deleted them, and stopped their children), but those an update
%% re-read already: each re-reads its older specs, as an updated one does, and
%% starts the children they name that it no longer runs.
older_sups(_Steps, #{opts := #{direction := up}}) -> [];
older_sups(Steps, #{sups := Sups}) ->
    Apps = lists:usort([A || {add_module, M, _, _} <- Steps,
                             {ok, A} <- [application:get_application(M)]]),
    Read = [P || {_, P, _} <- Sups],
    [S || A <- Apps, {_, P} = S <- app_sups(A), not lists:member(P, Read)].

%% {CallbackModule, Pid} of each supervisor of App's supervision tree.
app_sups(App) ->
    case catch application_master:get_child(application_controller:get_master(App)) of
        {Root, _} when is_pid(Root) -> sups_under(Root);
        _ -> []
    end.

sups_under(Sup) ->
    [{M, Sup} || M <- sup_mods(Sup)]
        ++ lists:append([sups_under(P) || {_, P, supervisor, _} <- children(Sup), is_pid(P)]).

start_child(_Sup, _M, _Id, #{error := _} = St) -> St;
start_child(Sup, M, Id, St) ->
    case catch supervisor:restart_child(Sup, Id) of
        {ok, _} -> event({started_child, M, Id}, St);
        {ok, _, _} -> event({started_child, M, Id}, St);
        {error, running} -> St;
        Other -> St#{error => {child, M, Id, exit_reason(Other)}}
    end.

%% An appup's {apply, {M, F, A}}, in a process of its own bounded by the
%% timeout (one that hangs is killed): its failure keeps the new code.
apply_step(M, F, A, #{opts := #{timeout := T}} = St) ->
    {Pid, Ref} = spawn_monitor(fun() -> exit({done, catch erlang:apply(M, F, A)}) end),
    receive
        {'DOWN', Ref, process, Pid, {done, {'EXIT', Why}}} ->
            St#{error => {apply, M, F, Why}};
        {'DOWN', Ref, process, Pid, {done, _}} ->
            event({applied, M, F}, St);
        {'DOWN', Ref, process, Pid, Why} ->
            St#{error => {apply, M, F, Why}}
    after T ->
            exit(Pid, kill),
            receive {'DOWN', Ref, process, Pid, _} -> ok end,
            St#{error => {apply, M, F, timeout}}
    end.

%%% ---------------------------------------------------------------- steps

step(_, #{error := _} = St) -> St;
step({Kind, M, Path, Sha}, St) when Kind =:= add_module; Kind =:= load_module ->
    then(load(M, Path, Sha, St), fun(S) -> done({M, load, [], none}, S) end);
step({update, M, How, Path, Sha}, St) ->
    Procs = procs([M]),
    Pids = [P || {_, _, P, _} <- Procs],
    Sups = case How of
               supervisor -> [{M, P, [Id || {Id, _, _, _} <- children(P)]} || P <- Pids];
               _ -> []
           end,
    case suspend(Pids, M, St) of
        #{error := _} = Failed -> Failed;
        Suspended ->
            Done = update(M, How, Path, Sha, Pids, Suspended),
            Resumed = resume(Pids, M, Done),
            case Resumed of
                #{error := _} -> Resumed;
                _ -> Resumed#{sups := Sups ++ maps:get(sups, Resumed)}
            end
    end.

%% M's processes are suspended: convert and load, in the direction's order.
%% What was done is recorded for the undo as it goes, so a conversion that
%% fails half way is undone for the processes it converted.
update(M, How, Path, Sha, Pids, St) ->
    Extra = case How of {advanced, E} -> E; _ -> [] end,
    case {direction(St), How} of
        {_, soft} ->
            then(load(M, Path, Sha, St), fun(S) -> done({M, load, Pids, none}, S) end);
        {down, {advanced, _}} ->
            %% Converted first, by the newer code that knows both formats.
            Vsn = {down, beam_vsn(Path)},
            {Converted, S1} = convert(Pids, M, Vsn, Extra, St),
            case S1 of
                #{error := _} -> done({M, convert, Converted, {Vsn, Extra}}, S1);
                _ -> then(load(M, Path, Sha, S1),
                          fun(S2) -> done({M, convert_load, Pids, {Vsn, Extra}}, S2) end)
            end;
        {Dir, _} ->
            Vsn = case Dir of up -> loaded_vsn(M); down -> {down, beam_vsn(Path)} end,
            then(load(M, Path, Sha, St),
                 fun(S) ->
                         {Converted, S1} = convert(Pids, M, Vsn, Extra, S),
                         case S1 of
                             #{error := {code_change, M, Slow, _, timeout} = Late} ->
                                 %% Still converting, to the new code's state: it
                                 %% keeps the new code (undoing it would give the
                                 %% old code a state in the new shape), so the
                                 %% rest of its processes are converted too.
                                 Rest = Pids -- [Slow | Converted],
                                 {_, S2} = convert(Rest, M, Vsn, Extra, maps:remove(error, S1)),
                                 done({M, keep, Pids, none}, S2#{error => Late});
                             _ when How =:= supervisor ->
                                 done({M, load_sup, Converted, {Vsn, Extra}}, S1);
                             _ ->
                                 done({M, load_convert, Converted, {Vsn, Extra}}, S1)
                         end
                 end)
    end.

then(#{error := _} = Failed, _Fun) -> Failed;
then(St, Fun) -> Fun(St).

done(Undo, St) -> St#{done := [Undo | maps:get(done, St)]}.

load(M, Path, Sha, #{opts := #{load := Load}} = St) ->
    case Load(M, Path, Sha) of
        {loaded, _} = Loaded -> St#{modules := [{M, Loaded} | maps:get(modules, St)]};
        Error -> St#{error => {load, M, Error}}
    end.

%% {the processes converted, St}: each in turn, up to one that refuses.
convert(Pids, M, Vsn, Extra, #{opts := #{timeout := T}} = St) ->
    lists:foldl(
      fun(_Pid, {Done, #{error := _} = S}) -> {Done, S};
         (Pid, {Done, S}) ->
              case catch sys:change_code(Pid, M, Vsn, Extra, T) of
                  ok -> {[Pid | Done], event({converted, M, Pid, name(Pid)}, S)};
                  Other -> {Done, S#{error => {code_change, M, Pid, name(Pid),
                                               exit_reason(Other)}}}
              end
      end, {[], St}, Pids).

%%% ------------------------------------------------------------ processes

%% Every process whose modules include one of Mods: the children of every
%% application's supervision tree with the modules their child specs declare
%% (asked for when dynamic) and the supervisors themselves, as release_handler
%% finds them; then the processes outside those trees by their initial call.
-spec procs([module()]) -> [proc()].
procs([]) -> [];
procs(Mods) ->
    Tree = lists:foldl(fun walk_app/2, [], application:which_applications()),
    InTree = maps:from_list([{P, true} || {_, _, P, _} <- Tree]),
    Loose = [{undefined, undefined, P, [M]} || P <- processes(), P =/= self(),
                                              not is_map_key(P, InTree),
                                              M <- [initial_module(P)], M =/= undefined],
    [Proc || {_, _, P, PMods} = Proc <- Tree ++ Loose, P =/= self(),
             lists:any(fun(M) -> lists:member(M, Mods) end, PMods)].

walk_app({App, _, _}, Acc) ->
    case application_controller:get_master(App) of
        Master when is_pid(Master) ->
            case catch application_master:get_child(Master) of
                {Root, _AppMod} when is_pid(Root) ->
                    walk_sup(Root, [{undefined, App, Root, sup_mods(Root)} | Acc]);
                _ -> Acc
            end;
        _ -> Acc
    end.

walk_sup(Sup, Acc) ->
    lists:foldl(
      fun({Id, Pid, Type, Mods}, A) when is_pid(Pid) ->
              A1 = [{Sup, Id, Pid, child_mods(Pid, Mods)} | A],
              if Type =:= supervisor -> walk_sup(Pid, A1); true -> A1 end;
         (_, A) -> A
      end, Acc, children(Sup)).

child_mods(Pid, dynamic) ->
    case catch gen:call(Pid, self(), get_modules, 5000) of
        {ok, Mods} when is_list(Mods) -> Mods;
        _ -> []
    end;
child_mods(_Pid, Mods) when is_list(Mods) -> Mods;
child_mods(_, _) -> [].

sup_mods(Sup) ->
    case catch supervisor:get_callback_module(Sup) of
        M when is_atom(M) -> [M];
        _ -> []
    end.

initial_module(Pid) ->
    case catch proc_lib:translate_initial_call(Pid) of
        {supervisor, M, 1} when is_atom(M) -> M;
        {M, init, 1} when is_atom(M), M =/= proc_lib -> M;
        _ -> undefined
    end.

children(Sup) ->
    case catch supervisor:which_children(Sup) of
        L when is_list(L) -> L;
        _ -> []
    end.

%% All of Pids suspended, or none: one that does not suspend in time is
%% resumed too (its suspend request is queued: a resume right behind it makes
%% sure it does not stay suspended when it gets to it late).
suspend(Pids, M, #{opts := #{timeout := T}} = St) ->
    suspend(Pids, M, T, [], St).

suspend([], _M, _T, _Done, St) -> St;
suspend([Pid | Rest], M, T, Done, St) ->
    try sys:suspend(Pid, T) of
        ok ->
            _ = held(Pid),
            suspend(Rest, M, T, [Pid | Done], event({suspended, M, Pid, name(Pid)}, St))
    catch
        _:Reason ->
            catch sys:resume(Pid, 0),
            Failed = St#{error => {suspend, M, Pid, name(Pid), exit_reason(Reason)}},
            resume(lists:reverse(Done), M, Failed)
    end.

resume(Pids, M, #{opts := #{timeout := T}} = St) ->
    lists:foldl(
      fun(Pid, S) ->
              catch sys:resume(Pid, T),
              put(?SUSPENDED, suspended_by_us() -- [Pid]),
              event({resumed, M, Pid, name(Pid)}, S)
      end, St, Pids).

held(Pid) -> put(?SUSPENDED, [Pid | suspended_by_us()]).

suspended_by_us() ->
    case get(?SUSPENDED) of
        undefined -> [];
        Pids -> Pids
    end.

%%% ----------------------------------------------------------------- undo

%% The steps done, last first, each with its processes suspended again.
undo(#{done := Done} = St) ->
    Undone = lists:foldl(fun undo_step/2, St#{done := []}, Done),
    Undone#{undone => not lists:keymember(not_undone, 1, maps:get(events, Undone))}.

undo_step({M, How, _, _}, #{opts := #{old_code := Old}} = St)
  when How =/= convert, map_get(M, Old) =:= unavailable -> % gone: see lost_code
    event({not_undone, M, []}, St);
undo_step({M, keep, _, _}, St) ->
    event({not_undone, M, code_change_timeout}, St);
undo_step({M, How, Pids, Conv}, #{opts := #{old_code := Old} = Opts} = St) ->
    Live = [P || P <- Pids, is_process_alive(P)],
    case restorable(M, maps:get(purge, Opts, soft)) of
        {false, Procs} when How =/= convert ->
            event({not_undone, M, Procs}, St);
        _ ->
            case quiet_suspend(Live, St) of
                {Suspended, []} ->
                    S1 = case How of
                             load_convert ->
                                 case convert_back(Suspended, M, Conv, St) of
                                     #{back_failed := _} = Kept -> Kept;
                                     Back -> restore(M, Old, Back)
                                 end;
                             convert -> convert_back(Suspended, M, Conv, St);
                             load -> restore(M, Old, St);
                             _ -> convert_back(Suspended, M, Conv, restore(M, Old, St))
                         end,
                    Resumed = resume(Suspended, M, maps:remove(back_failed, S1)),
                    if How =:= load_sup -> forget_gained(M, Resumed); true -> Resumed end;
                {Suspended, Busy} ->
                    %% Their state cannot be converted back: M keeps its new code.
                    resume(Suspended, M,
                           event({not_undone, M, {busy, [{P, name(P)} || P <- Busy]}}, St))
            end
    end.

%% A supervisor's code_change keeps the children its new specs lack: those it
%% gained (never started: that comes after the point of no return) are deleted
%% once it is resumed.
forget_gained(M, #{sups := Sups} = St) ->
    _ = [catch supervisor:delete_child(Sup, Id)
         || {M1, Sup, Kept} <- Sups, M1 =:= M,
            {Id, undefined, _, _} <- children(Sup), not lists:member(Id, Kept)],
    St.

%% Whether M's code from before can be loaded again without killing: no
%% process still runs its old code (or brutal purge was asked for).
restorable(M, soft) ->
    case erlang:check_old_code(M) andalso not code:soft_purge(M) of
        false -> true;
        true -> {false, [{P, name(P)} || P <- processes(),
                                        catch erlang:check_process_code(P, M)]}
    end;
restorable(_M, brutal) -> true.

restore(M, Old, #{opts := #{restore := Restore}} = St) ->
    case catch Restore(M, maps:get(M, Old, none)) of
        ok -> St#{modules := lists:keydelete(M, 1, maps:get(modules, St))};
        Why -> event({not_undone, M, Why}, St)
    end.

%% {Suspended, Busy}: a process that does not suspend in time gets a resume
%% queued behind its suspend request (as in suspend/5).
quiet_suspend(Pids, #{opts := #{timeout := T}}) ->
    lists:partition(fun(P) ->
                            case catch sys:suspend(P, T) of
                                ok -> _ = held(P), true;
                                _ -> catch sys:resume(P, 0), false
                            end
                    end, Pids).

%% The conversion that undoes one: up from Old goes back {down, Old}; down to
%% Vsn goes back up from Vsn. One that fails leaves M's state in the new shape:
%% those converted back are converted forward again, M keeps its new code
%% (not_undone; back_failed stops the restore that would follow).
convert_back(Pids, M, {Vsn, Extra}, #{opts := #{timeout := T}} = St) ->
    Back = case Vsn of {down, V} -> V; _ -> {down, Vsn} end,
    lists:foldl(
      fun(_Pid, #{back_failed := _} = S) -> S;
         (Pid, S) ->
              case catch sys:change_code(Pid, M, Back, Extra, T) of
                  ok -> event({converted_back, M, Pid, name(Pid)}, S);
                  Other ->
                      Again = [P || {converted_back, M1, P, _} <- maps:get(events, S),
                                    M1 =:= M, lists:member(P, Pids)],
                      _ = [catch sys:change_code(P, M, Vsn, Extra, T) || P <- Again],
                      Why = {code_change, Pid, name(Pid), exit_reason(Other)},
                      event({not_undone, M, Why}, S#{back_failed => true})
              end
      end, St, Pids);
convert_back(_Pids, _M, none, St) -> St.

%%% -------------------------------------------------------------- helpers

event(E, St) -> St#{events := [E | maps:get(events, St)]}.

direction(#{opts := #{direction := D}}) -> D.

%% The vsn of M as loaded now (undefined for a stripped beam).
loaded_vsn(M) ->
    case catch erlang:get_module_info(M, attributes) of
        Attrs when is_list(Attrs) ->
            case lists:keyfind(vsn, 1, Attrs) of
                {vsn, [V]} -> V;
                {vsn, V} -> V;
                false -> undefined
            end;
        _ -> undefined
    end.

beam_vsn(Path) ->
    case catch beam_lib:version(unicode:characters_to_list(Path)) of
        {ok, {_, [V]}} -> V;
        {ok, {_, V}} -> V;
        _ -> undefined
    end.

name(Pid) ->
    case process_info(Pid, registered_name) of
        {registered_name, N} -> N;
        _ -> undefined
    end.

exit_reason({'EXIT', {Reason, {sys, _, _}}}) -> Reason;
exit_reason({'EXIT', Reason}) -> Reason;
exit_reason({Reason, {sys, _, _}}) -> Reason;
exit_reason({error, Reason}) -> Reason;
exit_reason(Reason) -> Reason.
