#!/usr/bin/env bash
# The whole test suite: builds, then runs every test with CTest. Unit tests
# need nothing; integration tests start their own throwaway PostgreSQL,
# v2ray-core and collector processes on loopback and remove them afterwards.
#
#   scripts/test.sh                  everything
#   scripts/test.sh -L integration   only the integration tests (ctest args)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
build_dir=${BUILD_DIR:-build}
ctest --test-dir "$build_dir" --output-on-failure -j2 "$@"
