#!/usr/bin/env bash
# boxmeter for real: installs what it needs (as root, from Debian's archive),
# builds, then runs boxmeter-demo: a throwaway PostgreSQL, a real v2ray-core
# with real traffic pushed through it by curl, and boxmeter-collector between
# them; prints the user_traffic view next to v2ray-core's own counters.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then
  scripts/install-deps.sh test >/dev/null
fi
scripts/build.sh >/dev/null
exec "${BUILD_DIR:-build}/tests/boxmeter-demo"
