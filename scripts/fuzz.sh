#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang into build-fuzz and
# runs each for SECONDS (default 30), starting from the seed corpus in
# tests/fuzz/corpus/<target>/. New inputs that reach new code go to
# build-fuzz/corpus/<target>/ (not the repo); a crash is saved as
# build-fuzz/artifacts/<target>/crash-* and fails the run.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Reproduce a crash:  build-fuzz/tests/fuzz/<target> <crash file>
# Then add the input as a regression test (tests/fuzz_regression_test.cc).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(counter_name_fuzz duration_fuzz config_fuzz generator_fuzz
    stats_reply_fuzz)
fi
build_dir=${FUZZ_BUILD_DIR:-build-fuzz}
jobs=${JOBS:-2}

CC=clang CXX=clang++ cmake -S . -B "$build_dir" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBOXMETER_TESTS=OFF \
  -DBOXMETER_FUZZ=ON \
  -DBOXMETER_SANITIZE=fuzzer-no-link,address,undefined >/dev/null
ninja -C "$build_dir" -j"$jobs" "${targets[@]}"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
failed=()
for target in "${targets[@]}"; do
  corpus="$build_dir/corpus/$target"
  artifacts="$build_dir/artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  echo "=== $target: ${seconds}s"
  log="$build_dir/artifacts/$target.log"
  # -rss_limit_mb: a target must not need more than this for one input;
  # -timeout: nor take longer than this.
  if "$build_dir/tests/fuzz/$target" "$corpus" "tests/fuzz/corpus/$target" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$log" | tail -2
  else
    failed+=("$target")
    tail -60 "$log"
    echo "=== $target FAILED: see $log and $artifacts/"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} target(s) found a problem: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets clean after ${seconds}s each"
