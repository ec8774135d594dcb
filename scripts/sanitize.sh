#!/usr/bin/env bash
# Builds boxmeter with sanitizers and runs the tests under them:
#
#   asan  AddressSanitizer + UndefinedBehaviorSanitizer (and LeakSanitizer),
#         build-asan: every unit and integration test but the chaos run and
#         the SQL suite (boxmeter_sql_tests: what it tests runs inside
#         PostgreSQL, which no sanitizer here instruments; its C++ side, the
#         store's commit, is the PG and end-to-end tests' subject too).
#   tsan  ThreadSanitizer, build-tsan: the threaded parts: the poll loop
#         (CollectorTest), the gRPC source and the fake server, the hook
#         runner, and the end-to-end tests with the collector binary built
#         under TSan.
#
#   scripts/sanitize.sh [asan|tsan|all]     (default: all)
#
# Every instrumented process (test binaries, and the collector and
# fake-stats-server they start) writes its reports to build-*/sanitizer-logs/;
# the run fails if any report appears there or any test fails, so "clean"
# means zero reports. Suppressions (tests/sanitizers/*.supp) name only frames
# of Debian's uninstrumented libraries (gRPC, protobuf, abseil, libpq); each
# entry says why. Environment: JOBS (build parallelism, default 2),
# CTEST_JOBS (default 2), TARGETS (what to build; default: what the mode's
# tests run, so neither builds the benchmark, the demo or the chaos run).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
what=${1:-all}
jobs=${JOBS:-2}
ctest_jobs=${CTEST_JOBS:-2}
supp="$root/tests/sanitizers"

# Every test binary but the SQL suite's, and the binaries they start. Not
# building the SQL suite saves about 2 minutes of CI, running it 1.5.
asan_targets="boxmeter_unit_tests boxmeter_io_tests boxmeter_pg_tests
  boxmeter_e2e_tests boxmeter_gen_tests boxmeter_deploy_tests
  boxmeter-collector boxmeter-gen fake-stats-server"
# The binaries holding the tests run_tsan selects.
tsan_targets="boxmeter_io_tests boxmeter_e2e_tests boxmeter-collector
  fake-stats-server"

# -O1 -g1 (build type None, so that CMakeLists.txt's default RelWithDebInfo
# adds no -O2 -g after them): what the sanitizers' docs suggest, line numbers
# in every report, the tests as fast, and the ASan build in 4 minutes here
# instead of 9. The plain build (scripts/test.sh) is the
# warnings gate; here two warnings about code that is not ours are off:
# GCC 12's false "may be used uninitialized" inside libstdc++'s <regex> at
# -O1, and -Wtsan for Boost.Asio's std::atomic_thread_fence (TSan does not
# model fences; asio's queues also hold a mutex, which it does see).
configure_and_build() {  # DIR SANITIZERS TARGETS
  cmake -S . -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=None \
    -DCMAKE_CXX_FLAGS="-O1 -g1 -Wno-maybe-uninitialized -Wno-tsan" \
    -DBOXMETER_SANITIZE="$2" >/dev/null
  # shellcheck disable=SC2086
  ninja -C "$1" -j"$jobs" ${TARGETS:-$3}
}

# Fails with the reports if any process wrote one.
check_logs() {  # DIR NAME
  local logs=("$1"/sanitizer-logs/*)
  if [ -e "${logs[0]}" ]; then
    echo "=== $2: ${#logs[@]} sanitizer report file(s):" >&2
    for log in "${logs[@]}"; do
      echo "--- $log" >&2
      head -80 "$log" >&2
    done
    return 1
  fi
  echo "=== $2: no sanitizer reports"
}

run_asan() {
  local dir=build-asan
  configure_and_build "$dir" address,undefined "$asan_targets"
  # The SQL suite is not built here: one left by an earlier build would run
  # stale.
  rm -f "$dir/tests/boxmeter_sql_tests" "$dir/tests/boxmeter_sql_tests[1]_tests.cmake"
  rm -rf "$dir/sanitizer-logs" && mkdir -p "$dir/sanitizer-logs"
  local log="$root/$dir/sanitizer-logs"
  local status=0
  # Left out: the wall-clock-step tests, which start the collector under
  # libfaketime's LD_PRELOAD; ASan must be the first library loaded and
  # aborts the collector there. The plain build runs them. And the SQL
  # suite, not built (above): CTest lists it as one failing placeholder.
  ASAN_OPTIONS="log_path=$log/asan:detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1" \
  LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0" \
  UBSAN_OPTIONS="log_path=$log/ubsan:print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp" \
    ctest --test-dir "$dir" --output-on-failure -j"$ctest_jobs" -LE chaos \
    -E 'WallClockStepTest|^boxmeter_sql_tests_NOT_BUILT$' \
    || status=$?
  check_logs "$dir" "ASan+UBSan" || status=1
  return $status
}

run_tsan() {
  local dir=build-tsan
  configure_and_build "$dir" thread "$tsan_targets"
  rm -rf "$dir/sanitizer-logs" && mkdir -p "$dir/sanitizer-logs"
  local log="$root/$dir/sanitizer-logs"
  local status=0
  # The threaded parts: the poll loop with its database worker, the gRPC
  # callbacks, the fake server, the hook runner's waiter, the metrics
  # endpoint's thread (CollectorMetrics*, MetricsServer*), and the binary.
  # Left out: the tests of reply size (200,000 and a million counters: TSan
  # makes them take many minutes, and ASan runs them), and the 2 MB hostile
  # counter name: gRPC copies it in its uninstrumented threads, and TSan
  # symbolizes and suppresses one race report per word of it (1 s without
  # suppressions, over 60 s with them); and the fake StatsService's reload
  # storm, whose 1-2 s instances must each be polled several times at 200 ms
  # (a collector slowed down several times by TSan stretches its polls past
  # that; the plain and the ASan runs keep it).
  TSAN_OPTIONS="log_path=$log/tsan:halt_on_error=0:second_deadlock_stack=1:suppressions=$supp/tsan.supp" \
    ctest --test-dir "$dir" --output-on-failure -j"$ctest_jobs" -LE chaos \
    -R '^(Collector|GrpcStatsSource|FakeStatsServer|HookRunner|Hostile|MetricsServer)' \
    -E '(Million|TwoHundredThousand|AHostileCounterName|ReloadStormWithRising)' \
    || status=$?
  check_logs "$dir" "TSan" || status=1
  return $status
}

status=0
case "$what" in
  asan) run_asan || status=$? ;;
  tsan) run_tsan || status=$? ;;
  all)
    run_asan || status=$?
    run_tsan || status=$?
    ;;
  *)
    echo "usage: $0 [asan|tsan|all] (got \"$what\")" >&2
    exit 64
    ;;
esac
exit $status
