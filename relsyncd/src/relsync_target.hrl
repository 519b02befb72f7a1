%% Shared by relsync_target and the modules it delegates to (relsync_state,
%% relsync_hash, relsync_manifest, relsync_files, relsync_code, relsync_hook_runner).
-include_lib("kernel/include/file.hrl").

-define(STATE, relsync_target_state).
-define(LOCK, relsync_target_lock).
-define(LOCK_KEY, relsync_lock).
-define(TMP_PREFIX, ".relsync-tmp.").
-define(CHUNK, (1024 * 1024)).
-define(RACY_SECS, 2).
-define(NEW_FILE, [write, raw, binary, exclusive]).
%% Options of every file-info call: times as POSIX seconds, which also spares
%% three local-time conversions (each a stat of /etc/localtime) a call.
-define(INFO, [raw, {time, posix}]).
%% Processes writing one put_files call's files at once (see put_parallel/2).
-define(WRITERS, 8).
%% Directories down to this depth below a manifest's root are walked by
%% processes of their own (lib/APP in a release is depth 2), at most this many
%% at a time (each may hold a 1 MiB read buffer while it hashes).
-define(FAN_OUT_DEPTH, 2).
-define(MAX_WALKERS, 16).
-define(MAX_OUTPUT, (1024 * 1024)).

-type posix() :: file:posix() | badarg.
-type entry() :: {binary(), regular, non_neg_integer(), non_neg_integer(), binary()}
               | {binary(), symlink, binary()}.
-type procs() :: [{pid(), atom()}].
-type purge() :: soft | brutal.
