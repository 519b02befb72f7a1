#!/bin/sh
# Dialyzer over relsyncd's Erlang, relsync_target and relsync_upgrade among it (relsync/erlang/
# links to those). The PLT of the OTP applications they call is built once per OTP release
# into the cache (a few minutes), then reused.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
otp=$(erl -noshell -eval 'io:put_chars(erlang:system_info(otp_release)), halt().')
cache="${XDG_CACHE_HOME:-$HOME/.cache}/relsync"
plt="$cache/dialyzer-otp$otp.plt"
mkdir -p "$cache"
if [ ! -f "$plt" ]; then
  echo "dialyzer: building the OTP $otp PLT once (a few minutes): $plt"
  dialyzer --build_plt --output_plt "$plt.tmp" --apps erts kernel stdlib crypto ssh public_key \
    >"$cache/dialyzer-plt.log" 2>&1 || { tail -20 "$cache/dialyzer-plt.log" >&2; exit 1; }
  mv "$plt.tmp" "$plt"
fi
exec dialyzer --no_check_plt --plt "$plt" "$here"/relsyncd/src/*.erl
