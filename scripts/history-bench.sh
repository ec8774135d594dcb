#!/usr/bin/env bash
# The benchmark of the partitioned hourly history (issue 15): retention and
# the cookbook's reports over a large counter_hourly, before and after
# schema/0016_partitioned_history.sql. Not a test: the figures depend on the
# machine and its load (printed with them).
#
#   scripts/history-bench.sh                      50,000,000 hourly rows
#   HOURLY_ROWS=2000000 USERS=5000 scripts/history-bench.sh    a quick run
#   SCHEMA_REV=<commit> scripts/history-bench.sh  "before" is that commit's
#                                     schema (default: the commit before
#                                     0016 was added)
#   SIDES=before scripts/history-bench.sh   one side only (before or after;
#                                     two runs with one side each can go
#                                     side by side, each its own server)
#
# Each side is a throwaway PostgreSQL 15 with issue 12's data set
# (scripts/sql-bench.sh KEEP=1 TIMINGS=0: USERS users, one user counter per
# user and node), whose history is then replaced by at least HOURLY_ROWS
# rows built with generate_series: every user counter, every hour of the
# last DAYS UTC days (today included), DAYS chosen to reach HOURLY_ROWS,
# loaded without fsync and without the table's keys, which are built after
# (sorted: minutes instead of half an hour at 50 million rows), then
# VACUUM ANALYZE.
#   before  the schema at SCHEMA_REV: one counter_hourly table;
#   after   the current schema, as an installation looks a while after its
#           migration: the history in daily partitions (the legacy one has
#           been dropped by retention).
# Measured on each: one retention run that removes the oldest day (the
# retention set to DAYS - 2 days: the collector's statements, one batch per
# transaction; after: prune_history first, which drops the day's
# partition), and the reports (best of three). Before only: applying
# 0016 in place to the table as it is (the migration's scan of the table).
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${HOURLY_ROWS:-50000000}
sides=${SIDES:-before after}
users=${USERS:-50000}
before_rev=${SCHEMA_REV:-}
if [[ -z $before_rev ]]; then
  added=$(git log --diff-filter=A --format=%H -1 -- \
    schema/0016_partitioned_history.sql)
  before_rev=${added:+$added^}
  before_rev=${before_rev:-HEAD}
fi
before_rev=$(git rev-parse --short "$before_rev")
as_server=()
[[ $(id -u) == 0 ]] && as_server=(runuser -u postgres --)
port="" dir=""
stop_server() {
  [[ -n $dir ]] || return 0
  "${as_server[@]}" /usr/lib/postgresql/15/bin/pg_ctl -D "$dir/data" \
    -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
  dir=""
}
trap stop_server EXIT
psql() {
  PGOPTIONS="-c client_min_messages=warning" command psql -X -q \
    -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d bench "$@"
}
load() { cut -d' ' -f1-3 /proc/loadavg; }

# start_server [SCHEMA_REV]: a server with issue 12's data set; sets port
# and dir.
start_server() {
  local kept
  kept=$(env ${1:+SCHEMA_REV=$1} USERS="$users" KEEP=1 TIMINGS=0 \
    scripts/sql-bench.sh 2>&1 >/dev/null | tee >(cat >&2) | grep '^kept:')
  port=$(sed -n 's/.* -p \([0-9]*\) .*/\1/p' <<<"$kept")
  dir=$(sed -n 's/.*pg_ctl -D \(.*\)\/data stop.*/\1/p' <<<"$kept")
  [[ -n $port && -n $dir ]] || {
    echo "history-bench.sh: sql-bench.sh did not leave a server: $kept" >&2
    exit 1
  }
}

# build_history: replaces the history with DAYS days of every user counter's
# hours; prints DAYS.
build_history() {
  local counters days
  counters=$(psql -At -c "SELECT count(*) FROM counters WHERE kind = 'user'")
  days=$(((rows + counters * 24 - 1) / (counters * 24)))
  # Loading only: no fsync, checkpoints far apart. Reset before measuring.
  psql -c "ALTER SYSTEM SET fsync = off" -c "ALTER SYSTEM SET
    max_wal_size = '16GB'" -c "ALTER SYSTEM SET maintenance_work_mem =
    '1GB'" -c "SELECT pg_reload_conf()" >/dev/null
  psql -v days="$days" >/dev/null <<'SQL'
TRUNCATE counter_hourly;
-- After 0016: the days of the history get their partitions the way a
-- collector makes them (a row in the default partition, then
-- ensure_history_partitions), as if the installation had run for DAYS days
-- after its migration.
SELECT to_regclass('counter_hourly_legacy') IS NOT NULL AS partitioned \gset
\if :partitioned
DROP TABLE counter_hourly_legacy;
UPDATE history_retention SET keep = '1000 days';
INSERT INTO counter_hourly (counter_id, hour)
SELECT (SELECT min(id) FROM counters),
       date_trunc('day', now(), 'UTC') - d * interval '24 hours'
  FROM generate_series(0, :days - 1) AS d;
SELECT ensure_history_partitions(7);
TRUNCATE counter_hourly;
\endif
-- Loaded without its keys, which are built afterwards (sorted, much faster
-- than row by row); the same on both sides.
ALTER TABLE counter_hourly DROP CONSTRAINT counter_hourly_counter_id_fkey,
                           DROP CONSTRAINT counter_hourly_pkey;
DROP INDEX counter_hourly_hour;
INSERT INTO counter_hourly (counter_id, hour, uplink, downlink)
SELECT c.id,
       date_trunc('day', now(), 'UTC') - (:days - 1) * interval '24 hours'
         + h * interval '1 hour',
       1000 + (c.id * 7 + h) % 5000, 9000 + (c.id * 13 + h) % 50000
  FROM counters c, generate_series(0, :days * 24 - 1) AS h
 WHERE c.kind = 'user';
ALTER TABLE counter_hourly
  ADD CONSTRAINT counter_hourly_pkey PRIMARY KEY (counter_id, hour),
  ADD CONSTRAINT counter_hourly_counter_id_fkey FOREIGN KEY (counter_id)
    REFERENCES counters (id) ON DELETE CASCADE;
CREATE INDEX counter_hourly_hour ON counter_hourly (hour);
SQL
  psql -c "ALTER SYSTEM RESET fsync" -c "ALTER SYSTEM RESET
    maintenance_work_mem" -c "SELECT pg_reload_conf()" \
    -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null
  echo "$days"
}

# The collector's retention run (collector/pg_store.cc PruneHistory): after
# 0016 prune_history drops the partitions wholly older than the cutoff; then
# batches of 10,000 rows (kPruneBatch), each its own transaction.
cat >/tmp/history-bench-prune.$$.sql <<'SQL'
CREATE PROCEDURE pg_temp.prune(cutoff timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
  from_hour timestamptz;
  deleted bigint;
BEGIN
  IF to_regproc('prune_history') IS NOT NULL THEN
    PERFORM prune_history(cutoff);
    COMMIT;
  END IF;
  SELECT min(hour) INTO from_hour FROM counter_hourly;
  LOOP
    EXIT WHEN from_hour IS NULL OR from_hour >= cutoff;
    WITH gone AS (
      DELETE FROM counter_hourly
       WHERE hour >= from_hour AND hour < cutoff
         AND ctid = ANY (ARRAY(
           SELECT ctid FROM counter_hourly
            WHERE hour >= from_hour AND hour < cutoff
            ORDER BY hour LIMIT 10000))
      RETURNING hour)
    SELECT count(*), coalesce(max(hour), from_hour) INTO deleted, from_hour
      FROM gone;
    COMMIT;
    EXIT WHEN deleted < 10000;
  END LOOP;
END
$$;
SQL
trap 'stop_server; rm -f /tmp/history-bench-prune.$$.sql' EXIT

ms_of() { sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1; }

# retention_ms DAYS: one retention run removing the oldest of DAYS days;
# checks that exactly that day went.
retention_ms() {
  local days=$1 out
  psql -c "UPDATE history_retention SET keep = '$((days - 2)) days'" >/dev/null
  local old
  old=$(psql -At -c "SELECT count(*) FROM counter_hourly
    WHERE hour < date_trunc('day', now(), 'UTC') - $((days - 2)) * interval '24 hours'")
  out=$(psql -At <<SQL
\i /tmp/history-bench-prune.$$.sql
\timing on
CALL pg_temp.prune(date_trunc('day', now(), 'UTC') - $((days - 2)) * interval '24 hours');
\timing off
SELECT count(*) FROM counter_hourly
 WHERE hour < date_trunc('day', now(), 'UTC') - $((days - 2)) * interval '24 hours';
SQL
  )
  [[ $(tail -1 <<<"$out") == 0 ]] || {
    echo "history-bench.sh: rows older than the cutoff are left" >&2
    exit 1
  }
  echo "retention: removed $old rows (one day)" >&2
  ms_of <<<"$out"
}

reports=(
  "top_users, 7 days|SELECT * FROM top_users(current_date - 6, now()) LIMIT 3"
  "top_users, 30 days|SELECT * FROM top_users(now() - interval '30 days', now()) LIMIT 10"
  "user_daily, one user, 30 days|SELECT * FROM user_daily WHERE name = 'user77' AND day > current_date - 30"
  "user_daily_between, today|SELECT * FROM user_daily_between(current_date, current_date) ORDER BY total DESC LIMIT 10"
)
best_of_three() {
  local best="" ms
  for _ in 1 2 3; do
    ms=$(printf '\\timing on\n%s;\n' "$1" | psql -At | ms_of)
    if [[ -z $best ]] || awk -v a="$ms" -v b="$best" 'BEGIN{exit !(a<b)}'; then
      best=$ms
    fi
  done
  echo "$best"
}

declare -A result
measure() {
  local side=$1 days=$2 entry
  result[$side,size]=$(psql -At -c "SELECT (SELECT count(*) FROM
    counter_hourly) || ' rows, ' || pg_size_pretty(sum(
    pg_total_relation_size(c.oid))) || ' with indexes' FROM pg_class c
    WHERE c.relname LIKE 'counter_hourly%' AND c.relkind = 'r'")
  result[$side,load]=$(load)
  echo "$side: ${result[$side,size]} (load $(load))" >&2
  for entry in "${reports[@]}"; do
    result[$side,${entry%%|*}]=$(best_of_three "${entry#*|}")
  done
  result[$side,retention]=$(retention_ms "$days")
  for entry in retention "${reports[@]%%|*}"; do
    echo "$side: $entry: ${result[$side,$entry]} ms" >&2
  done
}

# side NAME [SCHEMA_REV]: a server with that schema (default: the current
# one) and the history, measured; left running for what follows.
side() {
  echo "$1: ${2:+schema at $2, }at least $rows hourly rows, $users users" \
    "(load $(load))" >&2
  start_server "${2:-}"
  days=$(build_history)
  measure "$1" "$days"
}

migration=n/a migration_rows=n/a scanned=n/a partitions=n/a
if [[ $sides == *before* ]]; then
  side before "$before_rev"
  started=$(date +%s%N)
  psql -1 -f schema/0016_partitioned_history.sql >/dev/null
  migration=$((($(date +%s%N) - started) / 1000000))
  migration_rows=$(psql -At -c "SELECT count(*) FROM counter_hourly_legacy")
  echo "before: migration 0016 in place on $migration_rows rows: $migration" \
    "ms (load $(load))" >&2
  stop_server
fi
if [[ $sides == *after* ]]; then
  side after
  # The reports' ranges read only their days' partitions.
  scanned=$(psql -At -c "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)
    SELECT sum(uplink) FROM counter_hourly
    WHERE hour >= current_date - 6 AND hour < now()" |
    grep -oE ' on counter_hourly_[a-z0-9]+ ' | sort -u | wc -l)
  partitions=$(psql -At -c "SELECT count(*) FROM history_partitions")
  stop_server
fi

printf '\n%s days of hourly rows, %s users; before: schema %s\n' \
  "$days" "$users" "$before_rev"
printf '| %-36s | %12s | %12s |\n' "statement" "before ms" "after ms"
printf '|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..38})" "--------------" \
  "--------------"
printf '| %-36s | %12s | %12s |\n' "retention run, oldest day" \
  "${result[before,retention]:-n/a}" "${result[after,retention]:-n/a}"
for entry in "${reports[@]}"; do
  label=${entry%%|*}
  printf '| %-36s | %12s | %12s |\n' "$label" "${result[before,$label]:-n/a}" \
    "${result[after,$label]:-n/a}"
done
printf '\nsizes: before %s; after %s\n' "${result[before,size]:-n/a}" \
  "${result[after,size]:-n/a}"
printf 'load (1/5/15 min) when measuring: before %s; after %s; end %s\n' \
  "${result[before,load]:-n/a}" "${result[after,load]:-n/a}" "$(load)"
printf 'migration 0016 in place on %s rows: %s ms\n' "$migration_rows" \
  "$migration"
printf 'partitions after: %s; a 7-day range scans %s of them\n' \
  "$partitions" "$scanned"
