-- 0027: reset_all_usage records one instant; the periods it ends are
-- written as periods that end by the calendar are.
--
-- reset_all_usage wrote a quota_periods row and a new offset for every user
-- in the call: 0.73 to 0.77 s for 50,000 users (scripts/sql-bench.sh), of
-- which the rows and their foreign key checks alone took about 280 ms
-- (BENCHMARKS.md, "Why reset_all_usage stays over 300 ms"). It now stores
-- its instant in boxmeter_settings.reset_all_at, and every user whose
-- period started before that instant is in a new period from it, the way a
-- user whose period ended at midnight is in a new one before any commit
-- (0009):
--   * users_with_state (and so user_quota_status, eligible_users and the
--     generator) shows such a user with nothing used, the period starting
--     at the instant, at once;
--   * the next commit of any collector writes the ended periods before it
--     adds traffic (boxmeter_roll_periods, one set-based pass: the cost the
--     call had, 0.8 s for 50,000 users, less than the first commit after a
--     midnight that ends as many periods pays), and so, for one user, does
--     whatever closes that user's periods first (boxmeter_roll_user in
--     reset_usage and set_quota_reset; users_reset_rules in a plain UPDATE
--     of the reset settings).
-- Until then no traffic can have counted for those users (a commit writes
-- the periods first), so each ended period's usage is the one the call
-- would have recorded, to the byte. What changes for an operator: the
-- quota_periods rows appear at the next commit, as rollover rows do.
--
-- A reset belongs to the clock of whoever sees it: a transaction that
-- started before the instant (now() < reset_all_at) does not see the reset,
-- and a commit in one counts its traffic in the period that ends there.
-- A second call while a reset is not yet written everywhere writes it
-- first, so each call ends a period of its own, as before.
--
-- boxmeter_close_periods is the one place that closes one user's periods
-- (boxmeter_roll_user and users_reset_rules, which repeated 0009's steps,
-- call it); boxmeter_roll_periods does the same for every user due, set
-- based.
--
-- And a period now starts no earlier than the one it follows ended
-- (boxmeter_roll_due): after the database-wide time zone moved and moved
-- back, two periods could share a start, and the second one's
-- quota_periods row, with its bytes, was never written.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

ALTER TABLE boxmeter_settings ADD COLUMN reset_all_at timestamptz;
COMMENT ON COLUMN boxmeter_settings.reset_all_at IS
  'the last reset_all_usage: every period that started before it ended '
  'then; NULL: never';

-- Whether any user is still in a period a reset_all_usage ended: one index
-- probe per commit.
CREATE INDEX users_period_start ON users (period_start);

-- One step of a user's periods by the calendar: if `u`'s period ended by
-- `at`, records it (its usage: `lifetime` minus the offset) and returns `u`
-- in the period that contains `at`; else returns `u`. Writes no users row.
CREATE FUNCTION boxmeter_roll_row(u users, lifetime bigint, at timestamptz)
RETURNS users
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $roll_row$
DECLARE
  next record;
BEGIN
  IF u.period_end IS NULL OR u.period_end > at THEN
    RETURN u;
  END IF;
  INSERT INTO quota_periods (user_id, period_start, period_end, used_bytes,
                             ended_by)
  VALUES (u.id, u.period_start, u.period_end,
          GREATEST(lifetime - u.usage_offset, 0), 'rollover')
  ON CONFLICT (user_id, period_start) DO NOTHING;
  next := boxmeter_user_period(u, at);
  u.usage_offset := lifetime;
  -- Not before the ended period's end: see boxmeter_roll_due.
  u.period_start := GREATEST(next.period_start, u.period_end);
  u.period_end := next.period_end;
  RETURN u;
END
$roll_row$;

-- `u` as it is once every period that ended by `at` is closed, each
-- recorded in quota_periods: first, if a reset_all_usage at or before `at`
-- came after the period's start, the periods that ended by the calendar
-- before the reset, then the one the reset ended (as the call itself wrote
-- them before 0027); then those that ended by the calendar since. Writes
-- no users row: boxmeter_roll_user updates it, users_reset_rules assigns
-- NEW. Returns `u` unchanged when nothing ended.
CREATE FUNCTION boxmeter_close_periods(u users, at timestamptz)
RETURNS users
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $close$
DECLARE
  reset_at timestamptz;
  lifetime bigint;
BEGIN
  SELECT s.reset_all_at INTO reset_at FROM boxmeter_settings s
   WHERE s.reset_all_at > u.period_start AND s.reset_all_at <= at;
  IF reset_at IS NULL AND (u.period_end IS NULL OR u.period_end > at) THEN
    RETURN u;
  END IF;
  lifetime := boxmeter_user_usage_lifetime(u.id, u.name);
  IF reset_at IS NOT NULL THEN
    u := boxmeter_roll_row(u, lifetime, reset_at);
    -- As boxmeter_roll_periods: a period the calendar ended at the reset's
    -- very instant leaves none for the reset to end.
    IF u.period_start < reset_at THEN
      INSERT INTO quota_periods AS p (user_id, period_start, period_end,
                                      used_bytes, ended_by)
      VALUES (u.id, u.period_start, reset_at,
              GREATEST(lifetime - u.usage_offset, 0), 'reset')
      ON CONFLICT (user_id, period_start) DO UPDATE
        SET period_end = excluded.period_end,
            used_bytes = p.used_bytes + excluded.used_bytes;
      u.usage_offset := lifetime;
      u.period_start := reset_at;
    END IF;
  END IF;
  RETURN boxmeter_roll_row(u, lifetime, at);
END
$close$;

-- 0009's boxmeter_roll_user, through boxmeter_close_periods.
CREATE OR REPLACE FUNCTION boxmeter_roll_user(u users, at timestamptz)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $roll$
DECLARE
  closed users := boxmeter_close_periods(u, at);
BEGIN
  -- Every period closed starts the next one later.
  IF closed.period_start IS NOT DISTINCT FROM u.period_start THEN
    RETURN false;
  END IF;
  UPDATE users x
     SET usage_offset = closed.usage_offset,
         period_start = closed.period_start, period_end = closed.period_end
   WHERE x.id = u.id;
  RETURN true;
END
$roll$;

-- 0009's boxmeter_roll_periods: rolls over every user whose period ended
-- by `at` by the calendar, locking them in id order (two collectors
-- committing at once lock them in the same order). Returns how many.
-- Set-based, with each distinct rule's next period computed once. One
-- change: the next period starts no earlier than the ended one's end.
CREATE FUNCTION boxmeter_roll_due(at timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $roll_due$
DECLARE
  rolled bigint;
BEGIN
  WITH due AS (
    SELECT u.id, u.name, u.period_start, u.period_end, u.usage_offset,
           u.reset_strategy, u.reset_day, u.reset_month, u.reset_every_days,
           u.reset_anchor,
           coalesce(u.time_zone, boxmeter_default_time_zone()) AS zone,
           boxmeter_user_usage_lifetime(u.id, u.name) AS lifetime
      FROM users u
     WHERE u.period_end <= at
     ORDER BY u.id
       FOR UPDATE
  ), rules AS (
    SELECT DISTINCT d.reset_strategy, d.reset_day, d.reset_month,
           d.reset_every_days, d.reset_anchor, d.zone
      FROM due d
  ), periods AS (
    SELECT r.*, p.period_start AS next_start, p.period_end AS next_end
      FROM rules r
     CROSS JOIN LATERAL boxmeter_period(r.reset_strategy, r.reset_day,
                                        r.reset_month, r.reset_every_days,
                                        r.reset_anchor, r.zone, at) AS p
  ), ended AS (
    INSERT INTO quota_periods (user_id, period_start, period_end,
                               used_bytes, ended_by)
    SELECT d.id, d.period_start, d.period_end,
           GREATEST(d.lifetime - d.usage_offset, 0), 'rollover'
      FROM due d
    ON CONFLICT (user_id, period_start) DO NOTHING
  )
  -- A period starts no earlier than the one it follows ended. The
  -- calendar's start may be earlier after the database-wide time zone
  -- moved: a period of the new zone began at the old zone's midnight, and
  -- back in the old zone the period containing `at` begins there too. Two
  -- periods with one start shared a quota_periods key, and the second
  -- one's row was never written (APeriodStartsNoEarlierThanTheLastOneEnded).
  UPDATE users u
     SET usage_offset = d.lifetime,
         period_start = GREATEST(p.next_start, d.period_end),
         period_end = p.next_end
    FROM due d
    JOIN periods p
      ON p.reset_strategy = d.reset_strategy
     AND p.reset_day IS NOT DISTINCT FROM d.reset_day
     AND p.reset_month IS NOT DISTINCT FROM d.reset_month
     AND p.reset_every_days IS NOT DISTINCT FROM d.reset_every_days
     AND p.reset_anchor IS NOT DISTINCT FROM d.reset_anchor
     AND p.zone = d.zone
   WHERE u.id = d.id;
  GET DIAGNOSTICS rolled = ROW_COUNT;
  RETURN rolled;
END
$roll_due$;

-- Closes every period that ended by `at`, as boxmeter_close_periods does
-- for one user: those a reset_all_usage at or before `at` ended (with the
-- calendar's before them), then the calendar's. Returns how many periods
-- it closed. Runs as the owner: a collector's commit calls it and may read
-- no user.
CREATE OR REPLACE FUNCTION boxmeter_roll_periods(at timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $roll_all$
DECLARE
  reset_at timestamptz := (SELECT s.reset_all_at FROM boxmeter_settings s);
  closed bigint := 0;
  reset bigint;
BEGIN
  IF reset_at <= at
     AND EXISTS (SELECT 1 FROM users u WHERE u.period_start < reset_at) THEN
    -- Every user in id order first, as commits and the operator functions
    -- that change many users take them (0020).
    PERFORM 1 FROM users u ORDER BY u.id FOR NO KEY UPDATE;
    closed := boxmeter_roll_due(reset_at);
    -- 0020's reset_all_usage at reset_at, for the users still in a period
    -- that started before it. One statement: the INSERT reads the offsets
    -- as they were before the UPDATE (both see the statement's snapshot).
    WITH names AS (
      SELECT u.id AS user_id, u.name FROM users u
      UNION ALL
      SELECT r.user_id, r.old_name FROM renamed_users r
    ), lifetimes AS (
      SELECT x.id, x.period_start, x.usage_offset,
             LEAST(floor(coalesce(sum((c.uplink::numeric + c.downlink)
                                      * coalesce(m.multiplier, 1)), 0)),
                   9223372036854775807)::bigint AS lifetime
        FROM users x
        LEFT JOIN names n ON n.user_id = x.id
        LEFT JOIN counters c ON c.kind = 'user' AND c.name = n.name
        LEFT JOIN node_multipliers m ON m.node = c.node
       WHERE x.period_start < reset_at
       GROUP BY x.id
    ), ended AS (
      INSERT INTO quota_periods AS p (user_id, period_start, period_end,
                                      used_bytes, ended_by)
      SELECT l.id, l.period_start, reset_at,
             GREATEST(l.lifetime - l.usage_offset, 0), 'reset'
        FROM lifetimes l
      ON CONFLICT (user_id, period_start) DO UPDATE
        SET period_end = excluded.period_end,
            used_bytes = p.used_bytes + excluded.used_bytes
    )
    UPDATE users u SET usage_offset = l.lifetime, period_start = reset_at
      FROM lifetimes l
     WHERE u.id = l.id;
    GET DIAGNOSTICS reset = ROW_COUNT;
    closed := closed + reset;
  END IF;
  RETURN closed + boxmeter_roll_due(at);
END
$roll_all$;

-- A new quota period for every user, from now; returns how many users.
-- Records the instant only (see the top of this file). Runs as the owner:
-- it writes boxmeter_settings, which operators only read.
CREATE OR REPLACE FUNCTION reset_all_usage()
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $reset_all$
DECLARE
  previous timestamptz;
BEGIN
  -- One call at a time, and the settings row before any user, as
  -- set_default_time_zone takes them.
  SELECT s.reset_all_at INTO previous FROM boxmeter_settings s FOR UPDATE;
  -- A call that started after this one has already reset everyone.
  IF previous IS NULL OR previous < now() THEN
    -- The previous call's periods first, where not yet written.
    PERFORM boxmeter_roll_periods(now());
    UPDATE boxmeter_settings s SET reset_all_at = now();
  END IF;
  RETURN (SELECT count(*) FROM users);
END
$reset_all$;

-- 0025's rules, closing the ended periods through boxmeter_close_periods
-- (which also closes the one a reset_all_usage ended).
CREATE OR REPLACE FUNCTION boxmeter_users_reset_rules()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $rules$
DECLARE
  what text := format('%s on users (user %s)', TG_OP,
                      quote_literal(NEW.name));
  closed users;
BEGIN
  PERFORM boxmeter_check_reset(what, NEW.reset_strategy, NEW.reset_day,
                               NEW.reset_month, NEW.reset_every_days,
                               NEW.reset_anchor);
  IF NEW.time_zone IS NOT NULL THEN
    PERFORM boxmeter_check_time_zone(what, NEW.time_zone);
  END IF;
  -- The periods that ended are closed with the old rules, as
  -- boxmeter_roll_user closes them (it cannot be called here: it updates
  -- this very row). (Nested: OLD is not assigned on INSERT.)
  IF TG_OP = 'UPDATE' THEN
    closed := boxmeter_close_periods(OLD, now());
    IF closed.period_start IS DISTINCT FROM OLD.period_start THEN
      NEW.usage_offset := closed.usage_offset;
      NEW.period_start := closed.period_start;
    END IF;
  END IF;
  NEW.period_end := (boxmeter_user_period(NEW, now())).period_end;
  RETURN NEW;
END
$rules$;

-- 0024's view, with the period as a reset_all_usage not yet written left
-- it, and a period that ended by the calendar followed by one that starts
-- no earlier than its end, as the rollover now writes it. Column for
-- column the same, and as fast: sql-bench.sh's data set, all 50,000 users
-- pending or none, gives the same rows as once the periods are written.
CREATE OR REPLACE VIEW users_with_state AS
SELECT u.id, u.name, u.enabled, u.quota_bytes, u.expires_at, u.uuid,
       u.password, u.flow, u.alter_id, u.created_at, u.note, u.usage_offset,
       CASE WHEN base.period_end <= now()
            THEN GREATEST((boxmeter_user_period(u, now())).period_start,
                          base.period_end)
            ELSE base.period_start END AS period_start,
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
       CASE WHEN base.period_end <= now()
            THEN (boxmeter_user_period(u, now())).period_end
            ELSE base.period_end END AS period_end,
       usage.first_seen, usage.last_seen,
       coalesce(usage.last_seen >= now() - (SELECT boxmeter_online_window()),
                false)
         AS online,
       u.on_hold_for, u.activate_by,
       u.on_hold_for IS NOT NULL AND usage.first_seen IS NULL AS on_hold,
       expiry.at AS effective_expires_at
  FROM users u
 CROSS JOIN (
   -- The last reset_all_usage, if it has happened by now (read once). A
   -- user whose period started before it is in the period it began.
   SELECT (SELECT x.reset_all_at FROM boxmeter_settings x
            WHERE x.reset_all_at <= now()) AS at
 ) AS reset
 CROSS JOIN LATERAL (
   -- The period as that reset left it: from its instant, to the end the
   -- user's rules gave then.
   SELECT CASE WHEN u.period_start < reset.at THEN reset.at
               ELSE u.period_start END AS period_start,
          CASE WHEN u.period_start < reset.at AND u.period_end <= reset.at
               THEN (boxmeter_user_period(u, reset.at)).period_end
               ELSE u.period_end END AS period_end
 ) AS base
 CROSS JOIN LATERAL (
   SELECT LEAST(sums.lifetime, 9223372036854775807)::bigint AS lifetime,
          -- Not base.period_end: the planner writes base's expressions out
          -- in full wherever they are used. These two tests decide the
          -- same, at the cost of 0024's one.
          CASE WHEN u.period_end <= now() OR u.period_start < reset.at
               THEN 0
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

REVOKE EXECUTE ON FUNCTION
  boxmeter_roll_row(users, bigint, timestamptz),
  boxmeter_close_periods(users, timestamptz), boxmeter_roll_due(timestamptz)
  FROM PUBLIC;
-- boxmeter_roll_user runs with the operator's rights (0009).
GRANT EXECUTE ON FUNCTION
  boxmeter_roll_row(users, bigint, timestamptz),
  boxmeter_close_periods(users, timestamptz)
  TO boxmeter_operator;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0027_reset_all_by_instant.sql')
ON CONFLICT (name) DO NOTHING;
