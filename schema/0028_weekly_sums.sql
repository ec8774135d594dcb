-- 0028: top_users reads closed weeks from weekly sums (issue 12, "top_users
-- over 30 days").
--
-- top_users summed every hourly row of its range. Over 30 days of
-- scripts/sql-bench.sh's data set (a million rows into 75,000 counters)
-- the grouping by counter alone took 260 to 300 ms on a slow 2-core
-- machine, whatever the aggregate, and the whole call 370 to 440 ms
-- (BENCHMARKS.md, "0028: weekly sums"). Daily sums would not shrink that
-- data set (each counter has one hour a day at most); weekly sums do.
--
-- counter_weekly holds, per counter and UTC week (Monday 00:00 UTC), the
-- sum of the counter's hourly rows in that week, for every hour before
-- counter_weekly_span.through (a UTC midnight). It is a summary only:
-- counter_hourly stays the record, and every other report reads it.
--   * roll_history_day() adds the oldest day not yet summed (the
--     collector's hourly history upkeep calls it until it is caught up, as
--     it prunes);
--   * every later change to an hourly row before `through` (a commit for a
--     late hour, rename_user's merge, delete_user's cascade, retention's
--     batches) is applied to the sums by statement triggers on
--     counter_hourly, from their transition tables;
--   * prune_history takes a partition's sums out before it drops it
--     (dropping a table fires no trigger);
--   * ensure_history_partitions moves rows out of the default partition
--     without triggers: the rows stay in counter_hourly, so the sums stay.
-- So a week wholly before `through` sums exactly the hourly rows it has.
-- Writing a partition directly, or TRUNCATE, bypasses the triggers: write
-- through counter_hourly (COOKBOOK.md, "Retention and the size of the
-- history", says how to check the sums and rebuild them).
--
-- top_users(from, to) takes from counter_weekly the weeks that start in
-- [from, to) whose summed hours all lie in it (the week of `through` too,
-- summed up to `through`, when `to` is later), and the hours around them
-- from counter_hourly: over the last 30 days, the hours before the first
-- Monday and today's.
--
-- Locking: a trigger reads the span FOR SHARE and roll_history_day takes
-- it FOR UPDATE before it reads the day. So a writer that saw the old span
-- commits before the day is summed (and its rows are in the sum), and one
-- that comes later sees the new span (and adds its rows itself).

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

-- The Monday 00:00 UTC on or before `at`.
CREATE FUNCTION boxmeter_week_of(at timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN date_trunc('week', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';

CREATE TABLE counter_weekly (
  counter_id bigint NOT NULL REFERENCES counters (id) ON DELETE CASCADE,
  week timestamptz NOT NULL CHECK (week = boxmeter_week_of(week)),
  uplink bigint NOT NULL,
  downlink bigint NOT NULL,
  -- How many hourly rows the sums hold: the row goes when none is left.
  hours integer NOT NULL CHECK (hours > 0),
  PRIMARY KEY (counter_id, week)
);
CREATE INDEX counter_weekly_week ON counter_weekly (week);
COMMENT ON TABLE counter_weekly IS
  'per counter and UTC week, the sums of its counter_hourly rows before '
  'counter_weekly_span.through; read by top_users';

CREATE TABLE counter_weekly_span (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  -- Every hour before it is in counter_weekly; NULL: nothing summed yet.
  through timestamptz
    CHECK (through = date_trunc('day', through AT TIME ZONE 'UTC')
                       AT TIME ZONE 'UTC')
);
INSERT INTO counter_weekly_span DEFAULT VALUES;

-- A change to the weekly sums: `hours` hourly rows in or out (negative),
-- all in the week of `at`, with their bytes (negative when out).
CREATE TYPE counter_weekly_change AS (
  counter_id bigint,
  at timestamptz,
  uplink numeric,
  downlink numeric,
  hours bigint
);

-- Adds `changes` to the weekly sums. A sum is clamped at the bigint range,
-- as the hourly rows are (9.2 EB in a week: not traffic). A change for a
-- counter that is gone is dropped (its sums went with it).
CREATE FUNCTION boxmeter_weekly_add(changes counter_weekly_change[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $weekly_add$
DECLARE
  -- One change per counter and week, `at` the week's Monday.
  d counter_weekly_change[] := ARRAY(
    SELECT ROW(c.counter_id, boxmeter_week_of(c.at), sum(c.uplink),
               sum(c.downlink), sum(c.hours))::counter_weekly_change
      FROM unnest(changes) AS c
     GROUP BY c.counter_id, boxmeter_week_of(c.at));
BEGIN
  INSERT INTO counter_weekly AS w (counter_id, week, uplink, downlink, hours)
  SELECT c.counter_id, c.at,
         LEAST(GREATEST(c.uplink, 0), 9223372036854775807)::bigint,
         LEAST(GREATEST(c.downlink, 0), 9223372036854775807)::bigint,
         c.hours
    FROM unnest(d) AS c
   WHERE c.hours > 0
     AND EXISTS (SELECT 1 FROM counters k WHERE k.id = c.counter_id)
  ON CONFLICT (counter_id, week) DO UPDATE SET
    uplink = LEAST(w.uplink::numeric + excluded.uplink,
                   9223372036854775807)::bigint,
    downlink = LEAST(w.downlink::numeric + excluded.downlink,
                     9223372036854775807)::bigint,
    hours = w.hours + excluded.hours;
  -- Changes that take rows away: the rows left with none go first, so that
  -- the UPDATE below sees only the rows that stay.
  DELETE FROM counter_weekly w
   USING unnest(d) AS c
   WHERE c.hours < 0 AND w.counter_id = c.counter_id AND w.week = c.at
     AND w.hours + c.hours <= 0;
  UPDATE counter_weekly w
     SET uplink = LEAST(GREATEST(w.uplink::numeric + c.uplink, 0),
                        9223372036854775807)::bigint,
         downlink = LEAST(GREATEST(w.downlink::numeric + c.downlink, 0),
                          9223372036854775807)::bigint,
         hours = w.hours + c.hours
    FROM unnest(d) AS c
   WHERE c.hours <= 0 AND w.counter_id = c.counter_id AND w.week = c.at;
END
$weekly_add$;

-- The statement triggers on counter_hourly: what the statement inserted
-- counts in, what it deleted counts out, an UPDATE both (old out, new in).
-- Only hours before the span's `through` are summed; for the rest the cost
-- is a scan of the transition tables, within the noise of the 0.5 s that
-- a commit of 75,000 counters takes (BENCHMARKS.md).
CREATE FUNCTION boxmeter_counter_weekly_sync()
RETURNS trigger
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $sync$
DECLARE
  through timestamptz;
  changes counter_weekly_change[] := '{}';
BEGIN
  SELECT s.through INTO through FROM counter_weekly_span s FOR SHARE;
  IF through IS NULL THEN
    RETURN NULL;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    changes := changes || ARRAY(
      SELECT ROW(n.counter_id, n.hour, n.uplink, n.downlink,
                 1)::counter_weekly_change
        FROM new_rows n
       WHERE n.hour < through);
  END IF;
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    changes := changes || ARRAY(
      SELECT ROW(o.counter_id, o.hour, -o.uplink::numeric,
                 -o.downlink::numeric, -1)::counter_weekly_change
        FROM old_rows o
       WHERE o.hour < through);
  END IF;
  IF cardinality(changes) > 0 THEN
    PERFORM boxmeter_weekly_add(changes);
  END IF;
  RETURN NULL;
END
$sync$;

CREATE TRIGGER counter_weekly_insert AFTER INSERT ON counter_hourly
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION boxmeter_counter_weekly_sync();
CREATE TRIGGER counter_weekly_update AFTER UPDATE ON counter_hourly
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION boxmeter_counter_weekly_sync();
CREATE TRIGGER counter_weekly_delete AFTER DELETE ON counter_hourly
  REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION boxmeter_counter_weekly_sync();

-- Sums the oldest UTC day not yet in counter_weekly that has an hourly row,
-- if it has ended by now(); returns that day, or NULL when there is none
-- (caught up). One day per call, so the span's lock, which holds back the
-- triggers of concurrent writers, lasts one day's sum: call it again
-- until it returns NULL. Runs as its owner: a collector's login may call
-- it. READ COMMITTED only: the day is read after the span's lock, with a
-- snapshot taken then.
CREATE FUNCTION roll_history_day()
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
SET lock_timeout = '5s'
AS $roll_day$
DECLARE
  day timestamptz;
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'roll_history_day: needs READ COMMITTED (the '
                    'transaction is %)',
                    current_setting('transaction_isolation')
      USING ERRCODE = 'invalid_transaction_state',
            HINT = 'call it in a transaction of its own';
  END IF;
  -- ensure_history_partitions' and prune_history's lock: they move and
  -- drop partitions.
  PERFORM pg_advisory_xact_lock(7093020349380715893);
  SELECT s.through INTO day FROM counter_weekly_span s FOR UPDATE;
  -- Days without a row sum to nothing: on to the next day that has one,
  -- today at most. Never back: the sums already hold the days before it.
  day := greatest(day, date_trunc('day', least(
           (SELECT min(h.hour) FROM counter_hourly h
             WHERE day IS NULL OR h.hour >= day), now()), 'UTC'));
  IF day + interval '24 hours' > now() THEN
    UPDATE counter_weekly_span SET through = day;
    RETURN NULL;
  END IF;
  PERFORM boxmeter_weekly_add(ARRAY(
    SELECT ROW(h.counter_id, day, sum(h.uplink), sum(h.downlink),
               count(*))::counter_weekly_change
      FROM counter_hourly h
     WHERE h.hour >= day AND h.hour < day + interval '24 hours'
     GROUP BY h.counter_id));
  UPDATE counter_weekly_span SET through = day + interval '24 hours';
  RETURN day;
END
$roll_day$;

-- 0016's prune_history, which now takes each partition's sums out of
-- counter_weekly before it drops the partition.
CREATE OR REPLACE FUNCTION prune_history(cutoff timestamptz)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
SET lock_timeout = '5s'
AS $prune$
DECLARE
  oldest_kept timestamptz :=
    least(cutoff, now() - (SELECT r.keep FROM history_retention r));
  part text;
  dropped integer := 0;
  through timestamptz;
  changes counter_weekly_change[];
BEGIN
  IF cutoff IS NULL OR NOT isfinite(cutoff) THEN
    RAISE EXCEPTION 'prune_history: cutoff must be a finite time (got %)',
                    coalesce(cutoff::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'e.g. prune_history(now() - interval ''400 days'')';
  END IF;
  -- Also roll_history_day's lock: `through` stays as read. A writer of a
  -- partition's rows holds it from being detached.
  PERFORM pg_advisory_xact_lock(7093020349380715893);
  SELECT s.through INTO through FROM counter_weekly_span s;
  FOR part IN
    SELECT p.partition FROM history_partitions p
     WHERE p.to_hour <= oldest_kept
     ORDER BY p.to_hour
  LOOP
    EXECUTE format('ALTER TABLE counter_hourly DETACH PARTITION %I', part);
    IF through IS NOT NULL THEN
      EXECUTE format(
        'SELECT ARRAY(SELECT ROW(h.counter_id, boxmeter_week_of(h.hour), '
        '                        -sum(h.uplink), -sum(h.downlink), '
        '                        -count(*))::counter_weekly_change '
        '               FROM %I h WHERE h.hour < $1 '
        '              GROUP BY h.counter_id, boxmeter_week_of(h.hour))',
        part)
        INTO changes
        USING through;
      PERFORM boxmeter_weekly_add(changes);
    END IF;
    EXECUTE format('DROP TABLE %I', part);
    dropped := dropped + 1;
  END LOOP;
  RETURN dropped;
END
$prune$;

-- 0026's top_users: the weeks inside the range come from counter_weekly,
-- the hours around them from counter_hourly. Same result, row for row.
CREATE OR REPLACE FUNCTION top_users(from_time timestamptz,
                                     to_time timestamptz)
RETURNS TABLE (rank bigint, name text, uplink bigint, downlink bigint,
               total bigint)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
-- 0019's settings, which CREATE OR REPLACE would otherwise drop.
SET work_mem = '64MB'
SET max_parallel_workers_per_gather = 0
AS $top_users$
DECLARE
  -- %1$s: the aggregate, as in 0026. The hours in [$1, $3) and [$5, $2)
  -- and the weeks in [$3, $4), which sum the hours in [$3, $5).
  -- The inner ORDER BY is the outer one: rank() then needs no sort of its
  -- own (one sort of 50,000 rows less, about 10 ms).
  query constant text := $query$
    SELECT rank() OVER (ORDER BY t.total DESC), t.name, t.uplink,
           t.downlink, t.total
      FROM (SELECT c.user_name AS name,
                   LEAST(%1$s(s.uplink), 9223372036854775807)::bigint
                     AS uplink,
                   LEAST(%1$s(s.downlink), 9223372036854775807)::bigint
                     AS downlink,
                   LEAST(%1$s(s.uplink) + %1$s(s.downlink),
                         9223372036854775807)::bigint AS total
              FROM (SELECT r.counter_id,
                           LEAST(%1$s(r.uplink),
                                 9223372036854775807)::bigint AS uplink,
                           LEAST(%1$s(r.downlink),
                                 9223372036854775807)::bigint AS downlink
                      FROM (SELECT h.counter_id, h.uplink, h.downlink
                              FROM counter_hourly h
                             WHERE h.hour >= $1 AND h.hour < $3
                            UNION ALL
                            SELECT w.counter_id, w.uplink, w.downlink
                              FROM counter_weekly w
                             WHERE w.week >= $3 AND w.week < $4
                            UNION ALL
                            SELECT h.counter_id, h.uplink, h.downlink
                              FROM counter_hourly h
                             WHERE h.hour >= $5 AND h.hour < $2) AS r
                     GROUP BY r.counter_id) AS s
              JOIN boxmeter_user_counters c ON c.id = s.counter_id
             GROUP BY c.user_name
             ORDER BY total DESC, name) AS t
     ORDER BY t.total DESC, t.name
  $query$;
  through timestamptz;
  weeks_from timestamptz;  -- $3
  weeks_to timestamptz;    -- $4
  hours_from timestamptz;  -- $5
BEGIN
  IF from_time IS NULL OR to_time IS NULL THEN
    RAISE EXCEPTION 'top_users: from_time and to_time must not be NULL '
                    '(got % and %)', coalesce(from_time::text, 'NULL'),
                    coalesce(to_time::text, 'NULL')
      USING ERRCODE = 'null_value_not_allowed',
            HINT = 'e.g. top_users(now() - interval ''7 days'', now())';
  END IF;
  IF from_time >= to_time THEN
    RAISE EXCEPTION 'top_users: from_time % is not before to_time %',
                    from_time, to_time
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'the range is [from_time, to_time); swap them?';
  END IF;
  -- Reading the span in a snapshot of its own is safe: a later snapshot
  -- sees sums grow only for hours from `through` on, which are read from
  -- counter_hourly here.
  SELECT s.through INTO through FROM counter_weekly_span s;
  -- The first week that starts in the range. In hours: '7 days' is seven
  -- calendar days of the session's time zone, an hour more or less across
  -- a daylight saving change.
  weeks_from := boxmeter_week_of(from_time);
  IF weeks_from < from_time THEN
    weeks_from := weeks_from + interval '168 hours';
  END IF;
  IF to_time >= through THEN
    -- Every week before `through`, the last one summed up to `through`.
    weeks_to := boxmeter_week_of(through) + interval '168 hours';
    hours_from := through;
  ELSE
    -- The weeks that end in the range.
    weeks_to := boxmeter_week_of(to_time);
    hours_from := weeks_to;
  END IF;
  IF through IS NULL OR weeks_from >= hours_from THEN
    -- No week: every hour from counter_hourly.
    weeks_from := to_time;
    weeks_to := to_time;
    hours_from := to_time;
  END IF;
  BEGIN
    RETURN QUERY EXECUTE format(query, 'boxmeter_bigint_sum')
      USING from_time, to_time, weeks_from, weeks_to, hours_from;
  EXCEPTION WHEN numeric_value_out_of_range THEN
    RETURN QUERY EXECUTE format(query, 'sum')
      USING from_time, to_time, weeks_from, weeks_to, hours_from;
  END;
END
$top_users$;

REVOKE ALL ON counter_weekly, counter_weekly_span FROM PUBLIC;
GRANT SELECT ON counter_weekly, counter_weekly_span TO boxmeter_operator;
REVOKE EXECUTE ON FUNCTION boxmeter_week_of(timestamptz),
                           boxmeter_weekly_add(counter_weekly_change[]),
                           boxmeter_counter_weekly_sync(),
                           roll_history_day()
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION roll_history_day() TO boxmeter_collector;
-- The cookbook's check of the sums against the hours uses it.
GRANT EXECUTE ON FUNCTION boxmeter_week_of(timestamptz) TO boxmeter_operator;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0028_weekly_sums.sql')
ON CONFLICT (name) DO NOTHING;
