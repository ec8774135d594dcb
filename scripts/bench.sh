#!/usr/bin/env bash
# The poll-cycle benchmark, end to end: builds boxmeter-bench and the
# fake-stats-server in Release (in build-bench/, or $BUILD_DIR), then runs it
# on a throwaway PostgreSQL 15 for 10k, 100k and 1M stats and prints the
# tables of BENCHMARKS.md. They are also written to $OUTPUT (default
# build-bench/bench-results.md). Takes 10-20 minutes on two cores.
#
#   scripts/bench.sh                              everything
#   scripts/bench.sh --stats 100000 --polls 3     boxmeter-bench's options
#   scripts/bench.sh --help                       what they are
#
# Needs the build dependencies (scripts/install-deps.sh) and postgresql-15.
# Run it on a quiet machine: its figures are wall times, and the tables show
# the load average at the start and the end.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build-bench}
output=${OUTPUT:-$build_dir/bench-results.md}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$build_dir" boxmeter-bench
bench="$build_dir/tests/bench/boxmeter-bench"
for arg in "$@"; do
  if [[ $arg == --help || $arg == -h ]]; then exec "$bench" --help; fi
done
mkdir -p "$(dirname "$output")"
"$bench" --output "$output" "$@"
echo "written to $output"
