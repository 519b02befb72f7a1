#!/usr/bin/env bash
# Smoke test of the docker-otp boards, end to end and by hand-style steps:
#   engine up -> base/board images (build.sh, cached) -> example release built against the
#   board's OTP -> board container (read-only root, release ro at /srv/erlang, volume at /data,
#   tmpfs /tmp, ports published on 127.0.0.1 only) -> our Python dist client calls
#   demo_counter:version() -> docker restart (= reboot) -> answers again, /data kept, /tmp
#   empty, release untouched -> container and volume removed.
#
#   targets/docker-otp/smoke.sh [25|27|all]      default: all
#
# The release for OTP N is built with examples/build.sh: on the host when the host's OTP is N,
# otherwise inside relsync/otp-build:N (built by build.sh on first use) on a copy of examples/
# under the cache dir, offline (--network none).
# Exit 0 when every board answered before and after the restart. Output: one summary line per
# OTP on stdout, progress on stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd -P)"
root="$(cd "$here/../.." && pwd -P)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/relsync/docker-otp"
py="$root/.venv/bin/python"
cookie="relsync-smoke-$$"
wait_s="${RELSYNC_SMOKE_WAIT:-30}"

say() { echo "smoke: $*" >&2; }
die() { echo "smoke: FAILED: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { printf '%.2f' "$(echo "$(now) - $1" | bc)"; }

containers=()
cleanup() {
  local c
  for c in "${containers[@]}"; do
    docker rm -f "$c" >/dev/null 2>&1 || true
    docker volume rm "$c-data" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

# Polls the node until demo_counter:version() answers (or wait_s passes); prints
# "OTP_RELEASE VERSION SECONDS".
probe() {  # probe NODE EPMD_PORT
  "$py" - "$1" "$cookie" "$2" "$wait_s" <<'EOF'
import asyncio, sys, time
from relsync.erldist.etf import Atom
from relsync.erldist.node import connect

async def main(node: str, cookie: str, epmd_port: int, limit: float) -> int:
    t0 = time.monotonic()
    last: BaseException | None = None
    while time.monotonic() - t0 < limit:
        try:
            conn = await connect(node, cookie=cookie, epmd_port=epmd_port, timeout=2.0)
        except Exception as e:  # not up yet: EPMD refused, node not registered, ...
            last = e
            await asyncio.sleep(0.05)
            continue
        try:
            version = await conn.call("demo_counter", "version", [])
            otp = await conn.call("erlang", "system_info", [Atom("otp_release")])
        except Exception as e:  # node up, application still starting
            last = e
            await asyncio.sleep(0.05)
            continue
        finally:
            await conn.close()
        otp_s = otp if isinstance(otp, str) else bytes(otp).decode()  # charlist
        print(otp_s, version, f"{time.monotonic() - t0:.2f}")
        return 0
    print(f"no answer from {node} within {limit:.0f}s: {last}", file=sys.stderr)
    return 1

sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))))
EOF
}

free_ports() {  # two free TCP ports on 127.0.0.1
  "$py" -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])'
}

flavor_of() { case "$1" in 25) echo bookworm ;; 27) echo trixie ;; *) die "no board for OTP $1 (25 or 27)" ;; esac; }

smoke_one() {  # smoke_one OTP
  local otp=$1 rel name node dist epmd t0 out start_s restart_s restart_cmd_s got_otp
  say "OTP $otp: images"
  "$here/build.sh" "$(flavor_of "$otp")" >&2
  say "OTP $otp: release"
  rel="$("$here/release.sh" "$otp")"
  [ -x "$rel/bin/demo" ] || die "no release at $rel"
  read -r dist epmd <<<"$(free_ports)"
  name="relsync-smoke-otp$otp-$$"
  node="board@127.0.0.1"
  containers+=("$name")
  docker volume create "$name-data" >/dev/null

  say "OTP $otp: start $name (dist 127.0.0.1:$dist, epmd 127.0.0.1:$epmd, release $rel)"
  t0=$(now)
  docker run -d --name "$name" --hostname "$name" \
    --read-only --tmpfs /tmp:rw,nosuid,nodev,size=64m \
    --mount "type=bind,src=$rel,dst=/srv/erlang,readonly" \
    --mount "type=volume,src=$name-data,dst=/data" \
    -e RELSYNC_NODE="$node" -e RELSYNC_COOKIE="$cookie" -e RELSYNC_DIST_PORT="$dist" \
    -p "127.0.0.1:$dist:$dist" -p "127.0.0.1:$epmd:4369" \
    "relsync/otp-board:$otp" >/dev/null
  out="$(probe "$node" "$epmd")" || { docker logs "$name" >&2; die "OTP $otp: board did not answer"; }
  start_s="$(since "$t0")"
  read -r got_otp _ _ <<<"$out"
  [ "$got_otp" = "$otp" ] || die "OTP $otp: the board runs OTP $got_otp"
  say "OTP $otp: answered ($out) $start_s s after docker run"

  # Reboot: /data must survive, /tmp must be empty again, the release untouched.
  docker exec "$name" sh -c 'echo kept > /data/smoke-marker && echo gone > /tmp/smoke-marker'
  docker exec "$name" sh -c '! touch /srv/erlang/x 2>/dev/null && ! touch /x 2>/dev/null' \
    || die "OTP $otp: /srv/erlang or / is writable"
  t0=$(now)
  docker restart -t 10 "$name" >/dev/null
  restart_cmd_s="$(since "$t0")"
  out="$(probe "$node" "$epmd")" || { docker logs "$name" >&2; die "OTP $otp: no answer after restart"; }
  restart_s="$(since "$t0")"
  docker exec "$name" sh -c '[ "$(cat /data/smoke-marker)" = kept ] && [ ! -e /tmp/smoke-marker ]' \
    || die "OTP $otp: /data not kept or /tmp not cleared across the restart"
  [ "$(docker logs "$name" 2>&1 | grep -c '^relsync-board: booting')" = 2 ] \
    || die "OTP $otp: expected two boots in the log"
  say "OTP $otp: answered again ($out) $restart_s s after docker restart (restart itself $restart_cmd_s s)"

  docker rm -f "$name" >/dev/null
  docker volume rm "$name-data" >/dev/null
  echo "OTP $otp ok: run->answer ${start_s}s, restart->answer ${restart_s}s (docker restart ${restart_cmd_s}s)"
}

[ -x "$py" ] || die "no $py: run make setup"
"$root/scripts/docker-engine.sh" >&2

case "${1:-all}" in
  all) smoke_one 25; smoke_one 27 ;;
  25|27) smoke_one "$1" ;;
  *) die "usage: smoke.sh [25|27|all]" ;;
esac
