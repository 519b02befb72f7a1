#!/usr/bin/env bash
# Builds the qemu-arm board base image from pinned Debian armhf packages, without running any ARM
# code: each .deb is unpacked with dpkg-deb -x (no maintainer scripts).
#
#   build.sh [image]   build $OUT/image/{vmlinuz,initrd.img,root.squashfs,data-empty.ext4}, unless
#                      the image there was built from the same recipe (FORCE=1: build anyway)
#   build.sh debs      only fetch and verify the pinned .debs (fills the cache)
#   build.sh lock      re-pin: write packages.lock from the mirror's current versions of packages.in
#   build.sh tools     only install the host tools
#
# Env: RELSYNC_QEMU_ARM_OUT (default targets/qemu-arm/_build), XDG_CACHE_HOME (the .deb cache is
#      $XDG_CACHE_HOME/relsync/qemu-arm/debs), SOURCE_DATE_EPOCH (default: fixed, see below),
#      DATA_SIZE (size of the empty data disk, default 64M), RELSYNC_QEMU_ARM_LOCK (another lock file),
#      RELSYNC_QEMU_ARM_STRICT=1 (fail, after building, when a pinned version had to be replaced).
# The image files are bit-for-bit reproducible: same packages.lock + same overlay = same sha256.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd -P)"
repo="$(cd "$here/../.." && pwd -P)"
out_root="${RELSYNC_QEMU_ARM_OUT:-$here/_build}"
out="$out_root/image"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/relsync/qemu-arm/debs"
lock="${RELSYNC_QEMU_ARM_LOCK:-$here/packages.lock}"  # override: tests of the fallback
# A fixed date (2023-11-14): every file in the images gets it. Change it and the hashes change.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1700000000}"
data_size="${DATA_SIZE:-64M}"
# Modules the initramfs loads (dependencies are added from each module's .modinfo).
# crc32c_generic is only a soft dependency of ext4/jbd2, so it is named here.
modules=(virtio_mmio virtio_blk virtio_net virtio-rng squashfs crc32c_generic ext4)

log() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: ERROR: $*" >&2; exit 1; }
loud() {
  {
    echo
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    printf '!!! %s\n' "$@"
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo
  } >&2
}
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else
    die "needs root; run: sudo $*"
  fi
}

# ---------------------------------------------------------------------------------------------
# Host tools
# ---------------------------------------------------------------------------------------------
# command -> Debian package providing it (on the host, amd64)
host_tools=(
  qemu-system-arm:qemu-system-arm mksquashfs:squashfs-tools cpio:cpio mkfs.ext4:e2fsprogs
  zstd:zstd readelf:binutils gzip:gzip dpkg-deb:dpkg sha256sum:coreutils
)
ensure_tools() {
  local missing=() t
  for t in "${host_tools[@]}"; do
    command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing host tools: ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then
    die "missing host tools; run: sudo apt-get install -y --no-install-recommends ${missing[*]}"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
    || { apt-get update >&2 || true
         DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
}

# armhf must be a foreign architecture with package lists, or apt-get download finds nothing.
ensure_armhf() {
  if ! dpkg --print-foreign-architectures | grep -qx armhf; then
    log "adding the armhf architecture (dpkg --add-architecture armhf)"
    as_root dpkg --add-architecture armhf
    apt_update
  elif [ -z "$(candidate busybox-static)" ]; then
    apt_update
  fi
  [ -n "$(candidate busybox-static)" ] || die "no armhf package lists even after apt-get update"
}
apt_update() {
  log "apt-get update"
  # A partial failure (e.g. one index mid-sync on the mirror) is not fatal: what is pinned is
  # checked by SHA-256 anyway.
  as_root apt-get update >&2 || log "WARNING: apt-get update reported errors (continuing)"
}

# ---------------------------------------------------------------------------------------------
# Packages: resolve, download, verify
# ---------------------------------------------------------------------------------------------
candidate() { # PKG -> the mirror's current armhf version (empty if none)
  apt-cache policy "$1:armhf" 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '(none)' || true
}
kernel_pkg() { # the linux-image-<abi>-armmp the meta package currently points to
  apt-cache depends "linux-image-armmp:armhf" 2>/dev/null \
    | sed -n 's/^ *Depends: \(linux-image-[0-9].*-armmp\)\(:armhf\)\?$/\1/p' | head -n1
}
resolve_current() { # NAME -> "name version" as the mirror has it now
  local name="$1" v
  case "$name" in
    linux-image-armmp|linux-image-*-armmp)
      local k; k="$(kernel_pkg)"; [ -n "$k" ] || die "cannot resolve linux-image-armmp:armhf"
      if [ "$name" = linux-image-armmp ] || [ -z "$(candidate "$name")" ]; then name="$k"; fi ;;
  esac
  v="$(candidate "$name")"
  [ -n "$v" ] || die "no armhf candidate for $name"
  echo "$name $v"
}
deb_path() { echo "$cache/${1}_${2//:/%3a}_armhf.deb"; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

download() { # NAME=VERSION... into the cache; return non-zero if apt-get failed
  local tmp rc=0 f
  tmp="$(mktemp -d "$cache/.dl.XXXXXX")"
  (cd "$tmp" && apt-get -o APT::Sandbox::User=root download "$@" >/dev/null 2>"$tmp/.err") \
    || rc=$?
  if [ $rc -ne 0 ]; then sed 's/^/  apt-get: /' "$tmp/.err" >&2; fi
  for f in "$tmp"/*.deb; do [ -e "$f" ] && mv -f "$f" "$cache/"; done
  rm -rf "$tmp"
  return $rc
}

# Fills arrays PKG_NAMES, PKG_FILES in lock order; warns loudly about drift.
fetch_debs() {
  [ -f "$lock" ] || die "$lock missing: run '$0 lock' to create it"
  mkdir -p "$cache"
  PKG_NAMES=(); PKG_FILES=()
  local names=() versions=() shas=() name version sha
  while read -r name version sha; do
    case "$name" in ''|'#'*) continue;; esac
    names+=("$name"); versions+=("$version"); shas+=("$sha")
  done < "$lock"
  # 1. What is not cached (or not matching) is fetched in one apt-get call.
  local want=() i f
  for i in "${!names[@]}"; do
    f="$(deb_path "${names[$i]}" "${versions[$i]}")"
    if [ -f "$f" ] && [ "$(sha_of "$f")" = "${shas[$i]}" ]; then continue; fi
    rm -f "$f"
    want+=("${names[$i]}:armhf=${versions[$i]}")
  done
  if [ ${#want[@]} -gt 0 ]; then
    ensure_armhf
    log "downloading ${#want[@]} pinned package(s) into $cache"
    download "${want[@]}" || {
      log "one apt-get call failed; retrying package by package"
      for w in "${want[@]}"; do download "$w" || true; done
    }
  fi
  # 2. Verify; fall back to the mirror's current version when a pinned one is gone.
  local drift=() cur cname cver
  for i in "${!names[@]}"; do
    name="${names[$i]}"; version="${versions[$i]}"; sha="${shas[$i]}"
    f="$(deb_path "$name" "$version")"
    if [ -f "$f" ]; then
      local got; got="$(sha_of "$f")"
      if [ "$got" != "$sha" ]; then
        rm -f "$f"
        die "SHA-256 mismatch for $name $version: expected $sha, got $got (file removed)"
      fi
    else
      cur="$(resolve_current "$name")"; cname="${cur% *}"; cver="${cur#* }"
      loud "PINNED PACKAGE NOT AVAILABLE: $name:armhf=$version" \
           "falling back to the mirror's current $cname:armhf=$cver (NOT verified by the lock)"
      f="$(deb_path "$cname" "$cver")"
      [ -f "$f" ] || download "$cname:armhf=$cver" || die "cannot download $cname:armhf=$cver"
      drift+=("$cname $cver $(sha_of "$f")")
      name="$cname"
    fi
    PKG_NAMES+=("$name"); PKG_FILES+=("$f")
  done
  if [ ${#drift[@]} -gt 0 ]; then
    loud "packages.lock is OUT OF DATE: the build used unpinned versions (image NOT reproducible" \
         "against the lock). Update $lock with these lines (or run '$0 lock'):" "${drift[@]}"
    DRIFT=1
  fi
}

write_lock() {
  ensure_armhf
  mkdir -p "$cache"
  local lines=() specs=() name cur f
  while read -r name; do
    case "$name" in ''|'#'*) continue;; esac
    cur="$(resolve_current "$name")"
    lines+=("$cur"); specs+=("${cur% *}:armhf=${cur#* }")
  done < "$here/packages.in"
  local need=() l
  for l in "${lines[@]}"; do [ -f "$(deb_path "${l% *}" "${l#* }")" ] || need+=("${l% *}:armhf=${l#* }"); done
  [ ${#need[@]} -eq 0 ] || download "${need[@]}"
  {
    echo "# Pinned armhf packages of the qemu-arm board image: name version sha256."
    echo "# Written by 'targets/qemu-arm/build.sh lock' from packages.in; checked on every build."
    for l in "${lines[@]}"; do
      f="$(deb_path "${l% *}" "${l#* }")"
      echo "$l $(sha_of "$f")"
    done
  } > "$lock.tmp"
  mv "$lock.tmp" "$lock"
  log "wrote $lock"; cat "$lock" >&2
}

# ---------------------------------------------------------------------------------------------
# Image
# ---------------------------------------------------------------------------------------------
# Busybox applets linked into the root (the ARM busybox cannot be asked at build time).
applets_bin="sh ash cat chmod chown cp date dd df dmesg echo egrep false fgrep grep gunzip gzip
  hostname kill ln ls mkdir mknod mktemp more mount mv nc netstat pidof ping ps pwd rm rmdir sed
  sleep stty sync tar touch true umount uname vi zcat"
applets_sbin="halt poweroff reboot init ifconfig ip route insmod rmmod lsmod modprobe switch_root
  blkid fsck mdev hwclock getty klogd syslogd swapoff"
applets_usr_bin="awk basename clear cmp cut diff dirname du env expr find free head hexdump id
  install killall less logname md5sum mkfifo nohup nproc od printf readlink realpath reset seq
  sha256sum sort stat strings tail tee telnet test time timeout top tr tty uniq unzip uptime wc wget
  which whoami xargs yes [ [["
applets_initramfs="sh mount umount insmod switch_root mkdir cat sleep echo ls ln"

# Index of the kernel's modules (name with '-' folded to '_' -> path).
declare -A MOD_PATH=()
index_modules() {
  local f n
  while IFS=$'\t' read -r n f; do
    n="${n%.ko}"; MOD_PATH["${n//-/_}"]="$f"
  done < <(find "$1" -name '*.ko' -printf '%f\t%p\n')
}
mod_deps() { readelf -p .modinfo "$1" 2>/dev/null | sed -n 's/.*\]  depends=//p' | tr ',' ' '; }
declare -A MOD_SEEN=()
MOD_ORDER=()
add_module() { # depth-first: dependencies first
  local n="${1//-/_}" d
  [ -n "${MOD_SEEN[$n]:-}" ] && return 0
  MOD_SEEN[$n]=1
  [ -n "${MOD_PATH[$n]:-}" ] || die "kernel module $1 not found (built in? check modules.builtin)"
  for d in $(mod_deps "${MOD_PATH[$n]}"); do add_module "$d"; done
  MOD_ORDER+=("$n")
}

check_needed() { # every NEEDED soname of the root's ELF files must be in the root
  local root="$1" files
  mapfile -t files < <(cd "$root" && find bin sbin usr/bin usr/sbin lib usr/lib \
      \( -path 'usr/lib/erlang/*/bin/*' -o -name '*.so' -o -name '*.so.*' \) -type f 2>/dev/null)
  local needed
  needed="$(cd "$root" && { readelf -d "${files[@]}" 2>/dev/null || true; } \
              | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u)"
  local missing=() so
  for so in $needed; do
    if ! compgen -G "$root/lib/arm-linux-gnueabihf/$so" >/dev/null \
       && ! compgen -G "$root/usr/lib/arm-linux-gnueabihf/$so" >/dev/null \
       && ! compgen -G "$root/lib/$so" >/dev/null && ! compgen -G "$root/usr/lib/$so" >/dev/null; then
      missing+=("$so")
    fi
  done
  [ ${#missing[@]} -eq 0 ] || die "shared libraries needed but not in the image: ${missing[*]} (add their packages to packages.in)"
  echo "$needed" > "$2"
}

PHASES=""
phase() { PHASES+=" $1=$(( ($(date +%s%N) - PHASE_T) / 1000000 ))ms"; PHASE_T=$(date +%s%N); }
build_image() {
  local t0=$SECONDS
  PHASE_T=$(date +%s%N)
  fetch_debs
  phase debs
  local work="$out_root/work"
  rm -rf "$work"; mkdir -p "$work/rootfs" "$work/kernel" "$work/initramfs" "$out"
  local root="$work/rootfs" i kdeb=""
  # 1. Unpack (the kernel apart: only its image and modules are used, by the initramfs).
  for i in "${!PKG_NAMES[@]}"; do
    case "${PKG_NAMES[$i]}" in
      linux-image-*) kdeb="${PKG_FILES[$i]}" ;;
      *) dpkg-deb -x "${PKG_FILES[$i]}" "$root" & ;;
    esac
  done
  [ -n "$kdeb" ] || die "no linux-image package in the lock"
  # The kernel's image and the module directories the initramfs may draw from, unpacked once
  # per verified kernel .deb (its SHA-256 names the directory).
  local kcache; kcache="$(dirname "$cache")/kernel-$(sha_of "$kdeb" | cut -c1-16)"
  if [ ! -d "$kcache" ]; then
    rm -rf "$kcache.tmp"; mkdir -p "$kcache.tmp"
    dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$kcache.tmp" --wildcards \
      './boot/vmlinuz-*' './lib/modules/*/kernel/drivers/virtio/*' \
      './lib/modules/*/kernel/drivers/block/*' './lib/modules/*/kernel/drivers/net/*' \
      './lib/modules/*/kernel/drivers/char/*' './lib/modules/*/kernel/fs/*' \
      './lib/modules/*/kernel/lib/*' './lib/modules/*/kernel/crypto/*' \
      './lib/modules/*/kernel/net/core/*'
    mv "$kcache.tmp" "$kcache"
  fi
  rmdir "$work/kernel"; ln -s "$kcache" "$work/kernel"
  wait
  phase unpack
  # 2. Prune what a board never reads.
  rm -rf "$root"/usr/share/{doc,man,info,locale,lintian,bug,bash-completion,gcc} \
         "$root"/usr/lib/erlang/man "$root"/usr/lib/erlang/lib/*/{src,examples,doc,c_src} \
         "$root"/usr/lib/erlang/lib/erl_interface-*/{lib,include} "$root"/usr/lib/erlang/usr \
         "$root"/usr/lib/arm-linux-gnueabihf/gconv "$root"/usr/lib/arm-linux-gnueabihf/audit \
         "$root"/usr/libexec/getconf "$root"/usr/share/erlang/man "$root"/boot "$root"/lib/modules
  find "$root/usr/share" -mindepth 1 -maxdepth 1 -empty -delete 2>/dev/null || true
  # 3. Busybox applets, mount points, overlay.
  local a
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,var,data,srv/erlang,mnt,etc}
  for a in $applets_bin; do [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"; done
  for a in $applets_sbin; do [ -e "$root/sbin/$a" ] || ln -s ../bin/busybox "$root/sbin/$a"; done
  for a in $applets_usr_bin; do [ -e "$root/usr/bin/$a" ] || ln -s ../../bin/busybox "$root/usr/bin/$a"; done
  ln -sfn /data "$root/root"                    # HOME=/root is the writable partition (as Nerves)
  cp -a "$here/overlay/." "$root/"
  cp "$here/../common/relsync-boot" "$root/usr/sbin/relsync-boot"  # shared with docker-otp
  (cd "$here/overlay" && find . -type d) | (cd "$root" && xargs chmod 0755)
  chmod 0755 "$root/etc/init.d/rcS" "$root/etc/init.d/rcK" "$root/usr/sbin/relsync-node" \
    "$root/usr/sbin/relsync-boot"
  chmod 0644 "$root"/etc/{inittab,passwd,group,hosts,hostname,profile}
  chmod 1777 "$root/tmp"
  # relsyncd's beams (architecture-independent), so ssh mode works beside any release.
  "$repo/relsyncd/build.sh" "$root/opt/relsyncd/ebin"
  chmod 0755 "$root/opt" "$root/opt/relsyncd" "$root/opt/relsyncd/ebin"
  chmod 0644 "$root"/opt/relsyncd/ebin/*
  # 4. Every NEEDED library must be there (ldd without running ARM code).
  phase prune+overlay
  check_needed "$root" "$work/needed.txt"
  (cd "$root" && find lib usr/lib -name '*.so*' \( -type f -o -type l \) -printf '%f\n' | sort -u) \
    > "$work/provided-libs.txt"
  phase needed
  # 5. Initramfs: static busybox, the modules (dependencies first), /init.
  local kroot kver ir="$work/initramfs"
  kroot="$(echo "$work"/kernel/lib/modules/*)"; kver="$(basename "$kroot")"
  index_modules "$kroot"
  for a in "${modules[@]}"; do add_module "$a"; done
  mkdir -p "$ir"/{bin,dev,proc,sys,newroot,lib/modules}
  cp "$root/bin/busybox" "$ir/bin/busybox"
  for a in $applets_initramfs; do ln -s busybox "$ir/bin/$a"; done
  for a in "${MOD_ORDER[@]}"; do cp "${MOD_PATH[$a]}" "$ir/lib/modules/$a.ko"; done
  printf '%s\n' "${MOD_ORDER[@]}" > "$ir/lib/modules/load-order"
  cp "$here/initramfs/init" "$ir/init"; chmod 0755 "$ir/init"
  mknod -m 0600 "$ir/dev/console" c 5 1
  phase initramfs-tree
  # 6. Reproducible archives: fixed times, root owner, sorted entries.
  find "$root" "$ir" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  phase touch
  (cd "$ir" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
     | cpio --null --reproducible -o -H newc --owner=0:0 --quiet) | gzip -n -9 > "$work/initrd.img"
  mksquashfs "$root" "$work/root.squashfs" -noappend -all-root -no-xattrs -comp zstd -Xcompression-level 9 \
    -no-progress -quiet >&2
  phase initrd+squashfs
  cp "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"
  # 7. The empty data partition (copied per board by run.sh; a board's copy keeps its /data).
  truncate -s "$data_size" "$work/data-empty.ext4"
  E2FSPROGS_FAKE_TIME="$SOURCE_DATE_EPOCH" mkfs.ext4 -q -F -L data -m 0 -b 4096 \
    -U 6b2c1d7e-0000-4000-8000-00000000da7a -E hash_seed=6b2c1d7e-0000-4000-8000-00000000da7a,root_owner=0:0,lazy_itable_init=0,nodiscard \
    "$work/data-empty.ext4" >&2
  phase data
  # 8. Publish.
  for f in vmlinuz initrd.img root.squashfs data-empty.ext4 needed.txt provided-libs.txt; do
    mv -f "$work/$f" "$out/$f"
  done
  {
    echo "# qemu-arm board image; SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH kernel=$kver"
    for i in "${!PKG_NAMES[@]}"; do echo "${PKG_NAMES[$i]} $(basename "${PKG_FILES[$i]}")"; done
    echo "# modules: ${MOD_ORDER[*]}"
  } > "$out/manifest.txt"
  echo "$kver" > "$out/kernel-version"
  (cd "$out" && sha256sum vmlinuz initrd.img root.squashfs data-empty.ext4 > SHA256SUMS)
  rm -rf "$work"
  phase publish
  log "image built in $((SECONDS - t0)) s in $out;$PHASES"
  (cd "$out" && ls -l --block-size=K vmlinuz initrd.img root.squashfs data-empty.ext4 \
     | awk '{print "  " $5 "\t" $9}' && du -k --apparent-size data-empty.ext4 >/dev/null) >&2
  sed 's/^/  /' "$out/SHA256SUMS" >&2
  if [ "${DRIFT:-0}" != 0 ]; then
    loud "REMINDER: built with unpinned package versions (see above)"
    [ "${RELSYNC_QEMU_ARM_STRICT:-0}" = 0 ] || die "RELSYNC_QEMU_ARM_STRICT=1: failing on the drift"
  fi
  echo "$out"
}

# Everything the image is made from: an image built from the same recipe is not built again.
recipe_hash() {
  { echo "epoch=$SOURCE_DATE_EPOCH data=$data_size modules=${modules[*]}"
    cat "$lock" "$here/build.sh" "$here/../common/relsync-boot"
    (cd "$here" && find overlay initramfs -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    (cd "$repo" && find relsyncd/src relsyncd/build.sh -type f -print0 | LC_ALL=C sort -z \
       | xargs -0 sha256sum)
  } | sha256sum | cut -c1-16
}
up_to_date() {
  local f
  for f in vmlinuz initrd.img root.squashfs data-empty.ext4 provided-libs.txt; do
    [ -f "$out/$f" ] || return 1
  done
  [ "$(cat "$out/recipe" 2>/dev/null)" = "$(recipe_hash)" ]
}

cmd="${1:-image}"
case "$cmd" in
  tools) ensure_tools ;;
  debs) ensure_tools; fetch_debs; printf '%s\n' "${PKG_FILES[@]}" ;;
  lock) ensure_tools; write_lock ;;
  image)
    ensure_tools
    if [ "${FORCE:-0}" != 1 ] && up_to_date; then
      log "image up to date in $out (recipe $(cat "$out/recipe"))"; echo "$out"
    else
      build_image; recipe_hash > "$out/recipe"
    fi ;;
  *) echo "usage: $0 [image|debs|lock|tools]" >&2; exit 2 ;;
esac
