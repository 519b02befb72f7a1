#!/usr/bin/env bash
# Installs what relsync's demo and tests need: Debian packages (when root; otherwise prints the
# exact command) and the Python dependencies into ./.venv. Safe to run again: it skips what is there.
#   scripts/setup.sh        what `make demo` needs
#   scripts/setup.sh lint   also dialyzer, for `make lint`
#   scripts/setup.sh test   also what `make test` needs (dialyzer; mmdebstrap builds the OTP 27
#                           test rootfs, elixir builds a mix release)
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(erlang-nox erlang-dev erlang-src erlang-common-test rebar3 gcc make rsync openssh-client)
if [ "${1:-}" = test ] || [ "${1:-}" = lint ]; then
  debs+=(erlang-dialyzer)  # make lint checks relsyncd's Erlang
fi
if [ "${1:-}" = test ]; then
  debs+=(mmdebstrap elixir)  # elixir: the mix release tests build one
fi
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages: ${missing[*]}" >&2
    echo "setup: run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$py" -m venv .venv
fi
stamp=.venv/.relsync-deps
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python dependencies into .venv"
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -e '.[dev]'; } > .venv/pip.log 2>&1; then
    cat .venv/pip.log >&2
    echo "setup: installing the Python dependencies failed (log above)" >&2
    exit 1
  fi
  touch "$stamp"
fi
