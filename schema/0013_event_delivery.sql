-- 0013: delivering the usage events of 0012 to hooks.on_event (issue 13,
-- item 2; the collector's half).
--
-- Events are database-wide, so with several collectors exactly one may
-- hand them to its hook at a time, and a hook run happens between two
-- transactions (claim, then mark). A transaction-scoped lock cannot span
-- it, and a session lock does not work through a transaction-pooling
-- pooler (PgBouncer), so the deliverer holds a lease in a one-row table,
-- as a node's writer holds its lease (0006): a single UPDATE takes it when
-- it is free, lapsed, or already the caller's, and every call renews it.
-- The holder is the collector's node name, so a collector restarted after
-- a crash takes its lease back at once instead of waiting for it to lapse.
--
-- The collector's login role reads and marks events only through the two
-- functions below (SECURITY DEFINER); it has no privilege on usage_events.
--
--   claim_usage_events(holder, max_events, lease)
--       takes or renews the lease; while `holder` has it, returns the first
--       `max_events` undelivered events in id order, each as the JSON of
--       usage_event_json; none while another holder's lease is live
--   mark_usage_event_delivered(holder, event_id, lease)
--       sets delivered_at of the event once (true), or leaves it (false:
--       it was delivered already, e.g. by a deliverer that took over);
--       renews `holder`'s lease if it still has it
--
-- Delivery is at least once towards the hook (a crash after the hook
-- succeeded and before the mark delivers the event again, with the same
-- id) and exactly once in delivered_at.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

CREATE TABLE usage_event_delivery (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  holder text,               -- NULL: nobody delivers
  lease_expires timestamptz  -- by the database's clock
);
INSERT INTO usage_event_delivery DEFAULT VALUES;
COMMENT ON TABLE usage_event_delivery IS
  'who delivers usage events to its hooks.on_event, until when';

-- Checks the arguments both functions share.
CREATE FUNCTION boxmeter_event_delivery_arguments(what text, holder text,
                                                  lease interval)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path FROM CURRENT
AS $arguments$
BEGIN
  IF holder IS NULL OR holder = '' THEN
    RAISE EXCEPTION '%: holder must name the deliverer (its node), not %',
                    what, coalesce(quote_literal(holder), 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF lease IS NULL OR lease <= interval '0' THEN
    RAISE EXCEPTION '%: lease must be a positive interval, not %', what,
                    coalesce(lease::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'pass how long a hook run may take, e.g. ''90 seconds''';
  END IF;
END
$arguments$;

CREATE FUNCTION claim_usage_events(holder text, max_events integer,
                                   lease interval)
RETURNS TABLE (id bigint, event jsonb)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $claim$
#variable_conflict use_variable
BEGIN
  PERFORM boxmeter_event_delivery_arguments('claim_usage_events', holder,
                                            lease);
  IF max_events IS NULL OR max_events < 1 OR max_events > 10000 THEN
    RAISE EXCEPTION 'claim_usage_events: max_events must be 1 to 10000, '
                    'not %', coalesce(max_events::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- One row lock: of two deliverers claiming at once, the second sees the
  -- first's lease (READ COMMITTED re-reads the row after the wait).
  UPDATE usage_event_delivery d
     SET holder = holder, lease_expires = clock_timestamp() + lease
   WHERE d.holder IS NULL OR d.holder = holder
      OR d.lease_expires <= clock_timestamp();
  IF NOT FOUND THEN
    RETURN;
  END IF;
  RETURN QUERY
    SELECT j.id, j.event
      FROM usage_event_json j
     WHERE j.delivered_at IS NULL
     ORDER BY j.id
     LIMIT max_events;
END
$claim$;

CREATE FUNCTION mark_usage_event_delivered(holder text, event_id bigint,
                                           lease interval)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $mark$
#variable_conflict use_variable
DECLARE
  marked boolean;
BEGIN
  PERFORM boxmeter_event_delivery_arguments('mark_usage_event_delivered',
                                            holder, lease);
  UPDATE usage_events e SET delivered_at = clock_timestamp()
   WHERE e.id = event_id AND e.delivered_at IS NULL;
  marked := FOUND;
  IF NOT marked AND NOT EXISTS (SELECT 1 FROM usage_events e
                                 WHERE e.id = event_id) THEN
    RAISE EXCEPTION 'mark_usage_event_delivered: no usage event has id %',
                    coalesce(event_id::text, 'NULL')
      USING ERRCODE = 'no_data_found',
            HINT = 'pass an id that claim_usage_events returned';
  END IF;
  UPDATE usage_event_delivery d
     SET lease_expires = clock_timestamp() + lease
   WHERE d.holder = holder;
  RETURN marked;
END
$mark$;

REVOKE EXECUTE ON FUNCTION
  boxmeter_event_delivery_arguments(text, text, interval),
  claim_usage_events(text, integer, interval),
  mark_usage_event_delivered(text, bigint, interval)
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
  claim_usage_events(text, integer, interval),
  mark_usage_event_delivered(text, bigint, interval)
  TO boxmeter_collector;
GRANT SELECT ON usage_event_delivery TO boxmeter_operator;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0013_event_delivery.sql')
ON CONFLICT (name) DO NOTHING;
