#!/usr/bin/env bash
# A fleet into one database: N nodes, each a fake-stats-server with its own
# users and traffic and a real boxmeter-collector, writing into one
# throwaway PostgreSQL 15, optionally through a real PgBouncer in
# transaction pooling mode. Not part of CI: it runs for minutes and loads
# the machine.
#
#   scripts/fleet.sh [--nodes N] [--users U] [--active-percent P]
#                    [--interval S] [--seconds D] [--pgbouncer]
#                    [--pool-size K] [--max-connections M] [--fsync on|off]
#                    [--hook on|off] [--keep]
#
# Defaults: 50 nodes, 2000 users each, 10% of them active per poll (80% to
# 120% of that per node, and each node its own bytes per user), a 10 s poll
# interval, 120 s measured after a warm-up in which every node commits once.
# --pgbouncer: every collector connects through PgBouncer, pool_mode
# transaction, default_pool_size = max_db_connections = K (default
# min(10, N-1)), fewer server connections than collectors. max_connections
# defaults to N+20 direct (at least 100) and 100 through PgBouncer. fsync is
# on unless --fsync off. The users table holds U users linked to every
# node's inbound, and each collector has an on_users_changed hook (`true`),
# so that every commit reads its node's users fingerprint as when deployed;
# --hook off leaves the hook out.
#
# Prints commit latency (median, p99, max) per node and overall, from the
# collectors' debug lines "committed N counters (commit S) in X ms" (exact,
# unlike the /metrics histogram's buckets); PostgreSQL's CPU (its processes'
# /proc times), the collectors' and the fakes'; connections and lock waits
# sampled from pg_stat_activity every second (and PgBouncer's waiting
# clients); WAL per second (pg_current_wal_lsn deltas); table and index
# growth; the statements PostgreSQL spent its time on (pg_stat_statements).
# Then it stops the traffic, lets the collectors commit, and exits
# non-zero unless every node's counters in the database equal its fake's.
# Everything is on 127.0.0.1 in one temporary directory; every process and
# the directory are removed on exit, also on SIGINT/SIGTERM (--keep keeps
# the directory, with every collector's log).
# BUILD_DIR (default build) is where it builds; JOBS its parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja >/dev/null
ninja -C "$build_dir" -j"${JOBS:-2}" boxmeter-collector fake-stats-server \
  >/dev/null
exec python3 "$root/scripts/lib/fleet.py" \
  --collector "$root/$build_dir/collector/boxmeter-collector" \
  --fake "$root/$build_dir/tests/fake-stats-server" "$@"
