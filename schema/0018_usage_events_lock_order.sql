-- 0018: set_usage_events no longer deadlocks with a commit in flight.
--
-- Every commit takes its tables in one order: nodes (the commit_seq guard),
-- then users and quota_periods (the rollover its trigger runs, whose INSERT
-- locks quota_periods even when no period ends), then counters. 0012's
-- set_usage_events dropped and created the triggers on counters first and
-- on quota_periods last: switching events on while a collector committed
-- held counters against the commit and waited for quota_periods held by it,
-- and PostgreSQL aborted one of the two ("deadlock detected";
-- SqlEventDeliveryTest.SwitchingEventsWaitsForACommitInFlight). It now takes
-- both tables' locks first, in the commits' order: it waits for the commits
-- in flight, and the commits that start meanwhile wait for it, briefly.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

CREATE OR REPLACE FUNCTION set_usage_events(enabled boolean)
RETURNS text
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
-- Its DROP TRIGGER IF EXISTS would otherwise tell the operator, for each
-- trigger that is not there, that it skipped it.
SET client_min_messages = warning
AS $set_events$
BEGIN
  IF enabled IS NULL THEN
    RAISE EXCEPTION 'set_usage_events: enabled must be true or false, not '
                    'NULL'
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  -- The lock CREATE and DROP TRIGGER take, in the commits' order (above).
  LOCK TABLE quota_periods, counters IN SHARE ROW EXCLUSIVE MODE;
  DROP TRIGGER IF EXISTS counters_updated_events ON counters;
  DROP TRIGGER IF EXISTS counters_inserted_events ON counters;
  DROP TRIGGER IF EXISTS quota_periods_events ON quota_periods;
  IF NOT enabled THEN
    RETURN 'usage events are no longer recorded';
  END IF;
  CREATE TRIGGER counters_updated_events
    AFTER UPDATE ON counters
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION boxmeter_counters_usage_events();
  CREATE TRIGGER counters_inserted_events
    AFTER INSERT ON counters
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION boxmeter_counters_usage_events();
  CREATE TRIGGER quota_periods_events
    AFTER INSERT ON quota_periods
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION boxmeter_quota_periods_events();
  RETURN 'usage events are recorded from the next commit on';
END
$set_events$;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0018_usage_events_lock_order.sql')
ON CONFLICT (name) DO NOTHING;
