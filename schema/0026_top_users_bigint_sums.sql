-- 0026: top_users sums in bigint, and in numeric only when bigint overflows.
--
-- sum(bigint) returns numeric, and its state is a separately allocated
-- 128-bit accumulator for each group: summing the hourly rows of 30 days
-- (scripts/sql-bench.sh's data set, a million rows into 75,000 counters)
-- built a 23 MB hash table, and the sums by user a 42 MB one. A new
-- session pays for each page of that memory as it first touches it
-- (BENCHMARKS.md, "The first query of a session"). boxmeter_bigint_sum
-- keeps a plain bigint per group (int8pl, which raises 22003 "bigint out
-- of range" rather than wrap): 11 MB and 10 MB. scripts/sql-bench.sh
-- with huge pages, one machine, back to back: 30 days 412 ms before and
-- 277 after, 7 days 229 and 148 (BENCHMARKS.md, "0026: top_users sums in
-- bigint").
--
-- A user's bytes over a range fit a bigint unless they pass 9.2 EB, so the
-- numeric sums that 0011 clamps at the bigint maximum are the fallback:
-- on 22003 the same query runs again with sum(). No row of the first try
-- can have been returned by then: the query ends in ORDER BY, which reads
-- every sum before it hands out its first row.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

CREATE AGGREGATE boxmeter_bigint_sum(bigint) (
  SFUNC = int8pl,
  STYPE = bigint,
  COMBINEFUNC = int8pl,
  PARALLEL = SAFE
);
REVOKE EXECUTE ON FUNCTION boxmeter_bigint_sum(bigint) FROM PUBLIC;

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
  -- %1$s: the aggregate. With sum() every LEAST clamps a numeric at the
  -- bigint maximum, as 0011 did; with boxmeter_bigint_sum it changes
  -- nothing, and an overflow raises instead.
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
              FROM (SELECT h.counter_id,
                           LEAST(%1$s(h.uplink),
                                 9223372036854775807)::bigint AS uplink,
                           LEAST(%1$s(h.downlink),
                                 9223372036854775807)::bigint AS downlink
                      FROM counter_hourly h
                     WHERE h.hour >= $1 AND h.hour < $2
                     GROUP BY h.counter_id) AS s
              JOIN boxmeter_user_counters c ON c.id = s.counter_id
             GROUP BY c.user_name) AS t
     ORDER BY t.total DESC, t.name
  $query$;
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
  BEGIN
    RETURN QUERY EXECUTE format(query, 'boxmeter_bigint_sum')
      USING from_time, to_time;
  EXCEPTION WHEN numeric_value_out_of_range THEN
    RETURN QUERY EXECUTE format(query, 'sum') USING from_time, to_time;
  END;
END
$top_users$;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0026_top_users_bigint_sums.sql')
ON CONFLICT (name) DO NOTHING;
