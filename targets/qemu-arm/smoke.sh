#!/usr/bin/env bash
# End-to-end check of the qemu-arm board: build the image and the ARM release, boot, check, then
# clean reboot, `reboot -f`, power cut (QMP system_reset), QEMU killed and started again, the node
# killed (init respawns it), clean poweroff. After each: the node answers, the release on the
# read-only /srv/erlang is untouched, /data kept its (fsync'ed) file, /tmp is empty, it is a new
# boot. Prints the timings. Env: SMOKE_MODE=embedded|interactive (code loading, default embedded),
# SMOKE_TIMEOUT (per wait, default 120 s).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd -P)"
mode="${SMOKE_MODE:-embedded}"
tmo="${SMOKE_TIMEOUT:-120}"
board=(--name smoke)
run() { "$here/run.sh" "$1" "${board[@]}" "${@:2}"; }
say() { echo "smoke: $*" >&2; }
fail() { echo "smoke: FAIL: $*" >&2; run log | tail -n 40 >&2; run kill 2>/dev/null || true; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
results=()

t=$(now); "$here/build.sh" >/dev/null; results+=("image build (build.sh): $(since "$t") s")
t=$(now); release="$("$here/release.sh" example)"; results+=("ARM release build+pack (release.sh example): $(since "$t") s")

run status >/dev/null 2>&1 && run kill
t=$(now)
run start --fresh-data --release "$release" --mode "$mode"
run wait --timeout "$tmo" >/dev/null || fail "first boot: node not answering"
results+=("QEMU start -> node answers: $(since "$t") s")

fingerprint='cd /srv/erlang && find . | sort | xargs md5sum 2>/dev/null | md5sum | cut -d" " -f1'
rel_fp="$(run sh "$fingerprint")"
token="smoke-$RANDOM$RANDOM"
run sh "echo $token > /data/smoke-token && sync /data/smoke-token; touch /tmp/smoke-tmp; mkdir -p /data/d" >/dev/null
boot_id="$(run sh 'cat /proc/sys/kernel/random/boot_id')"
[ "$(run sh 'grep " /srv/erlang " /proc/mounts | cut -d" " -f4 | cut -d, -f1')" = ro ] \
  || fail "/srv/erlang is not mounted read-only"
[ "$(run sh 'touch /srv/erlang/x 2>&1 >/dev/null; echo $?')" != 0 ] || fail "/srv/erlang is writable"

check() { # WHAT [same-boot]
  local id
  id="$(run sh 'cat /proc/sys/kernel/random/boot_id')"
  [ -n "${2:-}" ] || [ "$id" != "$boot_id" ] || fail "$1: not a new boot"
  boot_id="$id"
  [ "$(run sh "$fingerprint")" = "$rel_fp" ] || fail "$1: the release changed"
  [ "$(run sh 'cat /data/smoke-token')" = "$token" ] || fail "$1: /data lost its file"
  if [ -z "${2:-}" ]; then
    [ -z "$(run sh 'ls /tmp')" ] || fail "$1: /tmp not empty"
    run sh 'touch /tmp/smoke-tmp' >/dev/null
  fi
  [ "$(run sh 'echo $(uname -m) $(pidof beam.smp | wc -w)')" = "armv7l 1" ] || fail "$1: not one ARM beam"
  say "$1: ok (release untouched, /data kept)"
}
cycle() { # WHAT RUN-ARGS... : do it, wait for the new boot's node, check
  local what="$1" n t; shift
  n="$(run log-size)"; t=$(now)
  run "$@"
  run wait --timeout "$tmo" --after-log "$n" ${marker:+--marker "$marker"} >/dev/null \
    || fail "$what: node not answering"
  results+=("$what -> node answers: $(since "$t") s")
  check "$what" ${same_boot:-}
}
marker="" same_boot=""

check "first boot" same-boot
cycle "clean reboot (init, rcK)" reboot
cycle "reboot -f" reboot-force
cycle "power cut (QMP system_reset)" reset
n="$(run log-size)"; t=$(now)
run kill
run start --release "$release" --mode "$mode"
run wait --timeout "$tmo" >/dev/null || fail "kill + start: node not answering"
results+=("QEMU killed + started -> node answers: $(since "$t") s")
check "QEMU killed + started"
marker="relsync-node: starting" same_boot=1 \
  cycle "node respawn (beam killed, init restarts it)" spawn 'kill -9 $(pidof beam.smp)'

rss="$(ps -o rss= -p "$(cat "$here/_build/boards/smoke/qemu.pid")")"
results+=("QEMU RSS: $((rss / 1024)) MB")
t=$(now); run stop; results+=("clean poweroff (run.sh stop): $(since "$t") s")
run status >/dev/null 2>&1 && fail "still running after stop"

say "PASS (code loading: $mode)"
printf '  %s\n' "${results[@]}"
