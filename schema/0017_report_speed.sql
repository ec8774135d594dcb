-- 0017: the per-user reports at 50,000 users (issue 12's speed part).
--
-- Measured with scripts/sql-bench.sh's data set (BENCHMARKS.md, "The SQL
-- reports at 50,000 users"), two costs dominated user_quota_status,
-- eligible_users and the other reports over every user:
--   * boxmeter_default_time_zone() and boxmeter_online_window() ran once per
--     user: SECURITY DEFINER functions with their own search_path are never
--     inlined, and each call switches settings and reads boxmeter_settings.
--     As scalar subqueries they are an InitPlan: read once per query.
--   * PostgreSQL's JIT (on by default in Debian's PostgreSQL 15) compiled
--     these plans of many small index probes for longer than they ran: 1.3 s
--     of a 2.5 s user_quota_status. It is turned off for this database when
--     the migrating role may (it owns the database or is a superuser);
--     otherwise a NOTICE says the statement to run. It applies to sessions
--     that start afterwards.
-- The view keeps 0011's columns and rules; only where the two settings are
-- read changed.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

DO $jit$
BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
     OR pg_has_role(current_user,
                    (SELECT datdba FROM pg_database
                      WHERE datname = current_database()), 'MEMBER') THEN
    EXECUTE format('ALTER DATABASE %I SET jit = off', current_database());
  ELSE
    RAISE NOTICE 'boxmeter: JIT stays on for database %: its reports run '
                 'faster without it', quote_ident(current_database())
      USING HINT = format('as its owner: ALTER DATABASE %I SET jit = off',
                          current_database());
  END IF;
END
$jit$;

-- 0011's state rule, the two settings read once per query.
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
              min(c.first_seen) AS first_seen,
              max(c.last_seen) AS last_seen
         FROM counters c
        WHERE c.kind = 'user' AND c.name = u.name
     ) AS sums
 ) AS usage
 CROSS JOIN LATERAL (
   SELECT CASE WHEN u.on_hold_for IS NULL THEN u.expires_at
               WHEN usage.first_seen IS NOT NULL
                 THEN usage.first_seen + u.on_hold_for
               ELSE u.activate_by END AS at
 ) AS expiry;

-- 0010's online_users, the window read once per query.
CREATE OR REPLACE VIEW online_users AS
SELECT c.user_name AS name, c.node, max(c.last_seen) AS last_seen
  FROM boxmeter_user_counters c
  JOIN users u ON u.name = c.user_name
 WHERE c.last_seen >= now() - (SELECT boxmeter_online_window())
   AND c.last_seen >= u.created_at
 GROUP BY c.user_name, c.node;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0017_report_speed.sql')
ON CONFLICT (name) DO NOTHING;
