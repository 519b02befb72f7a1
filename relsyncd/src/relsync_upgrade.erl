%% A code upgrade (or downgrade) the way an appup does it, without sasl or
%% release_handler: the processes running an updated module are suspended,
%% modules are loaded in the order given, each process's state is converted
%% with sys:change_code, and everything is resumed. A step that fails undoes
%% what came before it: converted processes are converted back, old code is
%% loaded again, added modules are removed; every suspended process is resumed
%% whatever happens.
%%
%% Steps (relsync builds them from its plan, in dependency order):
%%   {add_module, M, BeamPath, Sha256}      load a module the VM did not have
%%   {load_module, M, BeamPath, Sha256}     reload, no process touched
%%   {update, M, supervisor, BeamPath, Sha256}
%%                                          reload, re-read the child specs,
%%                                          start the children it gained
%%   {update, M, {advanced, Extra}, BeamPath, Sha256}
%%                                          suspend M's processes, reload,
%%                                          code_change(OldVsn, State, Extra)
%%   {update, M, soft, BeamPath, Sha256}    reload with M's processes suspended
%%   {apply, M, F, Args}                    M:F(Args...) once all is resumed
%%   {delete_module, M}                     purge it once the rest is done
%% With direction down, code_change gets {down, Vsn} (Vsn: the vsn of the code
%% being loaded) and runs before the load, in the newer code that knows both
%% state formats; a supervisor always re-reads its specs after the load.
%%
%% The caller supplies the loading (Load(M, Path, Sha) -> {loaded, _} | Error,
%% which checks the hash and keeps its own records) and the undo of a load
%% (Restore(M, OldCodeOrNone) -> ok: OldCode is {File, Beam} as stashed before
%% the files changed, none for a module that was not loaded).
-module(relsync_upgrade).

-export([run/2]).

-type step() :: {add_module | load_module, module(), binary(), binary()}
              | {update, module(), supervisor | soft | {advanced, term()}, binary(), binary()}
              | {apply, module(), atom(), list()}
              | {delete_module, module()}.
-type event() :: {suspended | resumed | converted, module(), pid(), atom()}
               | {started_child | stopped_child | applied, module(), term()}.
-type opts() :: #{direction := up | down, timeout := timeout(),
                  load := fun((module(), binary(), binary()) -> term()),
                  restore := fun((module(), term()) -> ok),
                  delete := fun((module()) -> term()),
                  old_code := #{module() => {binary(), binary()}}}.

-export_type([step/0, event/0]).

%% Result: #{result => ok | {error, Why}, undone => boolean(), events =>
%% [event()] (in order), modules => [{M, loaded | {deleted, Result}}]}. Why names the step:
%% {suspend, M, Pid, Name, Reason}, {load, M, Reason},
%% {code_change, M, Pid, Name, Reason}, {child, M, Id, Reason}, {apply, M, F, Why}.
-spec run([step()], opts()) -> #{result := ok | {error, term()}, undone := boolean(),
                                 events := [event()], modules := [{module(), term()}]}.
run(Steps, Opts) ->
    Sups = [M || {update, M, supervisor, _, _} <- Steps],
    Users = users([M || {update, M, _, _, _} <- Steps]),
    %% A suspended supervisor answers no calls: its children are listed now,
    %% and started or stopped once it is resumed.
    Children = [{M, P, child_ids(P)} || {M, P} <- Users, lists:member(M, Sups)],
    St0 = #{events => [], undo => [], suspended => [], modules => [], opts => Opts,
            users => Users},
    St1 = suspend(lists:usort([P || {_M, P} <- Users]), Users, St0),
    St2 = case St1 of
              #{error := _} -> St1;
              _ -> steps([S || S <- Steps, not lists:member(element(1, S), [delete_module, apply])],
                         St1)
          end,
    St3 = case St2 of
              #{error := _} -> undo(St2);
              _ -> St2
          end,
    St4 = resume(St3),
    St5 = case St4 of
              #{error := _} -> St4#{undone => true};
              _ -> children(Children, St4)
          end,
    St6 = lists:foldl(fun apply_step/2, St5, [S || {apply, _, _, _} = S <- Steps]),
    St7 = case St6 of
              #{error := _} -> St6;
              _ -> lists:foldl(fun delete/2, St6, [M || {delete_module, M} <- Steps])
          end,
    #{result => case St7 of #{error := E} -> {error, E}; _ -> ok end,
      undone => maps:get(undone, St7, false),
      events => lists:reverse(maps:get(events, St7)),
      modules => lists:reverse(maps:get(modules, St7))}.

%%% ------------------------------------------------------------ processes

%% {Module, Pid} for every process whose callback module is one of Mods: the
%% children of every application's supervision tree (with their declared
%% modules, asked for when dynamic) and, for processes outside those trees,
%% the callback module in their initial call.
users([]) -> [];
users(Mods) ->
    Known = lists:foldl(fun walk_app/2, #{}, application:which_applications()),
    All = lists:foldl(fun by_initial_call/2, Known, processes()),
    [{M, P} || {P, PMods} <- maps:to_list(All), P =/= self(), M <- lists:usort(PMods),
               lists:member(M, Mods)].

walk_app({App, _, _}, Acc) ->
    case application_controller:get_master(App) of
        Master when is_pid(Master) ->
            case catch application_master:get_child(Master) of
                {Root, _Mod} when is_pid(Root) -> walk_sup(Root, Acc);
                _ -> Acc
            end;
        _ -> Acc
    end.

walk_sup(Sup, Acc) ->
    case catch supervisor:which_children(Sup) of
        Children when is_list(Children) ->
            lists:foldl(
              fun({_Id, Pid, Type, Mods}, A) when is_pid(Pid) ->
                      A1 = add_mods(Pid, child_mods(Pid, Mods), A),
                      if Type =:= supervisor -> walk_sup(Pid, A1); true -> A1 end;
                 (_, A) -> A
              end, Acc, Children);
        _ -> Acc
    end.

child_mods(Pid, dynamic) ->
    case catch gen:call(Pid, self(), get_modules, 5000) of
        {ok, Mods} when is_list(Mods) -> Mods;
        _ -> []
    end;
child_mods(_Pid, Mods) when is_list(Mods) -> Mods;
child_mods(_, _) -> [].

by_initial_call(Pid, Acc) ->
    case catch proc_lib:translate_initial_call(Pid) of
        {supervisor, M, 1} when is_atom(M) -> add_mods(Pid, [M], Acc);
        {M, init, 1} when is_atom(M), M =/= proc_lib -> add_mods(Pid, [M], Acc);
        _ -> Acc
    end.

add_mods(Pid, Mods, Acc) ->
    maps:update_with(Pid, fun(Old) -> Mods ++ Old end, Mods, Acc).

suspend([], _Users, St) -> St;
suspend([Pid | Rest], Users, #{opts := #{timeout := T}} = St) ->
    M = module_of(Pid, Users),
    try sys:suspend(Pid, T) of
        ok -> suspend(Rest, Users, event({suspended, M, Pid, name(Pid)},
                                          St#{suspended := [Pid | maps:get(suspended, St)]}))
    catch
        _:Reason ->
            %% The suspend request is queued: a resume right behind it makes
            %% sure a process that gets to it late does not stay suspended.
            catch sys:resume(Pid, 0),
            St#{error => {suspend, M, Pid, name(Pid), exit_reason(Reason)}}
    end.

resume(#{suspended := Pids, users := Users, opts := #{timeout := T}} = St) ->
    lists:foldl(
      fun(Pid, S) ->
              catch sys:resume(Pid, T),
              event({resumed, module_of(Pid, Users), Pid, name(Pid)}, S)
      end, St#{suspended := []}, Pids).

module_of(Pid, Users) ->
    case [M || {M, P} <- Users, P =:= Pid] of
        [M | _] -> M;
        [] -> undefined
    end.

%%% ---------------------------------------------------------------- steps

steps([], St) -> St;
steps([Step | Rest], #{users := Users} = St) ->
    case step(Step, [P || {M, P} <- Users, M =:= element(2, Step)], St) of
        #{error := _} = Failed -> Failed;
        Next -> steps(Rest, Next)
    end.

step({Kind, M, Path, Sha}, _Pids, St) when Kind =:= add_module; Kind =:= load_module ->
    then(load(M, Path, Sha, St), fun(Undo, S) -> push_undo(Undo, S) end);
step({update, M, soft, Path, Sha}, _Pids, St) ->          % suspended, nothing converted
    then(load(M, Path, Sha, St), fun(Undo, S) -> push_undo(Undo, S) end);
step({update, M, supervisor, Path, Sha}, Pids, St) ->
    %% Undone as it was done: old code back first, then its specs re-read.
    Vsn = case direction(St) of up -> loaded_vsn(M); down -> {down, beam_vsn(Path)} end,
    then(load(M, Path, Sha, St),
         fun(Undo, S) -> push_undo(Undo, convert(Pids, M, Vsn, undefined, S)) end);
step({update, M, {advanced, Extra}, Path, Sha}, Pids, St) ->
    case direction(St) of
        up ->
            Vsn = loaded_vsn(M),
            then(load(M, Path, Sha, St),
                 fun(Undo, S) -> convert(Pids, M, Vsn, Extra, push_undo(Undo, S)) end);
        down ->
            %% Converted first, by the newer code that knows both formats.
            case convert(Pids, M, {down, beam_vsn(Path)}, Extra, St) of
                #{error := _} = Failed -> Failed;
                Converted -> then(load(M, Path, Sha, Converted),
                                  fun(Undo, S) -> push_undo(Undo, S) end)
            end
    end.

then({ok, Undo, St}, Fun) -> Fun(Undo, St);
then(#{error := _} = Failed, _Fun) -> Failed.

load(M, Path, Sha, #{opts := #{load := Load, old_code := Old}} = St) ->
    case Load(M, Path, Sha) of
        {loaded, _} ->
            {ok, {restore, M, maps:get(M, Old, none)},
             St#{modules := [{M, loaded} | maps:get(modules, St)]}};
        Error ->
            St#{error => {load, M, Error}}
    end.

convert(_Pids, _M, _Vsn, _Extra, #{error := _} = St) -> St;
convert([], _M, _Vsn, _Extra, St) -> St;
convert([Pid | Rest], M, Vsn, Extra, #{opts := #{timeout := T}} = St) ->
    case catch sys:change_code(Pid, M, Vsn, Extra, T) of
        ok ->
            Undo = {code_change, M, Pid, back(Vsn), Extra},
            convert(Rest, M, Vsn, Extra, push_undo(Undo, event({converted, M, Pid, name(Pid)}, St)));
        Other ->
            St#{error => {code_change, M, Pid, name(Pid), exit_reason(Other)}}
    end.

%% The conversion that undoes one: up from Old goes back {down, Old}; down to
%% Vsn goes back up from Vsn.
back({down, Vsn}) -> Vsn;
back(Old) -> {down, Old}.

%% Once resumed, a supervisor whose specs were re-read starts the children it
%% gained and stops (and forgets) those its init/1 no longer names, as an
%% appup's supervisor:restart_child and terminate_child/delete_child would.
%% The new code stays if one fails (the error says so: undone is false).
children(Sups, St) ->
    lists:foldl(
      fun(_, #{error := _} = S) -> S;
         ({M, Sup, Old}, S) ->
              Now = child_ids(Sup),
              New = [Id || Id <- Now, not lists:member(Id, Old)],
              S1 = lists:foldl(fun(Id, A) -> start_child(Sup, M, Id, A) end, S, New),
              Gone = case spec_ids(Sup, M) of
                         {ok, Ids} -> [Id || Id <- Now, not lists:member(Id, Ids)];
                         error -> []
                     end,
              lists:foldl(fun(Id, A) -> stop_child(Sup, M, Id, A) end, S1, Gone)
      end, St, Sups).

start_child(_Sup, _M, _Id, #{error := _} = St) -> St;
start_child(Sup, M, Id, St) ->
    case catch supervisor:restart_child(Sup, Id) of
        {ok, _} -> event({started_child, M, Id}, St);
        {ok, _, _} -> event({started_child, M, Id}, St);
        {error, running} -> St;
        Other -> St#{error => {child, M, Id, exit_reason(Other)}}
    end.

stop_child(_Sup, _M, _Id, #{error := _} = St) -> St;
stop_child(Sup, M, Id, St) ->
    _ = (catch supervisor:terminate_child(Sup, Id)),
    _ = (catch supervisor:delete_child(Sup, Id)),
    event({stopped_child, M, Id}, St).

child_ids(Sup) ->
    case catch supervisor:which_children(Sup) of
        L when is_list(L) -> [Id || {Id, _, _, _} <- L];
        _ -> []
    end.

%% The ids the supervisor's (now loaded) init/1 names, from the arguments it
%% was started with (the last field of supervisor's state, after the module).
spec_ids(Sup, M) ->
    try sys:get_state(Sup) of
        State when is_tuple(State), tuple_size(State) > 2 ->
            case element(tuple_size(State) - 1, State) of
                M ->
                    {ok, {_Flags, Specs}} = M:init(element(tuple_size(State), State)),
                    {ok, [spec_id(Spec) || Spec <- Specs]};
                _ -> error
            end;
        _ -> error
    catch _:_ -> error
    end.

spec_id(#{id := Id}) -> Id;
spec_id(Spec) when is_tuple(Spec) -> element(1, Spec).

%% An appup's {apply, {M, F, A}}: run once everything is resumed (a call to a
%% suspended process would wait for ever); its failure keeps the new code.
apply_step(_, #{error := _} = St) -> St;
apply_step({apply, M, F, A}, St) ->
    try erlang:apply(M, F, A) of
        _ -> event({applied, M, F}, St)
    catch Class:Reason -> St#{error => {apply, M, F, {Class, Reason}}}
    end.

delete(M, #{opts := #{delete := Delete}} = St) ->
    St#{modules := [{M, {deleted, Delete(M)}} | maps:get(modules, St)]}.

%%% ----------------------------------------------------------------- undo

undo(#{undo := Undo, opts := #{restore := Restore, timeout := T}} = St) ->
    lists:foreach(
      fun({code_change, M, Pid, Vsn, Extra}) -> catch sys:change_code(Pid, M, Vsn, Extra, T);
         ({restore, M, Old}) -> catch Restore(M, Old)
      end, Undo),
    St#{undo := [], modules := []}.

push_undo(Action, St) -> St#{undo := [Action | maps:get(undo, St)]}.

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
