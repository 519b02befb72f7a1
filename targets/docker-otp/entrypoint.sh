#!/bin/sh
# relsync board start: runs the relx release at $RELSYNC_RELEASE_DIR (read-only) in the
# foreground, the way a board's init does on every boot (docker restart = reboot).
#
# Env (set by whoever starts the container):
#   RELSYNC_COOKIE       required: the distribution cookie
#   RELSYNC_NODE         node name, default board@127.0.0.1 (a long name: the host reaches the
#                        board through 127.0.0.1 port publishing)
#   RELSYNC_DIST_PORT    fixed distribution port, default 9100. Publish it with the SAME number
#                        on the host (-p 127.0.0.1:P:P): EPMD hands this number to the client.
#   RELSYNC_EPMD_PORT    EPMD port inside the container, default 4369 (publish it on any host port)
#   RELSYNC_RELEASE_DIR  the release, default /srv/erlang (mount it read-only)
#   RELSYNC_RELEASE_NAME release name, default: read from releases/<vsn>/<name>.rel
#   RELSYNC_DATA_DIR     persistent writable dir, default /data (a volume; survives restarts)
#   RELSYNC_ERL_FLAGS    extra emulator flags appended to ERL_ZFLAGS
#   RELSYNC_SSHD_KEY     unset (default): no sshd. Set to a public key line: OpenSSH's sshd runs
#                        on port 22 for root, that key only (no passwords), e.g. for rsync
# Arguments: the start script command, default "foreground" (relx) or "start" (mix).
set -eu

die() { echo "relsync-board: $*" >&2; exit 1; }

: "${RELSYNC_COOKIE:?relsync-board: RELSYNC_COOKIE is not set (docker run -e RELSYNC_COOKIE=...)}"
RELSYNC_NODE="${RELSYNC_NODE:-board@127.0.0.1}"
RELSYNC_DIST_PORT="${RELSYNC_DIST_PORT:-9100}"
rel="${RELSYNC_RELEASE_DIR:-/srv/erlang}"
data="${RELSYNC_DATA_DIR:-/data}"
export RELSYNC_NODE RELSYNC_COOKIE

[ -f "$rel/releases/start_erl.data" ] \
  || die "no relx release at $rel (missing releases/start_erl.data): mount one with -v REL:$rel:ro"
# start_erl.data is "ERTS_VSN REL_VSN" with no trailing newline (read would return 1).
rel_vsn="$(cut -d" " -f2 "$rel/releases/start_erl.data")"
name="${RELSYNC_RELEASE_NAME:-}"
if [ -z "$name" ]; then
  for f in "$rel/releases/$rel_vsn"/*.rel; do
    [ -f "$f" ] && name="$(basename "$f" .rel)" && break
  done
fi
[ -n "$name" ] && [ -x "$rel/bin/$name" ] \
  || die "no start script $rel/bin/${name:-?} (set RELSYNC_RELEASE_NAME)"

# Writable places. The root is read-only (--read-only); /tmp is a tmpfs, empty on every boot.
# relx writes the expanded vm.args/sys.config into RELX_OUT_FILE_PATH only when that directory
# exists, and its log dir into RUNNER_LOG_DIR; both would otherwise land beside the release.
mkdir -p /tmp/relx /tmp/log || die "/tmp is not writable: run with --tmpfs /tmp"
export RELX_OUT_FILE_PATH=/tmp/relx RUNNER_LOG_DIR=/tmp/log HOME="${HOME:-/tmp}"
if [ -d "$data" ] && touch "$data/.relsync-board" 2>/dev/null; then
  export ERL_CRASH_DUMP="$data/erl_crash.dump"
else
  echo "relsync-board: warning: $data is not writable (mount a volume: -v NAME:$data)" >&2
  export ERL_CRASH_DUMP=/tmp/erl_crash.dump
fi
[ -z "${RELSYNC_EPMD_PORT:-}" ] || export ERL_EPMD_PORT="$RELSYNC_EPMD_PORT"

# A stock vm.args names its own node and cookie (-sname myapp, -setcookie myapp_cookie): the
# board runs it under ours instead, the name the host reaches on 127.0.0.1 (relx reads VMARGS_PATH).
vm_args="$rel/releases/$rel_vsn/vm.args"
if [ -f "$vm_args" ] && grep -Eq '^[[:space:]]*-(s?name|setcookie)[[:space:]]+[^$[:space:]]' "$vm_args"; then
  { grep -Ev '^[[:space:]]*-(s?name|setcookie)[[:space:]]' "$vm_args"
    printf -- '-name %s\n-setcookie %s\n' "$RELSYNC_NODE" "$RELSYNC_COOKIE"; } >"/tmp/relx/board.vm.args"
  export VMARGS_PATH="/tmp/relx/board.vm.args"
fi

if [ -n "${RELSYNC_SSHD_KEY:-}" ]; then
  # Host key on /data (kept across reboots) when it is writable; the rest on the /tmp tmpfs.
  keys="$data/sshd"; mkdir -p "$keys" 2>/dev/null || keys=/tmp/sshd
  mkdir -p /tmp/sshd "$keys" && chmod 700 /tmp/sshd "$keys"
  [ -f "$keys/host_ed25519" ] \
    || ssh-keygen -q -t ed25519 -N "" -C relsync-board -f "$keys/host_ed25519" \
    || die "cannot make an ssh host key in $keys"
  printf '%s\n' "$RELSYNC_SSHD_KEY" >/tmp/sshd/authorized_keys
  # -f /dev/null: none of Debian's sshd_config (PAM needs an audit capability a container lacks).
  /usr/sbin/sshd -f /dev/null -h "$keys/host_ed25519" -E /tmp/sshd/log \
    -o PidFile=/tmp/sshd/pid -o UsePAM=no -o PermitRootLogin=prohibit-password \
    -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no -o StrictModes=no \
    -o AuthorizedKeysFile=/tmp/sshd/authorized_keys \
    || die "sshd did not start: $(cat /tmp/sshd/log 2>/dev/null)"
fi

# A fixed distribution port, so it can be published 1:1 on 127.0.0.1.
export ERL_ZFLAGS="${ERL_ZFLAGS:-} -kernel inet_dist_listen_min $RELSYNC_DIST_PORT inet_dist_listen_max $RELSYNC_DIST_PORT ${RELSYNC_ERL_FLAGS:-}"

echo "relsync-board: booting $name $rel_vsn as $RELSYNC_NODE (dist port $RELSYNC_DIST_PORT, epmd ${ERL_EPMD_PORT:-4369}, OTP $(cat /usr/lib/erlang/releases/*/OTP_VERSION 2>/dev/null | head -1))"
command=foreground
if [ -f "$rel/releases/COOKIE" ] && [ -f "$rel/releases/$rel_vsn/env.sh" ]; then
  # A mix release: its script names the node from these, and `start` runs in the foreground.
  export RELEASE_NODE="$RELSYNC_NODE" RELEASE_COOKIE="$RELSYNC_COOKIE" RELEASE_DISTRIBUTION=name
  export RELEASE_TMP=/tmp/relx
  command=start
fi
[ $# -gt 0 ] || set -- "$command"
exec "$rel/bin/$name" "$@"
