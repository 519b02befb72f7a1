#!/usr/bin/env bash
# Makes a release image for the qemu-arm board: a squashfs holding a relx release, which the board
# mounts read-only at /srv/erlang (virtio disk serial=release) and runs with `bin/NAME foreground`.
#
#   release.sh example [-o OUT.squashfs]        cross-build examples/demo for armhf, then pack it
#   release.sh pack RELEASE_DIR [-o OUT.squashfs] pack a built release (its ERTS, if any, and its
#                                               OTP applications replaced by the board's)
#
# Prints the path of the release image on stdout. Needs the base image (build.sh) first.
#
# Packing "retargets" the release: relx copies the HOST's OTP applications (kernel, stdlib, sasl,
# crypto...) into lib/, and crypto carries an x86-64 NIF. Each such lib/APP-VSN is replaced by the
# board's own armhf copy of APP-VSN (what relx's system_libs would give); a version the board does
# not have is an error. erts-VSN is added as a link to the board's erts (see below). Then every ELF file left in the release must be 32-bit ARM and find its
# NEEDED libraries in the board image. The result is reproducible (fixed times, sorted, root owner).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd -P)"
repo="$(cd "$here/../.." && pwd -P)"
out_root="${RELSYNC_QEMU_ARM_OUT:-$here/_build}"
image="$out_root/image"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1700000000}"
cross_cc="${CROSS_CC:-arm-linux-gnueabihf-gcc}"

log() { echo "release.sh: $*" >&2; }
die() { echo "release.sh: ERROR: $*" >&2; exit 1; }

board_otp() { # the board's /usr/lib/erlang, unpacked once per root image
  [ -f "$image/root.squashfs" ] || die "no base image in $image: run targets/qemu-arm/build.sh"
  local sha dir
  sha="$(sha256sum "$image/root.squashfs" | cut -c1-16)"
  dir="$out_root/board-otp-$sha"
  if [ ! -d "$dir" ]; then
    rm -rf "$dir.tmp" "$out_root"/board-otp-*
    unsquashfs -q -n -d "$dir.tmp" "$image/root.squashfs" usr/lib/erlang >/dev/null
    mv "$dir.tmp" "$dir"
  fi
  echo "$dir/usr/lib/erlang"
}

pack() { # RELEASE_DIR OUT
  local src="$1" dest="${2:-}" otp
  [ -f "$src/releases/start_erl.data" ] || die "$src is not a relx release (releases/start_erl.data)"
  local erts_vsn rel_vsn name
  read -r erts_vsn rel_vsn < "$src/releases/start_erl.data" || true  # no final newline
  name="$(basename "$(ls "$src/releases/$rel_vsn"/*.rel | head -n1)" .rel)"
  [ -x "$src/bin/$name" ] || die "no start script $src/bin/$name"
  otp="$(board_otp)"
  [ -d "$otp/erts-$erts_vsn" ] || die "the release wants erts $erts_vsn; the board has $(cd "$otp" && echo erts-*)"
  dest="${dest:-$out_root/releases/$name-$rel_vsn.squashfs}"
  mkdir -p "$(dirname "$dest")"
  local stage="$dest.stage"
  rm -rf "$stage"; cp -a "$src" "$stage"
  # An ERTS the release carries was built for this machine: the board's own takes its place
  # (the link below), as for the OTP applications.
  if [ -d "$stage/erts-$erts_vsn" ]; then
    log "the release carries erts-$erts_vsn (built for $(uname -m)): the board's armhf erts-$erts_vsn replaces it"
    rm -rf "$stage/erts-$erts_vsn"
  fi
  # Retarget the OTP applications.
  local app base
  for app in "$stage"/lib/*; do
    base="$(basename "$app")"
    if [ -d "$otp/lib/$base" ]; then
      rm -rf "$app"; cp -a "$otp/lib/$base" "$app"
    elif compgen -G "$otp/lib/${base%-*}-*" >/dev/null; then
      die "the release has $base but the board's OTP has $(cd "$otp/lib" && echo "${base%-*}"-*): build it with the board's OTP version"
    fi
  done
  # Every ELF must be 32-bit ARM with its libraries on the board.
  local f bad=() provided needed so
  provided="$image/provided-libs.txt"
  while IFS= read -r -d '' f; do
    [ "$(head -c4 "$f" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || continue
    if ! readelf -h "$f" 2>/dev/null | grep -q 'Machine: *ARM$'; then
      bad+=("${f#"$stage"/}: $(readelf -h "$f" 2>/dev/null | sed -n 's/.*Machine: *//p') (not ARM)")
      continue
    fi
    needed="$(readelf -d "$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
    for so in $needed; do
      grep -qxF "$so" "$provided" || [ -n "$(find "$stage" -name "$so" -print -quit)" ] \
        || bad+=("${f#"$stage"/}: needs $so, not on the board")
    done
  done < <(find "$stage" -type f -print0)
  if [ ${#bad[@]} -gt 0 ]; then
    printf 'release.sh:   %s\n' "${bad[@]}" >&2
    die "the release has native code the board cannot run (cross-compile it, e.g. CC=$cross_cc)"
  fi
  # erts-VSN -> the board's erts: relx's start script then finds erts at once instead of
  # running `erl` a first time to ask for code:root_dir() (~4 s on the emulated board). It is
  # what include_erts=true would give, without the copy.
  ln -s "/usr/lib/erlang/erts-$erts_vsn" "$stage/erts-$erts_vsn"
  find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  mksquashfs "$stage" "$dest.tmp" -noappend -all-root -no-xattrs -comp zstd -Xcompression-level 9 \
    -no-progress -quiet >&2
  mv -f "$dest.tmp" "$dest"
  rm -rf "$stage"
  log "$name $rel_vsn (erts $erts_vsn): $(stat -c %s "$dest") bytes, sha256 $(sha256sum "$dest" | cut -c1-16)..."
  echo "$dest"
}

example() { # cross-build examples/demo in a copy (the host build in examples/demo is untouched)
  if ! command -v "$cross_cc" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      log "installing gcc-arm-linux-gnueabihf"
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc-arm-linux-gnueabihf libc6-dev-armhf-cross >&2
    else
      die "no $cross_cc; run: sudo apt-get install -y --no-install-recommends gcc-arm-linux-gnueabihf libc6-dev-armhf-cross"
    fi
  fi
  # A fixed path (not mktemp): beam files record their source path, so the same path gives the
  # same bytes.
  local work="$out_root/example-src"
  rm -rf "$work"; mkdir -p "$work"
  cp -a "$repo/examples/build.sh" "$work/"
  cp -a "$repo/examples/demo" "$work/demo"
  rm -rf "$work/demo/_build" "$work/demo/priv/demo_port"
  local rel
  rel="$(CC="$cross_cc" FORCE=1 "$work/build.sh")"
  readelf -h "$rel/lib/demo-0.1.0/priv/demo_port" | grep -q 'Machine: *ARM$' \
    || die "the port program was not built for ARM"
  pack "$rel" "${1:-}"
}

cmd="${1:-}"; shift || true
outfile=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -o) outfile="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
case "$cmd" in
  example) example "$outfile" ;;
  pack) [ ${#args[@]} -eq 1 ] || die "usage: $0 pack RELEASE_DIR [-o OUT]"; pack "${args[0]}" "$outfile" ;;
  *) echo "usage: $0 example [-o OUT] | pack RELEASE_DIR [-o OUT]" >&2; exit 2 ;;
esac
