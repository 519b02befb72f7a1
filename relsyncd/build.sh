#!/usr/bin/env bash
# Compiles relsyncd (with the target helper relsync_target) into OUTDIR (default: relsyncd/ebin)
# with deterministic beams, and writes relsyncd.app. Skips the work when OUTDIR is up to date.
# Used by `make ct`, the test harness (relsyncd beside a board's release) and board images.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd -P)"
out="${1:-$here/ebin}"
mkdir -p "$out"
stamp="$out/relsyncd.app"
if [ -f "$stamp" ] && [ -z "$(find "$here/src" -newer "$stamp" -print -quit)" ]; then
  exit 0
fi
erlc +deterministic +debug_info +warnings_as_errors -o "$out" "$here"/src/*.erl
cp "$here/src/relsyncd.app.src" "$stamp"
