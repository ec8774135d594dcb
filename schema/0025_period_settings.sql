-- 0025: quota period settings, as operators write them.
--
-- Two holes, both reproduced by SqlQuotaTest.PeriodSettingsAsOperatorsWrite
-- Them:
--   * A plain UPDATE of a user's reset settings or time zone (operators may
--     write users, and users_reset_rules checks such an UPDATE) after their
--     period had ended, with no commit since to roll it over, recomputed
--     period_end from the new rules without closing the ended period: its
--     traffic came back into the current period (a user at 300 bytes of an
--     ended day showed 300 again, possibly over quota) and no quota_periods
--     row recorded it. set_quota_reset closes the ended period first
--     (boxmeter_roll_user); users_reset_rules now does the same, in the row
--     it is about to write.
--   * Time zone abbreviations passed as IANA names. AT TIME ZONE takes
--     'PST', 'CEST' or 'MSK' as fixed offsets, so a daily period "in PDT"
--     ended at 07:00 UTC all year instead of at Los Angeles midnight. The
--     TimeZone setting takes only tz database names (and the POSIX rules and
--     offsets the digit check below already refuses); trying it costs a
--     file read, not pg_timezone_names' directory scan, and the function's
--     own SET gives the caller's time zone back when it returns.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

CREATE OR REPLACE FUNCTION boxmeter_time_zone_problem(zone text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
SET TimeZone = 'UTC'
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
  BEGIN
    PERFORM set_config('TimeZone', zone, true);
  EXCEPTION WHEN invalid_parameter_value THEN
    RETURN 'is an abbreviation (a fixed offset, without daylight saving '
           'time), not an IANA time zone name';
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

-- 0009's rules, closing an ended period first on UPDATE. Runs as the owner
-- now: an operator's UPDATE may record the ended period, and operators do
-- not write quota_periods themselves.
CREATE OR REPLACE FUNCTION boxmeter_users_reset_rules()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $rules$
DECLARE
  what text := format('%s on users (user %s)', TG_OP,
                      quote_literal(NEW.name));
  lifetime bigint;
BEGIN
  PERFORM boxmeter_check_reset(what, NEW.reset_strategy, NEW.reset_day,
                               NEW.reset_month, NEW.reset_every_days,
                               NEW.reset_anchor);
  IF NEW.time_zone IS NOT NULL THEN
    PERFORM boxmeter_check_time_zone(what, NEW.time_zone);
  END IF;
  -- A period that ended is closed with the old rules, as boxmeter_roll_user
  -- closes it (it cannot be called here: it updates this very row).
  -- (Nested: OLD is not assigned on INSERT.)
  IF TG_OP = 'UPDATE' THEN
    IF OLD.period_end <= now() THEN
      lifetime := boxmeter_user_usage_lifetime(OLD.id, OLD.name);
      INSERT INTO quota_periods (user_id, period_start, period_end,
                                 used_bytes, ended_by)
      VALUES (OLD.id, OLD.period_start, OLD.period_end,
              GREATEST(lifetime - OLD.usage_offset, 0), 'rollover')
      ON CONFLICT (user_id, period_start) DO NOTHING;
      NEW.usage_offset := lifetime;
      NEW.period_start := (boxmeter_user_period(OLD, now())).period_start;
    END IF;
  END IF;
  NEW.period_end := (boxmeter_user_period(NEW, now())).period_end;
  RETURN NEW;
END
$rules$;

REVOKE EXECUTE ON FUNCTION boxmeter_users_reset_rules() FROM PUBLIC;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0025_period_settings.sql')
ON CONFLICT (name) DO NOTHING;
