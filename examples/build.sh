#!/usr/bin/env bash
# Builds the example release examples/demo (rebar3 + relx, no deps, offline) and prints the
# absolute path of the built release on stdout. Build output goes to stderr.
# Idempotent: skips the build when the release is newer than every source file.
# Env: CC (C compiler for the port program, default cc), REBAR3 (default rebar3),
#      FORCE=1 to rebuild regardless.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd -P)"
proj="$here/demo"
rel="$proj/_build/default/rel/demo"
stamp="$proj/_build/.relsync-built"
rebar3="${REBAR3:-rebar3}"
export REBAR_COLOR="${REBAR_COLOR:-none}"

if ! command -v "$rebar3" >/dev/null 2>&1 || ! command -v erl >/dev/null 2>&1; then
  echo "build.sh: rebar3 and erl are needed (run scripts/setup.sh)" >&2
  exit 1
fi

up_to_date() {
  [ "${FORCE:-0}" != 1 ] || return 1
  [ -f "$stamp" ] && [ -x "$rel/bin/demo" ] && [ -f "$rel/releases/start_erl.data" ] \
    && [ -x "$rel/lib/demo-0.1.0/priv/demo_port" ] || return 1
  # The C compiler is part of the inputs (cross builds).
  [ "$(cat "$stamp")" = "CC=${CC:-cc}" ] || return 1
  local newer
  newer="$(find "$proj/rebar.config" "$proj/src" "$proj/c_src" "$proj/config" \
             -newer "$stamp" -print -quit)"
  [ -z "$newer" ]
}

if ! up_to_date; then
  echo "build.sh: building $proj" >&2
  rm -f "$stamp"
  (
    cd "$proj"
    # Rebuild the port program when CC changed (make only looks at timestamps).
    make -s -C c_src clean >&2
    CC="${CC:-cc}" "$rebar3" release >&2
  )
  printf 'CC=%s' "${CC:-cc}" > "$stamp"
fi

echo "$rel"
