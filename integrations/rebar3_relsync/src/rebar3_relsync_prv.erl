%% @doc `rebar3 [as PROFILE] relsync [-n RELNAME] [relsync options]': runs the relsync command in
%% the project with `--build' (relsync runs `rebar3 [as PROFILE] release [-n RELNAME]' itself,
%% then syncs what it built), the active profile and the release name, then every other option
%% as given. relsync reads `{relsync, [...]}' from rebar.config on its own.
%%
%% The options are declared (rebar3 refuses undeclared ones before a provider runs) and given
%% back to relsync in their long form, in the order they came; anything after `--' is passed on
%% as it is, for options this plugin does not know yet. relsync writes to the terminal itself
%% (see WATCHDOG), so its output and its progress bar appear as it prints them.
-module(rebar3_relsync_prv).

-behaviour(provider).

-export([init/1, do/1, format_error/1]).

-include_lib("kernel/include/file.hrl").

-define(PROVIDER, relsync).
-define(NOT_FOUND, "pip install relsync, or set RELSYNC=/path/to/relsync").

%% How relsync is run: `sh -c WATCHDOG RELSYNC ARGS...'. The port (nouse_stdio) talks over
%% descriptors 3 and 4, so relsync keeps rebar3's stdin, stdout and stderr: the terminal. It runs
%% in a session of its own, where a Ctrl-C does not reach it; when rebar3 ends (Ctrl-C, or any
%% other way) descriptor 3 reads end-of-file, and a watchdog interrupts relsync, which ends as it
%% does on a Ctrl-C of its own (a --watch says "watch ended") instead of running on unseen.
%% relsync keeps descriptor 4 open until it exits (the port reports its exit status then).
-define(WATCHDOG,
        "( read -r _ <&3; kill -0 $$ 2>/dev/null && kill -INT $$ ) 4>&- </dev/null >/dev/null 2>&1"
        " &\n"
        "exec \"$0\" \"$@\" 3<&-").

%% {Name, Short, Long, Kind, Help}: Kind is value (takes one), flag (takes none) or bool
%% (an optional true/false, as relsync's -E).
-define(OPTIONS, [
    {destination_node, $d, "destination-node", value,
     "Destination node (erl mode) or host (ssh mode); repeat it for several boards"},
    {targets, undefined, "targets", value, "TOML file naming boards to sync at once"},
    {destination_path, $p, "destination-path", value,
     "Path to the release on the destination (can be read-only) [default: /srv/erlang]"},
    {destination_rw_path, $q, "destination-rw-path", value,
     "Writable path on the destination for a shadow tree (empty if not needed)"},
    {local_path, $l, "local-path", value,
     "Sync this release instead of building one"},
    {hooks, $H, "hooks", value, "Module (or .erl file) with presync/0 and postsync/0"},
    {exclude_system_libs, $E, "exclude-system-libs", bool,
     "Do not synchronize OTP system libs (ERTS is never synced) [default: true]"},
    {copy_unsafe_links, undefined, "copy-unsafe-links", flag,
     "Copy what a symlink leading out of the release points to"},
    {cookie, $c, "cookie", value,
     "Erlang magic cookie [default: $RELSYNC_COOKIE, else the release's, else ~/.erlang.cookie]"},
    {sname, $s, "sname", value, "Short name for the local node"},
    {name, undefined, "name", value, "Long name for the local node (-n is the release name)"},
    {mode, $M, "mode", value, "erl (Erlang distribution) or ssh [default: erl]"},
    {port, $P, "port", value, "ssh port to use [default: 2228]"},
    {user, $u, "user", value, "ssh user name [default: relsync]"},
    {identity, $i, "identity", value, "ssh private key"},
    {known_hosts, undefined, "known-hosts", value, "ssh known_hosts file"},
    {accept_new_host_key, undefined, "accept-new-host-key", flag,
     "Trust and record a board's host key seen for the first time"},
    {epmd_port, undefined, "epmd-port", value, "EPMD port on the destination host"},
    {dry_run, undefined, "dry-run", flag, "Show what would change; touch nothing"},
    {purge, undefined, "purge", value, "soft or brutal [default: soft]"},
    {hook_timeout, undefined, "hook-timeout", value, "Time limit for each hook, in seconds"},
    {lock_timeout, undefined, "lock-timeout", value,
     "How long to wait while another sync holds the board, in seconds"},
    {connect_timeout, undefined, "connect-timeout", value,
     "Time limit for reaching the destination, in seconds"},
    {upgrade, undefined, "upgrade", flag,
     "Load as an appup would: suspend, code_change, resume; undone if a step fails"},
    {upgrade_timeout, undefined, "upgrade-timeout", value,
     "--upgrade: limit for each process to suspend, convert or resume"},
    {rollback, undefined, "rollback", flag, "Put the board back on its pristine release"},
    {clean, undefined, "clean", flag, "--rollback: also remove the shadow tree"},
    {status, undefined, "status", flag, "Show what the board runs against the local release"},
    {show_config, undefined, "show-config", flag,
     "Print the options that apply and where each comes from"},
    {json, undefined, "json", flag, "Print the result as one JSON object"},
    {verbose, $v, "verbose", flag, "List every file and module"},
    {quiet, undefined, "quiet", flag, "Print nothing but errors"},
    {watch, undefined, "watch", flag, "Rebuild and sync again whenever the sources change"}
]).

-spec init(rebar_state:t()) -> {ok, rebar_state:t()}.
init(State) ->
    Provider = providers:create([
        {name, ?PROVIDER},
        {module, ?MODULE},
        {bare, true},
        {deps, []},
        {example, "rebar3 as prod relsync -n demo -d demo@192.0.2.7 -q /data/relsync"},
        {opts, opts()},
        {short_desc, "Build the release, then sync it onto a running board (relsync)"},
        {desc, desc()}
    ]),
    {ok, rebar_state:add_provider(State, Provider)}.

-spec do(rebar_state:t()) -> {ok, rebar_state:t()} | {error, {module(), term()}}.
do(State) ->
    {Parsed, Rest} = rebar_state:command_parsed_args(State),
    case {lists:member(help, Parsed), profile(rebar_state:current_profiles(State))} of
        {true, _} ->  % rebar3 relsync -h: as rebar3 help relsync
            providers:help(providers:get_provider(?PROVIDER, rebar_state:providers(State))),
            {ok, State};
        {false, {error, _} = Error} ->
            Error;
        {false, {ok, Profile}} ->
            %% -l: that release is synced as it is, nothing built (relsync refuses --build
            %% with -l: it would sync a release it did not build).
            Build = case lists:keymember(local_path, 1, Parsed) of
                        true -> [];
                        false -> ["--build" | Profile]
                    end,
            Args = Build ++ arguments(Parsed) ++ Rest,
            run(executable(), Args, rebar_dir:root_dir(State), State)
    end.

-spec format_error(term()) -> iolist().
format_error({not_found, false}) ->
    "relsync: command not found: " ?NOT_FOUND;
format_error({not_found, Given}) ->
    io_lib:format("relsync: command not found: RELSYNC=~ts is not an executable; "
                  ?NOT_FOUND, [Given]);
format_error({exit, Code}) ->
    io_lib:format("relsync failed with exit code ~b (its messages are above)", [Code]);
format_error({profiles, Profiles}) ->
    io_lib:format("rebar3 relsync: one profile at a time (as ~ts): relsync builds with "
                  "rebar3 as PROFILE release", [lists:join(",", Profiles)]);
format_error(Reason) ->
    io_lib:format("~p", [Reason]).

%% What rebar3 parses: -n for the release name (as in the original plugin), relsync's options.
opts() ->
    [{relname, $n, "relname", string, "The release to build and sync (rebar3 release -n)"}
     | [{Name, Short, Long, spec(Kind), Help} || {Name, Short, Long, Kind, Help} <- ?OPTIONS]].

spec(value) -> string;
spec(flag) -> undefined;
spec(bool) -> boolean.

desc() ->
    "Builds the release with relsync --build (which runs rebar3 [as PROFILE] release\n"
    "[-n RELNAME]), then syncs it onto a running board: changed files are copied and\n"
    "changed modules reloaded.\n"
    "\n"
    "Runs the relsync command ($RELSYNC, else relsync on the PATH: pip install relsync)\n"
    "in the project root. Options in {relsync, [...]} of rebar.config apply; the command\n"
    "line wins. An option not listed below can follow --: it goes to relsync as given.\n"
    "relsync --help describes every option.\n".

%% The profile relsync builds with: none for the default, else the one given with `as'.
profile(Profiles) ->
    case [atom_to_list(P) || P <- dedup(Profiles), P =/= default] of
        [] -> {ok, []};
        [One] -> {ok, ["--profile", One]};
        Several -> {error, {?MODULE, {profiles, Several}}}
    end.

dedup([]) -> [];
dedup([P | Ps]) -> [P | dedup([Q || Q <- Ps, Q =/= P])].

%% The parsed options back as relsync's long options, in their order: --name=value keeps a value
%% that starts with a dash from being read as an option.
arguments(Parsed) ->
    lists:flatmap(fun argument/1, Parsed).

argument({relname, Name}) ->
    ["--relname=" ++ Name];
argument({Name, Value}) ->
    case lists:keyfind(Name, 1, ?OPTIONS) of
        {_, _, Long, bool, _} -> ["--" ++ Long ++ "=" ++ atom_to_list(Value)];
        {_, _, Long, value, _} -> ["--" ++ Long ++ "=" ++ Value];
        false -> []
    end;
argument(Flag) when is_atom(Flag) ->
    case lists:keyfind(Flag, 1, ?OPTIONS) of
        {_, _, Long, flag, _} -> ["--" ++ Long];
        _ -> []
    end.

%% $RELSYNC (a path, or a name looked up on the PATH), else relsync on the PATH.
executable() ->
    case os:getenv("RELSYNC") of
        Given when Given =:= false; Given =:= "" ->
            found(os:find_executable("relsync"), false);
        Given ->
            case lists:member($/, Given) of
                true -> found(executable_file(filename:absname(Given)), Given);
                false -> found(os:find_executable(Given), Given)
            end
    end.

executable_file(Path) ->
    case file:read_file_info(Path) of
        {ok, #file_info{type = regular, mode = Mode}} when Mode band 8#111 =/= 0 -> Path;
        _ -> false
    end.

found(false, Given) -> {error, {?MODULE, {not_found, Given}}};
found(Path, _) -> {ok, Path}.

run({error, _} = Error, _Args, _Dir, _State) ->
    Error;
run({ok, Exe}, Args, Dir, State) ->
    rebar_api:debug("Running ~ts ~ts in ~ts", [Exe, lists:join(" ", hide_cookie(Args)), Dir]),
    Port = open_port({spawn_executable, "/bin/sh"},
                     [{args, ["-c", ?WATCHDOG, Exe | Args]}, {cd, Dir}, exit_status, nouse_stdio,
                      binary]),
    case wait(Port) of
        0 -> {ok, State};
        Code -> {error, {?MODULE, {exit, Code}}}
    end.

wait(Port) ->
    receive
        {Port, {exit_status, Code}} -> Code;
        {Port, {data, _}} -> wait(Port)
    end.

hide_cookie(Args) ->
    [case Arg of "--cookie=" ++ _ -> "--cookie=(set)"; _ -> Arg end || Arg <- Args].
