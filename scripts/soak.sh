#!/usr/bin/env bash
# Soak: one collector polling a million counters every second, for a while,
# with its resident memory sampled and printed. Shows whether memory grows
# once the collector has warmed up (seen every counter, committed the first
# rounds). Not part of CI: it runs for MINUTES (default 10) and keeps a core
# busy.
#
#   scripts/soak.sh [MINUTES] [COUNTERS] [FRACTION]
#
# fake-stats-server serves COUNTERS (default 1000000) synthetic counters and
# adds traffic to FRACTION (default 0.01) of them every second; a throwaway
# PostgreSQL 15 takes the commits. Every SAMPLE seconds (default 10) one line:
# elapsed time, the collector's RSS, commits so far and counters in the
# database. At the end: RSS at the end of warm-up (the first WARMUP seconds,
# default 120) against the maximum after it; exits non-zero if memory grew by
# more than 10% (and 16 MiB) after warm-up, or nothing was committed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
minutes=${1:-10}
counters=${2:-1000000}
fraction=${3:-0.01}
sample=${SAMPLE:-10}
warmup=${WARMUP:-120}
build_dir=${BUILD_DIR:-build}
pg_bin=/usr/lib/postgresql/15/bin

cmake -S . -B "$build_dir" -G Ninja >/dev/null
ninja -C "$build_dir" -j"${JOBS:-2}" boxmeter-collector fake-stats-server
collector_bin="$root/$build_dir/collector/boxmeter-collector"
fake_bin="$root/$build_dir/tests/fake-stats-server"

work=$(mktemp -d "${TMPDIR:-/tmp}/boxmeter-soak-XXXXXX")
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres: "$work"
  as_pg=(runuser -u postgres --)
fi
pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
collector_pid=""
cleanup() {
  if [ -n "$collector_pid" ]; then
    kill "$collector_pid" 2>/dev/null && wait "$collector_pid" 2>/dev/null || true
  fi
  [ -n "${fake_pid:-}" ] && kill "$fake_pid" 2>/dev/null || true
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/data" -m immediate -w stop \
    >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"${as_pg[@]}" "$pg_bin/initdb" -D "$work/data" -A trust -U postgres \
  --no-sync -E UTF8 --locale=C >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/data" -l "$work/pg.log" -w -o \
  "-c listen_addresses=127.0.0.1 -p $pg_port -c unix_socket_directories=$work -c fsync=off" \
  start >/dev/null
psql() { "$pg_bin/psql" -X -A -t -q -h 127.0.0.1 -p "$pg_port" -U postgres "$@"; }
psql -d postgres -c "CREATE DATABASE soak"

# fake-stats-server reads commands on stdin and answers each on stdout.
coproc FAKE { "$fake_bin" --listen 127.0.0.1:0; }
fake_pid=$FAKE_PID
read -r -u "${FAKE[0]}" _ address
fake() {
  echo "$*" >&"${FAKE[1]}"
  local reply
  read -r -u "${FAKE[0]}" reply
  [ "$reply" = ok ] || { echo "fake-stats-server: $* -> $reply" >&2; exit 1; }
}
fake populate "$counters"

cat >"$work/boxmeter.yaml" <<YAML
node: soak
source:
  address: "$address"
  timeout: 30s
database:
  url: "postgresql://postgres@127.0.0.1:$pg_port/soak"
poll:
  interval: 1s
log:
  level: info
YAML
BOXMETER_DATABASE_URL= NOTIFY_SOCKET= "$collector_bin" --config "$work/boxmeter.yaml" \
  2>"$work/collector.log" &
collector_pid=$!

echo "soak: $counters counters, ${fraction} of them touched every second," \
  "polled every 1s, for ${minutes} min; collector pid $collector_pid"
printf '%8s %10s %9s %12s\n' elapsed rss_kib commits db_counters
start=$(date +%s)
end=$((start + minutes * 60))
next_sample=$start
warm_rss=""
max_after=0
samples=()
while [ "$(date +%s)" -lt "$end" ]; do
  fake touch "$fraction" 1000
  now=$(date +%s)
  if [ "$now" -ge "$next_sample" ]; then
    if ! kill -0 "$collector_pid" 2>/dev/null; then
      echo "soak: the collector died; its log:" >&2
      tail -20 "$work/collector.log" >&2
      exit 1
    fi
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$collector_pid/status")
    commits=$(psql -d soak -c "SELECT coalesce(max(commit_seq),0) FROM nodes" 2>/dev/null || echo "?")
    rows=$(psql -d soak -c "SELECT count(*) FROM counters" 2>/dev/null || echo "?")
    elapsed=$((now - start))
    printf '%7ss %10s %9s %12s\n' "$elapsed" "$rss" "$commits" "$rows"
    samples+=("$elapsed $rss")
    if [ "$elapsed" -le "$warmup" ]; then
      warm_rss=$rss
    elif [ "$rss" -gt "$max_after" ]; then
      max_after=$rss
    fi
    next_sample=$((next_sample + sample))
  fi
  sleep 1
done

commits=$(psql -d soak -c "SELECT coalesce(max(commit_seq),0) FROM nodes")
errors=$(grep -c ' error ' "$work/collector.log" || true)
echo "soak: ${commits} commits; ${errors} error lines in the collector's log"
echo "soak: RSS at the end of warm-up (${warmup}s): ${warm_rss} KiB;" \
  "maximum after it: ${max_after} KiB"
status=0
if [ "${commits:-0}" -lt 1 ]; then
  echo "soak: FAILED: nothing was committed" >&2
  status=1
fi
if [ -n "$warm_rss" ] && [ "$max_after" -gt 0 ]; then
  growth=$((max_after - warm_rss))
  if [ "$growth" -gt $((warm_rss / 10)) ] && [ "$growth" -gt 16384 ]; then
    echo "soak: FAILED: resident memory grew by ${growth} KiB after warm-up" >&2
    status=1
  else
    echo "soak: no growth after warm-up (change: ${growth} KiB)"
  fi
fi
exit $status
