#!/usr/bin/env bash
# The whole test suite: builds, then runs every test with CTest. Unit tests
# need nothing; integration tests start their own throwaway PostgreSQL,
# v2ray-core and collector processes on loopback and remove them afterwards.
#
#   scripts/test.sh                  everything
#   scripts/test.sh -L integration   only the integration tests (ctest args)
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
echo "==> building into $build_dir/ (scripts/build.sh: cmake, ninja)"
scripts/build.sh
if [ $# -gt 0 ]; then
  echo "==> running the tests: ctest --test-dir $build_dir -j2 $*"
  exec ctest --test-dir "$build_dir" --output-on-failure -j2 "$@"
fi
# Everything but the two chaos runs, then those two with their events shown
# as they happen (ctest -V prefixes each line with the test's number), so a
# run of several minutes shows progress. Both parts always run.
status=0
echo "==> running the tests but the chaos runs: ctest --test-dir $build_dir" \
  "-j2 -LE chaos"
ctest --test-dir "$build_dir" --output-on-failure -j2 -LE chaos || status=$?
echo "==> the two chaos runs (2 to 3 minutes each), their events as they" \
  "happen: ctest --test-dir $build_dir -j2 -L chaos -V"
ctest --test-dir "$build_dir" --output-on-failure -j2 -L chaos -V || status=$?
if [ "$status" -ne 0 ]; then
  echo "==> some tests FAILED (see above)" >&2
fi
exit "$status"
