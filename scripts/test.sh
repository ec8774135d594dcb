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
echo "==> running the tests: ctest --test-dir $build_dir -j2 $* (the two" \
  "chaos runs, labelled chaos, take 2 to 3 minutes each and print their" \
  "events when they fail; scripts/chaos.sh shows them as they happen)"
ctest --test-dir "$build_dir" --output-on-failure -j2 "$@"
