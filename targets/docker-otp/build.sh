#!/usr/bin/env bash
# Builds the docker-otp images without any image registry: Debian packages -> mmdebstrap
# rootfs tarball -> `docker import` (base) -> `docker build` (board).
#
#   targets/docker-otp/build.sh [FLAVOR...]      default: all
#
#   bookworm        relsync/otp-base:25  + relsync/otp-board:25   (OTP 25, Debian 12)
#   trixie          relsync/otp-base:27  + relsync/otp-board:27   (OTP 27, Debian 13)
#   bookworm-build  relsync/otp-build:25  base + rebar3/gcc: builds releases against OTP 25
#   trixie-build    relsync/otp-build:27  base + rebar3/gcc: builds releases against OTP 27
#   all             bookworm trixie
#
# Prints one line per image on stdout ("IMAGE built|cached ..."); progress goes to stderr.
#
# Reproducibility: the recipe is this script + packages.in + the flavor. Its hash labels the
# image (relsync.recipe) and names the cached tarball; an image with the same hash is never
# rebuilt. mmdebstrap runs with a fixed SOURCE_DATE_EPOCH. Debian mirrors drop superseded
# versions, so exact versions cannot be re-fetched forever; instead every build records the
# installed set (name=version) in packages-FLAVOR.txt beside this script and prints the
# difference to the recorded set. Commit those files: `git diff` shows what a rebuild changed.
#
# Env: XDG_CACHE_HOME (tarballs go to $XDG_CACHE_HOME/relsync/docker-otp, default ~/.cache),
#      RELSYNC_DEBIAN_MIRROR (default http://deb.debian.org/debian),
#      RELSYNC_DEBIAN_SECURITY (default http://deb.debian.org/debian-security),
#      RELSYNC_LOCK_STRICT=1 (fail instead of updating packages-FLAVOR.txt when versions moved),
#      FORCE=1 (rebuild tarball and images regardless of the cache).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd -P)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/relsync/docker-otp"
mirror="${RELSYNC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${RELSYNC_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}"
# Fixed, not "now": part of the recipe (2025-01-01T00:00:00Z).
export SOURCE_DATE_EPOCH=1735689600

say() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: $*" >&2; exit 1; }

# flavor -> suite, OTP major, image name, package sets
flavor_info() {
  case "$1" in
    bookworm)       echo "bookworm 25 relsync/otp-base:25 base board" ;;
    trixie)         echo "trixie 27 relsync/otp-base:27 base board" ;;
    bookworm-build) echo "bookworm 25 relsync/otp-build:25 base build" ;;
    trixie-build)   echo "trixie 27 relsync/otp-build:27 base build" ;;
    *) return 1 ;;
  esac
}

packages_for() {  # packages_for SET... -> comma separated list
  local set out=()
  for set in "$@"; do
    # shellcheck disable=SC2207
    out+=($(sed -n "s/^${set}:[[:space:]]*//p" "$here/packages.in"))
  done
  [ ${#out[@]} -gt 0 ] || die "no packages for '$*' in packages.in"
  local IFS=,
  echo "${out[*]}"
}

sha() { sha256sum | cut -c1-16; }

recipe_hash() {  # recipe_hash FLAVOR
  { echo "flavor=$1 mirror=$mirror security=$security epoch=$SOURCE_DATE_EPOCH"
    cat "$here/build.sh" "$here/packages.in"; } | sha
}

image_label() {  # image_label IMAGE LABEL -> value or empty
  docker image inspect -f "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}

human() { numfmt --to=iec --suffix=B "$1"; }

check_lock() {  # check_lock FLAVOR NEWLIST
  local lock="$here/packages-$1.txt"
  if [ ! -f "$lock" ]; then
    cp "$2" "$lock"
    say "recorded $(wc -l <"$2") package versions in ${lock#"$here"/}"
  elif cmp -s "$lock" "$2"; then
    say "package set matches ${lock#"$here"/} ($(wc -l <"$2") packages)"
  else
    say "!!! installed packages differ from ${lock#"$here"/} (mirror moved on):"
    diff -U0 "$lock" "$2" | grep -E '^[-+][^-+]' | sed 's/^/build.sh:   /' >&2 || true
    if [ "${RELSYNC_LOCK_STRICT:-0}" = 1 ]; then
      die "RELSYNC_LOCK_STRICT=1: not accepting the new set; the new list is in $2"
    fi
    cp "$2" "$lock"
    say "!!! updated ${lock#"$here"/}: review with git diff and commit it"
  fi
}

build_rootfs() {  # build_rootfs FLAVOR SUITE PACKAGES TARBALL
  local flavor=$1 suite=$2 pkgs=$3 tar=$4 t0 tmp
  t0=$(date +%s.%N)
  tmp="$tar.tmp"
  say "mmdebstrap $suite ($pkgs) -> $tar"
  # Docs, man pages and locales are dead weight on a board; copyright files stay. The ssh host
  # keys openssh-server's postinst makes are random: removed (the entrypoint makes its own).
  # .debs are kept per suite in $cache/debs-SUITE and fed back in (only a recipe change or a
  # mirror update downloads anything): the sync-in/sync-out idiom from mmdebstrap(1).
  local debs="$cache/debs-$suite"
  mkdir -p "$debs"
  mmdebstrap --variant=minbase --mode=root --format=tar \
    --include="$pkgs" \
    --skip=essential/unlink --skip=download/empty \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
    --setup-hook="sync-in '$debs' /var/cache/apt/archives/" \
    --customize-hook="sync-out /var/cache/apt/archives '$debs'" \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook='rm -f "$1"/etc/hostname "$1"/etc/resolv.conf "$1"/etc/ssh/ssh_host_*' \
    "$suite" "$tmp" \
    "deb $mirror $suite main" \
    "deb $mirror $suite-updates main" \
    "deb $security $suite-security main" \
    >"$cache/$flavor.mmdebstrap.log" 2>&1 \
    || { tail -n 20 "$cache/$flavor.mmdebstrap.log" >&2; rm -f "$tmp"; die "mmdebstrap $suite failed (log: $cache/$flavor.mmdebstrap.log)"; }
  mv "$tmp" "$tar"
  say "rootfs $flavor: $(human "$(stat -c %s "$tar")") in $(printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)") s"
}

package_list() {  # package_list TARBALL OUT: name=version, sorted, from the tarball's dpkg status
  tar -xOf "$1" ./var/lib/dpkg/status | awk '
    /^Package: /{p=$2} /^Version: /{v=$2}
    /^Status: /{ok=($0 ~ / installed$/)}
    /^$/{ if (ok && p) print p "=" v; p=""; v=""; ok=0 }
    END{ if (ok && p) print p "=" v }' | LC_ALL=C sort >"$2"
}

build_flavor() {  # build_flavor FLAVOR -> builds the base image (and the board image)
  local flavor=$1 info suite otp image sets hash tar pkgs list got
  info="$(flavor_info "$flavor")" || die "unknown flavor '$flavor' (bookworm, trixie, bookworm-build, trixie-build, all)"
  read -r suite otp image sets <<<"$info"
  # shellcheck disable=SC2086
  pkgs="$(packages_for $sets)"
  hash="$(recipe_hash "$flavor")"
  tar="$cache/$flavor-$hash.tar"

  if [ "${FORCE:-0}" != 1 ] && [ "$(image_label "$image" relsync.recipe)" = "$hash" ]; then
    echo "$image cached (recipe $hash, $(human "$(docker image inspect -f '{{.Size}}' "$image")"))"
  else
    command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install -y mmdebstrap"
    mkdir -p "$cache"
    if [ "${FORCE:-0}" = 1 ] || [ ! -s "$tar" ]; then
      build_rootfs "$flavor" "$suite" "$pkgs" "$tar"
      # Older tarballs of this flavor are stale now.
      find "$cache" -maxdepth 1 -name "$flavor-*.*" ! -name "$flavor-$hash.*" -delete
    else
      say "reusing cached rootfs $tar"
    fi
    list="$cache/$flavor-$hash.packages"
    package_list "$tar" "$list"
    got="$(sed -n 's/^erlang-base=\([0-9]*:\)\{0,1\}\([0-9]*\).*/\2/p' "$list")"
    [ "$got" = "$otp" ] || die "$suite gave OTP '$got', expected $otp: fix flavor_info in build.sh"
    check_lock "$flavor" "$list"
    say "docker import -> $image"
    docker import \
      --change "LABEL relsync.recipe=$hash relsync.flavor=$flavor relsync.otp=$otp relsync.suite=$suite" \
      --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8" \
      --change 'CMD ["erl"]' \
      --message "relsync $flavor rootfs (recipe $hash)" \
      "$tar" "$image" >/dev/null
    echo "$image built (recipe $hash, OTP $otp, tarball $(human "$(stat -c %s "$tar")"), image $(human "$(docker image inspect -f '{{.Size}}' "$image")"))"
  fi

  case "$flavor" in
    bookworm|trixie) build_board "$otp" ;;
  esac
}

build_board() {  # build_board OTP -> relsync/otp-board:OTP FROM relsync/otp-base:OTP
  local otp=$1 base="relsync/otp-base:$1" image="relsync/otp-board:$1" hash ctx
  hash="$( { docker image inspect -f '{{.Id}}' "$base"; cat "$here/Dockerfile" "$here/entrypoint.sh"; } | sha)"
  if [ "${FORCE:-0}" != 1 ] && [ "$(image_label "$image" relsync.recipe)" = "$hash" ]; then
    echo "$image cached (recipe $hash)"
    return
  fi
  # A two-file build context: nothing else of the tree is sent to the daemon.
  ctx="$(mktemp -d)"
  cp "$here/Dockerfile" "$here/entrypoint.sh" "$ctx/"
  say "docker build -> $image"
  DOCKER_BUILDKIT=0 docker build -q --build-arg "OTP=$otp" --label "relsync.recipe=$hash" \
    -t "$image" "$ctx" >/dev/null 2>"$ctx/err" \
    || { cat "$ctx/err" >&2; rm -rf "$ctx"; die "docker build $image failed"; }
  rm -rf "$ctx"
  echo "$image built (recipe $hash, image $(human "$(docker image inspect -f '{{.Size}}' "$image")"))"
}

command -v docker >/dev/null && docker info >/dev/null 2>&1 \
  || die "no Docker engine answers: run scripts/docker-engine.sh (as root)"

flavors=("$@")
[ ${#flavors[@]} -gt 0 ] || flavors=(all)
for f in "${flavors[@]}"; do
  if [ "$f" = all ]; then
    build_flavor bookworm
    build_flavor trixie
  else
    build_flavor "$f"
  fi
done
