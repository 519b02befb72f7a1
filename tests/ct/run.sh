#!/usr/bin/env bash
# Run the Common Test suites of the Erlang code: the target-side helper
# (relsync_target) and the relsyncd application (ssh mode's daemon).
#
# The helper and relsyncd are compiled with the Makefile's flags into a
# private temporary ebin, so the suites always test the current source,
# whether called by `make ct` or directly from a fresh clone. The helper's one
# source is relsyncd/src/relsync_target.erl (relsync/erlang/ links to it, so
# relsyncd stays usable as a git subdirectory dependency). ct_run gets a
# per-run node name, so concurrent runs do not collide. Prints one
# "CT summary:" line and exits non-zero on any failure, auto-skip (e.g. a
# crashing init_per_suite), suite compile error or missing result. User skips
# are allowed.
set -uo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo" || exit 2

for tool in erlc ct_run; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "CT summary: not run ($tool not found; install erlang and erlang-common-test)"
        exit 2
    fi
done

work="$(mktemp -d "${TMPDIR:-/tmp}/relsync-ct.XXXXXX")" || exit 2
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/ebin" tests/ct/logs

if ! relsyncd/build.sh "$work/ebin"; then
    echo "CT summary: not run (relsyncd or relsync_target does not compile)"
    exit 2
fi

ct_run -noshell -sname "relsync_ct_$$" -dir tests/ct -logdir tests/ct/logs -pa "$work/ebin" </dev/null 2>&1 \
    | tee "$work/ct.out"
rc=${PIPESTATUS[0]}

# ct_run writes {summary, {Ok, Failed, UserSkipped, AutoSkipped}} into the
# run directory it reports as "CWD set to: ...".
rundir="$(sed -n 's/^CWD set to: "\(.*\)"$/\1/p' "$work/ct.out" | tail -n 1)"
summary=""
if [ -n "$rundir" ]; then
    summary="$(cat "$rundir"/*/run.*/suite.summary 2>/dev/null \
               | sed -n 's/^{summary,{\([0-9]*\),\([0-9]*\),\([0-9]*\),\([0-9]*\)}}\.$/\1 \2 \3 \4/p' \
               | tail -n 1)"
fi
if [ -z "$summary" ]; then
    echo "CT summary: FAILED, no result (ct_run exit ${rc}; see output above)"
    exit 1
fi
read -r ok failed uskip askip <<<"$summary"
if [ $((ok + failed + uskip + askip)) -eq 0 ]; then
    echo "CT summary: FAILED, no test case ran (does the suite compile? ct_run exit ${rc})"
    exit 1
fi
echo "CT summary: ${ok} passed, ${failed} failed, ${uskip} skipped, ${askip} auto-skipped" \
     "[ct_run exit ${rc}; logs: tests/ct/logs/index.html]"
if [ "$rc" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$askip" -ne 0 ] || [ "$ok" -eq 0 ]; then
    exit 1
fi
exit 0
