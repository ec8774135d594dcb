-- 0005: the sing-box instance a node's baselines came from, told by clocks
-- that do not step (see collector/instance_identity.h and the README's
-- "What is counted exactly once").
--
-- Until now each counter stored instance_start: the wall clock minus the
-- instance's uptime, compared with a 2 s tolerance. A late answer or a
-- wall-clock step made a running instance look new (its whole value counted
-- again), and a restart caught by a falling counter kept the old start. Now
-- the node stores its current instance once:
--   instance_boot_id      the kernel boot (/proc/sys/kernel/random/boot_id)
--                         of the collector's host the interval is measured
--                         on; NULL: not known yet
--   instance_generation   counts the restarts the collectors saw
--   instance_start_lo_ms  the instance started strictly after this and
--   instance_start_hi_ms  strictly before this, in milliseconds of that
--                         boot's CLOCK_MONOTONIC
-- and each counter the generation its baseline came from.
--
-- Existing installations start with no known instance and every baseline in
-- generation 0: the first observation after the upgrade is taken as the
-- same instance unless one of its counters fell below its baseline (then it
-- is a new one and every value counts from zero). The conservative side:
-- taking a running instance for a new one would add every cumulative value
-- again.
ALTER TABLE nodes
  ADD COLUMN instance_boot_id text,
  ADD COLUMN instance_generation bigint NOT NULL DEFAULT 0,
  ADD COLUMN instance_start_lo_ms bigint,
  ADD COLUMN instance_start_hi_ms bigint;

-- Adding a column with a constant default rewrites nothing. No index covers
-- it, so the commit's updates stay HOT.
ALTER TABLE counters ADD COLUMN generation bigint NOT NULL DEFAULT 0;

COMMENT ON COLUMN nodes.instance_boot_id IS
  'boot id of the collector host the instance interval is measured on';
COMMENT ON COLUMN nodes.instance_generation IS
  'the current sing-box instance of the node: +1 at every restart seen';
COMMENT ON COLUMN counters.generation IS
  'the nodes.instance_generation the baseline came from';

-- instance_start is no longer read or written by the collector. It stays
-- (nullable) because rename_user (0003) and operators' own statements still
-- name it; new counters leave it NULL.
ALTER TABLE counters ALTER COLUMN instance_start DROP NOT NULL;
COMMENT ON COLUMN counters.instance_start IS
  'unused since 0005_instance_identity.sql (see counters.generation)';

GRANT UPDATE (instance_boot_id, instance_generation, instance_start_lo_ms,
              instance_start_hi_ms)
  ON nodes TO boxmeter_collector;
GRANT UPDATE (generation) ON counters TO boxmeter_collector;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0005_instance_identity.sql')
ON CONFLICT (name) DO NOTHING;
