-- Measures the hourly history's layout at scale: fills a SCRATCH database
-- (migrated with `boxmeter-collector --migrate`) with generated history and
-- prints EXPLAIN (ANALYZE, BUFFERS) of the queries that must stay cheap.
-- schema/COOKBOOK.md ("Retention and the size of the history") quotes its
-- results. Never run it against a real database: it adds a node `explain`
-- with :users users' worth of counters and history.
--
--   createdb boxmeter_explain
--   BOXMETER_DATABASE_URL=postgresql:///boxmeter_explain \
--     boxmeter-collector --migrate --config deploy/boxmeter.example.yaml
--   psql -v users=100000 -f scripts/explain_history.sql boxmeter_explain
--
-- The history generated, per the defaults:
--   :users users active :active_hours hours a day over the last 7 days,
--   :year_users of them active every hour of the last 365 days,
--   :old_rows rows older than the 400 days retention (to be deleted).
\set ON_ERROR_STOP on
\if :{?users} \else \set users 100000 \endif
\if :{?active_hours} \else \set active_hours 4 \endif
\if :{?year_users} \else \set year_users 100 \endif
\if :{?old_rows} \else \set old_rows 1000000 \endif
\timing on

INSERT INTO nodes (name) VALUES ('explain') ON CONFLICT DO NOTHING;
INSERT INTO counters (node, kind, name, instance_start)
SELECT 'explain', 'user', 'user' || i, now()
  FROM generate_series(1, :users) AS i
ON CONFLICT DO NOTHING;

-- The same users in users, with a quota, all on one inbound of the node.
INSERT INTO users (name, quota_bytes, password)
SELECT 'user' || i, 50000000000, md5(i::text)
  FROM generate_series(1, :users) AS i
ON CONFLICT DO NOTHING;
INSERT INTO inbounds (node, tag, type, listen_port)
VALUES ('explain', 'trojan-in', 'trojan', 443) ON CONFLICT DO NOTHING;
INSERT INTO inbound_users (inbound_id, user_id)
SELECT i.id, u.id FROM inbounds i, users u
 WHERE i.node = 'explain' AND u.name LIKE 'user%'
ON CONFLICT DO NOTHING;

-- The last week: each user on :active_hours hours of each day.
INSERT INTO counter_hourly (counter_id, hour, uplink, downlink)
SELECT c.id,
       date_trunc('day', now()) - d * interval '1 day'
         + ((c.id * 7 + d * 5 + k * 6) % 24) * interval '1 hour',
       1000, 9000
  FROM counters c, generate_series(0, 6) AS d,
       generate_series(0, :active_hours - 1) AS k
 WHERE c.node = 'explain'
ON CONFLICT DO NOTHING;

-- A year of every hour for the first :year_users users.
INSERT INTO counter_hourly (counter_id, hour, uplink, downlink)
SELECT c.id, date_trunc('hour', now()) - h * interval '1 hour', 1000, 9000
  FROM counters c, generate_series(7 * 24, 365 * 24) AS h
 WHERE c.node = 'explain' AND c.name IN
       (SELECT 'user' || i FROM generate_series(1, :year_users) AS i)
ON CONFLICT DO NOTHING;

-- History past the retention, spread over the users.
INSERT INTO counter_hourly (counter_id, hour, uplink, downlink)
SELECT c.id, date_trunc('hour', now()) - (9700 + r / :users) * interval '1 hour',
       1000, 9000
  FROM generate_series(0, :old_rows - 1) AS r
  JOIN counters c ON c.node = 'explain' AND c.name = 'user' || (r % :users + 1)
ON CONFLICT DO NOTHING;

VACUUM ANALYZE counters;
VACUUM ANALYZE counter_hourly;
-- Summed over the partitions (0016), or the table itself before.
SELECT (SELECT count(*) FROM counter_hourly) AS hourly_rows,
       pg_size_pretty(sum(pg_table_size(relid))) AS heap,
       pg_size_pretty(sum(pg_indexes_size(relid))) AS indexes
  FROM (SELECT relid FROM pg_partition_tree('counter_hourly')
        UNION SELECT 'counter_hourly'::regclass) AS tree;

\echo '== one retention batch (PgStore::PruneHistory), rolled back'
BEGIN;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
DELETE FROM counter_hourly
 WHERE ctid = ANY (ARRAY(
   SELECT ctid FROM counter_hourly
    WHERE hour >= (SELECT min(hour) FROM counter_hourly)
      AND hour < now() - interval '400 days'
    ORDER BY hour
    LIMIT 10000));
ROLLBACK;

\echo '== a user''s days over the last 30 days (a user with a full year)'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT day, total FROM user_daily
 WHERE name = 'user1' AND day > current_date - 30 ORDER BY day;

\echo '== a user''s quota status'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT * FROM user_quota_status WHERE name = 'user1';

\echo '== every user''s quota status'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT state, count(*) FROM user_quota_status GROUP BY state;

\echo '== the eligible users of the node, as boxmeter-gen reads them'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT count(*) FROM node_inbound_users WHERE node = 'explain';

\echo '== users_fingerprint, which the collector computes every poll'
SELECT users_fingerprint('explain');

\echo '== top users of the last 7 days'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT * FROM top_users(current_date - 6, now()) LIMIT 10;

\echo '== what each node did today'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT * FROM node_summary;
