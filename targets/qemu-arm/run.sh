#!/usr/bin/env bash
# Boots and drives an emulated 32-bit ARM board (qemu-system-arm -M virt -cpu cortex-a15).
#
#   run.sh start [opts]     boot in the background (returns at once; then `wait`)
#   run.sh wait [--timeout S] [--after-log BYTES [--marker TEXT]]
#                           until the node answers demo_counter:version() (prints seconds);
#                           with --after-log, first until console.log has a new boot (or
#                           TEXT) past offset BYTES (from `run.sh log-size` before a reboot)
#   run.sh reboot           clean reboot through the guest's init (node stopped, /data unmounted)
#   run.sh reboot-force     guest `reboot -f`: no clean stop, no unmount (sync only)
#   run.sh reset            power cut: QMP system_reset (the guest's page cache is lost)
#   run.sh kill             power pulled: QMP quit (QEMU exits; `start` boots it again)
#   run.sh stop             clean poweroff through the guest; QMP quit if it does not stop in 30 s
#   run.sh status | env | log | log-size
#   run.sh sh CMD           os:cmd(CMD) on the board through the node; prints the output
#   run.sh spawn CMD        the same, detached (the call returns at once; for reboot, kill...)
#
# start options: --name NAME (board, the state directory's name), --release IMG.squashfs | none
#   (default: _build/releases/demo-0.1.0.squashfs), --node N (board@127.0.0.1), --cookie C,
#   --epmd-port P, --dist-port P, --ssh-port P (default: free ports), --env NAME=VALUE (a
#   variable for the release's vm.args / sys.config; repeatable), --fresh-data (new empty
#   /data), --mode embedded|interactive (code loading; default embedded, as Nerves),
#   --verbose (kernel messages on the console).
# Common option: --state DIR (default _build/boards/NAME). Other commands read DIR/board.env.
#
# The host reaches the guest only through hostfwd on 127.0.0.1: EPMD_PORT->4369,
# DIST_PORT->DIST_PORT (the node's inet_dist_listen_min/max), SSH_PORT->2228. slirp is started
# with restrict=on: the guest cannot open connections to the host or beyond.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd -P)"
repo="$(cd "$here/../.." && pwd -P)"
out_root="${RELSYNC_QEMU_ARM_OUT:-$here/_build}"
image="$out_root/image"
py="${PYTHON:-$repo/.venv/bin/python}"
ctl() { PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$py" "$here/boardctl.py" "$@"; }
log() { echo "run.sh: $*" >&2; }
die() { echo "run.sh: ERROR: $*" >&2; exit 1; }

cmd="${1:-}"; shift || true
name=board state="" release="" node="board@127.0.0.1" cookie="relsync-board" epmd_port="" dist_port=""
ssh_port="" mode=embedded fresh=0 verbose=0 timeout=90 after_log="" marker="" rest=() envs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --state) state="$2"; shift 2 ;;
    --release) release="$2"; shift 2 ;;
    --node) node="$2"; shift 2 ;;
    --cookie) cookie="$2"; shift 2 ;;
    --env) envs+=("$2"); shift 2 ;;
    --epmd-port) epmd_port="$2"; shift 2 ;;
    --dist-port) dist_port="$2"; shift 2 ;;
    --ssh-port) ssh_port="$2"; shift 2 ;;
    --mode) mode="$2"; shift 2 ;;
    --fresh-data) fresh=1; shift ;;
    --verbose) verbose=1; shift ;;
    --timeout) timeout="$2"; shift 2 ;;
    --after-log) after_log="$2"; shift 2 ;;
    --marker) marker="$2"; shift 2 ;;
    *) rest+=("$1"); shift ;;
  esac
done
state="${state:-$out_root/boards/$name}"
envf="$state/board.env"

running() { [ -f "$state/qemu.pid" ] && kill -0 "$(cat "$state/qemu.pid")" 2>/dev/null; }
load_env() { [ -f "$envf" ] || die "no board in $state (run.sh start first)"; . "$envf"; }
log_size() { stat -c %s "$state/console.log" 2>/dev/null || echo 0; }

start() {
  running && die "board already running (pid $(cat "$state/qemu.pid")); run.sh stop|kill first"
  command -v qemu-system-arm >/dev/null || die "no qemu-system-arm: run targets/qemu-arm/build.sh tools"
  for f in vmlinuz initrd.img root.squashfs data-empty.ext4; do
    [ -f "$image/$f" ] || die "missing $image/$f: run targets/qemu-arm/build.sh"
  done
  if [ -z "$release" ]; then release="$out_root/releases/demo-0.1.0.squashfs"; fi
  if [ "$release" != none ]; then
    [ -f "$release" ] || die "no release image $release (targets/qemu-arm/release.sh example)"
    release="$(cd "$(dirname "$release")" && pwd -P)/$(basename "$release")"
  fi
  case "$cookie" in *[!A-Za-z0-9_.+-]*|'') die "cookie: letters, digits and _.+- only (it goes on the kernel command line)";; esac
  mkdir -p "$state"
  if [ "$fresh" = 1 ] || [ ! -f "$state/data.ext4" ]; then
    cp --sparse=always "$image/data-empty.ext4" "$state/data.ext4"
  fi
  if [ -z "$epmd_port" ] || [ -z "$dist_port" ] || [ -z "$ssh_port" ]; then
    local ports; mapfile -t ports < <(ctl free-ports 3)
    epmd_port="${epmd_port:-${ports[0]}}"; dist_port="${dist_port:-${ports[1]}}"; ssh_port="${ssh_port:-${ports[2]}}"
  fi
  local quiet="quiet loglevel=3"; [ "$verbose" = 1 ] && quiet=""
  local append="console=ttyAMA0 panic=5 $quiet relsync.node=$node relsync.cookie=$cookie relsync.dist_port=$dist_port relsync.mode=$mode" e
  for e in "${envs[@]}"; do
    case "$e" in
      [A-Za-z_]*=*) case "$e" in *[[:space:]\"\']*) die "--env $e: no spaces or quotes (it goes on the kernel command line)";; esac ;;
      *) die "--env $e: NAME=VALUE expected" ;;
    esac
    append+=" relsync.env=$e"
  done
  local reldrive=()
  if [ "$release" != none ]; then
    reldrive=(-drive "if=none,id=rel,file=$release,format=raw,readonly=on"
              -device virtio-blk-device,drive=rel,serial=release)
  fi
  rm -f "$state/qmp.sock" "$state/console.sock" "$state/qemu.pid"
  cat > "$envf" <<EOF
NODE=$node
COOKIE=$cookie
EPMD_PORT=$epmd_port
DIST_PORT=$dist_port
SSH_PORT=$ssh_port
RELEASE=$release
STATE=$state
EOF
  echo "=== run.sh start $(date -u +%FT%TZ) ===" >> "$state/console.log"
  qemu-system-arm -name "relsync-$name" -M virt -cpu cortex-a15 -smp 1 -m 256 \
    -nodefaults -no-user-config -display none \
    -kernel "$image/vmlinuz" -initrd "$image/initrd.img" -append "$append" \
    -drive "if=none,id=root,file=$image/root.squashfs,format=raw,readonly=on" \
    -device virtio-blk-device,drive=root,serial=root \
    "${reldrive[@]}" \
    -drive "if=none,id=data,file=$state/data.ext4,format=raw,cache=writeback" \
    -device virtio-blk-device,drive=data,serial=data \
    -netdev "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:$epmd_port-:4369,hostfwd=tcp:127.0.0.1:$dist_port-:$dist_port,hostfwd=tcp:127.0.0.1:$ssh_port-:2228" \
    -device virtio-net-device,netdev=net0 \
    -device virtio-rng-device \
    -chardev "socket,id=con,path=$state/console.sock,server=on,wait=off,logfile=$state/console.log,logappend=on" \
    -serial chardev:con \
    -qmp "unix:$state/qmp.sock,server=on,wait=off" \
    -pidfile "$state/qemu.pid" -daemonize
  log "started pid $(cat "$state/qemu.pid"): node $node epmd 127.0.0.1:$epmd_port dist $dist_port ssh $ssh_port; console $state/console.log"
}

wait_ready() {
  load_env
  local extra=()
  [ -n "$after_log" ] && extra=(--log "$STATE/console.log" --after "$after_log")
  [ -n "$after_log" ] && [ -n "$marker" ] && extra+=(--marker "$marker")
  ctl wait "$NODE" "$COOKIE" "$EPMD_PORT" --timeout "$timeout" "${extra[@]}"
}

guest_cmd() { # run CMD in the guest, detached from the rpc; console shell as fallback
  load_env
  local rc=0
  ctl spawn-sh "$NODE" "$COOKIE" "$EPMD_PORT" "$1" || rc=$?
  if [ $rc = 2 ]; then  # could not connect: nothing was sent
    log "node not answering; sending '$1' to the serial console shell"
    ctl console "$STATE/console.sock" "\n$1\n"
  elif [ $rc != 0 ]; then
    return $rc
  fi
}

wait_exit() { # SECONDS
  local i=0
  while running && [ $i -lt $(($1 * 10)) ]; do sleep 0.1; i=$((i + 1)); done
  ! running
}

case "$cmd" in
  start) start ;;
  wait) wait_ready ;;
  reboot) running || die "not running"; guest_cmd "reboot" ;;
  reboot-force) running || die "not running"; guest_cmd "reboot -f" ;;
  reset) running || die "not running"; load_env; ctl qmp "$STATE/qmp.sock" system_reset >/dev/null ;;
  kill)
    running || die "not running"; load_env
    ctl qmp "$STATE/qmp.sock" quit >/dev/null 2>&1 || true
    wait_exit 5 || kill -9 "$(cat "$state/qemu.pid")" ;;
  stop)
    if running; then
      guest_cmd "poweroff"
      wait_exit 30 || { log "no clean poweroff in 30 s: QMP quit"; ctl qmp "$state/qmp.sock" quit >/dev/null 2>&1 || true; }
      wait_exit 5 || kill -9 "$(cat "$state/qemu.pid")"
    fi ;;
  status) if running; then echo "running pid $(cat "$state/qemu.pid")"; cat "$envf"; else echo stopped; exit 1; fi ;;
  env) load_env; cat "$envf" ;;
  log) cat "$state/console.log" ;;
  log-size) log_size ;;
  sh) load_env; ctl sh "$NODE" "$COOKIE" "$EPMD_PORT" "${rest[*]}" ;;
  spawn) running || die "not running"; guest_cmd "${rest[*]}" ;;
  *) sed -n '2,22p' "$0" >&2; exit 2 ;;
esac
