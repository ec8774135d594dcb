-- 0012: usage events in an outbox (issue 13, item 2; the SQL half).
--
-- Events, each recorded at most once per user, kind, threshold and quota
-- period (a unique key), in the same transaction as the change that
-- caused it, and announced with NOTIFY boxmeter_usage_events (payload: the
-- event's id) when that transaction commits:
--   threshold      the period's usage crossed a percentage of the quota
--                  (boxmeter_settings.event_thresholds, default {80,100},
--                  or the user's own users.event_thresholds)
--   quota_reached  the same at 100 (or more): the user is now over quota
--   first_traffic  the user's first traffic ever (once per user)
--   quota_reset    a period of a user who had reached their quota ended by
--                  itself (rollover): they are eligible again
-- Thresholds and first traffic are recorded by a trigger on the collector's
-- commit (its statement on counters, through transition tables); rollovers
-- by a trigger on quota_periods. Delivery is the collector's part (not in
-- this migration): read undelivered rows in id order, hand each to the
-- hook, set delivered_at in the same transaction that confirms it. The id
-- makes a redelivery after a crash recognisable.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

ALTER TABLE boxmeter_settings
  ADD COLUMN event_thresholds integer[] NOT NULL DEFAULT '{80,100}'
    CHECK (0 < ALL (event_thresholds) AND 1000 >= ALL (event_thresholds));
ALTER TABLE users
  ADD COLUMN event_thresholds integer[]
    CHECK (0 < ALL (event_thresholds) AND 1000 >= ALL (event_thresholds));
COMMENT ON COLUMN users.event_thresholds IS
  'percentages of the quota that raise a usage event; NULL: '
  'boxmeter_settings.event_thresholds';

CREATE TABLE usage_events (
  id bigserial PRIMARY KEY,
  user_id bigint NOT NULL,  -- no foreign key: events outlive a deleted user
  user_name text NOT NULL,
  kind text NOT NULL CHECK (kind IN ('threshold', 'quota_reached',
                                     'first_traffic', 'quota_reset')),
  threshold integer NOT NULL DEFAULT 0,  -- percent; 0 for the other kinds
  period_start timestamptz NOT NULL,     -- '-infinity' for first_traffic
  node text,                             -- the commit's node, if any
  used_bytes bigint,
  quota_bytes bigint,
  created_at timestamptz NOT NULL DEFAULT now(),
  delivered_at timestamptz,
  UNIQUE (user_id, kind, threshold, period_start)
);
CREATE INDEX usage_events_undelivered ON usage_events (id)
  WHERE delivered_at IS NULL;

-- An event as the JSON a hook would receive.
CREATE VIEW usage_event_json AS
SELECT e.id, e.delivered_at,
       jsonb_strip_nulls(jsonb_build_object(
         'id', e.id, 'kind', e.kind, 'user', e.user_name,
         'threshold', NULLIF(e.threshold, 0),
         'period_start', CASE WHEN isfinite(e.period_start)
                              THEN e.period_start END,
         'node', e.node, 'used_bytes', e.used_bytes,
         'quota_bytes', e.quota_bytes, 'at', e.created_at)) AS event
  FROM usage_events e;

-- The collector's commit is one statement that updates the counters it has
-- and inserts those it sees first; a statement trigger for each sees only
-- that statement's rows (transition tables), and this function records the
-- events of the traffic they gained: thresholds crossed (usage before the
-- commit is usage now minus the commit's weighted bytes) and first traffic.
-- A renamed user's old names count for them.
CREATE FUNCTION boxmeter_counters_usage_events()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $events$
DECLARE
  -- The bytes each user counter gained in this statement.
  gained_rows text := CASE TG_OP
    WHEN 'UPDATE' THEN
      'SELECT n.node, n.name, n.uplink::numeric + n.downlink - o.uplink '
      '       - o.downlink AS raw '
      '  FROM new_rows n JOIN old_rows o ON o.id = n.id '
      ' WHERE n.kind = ''user'' '
      '   AND n.uplink::numeric + n.downlink > o.uplink::numeric + o.downlink'
    ELSE
      'SELECT n.node, n.name, n.uplink::numeric + n.downlink AS raw '
      '  FROM new_rows n '
      ' WHERE n.kind = ''user'' AND n.uplink::numeric + n.downlink > 0'
    END;
  event_id bigint;
BEGIN
  FOR event_id IN EXECUTE format($query$
    WITH counted AS (%s
    ), gained AS (
      SELECT coalesce(r.user_id, u.id) AS user_id, min(d.node) AS node,
             sum(d.raw) AS raw,
             sum(d.raw * coalesce(m.multiplier, 1)) AS weighted
        FROM counted d
        LEFT JOIN node_multipliers m ON m.node = d.node
        LEFT JOIN renamed_users r ON r.old_name = d.name
        LEFT JOIN users u ON u.name = d.name
       WHERE r.user_id IS NOT NULL OR u.id IS NOT NULL
       GROUP BY 1
    ), candidates AS (
      -- Only users with a quota, or without their first_traffic event yet
      -- (one probe of the unique index), cost a lookup of their lifetime.
      SELECT u.id, u.name, u.quota_bytes, u.period_start, u.usage_offset,
             u.created_lifetime, g.node, g.raw, g.weighted,
             coalesce(u.event_thresholds,
                      (SELECT x.event_thresholds FROM boxmeter_settings x))
               AS thresholds,
             NOT EXISTS (SELECT 1 FROM usage_events f
                          WHERE f.user_id = u.id AND f.kind = 'first_traffic')
               AS first_pending
        FROM gained g
        JOIN users u ON u.id = g.user_id
       WHERE u.quota_bytes > 0
          OR NOT EXISTS (SELECT 1 FROM usage_events f
                          WHERE f.user_id = u.id
                            AND f.kind = 'first_traffic')
    ), status AS (
      -- Lifetime and weighted lifetime (0011's), as users_with_state sums
      -- them: one index lookup per candidate, old names only for users who
      -- have any.
      SELECT c.*, l.lifetime,
             GREATEST(floor(l.weighted) - c.usage_offset, 0) AS used
        FROM candidates c
       CROSS JOIN LATERAL (
         SELECT coalesce(sum(x.uplink::numeric + x.downlink), 0)
                  + coalesce(old.lifetime, 0) AS lifetime,
                coalesce(sum((x.uplink::numeric + x.downlink)
                             * coalesce(m.multiplier, 1)), 0)
                  + coalesce(old.weighted, 0) AS weighted
           FROM counters x
           LEFT JOIN node_multipliers m ON m.node = x.node
           LEFT JOIN LATERAL (
             SELECT sum(o.uplink::numeric + o.downlink) AS lifetime,
                    sum((o.uplink::numeric + o.downlink)
                        * coalesce(om.multiplier, 1)) AS weighted
               FROM renamed_users r
               JOIN counters o ON o.kind = 'user' AND o.name = r.old_name
               LEFT JOIN node_multipliers om ON om.node = o.node
              WHERE r.user_id = c.id
           ) AS old ON c.id IN (SELECT r2.user_id FROM renamed_users r2)
          WHERE x.kind = 'user' AND x.name = c.name
          GROUP BY old.lifetime, old.weighted) AS l
    )
    INSERT INTO usage_events AS e (user_id, user_name, kind, threshold,
                                   period_start, node, used_bytes,
                                   quota_bytes)
    SELECT s.id, s.name,
           CASE WHEN t.pct >= 100 THEN 'quota_reached' ELSE 'threshold' END,
           t.pct, s.period_start, s.node, s.used, s.quota_bytes
      FROM status s
     CROSS JOIN LATERAL unnest(s.thresholds) AS t(pct)
     WHERE s.quota_bytes > 0
       AND s.used >= s.quota_bytes * t.pct / 100.0
       AND s.used - s.weighted < s.quota_bytes * t.pct / 100.0
    UNION ALL
    SELECT s.id, s.name, 'first_traffic', 0, '-infinity', s.node,
           s.used, s.quota_bytes
      FROM status s
     WHERE s.first_pending
       AND s.lifetime > s.created_lifetime
       AND s.lifetime - s.raw <= s.created_lifetime
    ON CONFLICT (user_id, kind, threshold, period_start) DO NOTHING
    RETURNING e.id
  $query$, gained_rows)
  LOOP
    PERFORM pg_notify('boxmeter_usage_events', event_id::text);
  END LOOP;
  RETURN NULL;
END
$events$;


-- A rollover that ends the period of a user who had reached their quota
-- gives them their access back.
CREATE FUNCTION boxmeter_quota_periods_events()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $rolled$
DECLARE
  event_id bigint;
BEGIN
  FOR event_id IN
    INSERT INTO usage_events AS e (user_id, user_name, kind, period_start,
                                   used_bytes, quota_bytes)
    SELECT u.id, u.name, 'quota_reset', p.period_end, 0, u.quota_bytes
      FROM new_rows p
      JOIN users u ON u.id = p.user_id
     WHERE p.ended_by = 'rollover' AND p.used_bytes >= u.quota_bytes
    ON CONFLICT (user_id, kind, threshold, period_start) DO NOTHING
    RETURNING e.id
  LOOP
    PERFORM pg_notify('boxmeter_usage_events', event_id::text);
  END LOOP;
  RETURN NULL;
END
$rolled$;


-- Off until an operator turns them on: the triggers exist only while
-- events are on, because a trigger with transition tables makes every
-- commit keep a copy of the rows it changes even while disabled (half as
-- much time again on a 75,000-counter update), and recording costs about
-- 60 us per user with a quota whose traffic a commit carries (3 s for a
-- commit that carries 50,000 such users).
--
-- Turns usage events on or off; returns what it did. Runs as the owner
-- (it creates or drops the triggers); takes a short lock on counters.
CREATE FUNCTION set_usage_events(enabled boolean)
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

REVOKE EXECUTE ON FUNCTION set_usage_events(boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION set_usage_events(boolean) TO boxmeter_operator;
GRANT SELECT ON usage_events, usage_event_json TO boxmeter_operator;
GRANT SELECT ON usage_event_json TO boxmeter_readonly;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0012_usage_events.sql')
ON CONFLICT (name) DO NOTHING;
