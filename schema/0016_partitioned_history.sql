-- 0016: counter_hourly partitioned by time (issue 15, "Partitioned history").
--
-- counter_hourly becomes a table partitioned by range of `hour` (native
-- declarative partitioning, no extension):
--   counter_hourly_legacy     the table as it was, attached in place: every
--                             hour before the first daily partition
--                             (MINVALUE to a UTC midnight);
--   counter_hourly_YYYYMMDD   one per UTC day from then on, created ahead by
--                             the collectors (ensure_history_partitions);
--   counter_hourly_default    a safety net: a commit for an hour that has no
--                             partition yet lands here instead of failing;
--                             ensure_history_partitions moves such rows into
--                             the day's partition when it creates it.
-- Retention drops whole partitions older than the cutoff (prune_history);
-- rows older than the cutoff in the legacy, default or straddling partition
-- are still deleted in batches by the collector, as before.
--
-- Why attach the old table rather than copy it: a year of history can be
-- 400 million rows; copying them would rewrite the table and its indexes in
-- one transaction. Attaching keeps every row where it is, reuses its primary
-- key and index on hour as the partitions' own and its foreign key as the
-- partition's. What it costs: attaching must prove that every row lies
-- before the legacy partition's end, which is one sequential scan of the
-- table, taken while the migration holds the table's lock (commits wait;
-- BENCHMARKS.md, "Partitioned history", has the time at 50 million rows).
-- Large installations can take that scan out of the lock: beforehand, add
-- and validate the bound as a CHECK constraint named
-- counter_hourly_legacy_bound, at a UTC midnight a few days ahead (VALIDATE
-- lets commits go on while it scans; see schema/COOKBOOK.md, "Retention
-- and the size of the history"). The migration then uses that bound and
-- attaches without a scan. Migrate before that midnight passes: the constraint refuses later
-- hours until then.
--
-- Why daily partitions: a day of a large installation (50,000 users active
-- every hour on one node) is 1.2 million rows, small enough to create,
-- fill and drop cheaply, and the cookbook's reports ask for days. 400 days
-- of retention are about 400 partitions; a query that names a time range
-- reads only its days' (pruned when planned, or when run for parameters
-- and now()). Queries without one (a user's whole history by primary key)
-- look in every partition: one index probe per partition.
--
-- Access stays as 0004 and 0008 made it: the same grants and row-level
-- security policies are copied from the old table to the partitioned one,
-- and removed from the old table (now a partition: it is reached only
-- through counter_hourly). Partitions belong to the schema's owner and are
-- granted to nobody. A collector's login creates and drops partitions only
-- through ensure_history_partitions and prune_history, which run as their
-- owner; it still deletes rows only older than history_retention.keep.
--
-- Apply with `boxmeter-collector --migrate` or `psql -1 -f` as the schema's
-- owner (after 0001 to 0015). Views that read counter_hourly are recreated
-- with their own definitions, so that they read the partitioned table.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

DO $partition$
DECLARE
  views text[];
  definitions text[];
  options text[];
  bound timestamptz := date_trunc('day', now(), 'UTC') + interval '24 hours';
  prepared text;
  policy record;
  grant_row record;
BEGIN
  -- The views reading the table, to point them at the partitioned one.
  SELECT array_agg(v.oid::regclass::text ORDER BY v.oid),
         array_agg(pg_get_viewdef(v.oid) ORDER BY v.oid),
         array_agg(coalesce(array_to_string(v.reloptions, ', '), '')
                   ORDER BY v.oid)
    INTO views, definitions, options
    FROM (SELECT DISTINCT r.ev_class AS oid
            FROM pg_depend d
            JOIN pg_rewrite r ON r.oid = d.objid
           WHERE d.classid = 'pg_rewrite'::regclass
             AND d.refclassid = 'pg_class'::regclass
             AND d.refobjid = 'counter_hourly'::regclass
             AND r.ev_class <> 'counter_hourly'::regclass) AS found
    JOIN pg_class v ON v.oid = found.oid;

  -- A bound prepared by the operator (see above), if any.
  SELECT substring(pg_get_constraintdef(c.oid) FROM '''([^'']+)''')
    INTO prepared
    FROM pg_constraint c
   WHERE c.conrelid = 'counter_hourly'::regclass
     AND c.conname = 'counter_hourly_legacy_bound' AND c.convalidated;
  IF prepared IS NOT NULL THEN
    bound := prepared::timestamptz;
    IF bound <> date_trunc('day', bound, 'UTC') OR bound <= now() THEN
      RAISE EXCEPTION 'counter_hourly_legacy_bound must be a UTC midnight '
                      'still ahead; it is %', bound
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'drop the constraint (the migration then scans the '
                     'table) or add it again with a later midnight';
    END IF;
  END IF;

  ALTER TABLE counter_hourly RENAME TO counter_hourly_legacy;
  ALTER INDEX counter_hourly_pkey RENAME TO counter_hourly_legacy_pkey;
  ALTER INDEX counter_hourly_hour RENAME TO counter_hourly_legacy_hour;
  ALTER TABLE counter_hourly_legacy
    RENAME CONSTRAINT counter_hourly_counter_id_fkey
    TO counter_hourly_legacy_counter_id_fkey;

  -- The columns, keys and index 0001 gave it; storage parameters
  -- (fillfactor 50) are the partitions' own.
  CREATE TABLE counter_hourly (LIKE counter_hourly_legacy INCLUDING DEFAULTS)
    PARTITION BY RANGE (hour);
  ALTER TABLE counter_hourly
    ADD CONSTRAINT counter_hourly_pkey PRIMARY KEY (counter_id, hour),
    ADD CONSTRAINT counter_hourly_counter_id_fkey FOREIGN KEY (counter_id)
      REFERENCES counters (id) ON DELETE CASCADE;
  CREATE INDEX counter_hourly_hour ON counter_hourly (hour);
  COMMENT ON TABLE counter_hourly IS
    'hourly traffic per counter, partitioned by UTC day (0016)';

  EXECUTE format('ALTER TABLE counter_hourly ATTACH PARTITION '
                 'counter_hourly_legacy FOR VALUES FROM (MINVALUE) TO (%L)',
                 bound);
  ALTER TABLE counter_hourly_legacy
    DROP CONSTRAINT IF EXISTS counter_hourly_legacy_bound;
  CREATE TABLE counter_hourly_default PARTITION OF counter_hourly DEFAULT
    WITH (fillfactor = 50);

  FOR i IN 1 .. coalesce(array_length(views, 1), 0) LOOP
    EXECUTE format('CREATE OR REPLACE VIEW %s%s AS %s', views[i],
                   CASE WHEN options[i] <> ''
                        THEN ' WITH (' || options[i] || ')' ELSE '' END,
                   definitions[i]);
  END LOOP;

  -- Row-level security and grants, as the old table had them.
  ALTER TABLE counter_hourly ENABLE ROW LEVEL SECURITY;
  FOR policy IN
    SELECT p.policyname, p.permissive, p.cmd, p.qual, p.with_check,
           (SELECT string_agg(CASE WHEN r = 'public' THEN 'PUBLIC'
                                   ELSE quote_ident(r) END, ', ')
              FROM unnest(p.roles) AS r) AS roles
      FROM pg_policies p
     WHERE p.schemaname = current_schema()
       AND p.tablename = 'counter_hourly_legacy'
  LOOP
    EXECUTE format('CREATE POLICY %I ON counter_hourly AS %s FOR %s TO %s%s%s',
                   policy.policyname, policy.permissive, policy.cmd,
                   policy.roles,
                   CASE WHEN policy.qual IS NOT NULL
                        THEN ' USING (' || policy.qual || ')' ELSE '' END,
                   CASE WHEN policy.with_check IS NOT NULL
                        THEN ' WITH CHECK (' || policy.with_check || ')'
                        ELSE '' END);
    EXECUTE format('DROP POLICY %I ON counter_hourly_legacy',
                   policy.policyname);
  END LOOP;
  FOR grant_row IN
    SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS grantee,
           a.privilege_type AS privilege, NULL::text AS column_name,
           a.is_grantable
      FROM pg_class c, aclexplode(c.relacl) AS a
     WHERE c.oid = 'counter_hourly_legacy'::regclass
       AND a.grantee <> c.relowner
    UNION ALL
    SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
           a.privilege_type, quote_ident(t.attname), a.is_grantable
      FROM pg_attribute t, aclexplode(t.attacl) AS a
     WHERE t.attrelid = 'counter_hourly_legacy'::regclass
       AND t.attacl IS NOT NULL
  LOOP
    EXECUTE format('GRANT %s%s ON counter_hourly TO %s%s', grant_row.privilege,
                   CASE WHEN grant_row.column_name IS NOT NULL
                        THEN ' (' || grant_row.column_name || ')'
                        ELSE '' END,
                   grant_row.grantee,
                   CASE WHEN grant_row.is_grantable
                        THEN ' WITH GRANT OPTION' ELSE '' END);
    EXECUTE format('REVOKE ALL ON counter_hourly_legacy FROM %s',
                   grant_row.grantee);
  END LOOP;
END
$partition$;

-- The partitions but the default, with the range of hours each holds
-- [from_hour, to_hour); -infinity for the legacy partition's start.
CREATE VIEW history_partitions AS
SELECT c.relname::text AS partition,
       CASE WHEN b.expr LIKE 'FOR VALUES FROM (MINVALUE)%'
            THEN '-infinity'::timestamptz
            ELSE substring(b.expr FROM 'FROM \(''([^'']+)''\)')::timestamptz
       END AS from_hour,
       CASE WHEN b.expr LIKE '% TO (MAXVALUE)'
            THEN 'infinity'::timestamptz
            ELSE substring(b.expr FROM 'TO \(''([^'']+)''\)')::timestamptz
       END AS to_hour
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
  CROSS JOIN LATERAL pg_get_expr(c.relpartbound, c.oid) AS b(expr)
 WHERE i.inhparent = 'counter_hourly'::regclass
   AND b.expr <> 'DEFAULT';

-- Creates the daily partitions (UTC) from yesterday to `days_ahead` days
-- ahead that no partition covers yet, and those of the days whose rows
-- landed in the default partition (within history_retention.keep); moves
-- those rows into their day's partition in the same transaction. Returns
-- how many partitions it created. Runs as its owner: a collector's login
-- may call it but run no DDL itself. One caller at a time (a transaction
-- advisory lock: no session state, so it works through a pooler); gives up
-- after 5 s waiting for a table lock (lock_timeout), to try again later.
CREATE FUNCTION ensure_history_partitions(days_ahead integer DEFAULT 7)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
SET lock_timeout = '5s'
AS $ensure$
DECLARE
  today timestamptz := date_trunc('day', now(), 'UTC');
  day timestamptz;
  part text;
  created integer := 0;
BEGIN
  IF days_ahead IS NULL OR days_ahead NOT BETWEEN 0 AND 366 THEN
    RAISE EXCEPTION 'ensure_history_partitions: days_ahead must be 0 to 366 '
                    '(got %)', coalesce(days_ahead::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'e.g. ensure_history_partitions(7)';
  END IF;
  -- "boxmeter" in ASCII, plus 3 (the collector's migration lock is +0 and
  -- its pruning lock +1).
  PERFORM pg_advisory_xact_lock(7093020349380715893);
  FOR day IN
    SELECT today + n * interval '24 hours'
      FROM generate_series(-1, days_ahead) AS n
    UNION
    SELECT DISTINCT date_trunc('day', d.hour, 'UTC')
      FROM counter_hourly_default d
     WHERE d.hour >= now() - (SELECT r.keep FROM history_retention r)
    ORDER BY 1
  LOOP
    CONTINUE WHEN EXISTS (SELECT 1 FROM history_partitions p
                           WHERE p.from_hour < day + interval '24 hours'
                             AND p.to_hour > day);
    -- No row may land in the default partition while the day's rows move
    -- out of it (rows of days not in this loop move on a later call).
    LOCK TABLE counter_hourly_default IN SHARE ROW EXCLUSIVE MODE;
    part := 'counter_hourly_' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD');
    EXECUTE format('CREATE TABLE %I (LIKE counter_hourly INCLUDING DEFAULTS) '
                   'WITH (fillfactor = 50)', part);
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I PRIMARY KEY '
                   '(counter_id, hour)', part, part || '_pkey');
    EXECUTE format('CREATE INDEX %I ON %I (hour)', part || '_hour', part);
    EXECUTE format('WITH moved AS (DELETE FROM counter_hourly_default '
                   'WHERE hour >= $1 AND hour < $2 RETURNING *) '
                   'INSERT INTO %I SELECT * FROM moved', part)
      USING day, day + interval '24 hours';
    EXECUTE format('ALTER TABLE counter_hourly ATTACH PARTITION %I '
                   'FOR VALUES FROM (%L) TO (%L)', part, day,
                   day + interval '24 hours');
    created := created + 1;
  END LOOP;
  RETURN created;
END
$ensure$;

-- Detaches and drops every partition whose hours all lie before `cutoff`
-- (the legacy partition too, once it is that old), never one with an hour
-- younger than history_retention.keep: a later cutoff counts as now() -
-- keep. Rows older than the cutoff in a partition that also holds younger
-- ones stay; the collector deletes those in batches. Returns how many
-- partitions it dropped. Runs as its owner, one caller at a time (the
-- same lock as ensure_history_partitions), lock_timeout 5 s.
CREATE FUNCTION prune_history(cutoff timestamptz)
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
BEGIN
  IF cutoff IS NULL OR NOT isfinite(cutoff) THEN
    RAISE EXCEPTION 'prune_history: cutoff must be a finite time (got %)',
                    coalesce(cutoff::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'e.g. prune_history(now() - interval ''400 days'')';
  END IF;
  PERFORM pg_advisory_xact_lock(7093020349380715893);
  FOR part IN
    SELECT p.partition FROM history_partitions p
     WHERE p.to_hour <= oldest_kept
     ORDER BY p.to_hour
  LOOP
    EXECUTE format('ALTER TABLE counter_hourly DETACH PARTITION %I', part);
    EXECUTE format('DROP TABLE %I', part);
    dropped := dropped + 1;
  END LOOP;
  RETURN dropped;
END
$prune$;

REVOKE EXECUTE ON FUNCTION ensure_history_partitions(integer),
                           prune_history(timestamptz)
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ensure_history_partitions(integer),
                          prune_history(timestamptz)
  TO boxmeter_collector;
GRANT SELECT ON history_partitions TO boxmeter_operator, boxmeter_readonly;

-- The days after the legacy partition's end, a week ahead.
SELECT ensure_history_partitions(7);

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0016_partitioned_history.sql')
ON CONFLICT (name) DO NOTHING;
