-- 0024: traffic under a renamed user's old name is their first and last
-- traffic too; an on-hold user's expiry is one instant.
--
-- After rename_user, sing-box counts the old name until it reloads, and
-- that traffic already counted in the user's lifetime and quota usage
-- (0008). users_with_state took first_seen and last_seen from the counters
-- under the current name only: a renamed user whose traffic was all under
-- the old name showed first_seen = their creation time (the lifetime had
-- grown, so "first use" was set, from no counter), last_seen NULL and
-- online false, and an on-hold user's expiry ran from their creation. It
-- moved again when the first traffic under the new name came
-- (SqlQuotaTest.OldNameTrafficIsTheUsersFirstAndLastTraffic). Both now take
-- the old names' counters too, looked up only for users who have any, as
-- the lifetime already does.
--
-- And an on-hold user's expiry (first_seen + on_hold_for) was added in the
-- session's time zone: '1 month' from 22:00 UTC on 30 October ended on 30
-- November in a UTC session and on 29 November in a Tehran one, so a
-- collector and an operator saw different expiries, and the time events
-- (0014), recorded once per expiry, could record expiry_soon twice
-- (SqlQuotaTest.OnHoldExpiryIsOneInstantInEverySession). It is now added on
-- the calendar of the user's time zone (the database-wide one if they have
-- none), as their quota periods are. The view is 0017's with these two
-- changes, column for column.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

CREATE OR REPLACE VIEW users_with_state AS
SELECT u.id, u.name, u.enabled, u.quota_bytes, u.expires_at, u.uuid,
       u.password, u.flow, u.alter_id, u.created_at, u.note, u.usage_offset,
       CASE WHEN u.period_end <= now()
            THEN (boxmeter_user_period(u, now())).period_start
            ELSE u.period_start END AS period_start,
       usage.used AS used_bytes, usage.lifetime AS lifetime_bytes,
       CASE WHEN NOT u.enabled THEN 'disabled'
            WHEN expiry.at <= now() THEN 'expired'
            WHEN usage.used >= u.quota_bytes THEN 'over_quota'
            -- One probe per user; the enabled inbounds are read once.
            WHEN NOT EXISTS (SELECT 1 FROM inbound_users l
                              WHERE l.user_id = u.id
                                AND l.inbound_id = ANY (ARRAY(
                                      SELECT i.id FROM inbounds i
                                       WHERE i.enabled)))
              THEN 'no_inbound'
            ELSE 'active'
       END AS state,
       u.reset_strategy, u.reset_day, u.reset_month, u.reset_every_days,
       u.reset_anchor, coalesce(u.time_zone, (SELECT boxmeter_default_time_zone()))
         AS time_zone,
       CASE WHEN u.period_end <= now()
            THEN (boxmeter_user_period(u, now())).period_end
            ELSE u.period_end END AS period_end,
       usage.first_seen, usage.last_seen,
       coalesce(usage.last_seen >= now() - (SELECT boxmeter_online_window()),
                false)
         AS online,
       u.on_hold_for, u.activate_by,
       u.on_hold_for IS NOT NULL AND usage.first_seen IS NULL AS on_hold,
       expiry.at AS effective_expires_at
  FROM users u
 CROSS JOIN LATERAL (
   SELECT LEAST(sums.lifetime, 9223372036854775807)::bigint AS lifetime,
          CASE WHEN u.period_end <= now() THEN 0
               ELSE GREATEST(LEAST(floor(sums.weighted),
                                   9223372036854775807)::bigint
                             - u.usage_offset, 0) END AS used,
          CASE WHEN sums.lifetime > u.created_lifetime
               THEN GREATEST(sums.first_seen, u.created_at) END AS first_seen,
          CASE WHEN sums.lifetime > u.created_lifetime THEN sums.last_seen END
            AS last_seen
     FROM (
       -- One lookup through counters_user_name per user; the old names
       -- only for the few users who have any, the multipliers only for
       -- counters of nodes that have one (hashed sets, read once).
       SELECT coalesce(sum(c.uplink::numeric + c.downlink), 0)
                + CASE WHEN u.id IN (SELECT r.user_id FROM renamed_users r)
                       THEN coalesce(
                         (SELECT sum(o.uplink::numeric + o.downlink)
                            FROM renamed_users r
                            JOIN counters o ON o.kind = 'user'
                                           AND o.name = r.old_name
                           WHERE r.user_id = u.id), 0)
                       ELSE 0 END AS lifetime,
              coalesce(sum((c.uplink::numeric + c.downlink)
                           * CASE WHEN c.node IN (SELECT m.node
                                                    FROM node_multipliers m)
                                  THEN (SELECT m.multiplier
                                          FROM node_multipliers m
                                         WHERE m.node = c.node)
                                  ELSE 1 END), 0)
                + CASE WHEN u.id IN (SELECT r.user_id FROM renamed_users r)
                       THEN coalesce(
                         (SELECT sum((o.uplink::numeric + o.downlink)
                                     * coalesce(m.multiplier, 1))
                            FROM renamed_users r
                            JOIN counters o ON o.kind = 'user'
                                           AND o.name = r.old_name
                            LEFT JOIN node_multipliers m ON m.node = o.node
                           WHERE r.user_id = u.id), 0)
                       ELSE 0 END AS weighted,
              -- LEAST and GREATEST leave out NULL: no old name, or no
              -- counter under the current name yet.
              LEAST(min(c.first_seen),
                    CASE WHEN u.id IN (SELECT r.user_id FROM renamed_users r)
                         THEN (SELECT min(o.first_seen)
                                 FROM renamed_users r
                                 JOIN counters o ON o.kind = 'user'
                                                AND o.name = r.old_name
                                WHERE r.user_id = u.id) END) AS first_seen,
              GREATEST(max(c.last_seen),
                       CASE WHEN u.id IN (SELECT r.user_id
                                            FROM renamed_users r)
                            THEN (SELECT max(o.last_seen)
                                    FROM renamed_users r
                                    JOIN counters o ON o.kind = 'user'
                                                   AND o.name = r.old_name
                                   WHERE r.user_id = u.id) END) AS last_seen
         FROM counters c
        WHERE c.kind = 'user' AND c.name = u.name
     ) AS sums
 ) AS usage
 CROSS JOIN LATERAL (
   -- on_hold_for counts on the calendar of the user's time zone, not the
   -- session's: '1 month' or '30 days' after the first traffic is one
   -- instant for every reader.
   SELECT CASE WHEN u.on_hold_for IS NULL THEN u.expires_at
               WHEN usage.first_seen IS NOT NULL
                 THEN (usage.first_seen AT TIME ZONE zone.name
                       + u.on_hold_for) AT TIME ZONE zone.name
               ELSE u.activate_by END AS at
     FROM (SELECT coalesce(u.time_zone,
                           (SELECT boxmeter_default_time_zone())) AS name)
          AS zone
 ) AS expiry;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0024_first_use_and_expiry.sql')
ON CONFLICT (name) DO NOTHING;
