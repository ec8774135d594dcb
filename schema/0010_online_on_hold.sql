-- 0010: first use, last use and online users; on-hold users (issue 13,
-- item 3).
--
-- Per user, from their counters (no write on the commit path):
--   first_seen  the first commit that counted traffic of theirs (the
--               earliest first_seen of their counters, never before the
--               user was created; NULL until they have used anything)
--   last_seen   the last commit that counted traffic of theirs
--   online      last_seen within boxmeter_settings.online_window (default
--               2 minutes: keep it above the collectors' poll.interval)
-- online_users lists them per node. Times are commit times, so they are up
-- to one poll.interval after the traffic itself.
--
-- On-hold users (Marzban's on_hold, 3x-ui's negative expiry): instead of
-- expires_at, on_hold_for, a duration that starts at their first traffic
-- (first_seen), with an optional activate_by after which they expire
-- unused. Their effective expiry (user_quota_status.expires_at) is
-- first_seen + on_hold_for once they have started, activate_by before.
-- While waiting they are eligible like anyone else: they must be in the
-- config to make their first connection.
--
-- A user added under the name of a deleted user whose history was kept
-- counts as started when that history's counters count new traffic; the
-- first use is then taken as the time the user was added.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

ALTER TABLE boxmeter_settings
  ADD COLUMN online_window interval NOT NULL DEFAULT '2 minutes'
    CHECK (online_window > interval '0');
COMMENT ON COLUMN boxmeter_settings.online_window IS
  'a user is online while their last traffic is at most this old';

ALTER TABLE users
  ADD COLUMN on_hold_for interval CHECK (on_hold_for > interval '0'),
  ADD COLUMN activate_by timestamptz,
  ADD COLUMN created_lifetime bigint NOT NULL DEFAULT 0;
COMMENT ON COLUMN users.on_hold_for IS
  'on hold: the user expires this long after their first traffic';
COMMENT ON COLUMN users.activate_by IS
  'on hold: the user expires unused at this time';
COMMENT ON COLUMN users.created_lifetime IS
  'traffic already counted under the name when the user was added';
-- Users added before this migration: what they had then is unknown, their
-- offset at the time is the best guess.
UPDATE users SET created_lifetime = usage_offset;

-- On INSERT (after users_rules has set usage_offset, which it does for
-- every INSERT) and on UPDATE of the on-hold columns or the expiry: an
-- on-hold user has no expires_at, activate_by needs on_hold_for.
CREATE FUNCTION boxmeter_users_on_hold_rules()
RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $rules$
DECLARE
  what text := format('%s on users (user %s)', TG_OP,
                      quote_literal(NEW.name));
BEGIN
  IF TG_OP = 'INSERT' THEN
    NEW.created_lifetime := NEW.usage_offset;
  END IF;
  IF NEW.on_hold_for IS NOT NULL AND NEW.expires_at IS NOT NULL THEN
    RAISE EXCEPTION '%: an on-hold user (on_hold_for %) has no expires_at '
                    '(got %)', what, quote_literal(NEW.on_hold_for),
                    quote_literal(NEW.expires_at)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = format('their expiry starts at their first traffic; for '
                          'a fixed expiry call clear_on_hold(%L) first',
                          NEW.name);
  END IF;
  IF NEW.activate_by IS NOT NULL AND NEW.on_hold_for IS NULL THEN
    RAISE EXCEPTION '%: activate_by % needs on_hold_for', what,
                    quote_literal(NEW.activate_by)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = format('e.g. set_on_hold(%L, interval ''30 days'', '
                          'activate_by => now() + interval ''7 days'')',
                          NEW.name);
  END IF;
  IF NEW.activate_by IS NOT NULL AND NOT isfinite(NEW.activate_by) THEN
    RAISE EXCEPTION '%: activate_by % is not a time', what,
                    quote_literal(NEW.activate_by)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'NULL means no deadline';
  END IF;
  RETURN NEW;
END
$rules$;

-- Named to fire after users_rules (triggers fire in name order).
CREATE TRIGGER users_rules_on_hold
  BEFORE INSERT OR UPDATE OF on_hold_for, activate_by, expires_at ON users
  FOR EACH ROW EXECUTE FUNCTION boxmeter_users_on_hold_rules();

-- Runs as the owner, as boxmeter_default_time_zone (0009).
CREATE FUNCTION boxmeter_online_window()
RETURNS interval
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $window$
SELECT coalesce((SELECT s.online_window FROM boxmeter_settings s),
                interval '2 minutes')
$window$;

-- The state rule (0009's), with first use and the effective expiry; new
-- columns at the end.
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
       u.reset_anchor, coalesce(u.time_zone, boxmeter_default_time_zone())
         AS time_zone,
       CASE WHEN u.period_end <= now()
            THEN (boxmeter_user_period(u, now())).period_end
            ELSE u.period_end END AS period_end,
       usage.first_seen, usage.last_seen,
       coalesce(usage.last_seen >= now() - boxmeter_online_window(), false)
         AS online,
       u.on_hold_for, u.activate_by,
       u.on_hold_for IS NOT NULL AND usage.first_seen IS NULL AS on_hold,
       expiry.at AS effective_expires_at
  FROM users u
 CROSS JOIN LATERAL (
   -- One lookup through counters_user_name per user; the old names only
   -- for the few users who have any (a hashed set, read once).
   SELECT lifetime,
          CASE WHEN u.period_end <= now() THEN 0
               ELSE GREATEST(lifetime - u.usage_offset, 0) END AS used,
          CASE WHEN lifetime > u.created_lifetime
               THEN GREATEST(sums.first_seen, u.created_at) END AS first_seen,
          CASE WHEN lifetime > u.created_lifetime THEN sums.last_seen END
            AS last_seen
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
                    9223372036854775807)::bigint AS lifetime,
                  min(c.first_seen) AS first_seen,
                  max(c.last_seen) AS last_seen
             FROM counters c
            WHERE c.kind = 'user' AND c.name = u.name) AS sums
 ) AS usage
 CROSS JOIN LATERAL (
   SELECT CASE WHEN u.on_hold_for IS NULL THEN u.expires_at
               WHEN usage.first_seen IS NOT NULL
                 THEN usage.first_seen + u.on_hold_for
               ELSE u.activate_by END AS at
 ) AS expiry;

-- 0009's user_quota_status; expires_at is now the effective expiry (that
-- of an on-hold user who has started, or their activation deadline).
CREATE OR REPLACE VIEW user_quota_status AS
SELECT id, name, enabled, quota_bytes, used_bytes,
       CASE WHEN quota_bytes IS NOT NULL
            THEN GREATEST(quota_bytes - used_bytes, 0)
       END AS remaining_bytes,
       CASE WHEN quota_bytes = 0 THEN 100.0
            ELSE trunc(100.0 * used_bytes / quota_bytes, 1)
       END AS percent,
       period_start, effective_expires_at AS expires_at, lifetime_bytes,
       state, reset_strategy, time_zone, period_end, period_end AS next_reset,
       first_seen, last_seen, online, on_hold, on_hold_for, activate_by
  FROM users_with_state;

-- Users with traffic in the online window, per node they used: one row per
-- user and node (a renamed user's old and new name are one). Reads every
-- user counter (last_seen has no index: it changes with every commit, and
-- an index would make those updates non-HOT).
CREATE VIEW online_users AS
SELECT c.user_name AS name, c.node, max(c.last_seen) AS last_seen
  FROM boxmeter_user_counters c
  JOIN users u ON u.name = c.user_name
 WHERE c.last_seen >= now() - boxmeter_online_window()
   AND c.last_seen >= u.created_at
 GROUP BY c.user_name, c.node;

-- Puts a user on hold: they expire `duration` after their first traffic,
-- or unused at activate_by (NULL: never). Their expires_at is cleared. A
-- user who has used traffic already starts counting from that first use.
CREATE FUNCTION set_on_hold(user_name text, duration interval,
                            activate_by timestamptz DEFAULT NULL)
RETURNS user_quota_status
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $set_on_hold$
#variable_conflict use_variable
DECLARE
  the_user users := boxmeter_lock_user('set_on_hold', user_name);
BEGIN
  IF duration IS NULL OR duration <= interval '0' THEN
    RAISE EXCEPTION 'set_on_hold: duration % for user % is not a positive '
                    'interval', coalesce(quote_literal(duration), 'NULL'),
                    quote_literal(the_user.name)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'e.g. interval ''30 days''';
  END IF;
  UPDATE users u
     SET expires_at = NULL, on_hold_for = duration,
         activate_by = set_on_hold.activate_by
   WHERE u.id = the_user.id;
  RETURN boxmeter_status(the_user.id);
END
$set_on_hold$;

-- Takes a user off hold. One who has started keeps their effective expiry
-- as a fixed expires_at; one who has not has none.
CREATE FUNCTION clear_on_hold(user_name text)
RETURNS user_quota_status
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $clear_on_hold$
DECLARE
  the_user users := boxmeter_lock_user('clear_on_hold', user_name);
  status user_quota_status := boxmeter_status(the_user.id);
BEGIN
  UPDATE users u
     SET on_hold_for = NULL, activate_by = NULL,
         expires_at = CASE WHEN status.first_seen IS NOT NULL
                           THEN status.expires_at END
   WHERE u.id = the_user.id;
  RETURN boxmeter_status(the_user.id);
END
$clear_on_hold$;

-- How recent a user's last traffic must be for them to count as online.
-- Runs as the owner, so an operator may change it.
CREATE FUNCTION set_online_window(online_window interval)
RETURNS text
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $set_window$
#variable_conflict use_variable
BEGIN
  IF online_window IS NULL OR online_window <= interval '0' THEN
    RAISE EXCEPTION 'set_online_window: online_window % is not a positive '
                    'interval', coalesce(quote_literal(online_window), 'NULL')
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'e.g. interval ''2 minutes''; keep it above the '
                   'collectors'' poll.interval';
  END IF;
  UPDATE boxmeter_settings s SET online_window = set_online_window.online_window;
  RETURN format('users are online while their last traffic is at most %s '
                'old', online_window);
END
$set_window$;

REVOKE EXECUTE ON FUNCTION set_online_window(interval) FROM PUBLIC;
GRANT SELECT ON online_users TO boxmeter_operator, boxmeter_readonly;
GRANT EXECUTE ON FUNCTION
  set_on_hold(text, interval, timestamptz), clear_on_hold(text),
  set_online_window(interval)
  TO boxmeter_operator;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0010_online_on_hold.sql')
ON CONFLICT (name) DO NOTHING;
