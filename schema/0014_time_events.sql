-- 0014: usage events that time raises, not traffic (issue 13, item 2):
--   expiry_soon  the user's expiry (user_quota_status.expires_at, on-hold
--                users' included) is at most N days away
--                (boxmeter_settings.event_expiry_days, default {3}; the
--                event's threshold is N)
--   expired      the expiry has passed
--   idle         no traffic of the user for N hours
--                (boxmeter_settings.event_idle_hours, default 24, NULL: off;
--                the event's threshold is N)
-- Each once per user, kind, N and expiry (expires_at) or quiet stretch
-- (last_seen), in the outbox of 0012, announced with NOTIFY like the rest.
--
-- Nothing schedules them: the collector that delivers events
-- (claim_usage_events, 0013, at most once a poll) checks first, and the
-- check runs at most once a minute, so they are recorded within a minute
-- of their moment while a collector with hooks.on_event runs. An expiry or
-- a quiet stretch that began more than a day before the check (say, every
-- collector was down for days, or events were just turned on) raises
-- nothing, so an outage or turning events on does not flood the hook with
-- old news; an expiry still ahead always raises its expiry_soon. Only while
-- events are on (set_usage_events(true)).

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

ALTER TABLE usage_events DROP CONSTRAINT usage_events_kind_check;
ALTER TABLE usage_events ADD CONSTRAINT usage_events_kind_check
  CHECK (kind IN ('threshold', 'quota_reached', 'first_traffic',
                  'quota_reset', 'expiry_soon', 'expired', 'idle'));

ALTER TABLE boxmeter_settings
  ADD COLUMN event_expiry_days integer[] NOT NULL DEFAULT '{3}'
    CHECK (0 < ALL (event_expiry_days) AND 3650 >= ALL (event_expiry_days)),
  ADD COLUMN event_idle_hours integer DEFAULT 24
    CHECK (event_idle_hours BETWEEN 1 AND 87600),
  ADD COLUMN time_events_checked_at timestamptz;
COMMENT ON COLUMN boxmeter_settings.event_expiry_days IS
  'days before a user''s expiry that raise an expiry_soon event';
COMMENT ON COLUMN boxmeter_settings.event_idle_hours IS
  'hours without traffic that raise an idle event; NULL: none';

-- Records the time-based events due now; returns how many. Does nothing
-- (0) while events are off or when it ran less than a minute ago.
CREATE FUNCTION boxmeter_record_time_events()
RETURNS integer
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $time_events$
DECLARE
  event_id bigint;
  recorded integer := 0;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_trigger
                  WHERE tgname = 'counters_updated_events'
                    AND tgrelid = 'counters'::regclass) THEN
    RETURN 0;
  END IF;
  UPDATE boxmeter_settings SET time_events_checked_at = now()
   WHERE time_events_checked_at IS NULL
      OR time_events_checked_at <= now() - interval '1 minute';
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  FOR event_id IN
    WITH settings AS (
      SELECT s.event_expiry_days, s.event_idle_hours FROM boxmeter_settings s
    ), due AS (
      SELECT q.id, q.name, 'expiry_soon' AS kind, d.days AS threshold,
             q.expires_at AS period_start, q.used_bytes, q.quota_bytes
        FROM user_quota_status q, settings s,
             unnest(s.event_expiry_days) AS d(days)
       WHERE q.expires_at > now()
         AND q.expires_at <= now() + make_interval(days => d.days)
      UNION ALL
      SELECT q.id, q.name, 'expired', 0, q.expires_at, q.used_bytes,
             q.quota_bytes
        FROM user_quota_status q
       WHERE q.expires_at <= now()
         AND q.expires_at > now() - interval '1 day'
      UNION ALL
      SELECT q.id, q.name, 'idle', s.event_idle_hours, q.last_seen,
             q.used_bytes, q.quota_bytes
        FROM user_quota_status q, settings s
       WHERE s.event_idle_hours IS NOT NULL
         AND q.last_seen <= now() - make_interval(hours => s.event_idle_hours)
         AND q.last_seen > now() - make_interval(hours => s.event_idle_hours)
                           - interval '1 day'
    )
    INSERT INTO usage_events AS e (user_id, user_name, kind, threshold,
                                   period_start, used_bytes, quota_bytes)
    SELECT d.id, d.name, d.kind, d.threshold, d.period_start, d.used_bytes,
           d.quota_bytes
      FROM due d
    ON CONFLICT (user_id, kind, threshold, period_start) DO NOTHING
    RETURNING e.id
  LOOP
    PERFORM pg_notify('boxmeter_usage_events', event_id::text);
    recorded := recorded + 1;
  END LOOP;
  RETURN recorded;
END
$time_events$;

-- The deliverer checks for time-based events first: 0013's claim, renamed,
-- behind a new claim_usage_events with the same signature and grants.
ALTER FUNCTION claim_usage_events(text, integer, interval)
  RENAME TO boxmeter_claim_usage_events;

CREATE FUNCTION claim_usage_events(holder text, max_events integer,
                                   lease interval)
RETURNS TABLE (id bigint, event jsonb)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $claim$
#variable_conflict use_variable
BEGIN
  -- Only a deliverer that may take the lease checks (two that race both
  -- check: harmless, recording is idempotent and once a minute).
  IF EXISTS (SELECT 1 FROM usage_event_delivery d
              WHERE d.holder IS NULL OR d.holder = holder
                 OR d.lease_expires <= clock_timestamp()) THEN
    PERFORM boxmeter_record_time_events();
  END IF;
  RETURN QUERY
    SELECT c.id, c.event
      FROM boxmeter_claim_usage_events(holder, max_events, lease) c;
END
$claim$;

REVOKE EXECUTE ON FUNCTION
  boxmeter_record_time_events(),
  boxmeter_claim_usage_events(text, integer, interval),
  claim_usage_events(text, integer, interval)
  FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION boxmeter_claim_usage_events(text, integer, interval)
  FROM boxmeter_collector;
GRANT EXECUTE ON FUNCTION claim_usage_events(text, integer, interval)
  TO boxmeter_collector;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0014_time_events.sql')
ON CONFLICT (name) DO NOTHING;
