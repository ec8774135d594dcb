#!/usr/bin/env bash
# boxmeter for real: installs what it needs (as root, from Debian's archive,
# only what is missing), builds, then runs boxmeter-demo: a throwaway
# PostgreSQL, a real v2ray-core with real traffic pushed through it by curl,
# and boxmeter-collector between them; prints the user_traffic view next to
# v2ray-core's own counters, checked to the byte. Says what it does at each
# step and how long the whole run took; a second run skips what is done.
# --keep (passed to boxmeter-demo): leave PostgreSQL and v2ray-core running
# at the end, with commands to try against them, until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
build_dir=${BUILD_DIR:-build}
say() { echo "==> $*"; }

if [ "$(id -u)" -eq 0 ]; then
  say "checking the Debian packages the demo needs"
  scripts/install-deps.sh demo | sed 's/^/    /'
else
  say "not root: not installing packages (scripts/install-deps.sh demo lists them)"
fi

say "configuring the build in $build_dir/ (cmake)"
cmake -S . -B "$build_dir" -G Ninja >"$build_dir.configure.log" 2>&1 || {
  tail -20 "$build_dir.configure.log" >&2
  exit 1
}
rm -f "$build_dir.configure.log"
say "building the collector and the demo (ninja; the first build takes a few minutes)"
# ninja's "[done/total]" lines, one per tenth of the build; its errors as
# they are.
NINJA_STATUS='[%f/%t] ' ninja -C "$build_dir" boxmeter-demo 2>&1 |
  awk '
    /^ninja: Entering directory/ || /Re-checking globbed|Re-running CMake/ { next }
    /^ninja: no work to do/ { next }
    /^\[[0-9]+\/[0-9]+\] / {
      split(substr($1, 2, length($1) - 2), n, "/")
      tenth = int(n[1] * 10 / n[2])
      if (n[2] > 2 && tenth > shown) { shown = tenth; printf "    built %d of %d\n", n[1], n[2]; fflush() }
      next
    }
    { print; fflush() }
    END { if (!shown) print "    the build is current" }'
say "ready after $((SECONDS - started)) s; running boxmeter-demo"
status=0
"$build_dir/tests/boxmeter-demo" "$@" || status=$?
say "the whole run took $((SECONDS - started)) s"
exit "$status"
