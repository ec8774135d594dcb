-- 0023: usage events follow the user, not the names their bytes are under.
--
-- Three cases where 0012's events were wrong, each reproduced by
-- SqlQuotaTest.UsageEventsFollowRenamesAndQuotaZero:
--   * rename_user moves counters from one name to another; the moves fired
--     the commit's trigger as if they were traffic, and a user renamed back
--     to an old name (whose counters are theirs) had their bytes counted
--     twice for that statement: a user at 600 of 1,000 got threshold and
--     quota_reached events at "1,200". The trigger now does nothing while
--     rename_user runs (it sets boxmeter.renaming_user, 0021).
--   * A user whose traffic is all under an old name (sing-box counts the
--     old name until it reloads) had no row in the trigger's per-user sum,
--     which grouped the counters under the current name: no first_traffic
--     and no threshold events, then or later. The sum is now one row
--     whatever the user's counters are called.
--   * A quota of 0 admits nothing, and no threshold event is recorded for
--     it, but each rollover of such a user recorded quota_reset ("eligible
--     again") while they stayed shut out. It is now recorded only for a
--     quota above 0.
-- The bodies are 0012's with these three changes.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

CREATE OR REPLACE FUNCTION boxmeter_counters_usage_events()
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
  -- rename_user moves counters between names: no one's traffic (0021).
  IF coalesce(current_setting('boxmeter.renaming_user', true), '') <> '' THEN
    RETURN NULL;
  END IF;
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
         -- One row even without a counter under the current name (all the
         -- user's traffic still under an old one).
         SELECT own.lifetime + coalesce(old.lifetime, 0) AS lifetime,
                own.weighted + coalesce(old.weighted, 0) AS weighted
           FROM (SELECT coalesce(sum(x.uplink::numeric + x.downlink), 0)
                          AS lifetime,
                        coalesce(sum((x.uplink::numeric + x.downlink)
                                     * coalesce(m.multiplier, 1)), 0)
                          AS weighted
                   FROM counters x
                   LEFT JOIN node_multipliers m ON m.node = x.node
                  WHERE x.kind = 'user' AND x.name = c.name) AS own
           LEFT JOIN LATERAL (
             SELECT sum(o.uplink::numeric + o.downlink) AS lifetime,
                    sum((o.uplink::numeric + o.downlink)
                        * coalesce(om.multiplier, 1)) AS weighted
               FROM renamed_users r
               JOIN counters o ON o.kind = 'user' AND o.name = r.old_name
               LEFT JOIN node_multipliers om ON om.node = o.node
              WHERE r.user_id = c.id
           ) AS old ON c.id IN (SELECT r2.user_id FROM renamed_users r2)
       ) AS l
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

CREATE OR REPLACE FUNCTION boxmeter_quota_periods_events()
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
     -- A quota of 0 admits nothing in any period: no one is back.
     WHERE p.ended_by = 'rollover' AND u.quota_bytes > 0
       AND p.used_bytes >= u.quota_bytes
    ON CONFLICT (user_id, kind, threshold, period_start) DO NOTHING
    RETURNING e.id
  LOOP
    PERFORM pg_notify('boxmeter_usage_events', event_id::text);
  END LOOP;
  RETURN NULL;
END
$rolled$;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0023_usage_events_by_user.sql')
ON CONFLICT (name) DO NOTHING;
