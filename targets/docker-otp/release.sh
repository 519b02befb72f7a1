#!/usr/bin/env bash
# Prints the host path of the example release (examples/demo) built against OTP N (25 or 27):
# on the host when the host's OTP is N, otherwise inside relsync/otp-build:N (built on first use)
# on a copy of examples/ under the cache, with no network.
# Usage: targets/docker-otp/release.sh OTP
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd -P)"
root="$(cd "$here/../.." && pwd -P)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/relsync/docker-otp"
die() { echo "release.sh: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: release.sh OTP (25 or 27)"

flavor_of() { case "$1" in 25) echo bookworm ;; 27) echo trixie ;; *) die "no board for OTP $1 (25 or 27)" ;; esac; }

host_otp() { erl -noshell -eval 'io:put_chars(erlang:system_info(otp_release)), halt().' 2>/dev/null || true; }

release_for() {  # release_for OTP -> host path of the example release built against OTP
  local otp=$1 dir out
  if [ "$(host_otp)" = "$otp" ]; then
    "$root/examples/build.sh"
    return
  fi
  "$here/build.sh" "$(flavor_of "$otp")-build" >&2
  dir="$cache/examples-otp$otp"
  mkdir -p "$dir"
  # Sources only (keeps mtimes, so build.sh's own up-to-date check works on the copy).
  rsync -a --delete --exclude=_build/ --exclude=priv/demo_port "$root/examples/" "$dir/examples/"
  out="$(docker run --rm --network none --user "$(id -u):$(id -g)" -e HOME=/tmp \
          -v "$dir:/w" -w /w "relsync/otp-build:$otp" examples/build.sh)"
  echo "$dir/${out#/w/}"
}


release_for "$1"
