#!/usr/bin/env bash
# Makes sure a Docker engine answers `docker info`; prints one line saying which.
#
#   scripts/docker-engine.sh          ensure an engine (install + start dockerd when root)
#   scripts/docker-engine.sh --check  only report; exit 1 when no engine answers
#
# Fast and idempotent: when `docker info` already answers it does nothing else (~0.1 s).
# As root, installs what is missing of Debian's docker.io and mmdebstrap (which builds the board
# images); otherwise prints the one apt-get command for both. When no engine answers and we are
# root: starts dockerd in the background (own session, logs to $RELSYNC_DOCKERD_LOG) and polls
# `docker info` for at most $RELSYNC_DOCKERD_WAIT seconds (default 60).
# When not root: prints the exact commands to run and exits 1.
#
# What was measured on the project machine (Debian bookworm, kernel 6.x, cgroup v1, root,
# no systemd as PID 1, iptables 1.8.9 in nft mode):
#   * `apt-get install -y docker.io` (20.10.24) + plain `dockerd --storage-driver overlay2`
#     works: the default bridge docker0, iptables NAT rules and the userland proxy
#     (docker-proxy) all come up, and `-p 127.0.0.1:HOST:CONTAINER` publishing works. No
#     --iptables=false / --bridge=none workaround is needed; the engine answers ~1 s after start.
#   * The client at /usr/local/bin/docker (static 28.x) comes first on PATH and talks to the
#     20.10 daemon fine (API version negotiated down to 1.41). Debian's /usr/bin/docker (20.10)
#     is installed alongside; either works. Use the legacy builder (no buildx): our Dockerfile
#     needs no BuildKit feature.
#   * Fallbacks, tried in this order only when the previous start failed (see the log):
#       1. overlay2 with iptables (the normal case above)
#       2. vfs (slow, every layer is a full copy: LOUD note) with iptables
#       3. vfs with --iptables=false --ip-masq=false: the bridge still exists and docker-proxy
#          still publishes 127.0.0.1 ports (the proxy needs no iptables), only container
#          egress NAT is lost, which boards do not need.
#     Never --bridge=none: port publishing needs a bridge network.
# Env: RELSYNC_DOCKERD_LOG (default /var/log/relsync-dockerd.log),
#      RELSYNC_DOCKERD_WAIT (seconds, default 60), RELSYNC_DOCKERD_ARGS (extra dockerd flags).
set -euo pipefail

log="${RELSYNC_DOCKERD_LOG:-/var/log/relsync-dockerd.log}"
wait_s="${RELSYNC_DOCKERD_WAIT:-60}"
extra=(${RELSYNC_DOCKERD_ARGS:-})

engine_line() {
  # One line: server version, storage driver, where.
  docker info --format 'docker-engine: up (server {{.ServerVersion}}, storage {{.Driver}}, {{.OperatingSystem}})' 2>/dev/null
}

answers() { timeout 10 docker info >/dev/null 2>&1; }

# What the boards need from Debian: the engine, and mmdebstrap, which builds their images.
# Installed together as root; otherwise one command for both is printed.
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ] && [ "${1:-}" != "--check" ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "docker-engine: installing ${missing[*]} (Debian packages)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    # policy-rc.d in containers refuses to start the service: we start dockerd ourselves.
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${missing[@]}" >/dev/null
  else
    echo "docker-engine: missing ${missing[*]}; run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  fi
fi

if command -v docker >/dev/null 2>&1 && answers; then
  engine_line
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "docker-engine: no Docker engine answers 'docker info' (run scripts/docker-engine.sh as root)" >&2
  exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
  if pgrep -x dockerd >/dev/null 2>&1 && [ -S /var/run/docker.sock ] && [ ! -w /var/run/docker.sock ]; then
    echo "docker-engine: dockerd runs but $(id -un) may not use /var/run/docker.sock;" \
         "run: sudo usermod -aG docker $(id -un)   (then log in again)" >&2
    exit 1
  fi
  {
    echo "docker-engine: no Docker engine answers and we are not root; run (after the install above, if any):"
    echo "  sudo sh -c 'setsid dockerd --storage-driver overlay2 >>$log 2>&1 < /dev/null &'"
    echo "  sudo usermod -aG docker $(id -un)   # then log in again, or use sudo docker"
  } >&2
  exit 1
fi

mkdir -p "$(dirname "$log")"

# A dockerd that runs but does not answer (still starting, or wedged)? Wait for it first
# rather than starting a second one on the same /var/lib/docker.
if pid="$(pgrep -x dockerd | head -1)" && [ -n "$pid" ]; then
  echo "docker-engine: dockerd (pid $pid) is running but not answering yet; waiting" >&2
  for _ in $(seq 1 $((wait_s * 4))); do
    answers && { engine_line; exit 0; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  echo "docker-engine: dockerd pid $pid does not answer after ${wait_s}s; see $log" >&2
  exit 1
fi

start_dockerd() {  # start_dockerd ARGS... ; returns 0 when `docker info` answers
  echo "=== $(date -u +%FT%TZ) relsync: dockerd $*" >>"$log"
  setsid dockerd "$@" "${extra[@]}" >>"$log" 2>&1 </dev/null &
  local pid=$!
  for _ in $(seq 1 $((wait_s * 4))); do
    if answers; then
      mkdir -p /var/lib/docker && echo "$*" >/var/lib/docker/.relsync-dockerd-args
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "docker-engine: dockerd $* exited early: $(tail -n 3 "$log" | tr '\n' ' ')" >&2
      # Leftover pid file from the dead daemon would block the next attempt.
      rm -f /var/run/docker.pid
      return 1
    fi
    sleep 0.25
  done
  echo "docker-engine: dockerd $* did not answer within ${wait_s}s; stopping it" >&2
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return 1
}

# The flags that worked last time come first: switching storage driver would hide the images.
remembered=/var/lib/docker/.relsync-dockerd-args
if [ -s "$remembered" ]; then
  read -r -a last <"$remembered"
  if start_dockerd "${last[@]}"; then engine_line; exit 0; fi
fi

if start_dockerd --storage-driver overlay2; then
  engine_line
elif { echo "docker-engine: !!! overlay2 failed: falling back to the vfs storage driver" \
            "(every layer is a full copy: slow builds, large disk use) !!!" >&2
       start_dockerd --storage-driver vfs; }; then
  engine_line
elif { echo "docker-engine: !!! dockerd with iptables failed: retrying with --iptables=false" \
            "(127.0.0.1 port publishing still works through docker-proxy; containers get no" \
            "outbound NAT) !!!" >&2
       start_dockerd --storage-driver vfs --iptables=false --ip-masq=false; }; then
  engine_line
else
  echo "docker-engine: could not start dockerd; see $log" >&2
  exit 1
fi
