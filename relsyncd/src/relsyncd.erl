%% relsyncd: the target side of relsync's ssh mode.
%%
%% The application (relsyncd_app) runs one daemon configured from its
%% environment. The functions below are the same building blocks for other
%% uses: start an extra daemon with explicit settings (tests do), or add the
%% relsync subsystems to an ssh daemon you already run (e.g. nerves_ssh).
%%
%% Settings (application env of relsyncd, or a map given to start_daemon/1;
%% every key is optional):
%%   enabled                 boolean(), default true (app only)
%%   ssh_port                0..65535, default 2228 (0: any free port, see port/1)
%%   ip                      any | loopback | inet:ip_address() | string(), default any
%%   user                    string(), default "relsync": the only user that may log in
%%   authorized_keys         path of an OpenSSH authorized_keys file,
%%                           default "/data/relsyncd/authorized_keys" (read at each login)
%%   authorized_public_keys  [OpenSSH public key line], default []
%%   host_key_dir            writable dir for ssh_host_ecdsa_key, default "/data/relsyncd"
%%   allowed_paths           [dir], default [code:root_dir(), "/data"]: all SFTP and
%%                           control-channel paths must be inside one of them, except
%%                           the daemon's own files (the host key, authorized_keys and
%%                           the VM's crash dump), which are always refused
%%   hook_timeout            ms, default 600000: run_hook timeouts are capped to it
%%   max_frame               bytes, default 16777216 (16 MiB): a larger control request is
%%                           refused and its channel closed
%%   max_sessions            default 4: concurrent logged-in connections (with
%%                           start_daemon/1; connections still logging in do not count)
%%   login_timeout           ms, default 30000: a connection that has not logged in by
%%                           then is closed (OTP's hello and negotiation timeouts)
%%   max_channels            default 4: channels with a subsystem (or an env request) per
%%                           connection; relsync uses up to four (control, SFTP and
%%                           two more control channels for file batches)
%%   retry_interval          ms, default 5000: the app retries a daemon that failed to start
-module(relsyncd).

-export([config/1, start_daemon/1, stop_daemon/1, port/1, daemon_options/1,
         subsystems/1, host_key_fingerprint/1]).

-type config() :: #{atom() => term()}.
-export_type([config/0]).

-define(KEYS, [enabled, ssh_port, ip, user, authorized_keys, authorized_public_keys,
               host_key_dir, allowed_paths, hook_timeout, max_frame, max_sessions,
               max_channels, login_timeout, retry_interval]).

%% Full settings: Overrides, then the relsyncd application env, then defaults.
-spec config(config() | [{atom(), term()}]) -> config().
config(Overrides) when is_list(Overrides) -> config(maps:from_list(Overrides));
config(Overrides) when is_map(Overrides) ->
    Env = maps:from_list([{K, V} || K <- ?KEYS, {ok, V} <- [application:get_env(relsyncd, K)]]),
    maps:merge(maps:merge(defaults(), Env), Overrides).

defaults() ->
    #{enabled => true,
      ssh_port => 2228,
      ip => any,
      user => "relsync",
      authorized_keys => "/data/relsyncd/authorized_keys",
      authorized_public_keys => [],
      host_key_dir => "/data/relsyncd",
      allowed_paths => [code:root_dir(), "/data"],
      hook_timeout => 600000,
      max_frame => 16 * 1024 * 1024,
      max_sessions => 4,
      max_channels => 4,
      login_timeout => 30000,
      retry_interval => 5000}.

%% Start an ssh daemon serving the "relsync" control subsystem and SFTP, with
%% at most max_sessions logged-in connections (relsyncd_sessions).
-spec start_daemon(config() | [{atom(), term()}]) -> {ok, ssh:daemon_ref()} | {error, term()}.
start_daemon(Overrides) ->
    Config = config(Overrides),
    case application:ensure_all_started(ssh) of
        {ok, _} ->
            case daemon_options(Config) of
                {ok, Opts} ->
                    Limiter = relsyncd_sessions:start(maps:get(max_sessions, Config)),
                    Limited = [{connectfun, connected(Limiter)} | Opts],
                    case ssh:daemon(ip(maps:get(ip, Config)), maps:get(ssh_port, Config),
                                    Limited) of
                        {ok, Ref} -> relsyncd_sessions:watch(Limiter, Ref), {ok, Ref};
                        Err -> relsyncd_sessions:stop(Limiter), Err
                    end;
                {error, _} = E -> E
            end;
        {error, _} = E -> E
    end.

%% Runs in the connection's process once its login succeeded: a connection
%% over max_sessions is closed (by another process: a call to itself would
%% wait for ever).
connected(Limiter) ->
    fun(User, Peer, _Method) ->
            Conn = self(),
            case relsyncd_sessions:join(Limiter, Conn) of
                ok -> ok;
                full ->
                    logger:notice("relsyncd: login of ~p from ~p closed: max_sessions reached",
                                  [User, Peer]),
                    _ = spawn(fun() -> ssh:close(Conn) end),
                    ok
            end
    end.

-spec stop_daemon(ssh:daemon_ref()) -> ok.
stop_daemon(Ref) ->
    ssh:stop_daemon(Ref).

-spec port(ssh:daemon_ref()) -> {ok, inet:port_number()} | {error, term()}.
port(Ref) ->
    case ssh:daemon_info(Ref) of
        {ok, Info} -> {ok, proplists:get_value(port, Info)};
        {error, _} = E -> E
    end.

%% The ssh:daemon/3 options for Config (loads or creates the host key). The
%% max_sessions limit is start_daemon/1's: OTP's own counts connections still
%% logging in, which anyone who reaches the port can hold open.
-spec daemon_options(config()) -> {ok, [ssh:daemon_option()]} | {error, term()}.
daemon_options(Config0) ->
    Config = config(Config0),
    case relsyncd_keys:load_or_create_host_key(maps:get(host_key_dir, Config)) of
        {ok, HostKey} ->
            logger:info("relsyncd: host key ~ts", [relsyncd_keys:fingerprint(HostKey)]),
            User = to_list(maps:get(user, Config)),
            InlineKeys = lists:append([relsyncd_keys:decode_keys(K)
                                       || K <- maps:get(authorized_public_keys, Config)]),
            KeyCb = {relsyncd_keys, [{host_key, HostKey},
                                     {user, User},
                                     {authorized_keys, maps:get(authorized_keys, Config)},
                                     {authorized_public_keys, InlineKeys}]},
            {ok, [{key_cb, KeyCb},
                  {auth_methods, "publickey"},
                  {user_passwords, []},
                  %% No shell: relsyncd_cli refuses shell, exec and pty
                  %% requests (with only shell/exec disabled, OTP accepts
                  %% them and answers "Prohibited.") and accepts env.
                  {ssh_cli, {relsyncd_cli, []}},
                  {shell, disabled},
                  {exec, disabled},
                  {tcpip_tunnel_in, false},
                  {tcpip_tunnel_out, false},
                  {subsystems, subsystems(Config)},
                  {max_channels, maps:get(max_channels, Config)},
                  %% Until the login: the client's version line, then the login.
                  {hello_timeout, maps:get(login_timeout, Config)},
                  {negotiation_timeout, maps:get(login_timeout, Config)},
                  {parallel_login, true},
                  {failfun, fun(U, Peer, Reason) ->
                                    logger:notice("relsyncd: login of ~p from ~p refused: ~p",
                                                  [U, Peer, Reason])
                            end}]};
        {error, _} = E -> E
    end.

%% The control subsystem and the confined SFTP server, for ssh:daemon's
%% `subsystems` option. Authentication is up to the daemon they are added to.
-spec subsystems(config()) -> [ssh:subsystem_spec()].
subsystems(Config0) ->
    Config = config(Config0),
    Allowed = [relsyncd_paths:to_bin(P) || P <- maps:get(allowed_paths, Config)],
    Denied = denied_paths(Config),
    [relsyncd_channel:subsystem_spec(#{allowed_paths => Allowed,
                                       denied_paths => Denied,
                                       hook_timeout => maps:get(hook_timeout, Config),
                                       max_frame => maps:get(max_frame, Config)}),
     relsyncd_sftp:subsystem_spec(#{allowed_paths => Allowed, denied_paths => Denied})].

%% The daemon's own files, refused even inside allowed_paths: the host key
%% (read, the board could be impersonated), authorized_keys (appended to, a
%% key would be let in for good) and the VM's crash dump (it holds the cookie).
-spec denied_paths(config()) -> [binary()].
denied_paths(Config) ->
    Key = relsyncd_paths:to_bin(relsyncd_keys:host_key_file(maps:get(host_key_dir, Config))),
    {ok, Cwd} = file:get_cwd(),
    Dump = filename:absname(os:getenv("ERL_CRASH_DUMP", "erl_crash.dump"), Cwd),
    [relsyncd_paths:to_bin(filename:absname(P))
     || P <- [Key, <<Key/binary, ".tmp">>, maps:get(authorized_keys, Config), Dump]].

%% "SHA256:..." of the host key in Dir (created if missing).
-spec host_key_fingerprint(file:name_all()) -> {ok, string()} | {error, term()}.
host_key_fingerprint(Dir) ->
    case relsyncd_keys:load_or_create_host_key(Dir) of
        {ok, Key} -> {ok, relsyncd_keys:fingerprint(Key)};
        E -> E
    end.

ip(any) -> any;
ip(loopback) -> loopback;
ip(T) when is_tuple(T) -> T;
ip(S) when is_list(S); is_binary(S) ->
    {ok, A} = inet:parse_address(to_list(S)),
    A.

to_list(B) when is_binary(B) -> unicode:characters_to_list(B);
to_list(A) when is_atom(A) -> atom_to_list(A);
to_list(L) when is_list(L) -> L.
