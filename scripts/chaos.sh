#!/usr/bin/env bash
# The randomized fault run (tests/chaos): real v2ray-core, PostgreSQL and the
# collector binary, with kill -9, restarts, database stops and a proxy that
# stalls, refuses and cuts connections (also around COMMIT). Prints every
# event, the events survived and the bytes compared; exits non-zero unless the
# database equals v2ray-core's counters exactly at the end.
#
#   scripts/chaos.sh [--minutes N | --seconds N] [--seed S]
#
# Default: 10 minutes, a random seed (printed first; --seed S replays the
# same decisions). CI runs a short one through CTest: ctest -L chaos.
# BUILD_DIR (default build) is where it builds; JOBS its parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
args=("$@")
if [ ${#args[@]} -eq 0 ]; then args=(--minutes 10); fi
cmake -S . -B "$build_dir" -G Ninja >/dev/null
ninja -C "$build_dir" -j"${JOBS:-2}" boxmeter-chaos boxmeter-collector
exec "$build_dir/tests/chaos/boxmeter-chaos" "${args[@]}"
