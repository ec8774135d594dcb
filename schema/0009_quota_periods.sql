-- 0009: quota periods that reset themselves (issue 13, item 1).
--
-- Each user has a reset strategy, evaluated in an IANA time zone (the
-- user's, else boxmeter_settings.time_zone):
--   none     the period runs until reset_usage (as before)
--   daily    at local midnight
--   weekly   at local midnight starting reset_day (ISO: 1 Monday .. 7 Sunday)
--   monthly  at local midnight starting day reset_day (1..31) of each month;
--            a day the month does not have is its last day (31 -> 30 April,
--            28 or 29 February)
--   yearly   at local midnight starting reset_day of month reset_month
--            (29 February -> 28 February in other years)
--   rolling  every reset_every_days days from reset_anchor, at the anchor's
--            local wall-clock time (a DST change does not shift it)
--
-- No job resets anything. users.period_end is the next boundary. Until a
-- commit rolls a user over, the views judge a user whose period_end has
-- passed as being in the new period with nothing used: no commit since the
-- boundary means no traffic since the boundary. Every commit of every
-- collector rolls the users due over first (a trigger on its nodes row,
-- before it adds any traffic), so the usage offset is the lifetime at the
-- boundary to the byte, and the traffic of that commit counts in the new
-- period. The eligibility rule, and with it users_fingerprint(node), moves
-- at the boundary itself: a collector that reads the fingerprint every poll
-- (with a hook configured it does, with or without traffic) regenerates
-- within one poll.
--
-- Ended periods stay in quota_periods (rollover or reset_usage), with the
-- bytes used in them: user_quota_periods shows them with the current one.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

-- Settings --------------------------------------------------------------

-- Database-wide settings. One row.
CREATE TABLE boxmeter_settings (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  time_zone text NOT NULL DEFAULT 'UTC'
);
COMMENT ON COLUMN boxmeter_settings.time_zone IS
  'the IANA time zone of quota periods of users without their own';
INSERT INTO boxmeter_settings DEFAULT VALUES;

-- What is wrong with `zone` as an IANA time zone name, or NULL. Accepts
-- what PostgreSQL's tz database knows by name; refuses POSIX strings such
-- as 'UTC+3' (which PostgreSQL reads as three hours WEST of UTC) and
-- offsets such as '+03:30', which do not follow daylight saving time.
CREATE FUNCTION boxmeter_time_zone_problem(zone text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $zone$
BEGIN
  IF zone IS NULL OR zone = '' THEN
    RETURN 'is empty';
  END IF;
  BEGIN
    PERFORM now() AT TIME ZONE zone;
  EXCEPTION WHEN invalid_parameter_value OR feature_not_supported THEN
    RETURN 'is not a time zone PostgreSQL knows';
  END;
  -- A digit outside Etc/ is a POSIX rule or an offset unless the tz
  -- database has a file of that name (EST5EDT); only then pay for the
  -- directory scan of pg_timezone_names (about half a second).
  IF zone ~ '[0-9]' AND zone !~ '^Etc/'
     AND NOT EXISTS (SELECT 1 FROM pg_timezone_names n WHERE n.name = zone)
  THEN
    RETURN 'is an offset or a POSIX rule, not an IANA time zone name';
  END IF;
  RETURN NULL;
END
$zone$;

-- `zone` if it is an IANA time zone name, else an error naming it.
CREATE FUNCTION boxmeter_check_time_zone(what text, zone text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $check$
DECLARE
  problem text := boxmeter_time_zone_problem(zone);
BEGIN
  IF problem IS NOT NULL THEN
    RAISE EXCEPTION '%: time zone % %', what, quote_nullable(zone), problem
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'use an IANA name such as ''Asia/Tehran'', '
                   '''Europe/Berlin'' or ''UTC''; list them with: SELECT '
                   'name FROM pg_timezone_names ORDER BY 1';
  END IF;
  RETURN zone;
END
$check$;

CREATE FUNCTION boxmeter_settings_rules()
RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $rules$
BEGIN
  PERFORM boxmeter_check_time_zone(TG_OP || ' on boxmeter_settings',
                                   NEW.time_zone);
  RETURN NEW;
END
$rules$;

CREATE TRIGGER boxmeter_settings_rules
  BEFORE INSERT OR UPDATE ON boxmeter_settings
  FOR EACH ROW EXECUTE FUNCTION boxmeter_settings_rules();

-- The database-wide time zone. Runs as the owner: the views call it for
-- whoever reads them (boxmeter-gen's login included), and the setting is
-- no secret.
CREATE FUNCTION boxmeter_default_time_zone()
RETURNS text
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $zone$
SELECT coalesce((SELECT s.time_zone FROM boxmeter_settings s), 'UTC')
$zone$;

-- Periods: the pure part ------------------------------------------------

-- `day` of month `month` of `year`, or the month's last day if it has fewer.
CREATE FUNCTION boxmeter_clamped_date(year integer, month integer,
                                      day integer)
RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $clamped$
SELECT make_date($1, $2, LEAST($3, extract(day FROM
         make_date($1, $2, 1) + interval '1 month' - interval '1 day')::int))
$clamped$;

-- The period of a strategy that contains the local wall-clock time
-- `local`, in local wall-clock times [start_local, end_local): 00:00 for
-- the calendar strategies, the anchor's time of day for rolling (anchor_local
-- is the anchor's local time). NULLs for 'none'. The arguments are not
-- checked here (boxmeter_check_reset does).
CREATE FUNCTION boxmeter_local_period(strategy text, reset_day integer,
                                      reset_month integer,
                                      every_days integer,
                                      anchor_local timestamp,
                                      local timestamp,
                                      OUT start_local timestamp,
                                      OUT end_local timestamp)
LANGUAGE plpgsql IMMUTABLE
SET search_path FROM CURRENT
AS $local_period$
DECLARE
  today date := local::date;
  y integer := extract(year FROM today);
  m integer := extract(month FROM today);
  first date;
  next date;
  k bigint;
BEGIN
  CASE strategy
  WHEN 'none' THEN
    RETURN;
  WHEN 'daily' THEN
    start_local := today;
    end_local := today + 1;
  WHEN 'weekly' THEN
    start_local := today - ((extract(isodow FROM today)::int - reset_day + 7)
                            % 7);
    end_local := start_local + interval '7 days';
  WHEN 'monthly' THEN
    first := boxmeter_clamped_date(y, m, reset_day);
    IF today >= first THEN
      next := boxmeter_clamped_date(
        extract(year FROM first + interval '1 month')::int,
        extract(month FROM first + interval '1 month')::int, reset_day);
    ELSE
      next := first;
      first := boxmeter_clamped_date(
        extract(year FROM today - interval '1 month')::int,
        extract(month FROM today - interval '1 month')::int, reset_day);
    END IF;
    start_local := first;
    end_local := next;
  WHEN 'yearly' THEN
    first := boxmeter_clamped_date(y, reset_month, reset_day);
    IF today >= first THEN
      next := boxmeter_clamped_date(y + 1, reset_month, reset_day);
    ELSE
      next := first;
      first := boxmeter_clamped_date(y - 1, reset_month, reset_day);
    END IF;
    start_local := first;
    end_local := next;
  WHEN 'rolling' THEN
    -- Whole days of wall-clock time: the same local time of day throughout.
    k := floor(extract(epoch FROM local - anchor_local)
               / (86400.0 * every_days));
    start_local := anchor_local + (k * every_days) * interval '1 day';
    end_local := start_local + every_days * interval '1 day';
  ELSE
    RAISE EXCEPTION 'boxmeter_local_period: unknown reset strategy %',
                    quote_nullable(strategy)
      USING ERRCODE = 'invalid_parameter_value';
  END CASE;
END
$local_period$;

-- The quota period [period_start, period_end) of a strategy that contains
-- the instant `at`; both NULL for 'none'. Pure: `at` is a parameter, so
-- tests and reports can ask about any moment. Boundaries are local
-- wall-clock times in `time_zone`. A local time that a DST change skips or
-- repeats is taken as PostgreSQL takes it (standard time); a boundary that
-- thereby lands after `at` gives the period before it, so `at` is always
-- inside. The arguments are not checked here (set_quota_reset and the
-- users trigger check them); quota_period() is the checked version.
CREATE FUNCTION boxmeter_period(strategy text, reset_day integer,
                                reset_month integer, every_days integer,
                                anchor timestamptz, time_zone text,
                                at timestamptz,
                                OUT period_start timestamptz,
                                OUT period_end timestamptz)
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $period$
DECLARE
  anchor_local timestamp := anchor AT TIME ZONE time_zone;
  p record;
BEGIN
  IF strategy = 'none' THEN
    RETURN;
  END IF;
  p := boxmeter_local_period(strategy, reset_day, reset_month, every_days,
                             anchor_local, at AT TIME ZONE time_zone);
  period_start := p.start_local AT TIME ZONE time_zone;
  period_end := p.end_local AT TIME ZONE time_zone;
  IF period_start > at THEN
    -- A skipped local time moved the boundary past `at`: the period before.
    period_end := period_start;
    p := boxmeter_local_period(strategy, reset_day, reset_month, every_days,
                               anchor_local,
                               p.start_local - interval '1 microsecond');
    period_start := p.start_local AT TIME ZONE time_zone;
  END IF;
END
$period$;

-- Why the reset settings cannot be used, or NULL: names the setting and
-- its value and says what is expected.
CREATE FUNCTION boxmeter_reset_problem(strategy text, reset_day integer,
                                       reset_month integer,
                                       every_days integer,
                                       anchor timestamptz)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path FROM CURRENT
AS $problem$
BEGIN
  IF strategy IS NULL OR strategy NOT IN ('none', 'daily', 'weekly',
                                          'monthly', 'yearly', 'rolling') THEN
    RETURN format('reset strategy %s is not one of none, daily, weekly, '
                  'monthly, yearly, rolling', quote_nullable(strategy));
  END IF;
  IF strategy = 'weekly' AND (reset_day IS NULL OR reset_day NOT BETWEEN 1
                                                          AND 7) THEN
    RETURN format('weekly needs reset_day 1 (Monday) to 7 (Sunday), not %s',
                  coalesce(reset_day::text, 'NULL'));
  END IF;
  IF strategy = 'monthly' AND (reset_day IS NULL OR reset_day NOT BETWEEN 1
                                                           AND 31) THEN
    RETURN format('monthly needs reset_day 1 to 31 (31: the month''s last '
                  'day), not %s', coalesce(reset_day::text, 'NULL'));
  END IF;
  IF strategy = 'yearly' AND (reset_month IS NULL OR reset_month NOT BETWEEN
                                                            1 AND 12) THEN
    RETURN format('yearly needs reset_month 1 to 12, not %s',
                  coalesce(reset_month::text, 'NULL'));
  END IF;
  IF strategy = 'yearly' AND (reset_day IS NULL OR reset_day < 1 OR reset_day
      > extract(day FROM make_date(2000, reset_month, 1) + interval '1 month'
                         - interval '1 day')) THEN
    RETURN format('yearly needs a reset_day that month %s has (1 to %s), '
                  'not %s', reset_month,
                  extract(day FROM make_date(2000, reset_month, 1)
                                   + interval '1 month' - interval '1 day'),
                  coalesce(reset_day::text, 'NULL'));
  END IF;
  IF strategy = 'rolling' AND (every_days IS NULL OR every_days < 1
                               OR every_days > 36600) THEN
    RETURN format('rolling needs reset_every_days 1 to 36600, not %s',
                  coalesce(every_days::text, 'NULL'));
  END IF;
  IF strategy = 'rolling' AND (anchor IS NULL OR NOT isfinite(anchor)) THEN
    RETURN format('rolling needs reset_anchor, the time a period starts '
                  '(e.g. now()), not %s', coalesce(anchor::text, 'NULL'));
  END IF;
  IF strategy IN ('none', 'daily', 'rolling') AND reset_day IS NOT NULL THEN
    RETURN format('%s takes no reset_day (got %s)', strategy, reset_day);
  END IF;
  IF strategy <> 'yearly' AND reset_month IS NOT NULL THEN
    RETURN format('%s takes no reset_month (got %s)', strategy, reset_month);
  END IF;
  IF strategy <> 'rolling' AND (every_days IS NOT NULL OR anchor IS NOT NULL)
  THEN
    RETURN format('%s takes no reset_every_days or reset_anchor (got %s and '
                  '%s)', strategy, coalesce(every_days::text, 'NULL'),
                  coalesce(anchor::text, 'NULL'));
  END IF;
  RETURN NULL;
END
$problem$;

CREATE FUNCTION boxmeter_check_reset(what text, strategy text,
                                     reset_day integer, reset_month integer,
                                     every_days integer, anchor timestamptz)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path FROM CURRENT
AS $check$
DECLARE
  problem text := boxmeter_reset_problem(strategy, reset_day, reset_month,
                                         every_days, anchor);
BEGIN
  IF problem IS NOT NULL THEN
    RAISE EXCEPTION '%: %', what, problem
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'e.g. set_quota_reset(''alice'', ''monthly'', day => 1, '
                   'time_zone => ''Asia/Tehran''), set_quota_reset(''bob'', '
                   '''weekly'', day => 1), set_quota_reset(''carol'', '
                   '''rolling'', every_days => 30, anchor => now())';
  END IF;
END
$check$;

-- The checked version for operators: the period containing `at`.
CREATE FUNCTION quota_period(strategy text, at timestamptz,
                             day integer DEFAULT NULL,
                             time_zone text DEFAULT NULL,
                             every_days integer DEFAULT NULL,
                             anchor timestamptz DEFAULT NULL,
                             month integer DEFAULT NULL,
                             OUT period_start timestamptz,
                             OUT period_end timestamptz)
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $quota_period$
#variable_conflict use_variable
DECLARE
  zone text := boxmeter_check_time_zone(
    'quota_period', coalesce(time_zone, boxmeter_default_time_zone()));
BEGIN
  PERFORM boxmeter_check_reset('quota_period', strategy, day, month,
                               every_days, anchor);
  IF at IS NULL OR NOT isfinite(at) THEN
    RAISE EXCEPTION 'quota_period: at % is not a time',
                    coalesce(at::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value', HINT = 'e.g. now()';
  END IF;
  SELECT p.period_start, p.period_end INTO period_start, period_end
    FROM boxmeter_period(strategy, day, month, every_days, anchor, zone, at)
           AS p;
END
$quota_period$;

-- Users -----------------------------------------------------------------

ALTER TABLE users
  ADD COLUMN reset_strategy text NOT NULL DEFAULT 'none',
  ADD COLUMN reset_day integer,
  ADD COLUMN reset_month integer,
  ADD COLUMN reset_every_days integer,
  ADD COLUMN reset_anchor timestamptz,
  ADD COLUMN time_zone text,
  ADD COLUMN period_end timestamptz;
COMMENT ON COLUMN users.reset_strategy IS
  'none, daily, weekly, monthly, yearly or rolling (set_quota_reset)';
COMMENT ON COLUMN users.time_zone IS
  'IANA time zone of the quota periods; NULL: boxmeter_settings.time_zone';
COMMENT ON COLUMN users.period_end IS
  'the next automatic reset (end of the current period); NULL: none';

-- The rollover finds the users due through this (one index probe per
-- commit).
CREATE INDEX users_period_end ON users (period_end)
  WHERE period_end IS NOT NULL;

-- The period of user `u` that contains `at`.
CREATE FUNCTION boxmeter_user_period(u users, at timestamptz,
                                     OUT period_start timestamptz,
                                     OUT period_end timestamptz)
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $user_period$
SELECT p.period_start, p.period_end
  FROM boxmeter_period(u.reset_strategy, u.reset_day, u.reset_month,
                       u.reset_every_days, u.reset_anchor,
                       coalesce(u.time_zone, boxmeter_default_time_zone()),
                       at) AS p
$user_period$;

-- On INSERT, and on UPDATE of the reset settings: checks them (the error
-- names the user) and sets period_end to the end of the period containing
-- now. The usage counted so far stays in the current period: a new
-- strategy never hands out a fresh quota by itself.
CREATE FUNCTION boxmeter_users_reset_rules()
RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $rules$
DECLARE
  what text := format('%s on users (user %s)', TG_OP,
                      quote_literal(NEW.name));
BEGIN
  PERFORM boxmeter_check_reset(what, NEW.reset_strategy, NEW.reset_day,
                               NEW.reset_month, NEW.reset_every_days,
                               NEW.reset_anchor);
  IF NEW.time_zone IS NOT NULL THEN
    PERFORM boxmeter_check_time_zone(what, NEW.time_zone);
  END IF;
  NEW.period_end := (boxmeter_user_period(NEW, now())).period_end;
  RETURN NEW;
END
$rules$;

CREATE TRIGGER users_reset_rules
  BEFORE INSERT OR UPDATE OF reset_strategy, reset_day, reset_month,
                             reset_every_days, reset_anchor, time_zone
  ON users
  FOR EACH ROW EXECUTE FUNCTION boxmeter_users_reset_rules();

-- Ended periods: one row per period that a rollover or reset_usage ended,
-- with the bytes used in it. Periods in which a user was idle from start to
-- end (several boundaries passed without a commit) have no row.
CREATE TABLE quota_periods (
  user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  period_start timestamptz NOT NULL,
  period_end timestamptz NOT NULL,
  used_bytes bigint NOT NULL,
  ended_by text NOT NULL CHECK (ended_by IN ('rollover', 'reset')),
  PRIMARY KEY (user_id, period_start)
);

-- What a user's quota usage is measured against: their lifetime traffic
-- (0011 weighs it by node multipliers). usage_offset is this value at the
-- start of the current period.
CREATE FUNCTION boxmeter_user_usage_lifetime(user_id bigint, user_name text)
RETURNS bigint
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $usage_lifetime$
SELECT boxmeter_user_lifetime($1, $2)
$usage_lifetime$;

-- Moves locked user `u` into the period containing `at` if its period has
-- ended: records the ended period, and starts counting from the lifetime
-- as it is now. Called before the traffic of a commit made at `at` is
-- added, so that traffic counts in the new period. True when it rolled.
CREATE FUNCTION boxmeter_roll_user(u users, at timestamptz)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $roll$
DECLARE
  lifetime bigint;
  next record;
BEGIN
  IF u.period_end IS NULL OR u.period_end > at THEN
    RETURN false;
  END IF;
  lifetime := boxmeter_user_usage_lifetime(u.id, u.name);
  next := boxmeter_user_period(u, at);
  INSERT INTO quota_periods (user_id, period_start, period_end, used_bytes,
                             ended_by)
  VALUES (u.id, u.period_start, u.period_end,
          GREATEST(lifetime - u.usage_offset, 0), 'rollover')
  ON CONFLICT (user_id, period_start) DO NOTHING;
  UPDATE users x
     SET usage_offset = lifetime, period_start = next.period_start,
         period_end = next.period_end
   WHERE x.id = u.id;
  RETURN true;
END
$roll$;

-- Rolls over every user whose period ended by `at`, as boxmeter_roll_user
-- does, locking them in id order (two collectors committing at once lock
-- them in the same order). Returns how many. Set-based, with each distinct
-- rule's next period computed once: at a midnight that ends the periods of
-- 50,000 users this is the first commit's cost. Runs as the owner: a
-- collector's commit calls it and may read no user.
CREATE FUNCTION boxmeter_roll_periods(at timestamptz)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $roll_all$
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
  UPDATE users u
     SET usage_offset = d.lifetime, period_start = p.next_start,
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
$roll_all$;

-- Every commit moves its node's commit_seq first (before it adds traffic):
-- that is when the users due roll over.
CREATE FUNCTION boxmeter_nodes_commit_rollover()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $commit$
BEGIN
  PERFORM boxmeter_roll_periods(now());
  RETURN NULL;
END
$commit$;

CREATE TRIGGER nodes_commit_rollover
  AFTER UPDATE OF commit_seq ON nodes
  FOR EACH ROW WHEN (NEW.commit_seq IS DISTINCT FROM OLD.commit_seq)
  EXECUTE FUNCTION boxmeter_nodes_commit_rollover();

-- A new database-wide time zone moves the next boundary of every user who
-- follows it.
CREATE FUNCTION boxmeter_settings_time_zone_moved()
RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $moved$
BEGIN
  PERFORM boxmeter_roll_periods(now());
  UPDATE users u
     SET period_end = (boxmeter_user_period(u, now())).period_end
   WHERE u.time_zone IS NULL AND u.reset_strategy <> 'none';
  RETURN NULL;
END
$moved$;

CREATE TRIGGER boxmeter_settings_time_zone_moved
  AFTER UPDATE OF time_zone ON boxmeter_settings
  FOR EACH ROW WHEN (NEW.time_zone IS DISTINCT FROM OLD.time_zone)
  EXECUTE FUNCTION boxmeter_settings_time_zone_moved();

-- The state rule, with periods ------------------------------------------

-- 0008's users_with_state, column for column (the view's row type is
-- user_quota_status's base, which functions return), with the effective
-- period: a user whose period_end has passed and who has not been rolled
-- over yet is in the new period with nothing used. New columns at the end.
CREATE OR REPLACE VIEW users_with_state AS
SELECT u.id, u.name, u.enabled, u.quota_bytes, u.expires_at, u.uuid,
       u.password, u.flow, u.alter_id, u.created_at, u.note, u.usage_offset,
       CASE WHEN u.period_end <= now()
            THEN (boxmeter_user_period(u, now())).period_start
            ELSE u.period_start END AS period_start,
       usage.used AS used_bytes, usage.lifetime AS lifetime_bytes,
       CASE WHEN NOT u.enabled THEN 'disabled'
            WHEN u.expires_at <= now() THEN 'expired'
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
       u.reset_anchor, coalesce(u.time_zone, boxmeter_default_time_zone())
         AS time_zone,
       CASE WHEN u.period_end <= now()
            THEN (boxmeter_user_period(u, now())).period_end
            ELSE u.period_end END AS period_end
  FROM users u
 CROSS JOIN LATERAL (
   -- One lookup through counters_user_name per user; the old names only
   -- for the few users who have any (a hashed set, read once).
   SELECT lifetime,
          CASE WHEN u.period_end <= now() THEN 0
               ELSE GREATEST(lifetime - u.usage_offset, 0) END AS used
     FROM (SELECT LEAST(
                    coalesce(sum(c.uplink::numeric + c.downlink), 0)
                    + CASE WHEN u.id IN (SELECT r.user_id FROM renamed_users r)
                           THEN coalesce(
                             (SELECT sum(o.uplink::numeric + o.downlink)
                                FROM renamed_users r
                                JOIN counters o ON o.kind = 'user'
                                               AND o.name = r.old_name
                               WHERE r.user_id = u.id), 0)
                           ELSE 0 END,
                    9223372036854775807)::bigint AS lifetime
             FROM counters c
            WHERE c.kind = 'user' AND c.name = u.name) AS sums
 ) AS usage;

-- 0008's user_quota_status, plus the period: its strategy and time zone,
-- its end, and the next reset (the same instant; NULL for none).
CREATE OR REPLACE VIEW user_quota_status AS
SELECT id, name, enabled, quota_bytes, used_bytes,
       CASE WHEN quota_bytes IS NOT NULL
            THEN GREATEST(quota_bytes - used_bytes, 0)
       END AS remaining_bytes,
       CASE WHEN quota_bytes = 0 THEN 100.0
            ELSE trunc(100.0 * used_bytes / quota_bytes, 1)
       END AS percent,
       period_start, expires_at, lifetime_bytes, state,
       reset_strategy, time_zone, period_end, period_end AS next_reset
  FROM users_with_state;

-- Usage per period: the ended periods and the current one, per user.
CREATE VIEW user_quota_periods AS
SELECT u.name, p.period_start, p.period_end, p.used_bytes, p.ended_by
  FROM quota_periods p
  JOIN users u ON u.id = p.user_id
UNION ALL
SELECT s.name, s.period_start, s.period_end, s.used_bytes, 'current'
  FROM user_quota_status s;

-- Operator functions ----------------------------------------------------

-- Sets a user's reset strategy (see the top of this file); returns their
-- status. time_zone NULL: the database-wide one (boxmeter_settings).
CREATE FUNCTION set_quota_reset(user_name text, strategy text,
                                day integer DEFAULT NULL,
                                time_zone text DEFAULT NULL,
                                every_days integer DEFAULT NULL,
                                anchor timestamptz DEFAULT NULL,
                                month integer DEFAULT NULL)
RETURNS user_quota_status
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $set_reset$
#variable_conflict use_variable
DECLARE
  the_user users := boxmeter_lock_user('set_quota_reset', user_name);
  what text := format('set_quota_reset (user %s)',
                      quote_literal(the_user.name));
BEGIN
  PERFORM boxmeter_check_reset(what, strategy, day, month, every_days,
                               anchor);
  IF time_zone IS NOT NULL THEN
    PERFORM boxmeter_check_time_zone(what, time_zone);
  END IF;
  -- A period that ended before the change is closed with the old rule.
  PERFORM boxmeter_roll_user(the_user, now());
  UPDATE users u
     SET reset_strategy = strategy, reset_day = day, reset_month = month,
         reset_every_days = every_days, reset_anchor = anchor,
         time_zone = set_quota_reset.time_zone
   WHERE u.id = the_user.id;
  RETURN boxmeter_status(the_user.id);
END
$set_reset$;

-- The database-wide time zone of quota periods. Runs as the owner, so an
-- operator may change it (and nothing else in boxmeter_settings).
CREATE FUNCTION set_default_time_zone(time_zone text)
RETURNS text
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $set_zone$
#variable_conflict use_variable
BEGIN
  PERFORM boxmeter_check_time_zone('set_default_time_zone', time_zone);
  UPDATE boxmeter_settings s SET time_zone = set_default_time_zone.time_zone;
  RETURN format('quota periods of users without their own time zone are '
                'now in %s', quote_literal(time_zone));
END
$set_zone$;

-- 0008's reset_usage: also closes the ended periods first, and records the
-- period it ends.
CREATE OR REPLACE FUNCTION reset_usage(user_name text)
RETURNS user_quota_status
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $reset$
DECLARE
  the_user users := boxmeter_lock_user('reset_usage', user_name);
  lifetime bigint;
BEGIN
  IF boxmeter_roll_user(the_user, now()) THEN
    SELECT * INTO the_user FROM users u WHERE u.id = the_user.id;
  END IF;
  lifetime := boxmeter_user_usage_lifetime(the_user.id, the_user.name);
  INSERT INTO quota_periods AS p (user_id, period_start, period_end,
                                  used_bytes, ended_by)
  VALUES (the_user.id, the_user.period_start, now(),
          GREATEST(lifetime - the_user.usage_offset, 0), 'reset')
  ON CONFLICT (user_id, period_start) DO UPDATE
    SET period_end = excluded.period_end,
        used_bytes = p.used_bytes + excluded.used_bytes;
  UPDATE users u SET usage_offset = lifetime, period_start = now()
   WHERE u.id = the_user.id;
  RETURN boxmeter_status(the_user.id);
END
$reset$;

-- 0008's reset_all_usage (one pass over the counters), recording each
-- user's ended period as reset_usage does.
CREATE OR REPLACE FUNCTION reset_all_usage()
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $reset_all$
DECLARE
  changed bigint;
BEGIN
  PERFORM boxmeter_roll_periods(now());
  -- One statement: the INSERT reads the offsets as they were before the
  -- UPDATE (both see the statement's snapshot).
  WITH names AS (
    SELECT u.id AS user_id, u.name FROM users u
    UNION ALL
    SELECT r.user_id, r.old_name FROM renamed_users r
  ), lifetimes AS (
    SELECT x.id, x.period_start, x.usage_offset,
           LEAST(coalesce(sum(c.uplink::numeric + c.downlink), 0),
                 9223372036854775807)::bigint AS lifetime
      FROM users x
      LEFT JOIN names n ON n.user_id = x.id
      LEFT JOIN counters c ON c.kind = 'user' AND c.name = n.name
     GROUP BY x.id
  ), ended AS (
    INSERT INTO quota_periods AS p (user_id, period_start, period_end,
                                    used_bytes, ended_by)
    SELECT l.id, l.period_start, now(),
           GREATEST(l.lifetime - l.usage_offset, 0), 'reset'
      FROM lifetimes l
    ON CONFLICT (user_id, period_start) DO UPDATE
      SET period_end = excluded.period_end,
          used_bytes = p.used_bytes + excluded.used_bytes
  )
  UPDATE users u SET usage_offset = l.lifetime, period_start = now()
    FROM lifetimes l
   WHERE u.id = l.id;
  GET DIAGNOSTICS changed = ROW_COUNT;
  RETURN changed;
END
$reset_all$;

-- Roles -----------------------------------------------------------------

REVOKE EXECUTE ON FUNCTION
  boxmeter_roll_periods(timestamptz), boxmeter_roll_user(users, timestamptz),
  boxmeter_nodes_commit_rollover(), boxmeter_settings_time_zone_moved(),
  set_default_time_zone(text)
  FROM PUBLIC;

-- The operator's functions run with the operator's rights: they record the
-- periods they end.
GRANT SELECT, INSERT, UPDATE ON quota_periods TO boxmeter_operator;
GRANT SELECT ON boxmeter_settings, user_quota_periods TO boxmeter_operator;
GRANT SELECT ON boxmeter_settings, user_quota_periods TO boxmeter_readonly;
GRANT EXECUTE ON FUNCTION
  set_quota_reset(text, text, integer, text, integer, timestamptz, integer),
  set_default_time_zone(text),
  boxmeter_roll_user(users, timestamptz), boxmeter_roll_periods(timestamptz)
  TO boxmeter_operator;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0009_quota_periods.sql')
ON CONFLICT (name) DO NOTHING;
