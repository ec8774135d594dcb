# Sourced by scripts/image-test.sh and scripts/systemd-test.sh: a Debian 12
# root file system from debootstrap, cached on this machine between runs.
#
#   ci_rootfs NAME [PACKAGE...]   prints the cached tree's path, making it
#                                 first if missing (debootstrap
#                                 --variant=minbase bookworm, plus PACKAGEs)
#
# The cache lives in $BOXMETER_CI_CACHE (default /var/cache/boxmeter-ci), one
# directory per NAME and package list, so a changed list makes a new tree
# instead of reusing a stale one. A half-made tree (debootstrap interrupted)
# is never used: it is built under a temporary name and renamed when done.
# Needs root and Debian's archive (the mirror apt uses here).

ci_cache_dir() { echo "${BOXMETER_CI_CACHE:-/var/cache/boxmeter-ci}"; }

ci_rootfs() {
  local name=$1
  shift
  local packages key dir mirror
  packages=$(printf '%s\n' "$@" | sort -u | paste -sd, -)
  key=$(printf '%s' "$packages" | md5sum | cut -c1-12)
  dir="$(ci_cache_dir)/rootfs-$name-$key"
  if [ -x "$dir/bin/sh" ]; then
    echo "ci-rootfs: using the cached Debian 12 tree $dir" >&2
    echo "$dir"
    return 0
  fi
  mkdir -p "$(ci_cache_dir)"
  rm -rf "$dir.partial"
  mirror=${BOXMETER_CI_MIRROR:-http://deb.debian.org/debian}
  echo "ci-rootfs: making a Debian 12 tree with debootstrap (minbase${packages:+, plus $packages}) in $dir; kept for later runs" >&2
  if ! debootstrap --variant=minbase ${packages:+--include="$packages"} \
    bookworm "$dir.partial" "$mirror" >"$(ci_cache_dir)/debootstrap-$name.log" 2>&1; then
    echo "ci-rootfs: debootstrap failed; the end of $(ci_cache_dir)/debootstrap-$name.log:" >&2
    tail -20 "$(ci_cache_dir)/debootstrap-$name.log" >&2
    rm -rf "$dir.partial"
    return 1
  fi
  # No package caches or lists in the tree: they are only size.
  rm -rf "$dir.partial"/var/cache/apt/archives/*.deb "$dir.partial"/var/lib/apt/lists/*
  mv "$dir.partial" "$dir"
  echo "$dir"
}
