-- 0019: two report plans at 50,000 users (issue 12's speed part), measured
-- with scripts/sql-bench.sh (BENCHMARKS.md, "The SQL reports at 50,000
-- users"):
--   * boxmeter_user_counters (and through it user_traffic, top_users,
--     user_node_hourly) left out the old names of renamed users with NOT
--     EXISTS. Once renamed_users has been vacuumed while empty, PostgreSQL
--     estimates it at one row and runs that anti join as a nested loop that
--     rescans the empty table once per counter; each rescan asks the kernel
--     for the table's size, about 130 ms for 75,000 counters (user_traffic:
--     340 ms, 215 ms with NOT IN). NOT IN over old_name (the primary key,
--     never NULL, so the two mean the same) is a hashed subplan read once.
--     Its limit: PostgreSQL hashes it only while the old names fit in
--     work_mem x hash_mem_multiplier (8 MB by default: 200,000 old names
--     of 10 characters, not 300,000); docs/scale.md says what to do beyond.
--   * top_users ran as a parallel plan in which each of the three
--     processes summed every hourly row of the range itself (the sums per
--     counter are the inner side of a hash join, which PostgreSQL 15 does not
--     share between workers), spilling to disk at the default work_mem of
--     4 MB: 2.8-3.0 s for 30 days. One process with 64 MB: 1.2-1.3 s.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

-- 0008's view, the same columns; only how old names are left out changed.
CREATE OR REPLACE VIEW boxmeter_user_counters AS
SELECT c.id, c.node, c.kind, c.name, c.uplink, c.downlink, c.base_uplink,
       c.base_downlink, c.instance_start, c.first_seen, c.last_seen,
       c.generation, c.name AS user_name
  FROM counters c
 WHERE c.kind = 'user'
   AND c.name NOT IN (SELECT r.old_name FROM renamed_users r)
UNION ALL
SELECT c.id, c.node, c.kind, c.name, c.uplink, c.downlink, c.base_uplink,
       c.base_downlink, c.instance_start, c.first_seen, c.last_seen,
       c.generation, u.name AS user_name
  FROM renamed_users r
  JOIN users u ON u.id = r.user_id
  JOIN counters c ON c.kind = 'user' AND c.name = r.old_name;

ALTER FUNCTION top_users(timestamptz, timestamptz)
  SET work_mem = '64MB';
ALTER FUNCTION top_users(timestamptz, timestamptz)
  SET max_parallel_workers_per_gather = 0;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0019_report_plans.sql')
ON CONFLICT (name) DO NOTHING;
