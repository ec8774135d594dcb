#!/usr/bin/env bash
# The SQL benchmark of schema/COOKBOOK.md's reports and functions at 50,000
# users: starts a throwaway PostgreSQL 15, applies schema/*.sql with plain
# psql (as an operator with their own migration tool would), builds the data
# set of issue 12 and prints a table of the best of three wall times per
# statement, with the target (300 ms), and the best of three CPU times of
# the server process running it alone (no parallel workers): on a shared,
# loaded machine the wall time measures the neighbours, the CPU time much
# less so. Not a test: the figures depend on the machine and its load (shown
# at the start and the end).
#
#   scripts/sql-bench.sh                 50,000 users
#   USERS=10000 scripts/sql-bench.sh     a smaller data set
#   KEEP=1 scripts/sql-bench.sh          leaves the server running (for
#                                        EXPLAIN); prints how to stop it
#   TIMINGS=0 KEEP=1 scripts/sql-bench.sh    the data set only
#   SCHEMA_REV=<commit> scripts/sql-bench.sh  the schema of that commit, to
#                                        compare (its missing functions: n/a)
#   HUGE_PAGES=1 scripts/sql-bench.sh    the server's shared memory in huge
#                                        pages (as root: reserves them with
#                                        sysctl vm.nr_hugepages and gives
#                                        them back at the end)
#
# Each run is the first statement of a new session. Without huge pages a
# new PostgreSQL process maps each 4 kB page of shared buffers it touches
# on first use; on this project's virtual machines that page fault costs
# about 9 µs a page (tens of times the usual), 130 to 190 ms of every
# report over all users. A long-lived or pooled connection pays it once;
# HUGE_PAGES=1 shows the figures without it (BENCHMARKS.md, "The first
# query of a session").
#
# The data set: USERS users with a quota, all linked to inbound vless-in of
# node edge-1, half of them also to edge-2's; one user counter per user and
# node (75,000 for 50,000 users), and 1,025,000 hourly rows spread over the
# last 30 days (13 per counter, 14 for edge-1's), written in hour order as
# commits write them. Needs postgresql-15 and nothing built.
set -euo pipefail
cd "$(dirname "$0")/.."
users=${USERS:-50000}
bin=/usr/lib/postgresql/15/bin
[[ -x $bin/initdb ]] || {
  echo "sql-bench.sh: no $bin/initdb; install postgresql-15" >&2
  exit 1
}
dir=$(mktemp -d /tmp/boxmeter-sql-bench.XXXXXX)
as_server=()
if [[ $(id -u) == 0 ]]; then
  chown postgres "$dir"
  as_server=(runuser -u postgres --)
fi
port=$((20000 + RANDOM % 20000))
huge_pages_before=""  # vm.nr_hugepages to give back, when this run raised it
cleanup() {
  "${as_server[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop \
    >/dev/null 2>&1 || true
  rm -rf "$dir"
  if [[ -n $huge_pages_before ]]; then
    sysctl -q -w vm.nr_hugepages="$huge_pages_before" || true
  fi
}
if [[ ${KEEP:-} == 1 ]]; then
  trap 'echo "kept: psql -h 127.0.0.1 -p $port -U postgres bench; stop: pg_ctl -D $dir/data stop${huge_pages_before:+; then: sysctl -w vm.nr_hugepages=$huge_pages_before}" >&2' EXIT
else
  trap cleanup EXIT
fi
"${as_server[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres \
  --no-sync -E UTF8 --locale=C >/dev/null
server_options="-c listen_addresses=127.0.0.1 -p $port"
server_options+=" -c unix_socket_directories=$dir"
if [[ ${HUGE_PAGES:-} == 1 ]]; then
  if [[ $(id -u) != 0 ]]; then
    echo "sql-bench.sh: HUGE_PAGES=1 reserves huge pages with sysctl" \
      "vm.nr_hugepages; run it as root, or without HUGE_PAGES" >&2
    exit 1
  fi
  # What this server's shared memory needs (PostgreSQL 15 computes it).
  needed=$("${as_server[@]}" "$bin/postgres" -D "$dir/data" \
    -C shared_memory_size_in_huge_pages)
  huge_pages_before=$(cat /proc/sys/vm/nr_hugepages)
  sysctl -q -w vm.nr_hugepages=$((huge_pages_before + needed))
  if (($(cat /proc/sys/vm/nr_hugepages) < huge_pages_before + needed)); then
    echo "sql-bench.sh: the kernel gave $(cat /proc/sys/vm/nr_hugepages)" \
      "huge pages of the $((huge_pages_before + needed)) asked" \
      "(vm.nr_hugepages); free memory, or run without HUGE_PAGES" >&2
    exit 1
  fi
  server_options+=" -c huge_pages=on"
fi
"${as_server[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "$server_options" start >/dev/null
psql() { PGOPTIONS="-c client_min_messages=warning" command psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" \
  -U postgres "$@"; }
psql -d postgres -c "CREATE DATABASE bench" >/dev/null
if [[ -n ${SCHEMA_REV:-} ]]; then
  # An older schema, to compare: its files did not create schema_migrations.
  psql -d bench -c "CREATE TABLE schema_migrations (name text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now())" >/dev/null
  for file in $(git ls-tree --name-only "$SCHEMA_REV" schema/ |
                grep -E '^schema/[0-9].*\.sql$'); do
    git show "$SCHEMA_REV:$file" | psql -d bench -1 -f - >/dev/null
  done
else
  for file in schema/[0-9]*.sql; do
    psql -d bench -1 -f "$file" >/dev/null
  done
fi

echo "building the data set: $users users (load: $(cut -d' ' -f1-3 \
  /proc/loadavg); huge pages: $(psql -d bench -At -c 'SHOW huge_pages'))" >&2
psql -d bench -v users="$users" >/dev/null <<'SQL'
SET client_min_messages = warning;
INSERT INTO nodes (name) VALUES ('edge-1'), ('edge-2');
INSERT INTO inbounds (node, tag, type, listen_port)
VALUES ('edge-1', 'vless-in', 'vless', 443),
       ('edge-2', 'vless-in', 'vless', 443);
INSERT INTO users (name, quota_bytes, uuid, password)
SELECT 'user' || i, 10000000000, gen_random_uuid(), md5(i::text)
  FROM generate_series(1, :users) AS i;
INSERT INTO inbound_users (inbound_id, user_id)
SELECT i.id, u.id
  FROM inbounds i JOIN users u
    ON i.node = 'edge-1' OR u.id % 2 = 0;
INSERT INTO counters (node, kind, name, uplink, downlink, instance_start)
SELECT 'edge-1', 'user', 'user' || i, i * 1000, i * 9000, now()
  FROM generate_series(1, :users) AS i
UNION ALL
SELECT 'edge-2', 'user', 'user' || i, i * 100, i * 900, now()
  FROM generate_series(2, :users, 2) AS i
UNION ALL
SELECT n, 'inbound', 'vless-in', 1000000, 9000000, now()
  FROM unnest(ARRAY['edge-1', 'edge-2']) AS n;
-- In hour order, as commits write them: a day's rows share pages, as they
-- do in a real history (in counter order, one day's 31,000 rows were spread
-- over 10,000 of the 15,000 pages, and reading them took 200-280 ms).
INSERT INTO counter_hourly (counter_id, hour, uplink, downlink)
SELECT * FROM (
  SELECT c.id,
         date_trunc('hour', now()) - ((c.id * 7 + j * 53) % 720)
                                     * interval '1 hour' AS hour,
         1000 + c.id % 1000, 9000 + c.id % 9000
    FROM counters c, generate_series(1, 13) AS j
   WHERE c.kind = 'user'
  UNION ALL
  SELECT c.id, date_trunc('hour', now()) - ((c.id * 7 + 14 * 53) % 720)
                                           * interval '1 hour', 500, 4500
    FROM counters c
   WHERE c.kind = 'user' AND c.node = 'edge-1'
) AS history
ORDER BY hour
ON CONFLICT DO NOTHING;
VACUUM ANALYZE;
SQL
# The weekly sums top_users reads (0028), caught up as the collector's
# hourly upkeep leaves them: every day that has ended.
if [[ $(psql -d bench -At -c "SELECT to_regproc('roll_history_day') IS NOT NULL") == t ]]; then
  psql -d bench -q -c "DO \$\$ BEGIN WHILE roll_history_day() IS NOT NULL LOOP END LOOP; END \$\$" \
    -c "VACUUM ANALYZE counter_weekly"
fi
psql -d bench -At -c "SELECT 'users ' || (SELECT count(*) FROM users) ||
  ', counters ' || (SELECT count(*) FROM counters) ||
  ', hourly rows ' || (SELECT count(*) FROM counter_hourly)" >&2

[[ ${TIMINGS:-1} == 0 ]] && exit 0

# label|statement: each runs three times, in a transaction rolled back when
# it changes something, so every run starts from the same data. Where the
# statement is several, only the last is measured (the others set it up).
# "commit: ..." rows are a collector's commit (its commit_seq moving first,
# which closes the periods due before it adds traffic): the collector's
# path, not an operator's call, so they have no target here. "upkeep: ..."
# is the collector's hourly history upkeep (its time is added to the sums
# once more here, as the span is set back without taking the day out).
statements=(
  "user_traffic, top 10|SELECT * FROM user_traffic ORDER BY total DESC LIMIT 10"
  "top_users, 7 days|SELECT * FROM top_users(current_date - 6, now()) LIMIT 3"
  "top_users, 30 days|SELECT * FROM top_users(now() - interval '30 days', now()) LIMIT 10"
  "user_daily_between, today|SELECT * FROM user_daily_between(current_date, current_date) ORDER BY total DESC LIMIT 10"
  "user_daily, one user, 30 days|SELECT * FROM user_daily WHERE name = 'user77' AND day > current_date - 30"
  "user_quota_status, >= 80%|SELECT name FROM user_quota_status WHERE percent >= 80 AND state = 'active'"
  "user_quota_status, shut out|SELECT name FROM user_quota_status WHERE state <> 'active'"
  "user_quota_status, one user|SELECT * FROM user_quota_status WHERE name = 'user77'"
  "node_summary|SELECT * FROM node_summary"
  "unknown_counters|SELECT * FROM unknown_counters"
  "eligible_users, count|SELECT count(*) FROM eligible_users"
  "node_inbound_users edge-2|SELECT count(*) FROM node_inbound_users WHERE node = 'edge-2'"
  "users_fingerprint edge-1 (all users)|SELECT users_fingerprint('edge-1')"
  "users_fingerprint edge-2 (half)|SELECT users_fingerprint('edge-2')"
  "add_user|SELECT add_user('newcomer')"
  "set_quota|SELECT set_quota('user77', 1)"
  "reset_usage|SELECT reset_usage('user77')"
  "reset_all_usage|SELECT reset_all_usage()"
  "commit: writes a reset_all_usage|SELECT reset_all_usage(); UPDATE nodes SET commit_seq = commit_seq + 1 WHERE name = 'edge-1'"
  "commit: a midnight ends every period|UPDATE users SET reset_strategy = 'daily'; UPDATE users SET period_end = now() - interval '1 second'; UPDATE nodes SET commit_seq = commit_seq + 1 WHERE name = 'edge-1'"
  "rename_user|SELECT rename_user('user78', 'renamed78')"
  "delete_user, history kept|SELECT delete_user('user79', true)"
  "delete_user, history deleted|SELECT delete_user('user80', false)"
  "retire_node edge-2|SELECT retire_node('edge-2')"
  "upkeep: sums yesterday into weeks|UPDATE counter_weekly_span SET through = through - interval '24 hours'; SELECT roll_history_day()"
)
# The least of three runs of the psql script $1, each measured by the
# command $2 from psql's output; "n/a" when the script fails (e.g. a
# function an older schema lacks).
best_of_three() {
  local script=$1 measure=$2 best="" ms output
  for _ in 1 2 3; do
    output=$(psql -d bench -At 2>&1 <<<"$script") || { echo "n/a"; return; }
    ms=$("$measure" <<<"$output")
    if [[ -z $best ]] || awk -v a="$ms" -v b="$best" 'BEGIN{exit !(a<b)}'; then
      best=$ms
    fi
  done
  echo "$best"
}
# psql's \timing of the statement: the wall time as the client sees it.
timing_ms() { sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1; }
# log_statement_stats' user + system CPU time of the server process.
stats_cpu_ms() {
  grep -E '^!\s+[0-9.]+ s user' | tail -1 |
    awk '{printf "%.1f", ($2 + $5) * 1000}'
}
best_ms() {
  best_of_three "BEGIN;
\\timing on
$1;
\\timing off
ROLLBACK;" timing_ms
}
# The server's CPU time for `sql`, run without parallel workers so that one
# process does all of it.
best_cpu_ms() {
  best_of_three "SET max_parallel_workers_per_gather = 0;
BEGIN;
SET LOCAL log_statement_stats = on;
SET LOCAL client_min_messages = log;
$1;
ROLLBACK;" stats_cpu_ms
}
printf '| %-38s | %9s | %8s | %s |\n' "statement ($users users)" "best ms" "CPU ms" \
  "target"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..40})" "-----------" \
  "----------" "--------"
for entry in "${statements[@]}"; do
  label=${entry%%|*}
  ms=$(best_ms "${entry#*|}")
  if [[ $ms == n/a ]]; then
    printf '| %-38s | %9s | %8s | %s |\n' "$label" "n/a" "n/a" "n/a"
    continue
  fi
  cpu=$(best_cpu_ms "${entry#*|}")
  verdict=$(awk -v ms="$ms" 'BEGIN{print (ms < 300) ? "< 300 ok" : "MISSED"}')
  [[ $label == commit:* ]] && verdict="(commit path)"
  [[ $label == upkeep:* ]] && verdict="(upkeep)"
  printf '| %-38s | %9.1f | %8s | %s |\n' "$label" "$ms" "$cpu" "$verdict"
done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
