-- 0003: operating boxmeter from psql. Quota periods (reset without losing
-- lifetime totals), views over the hourly history, the per-user state
-- (active/over_quota/expired/disabled: defined once, in users_with_state,
-- which 0002's eligible_users now reads too), per-node summaries, counters
-- nobody knows, and functions for the daily changes to users, each checking
-- its input and failing with an error that says what to do.
-- schema/COOKBOOK.md shows them in use; every statement there runs in the
-- tests.
--
-- Days are dates in the session's TimeZone (SET TIME ZONE 'UTC' for UTC
-- days), built from whole UTC hours: in a zone whose offset is not a whole
-- number of hours an hour counts on the day it starts.

-- The functions below pin search_path to the schema this migration runs in
-- (SET search_path FROM CURRENT), so they find their tables whatever the
-- caller's search_path is, and nothing a caller puts first shadows them.
SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

-- Quota periods. A user's usage is their lifetime traffic (the sum of their
-- counters over all nodes, as in user_traffic) minus usage_offset: starting
-- a new period stores the lifetime total here, so nothing is deleted and the
-- lifetime totals stay. Reading usage costs one index lookup per user, not a
-- scan of the hourly history.
ALTER TABLE users
  ADD COLUMN usage_offset bigint NOT NULL DEFAULT 0
    CHECK (usage_offset >= 0),
  ADD COLUMN period_start timestamptz;
UPDATE users SET period_start = created_at;
ALTER TABLE users
  ALTER COLUMN period_start SET DEFAULT now(),
  ALTER COLUMN period_start SET NOT NULL;
COMMENT ON COLUMN users.usage_offset IS
  'lifetime traffic (bytes) when the current quota period started';
COMMENT ON COLUMN users.period_start IS
  'when the current quota period started (reset_usage)';

-- The hourly history per user and node, and summed over nodes. An hour is
-- the UTC hour the traffic was committed in.
CREATE VIEW user_node_hourly AS
SELECT c.name, c.node, h.hour, h.uplink, h.downlink,
       LEAST(h.uplink::numeric + h.downlink, 9223372036854775807)::bigint
         AS total
  FROM counter_hourly h
  JOIN counters c ON c.id = h.counter_id
 WHERE c.kind = 'user';

CREATE VIEW user_hourly AS
SELECT name, hour,
       LEAST(sum(uplink), 9223372036854775807)::bigint AS uplink,
       LEAST(sum(downlink), 9223372036854775807)::bigint AS downlink,
       LEAST(sum(uplink) + sum(downlink), 9223372036854775807)::bigint
         AS total
  FROM user_node_hourly
 GROUP BY name, hour;

CREATE VIEW user_node_daily AS
SELECT name, node, hour::date AS day,
       LEAST(sum(uplink), 9223372036854775807)::bigint AS uplink,
       LEAST(sum(downlink), 9223372036854775807)::bigint AS downlink,
       LEAST(sum(uplink) + sum(downlink), 9223372036854775807)::bigint
         AS total
  FROM user_node_hourly
 GROUP BY name, node, hour::date;

CREATE VIEW user_daily AS
SELECT name, hour::date AS day,
       LEAST(sum(uplink), 9223372036854775807)::bigint AS uplink,
       LEAST(sum(downlink), 9223372036854775807)::bigint AS downlink,
       LEAST(sum(uplink) + sum(downlink), 9223372036854775807)::bigint
         AS total
  FROM user_node_hourly
 GROUP BY name, hour::date;

-- Per user: every column of users, plus the usage of the current quota
-- period and the state that decides whether boxmeter-gen puts the user into
-- sing-box's config:
--   disabled    enabled is false
--   expired     expires_at has passed
--   over_quota  the period's usage has reached quota_bytes (so a quota of 0
--               admits no traffic)
--   active      otherwise
-- in that order of precedence. This is the one definition of the rule:
-- user_quota_status shows it (without credentials), eligible_users keeps the
-- active users for boxmeter-gen and the collector's change detection. Both
-- only project this view, so a query pays for the columns it reads.
CREATE VIEW users_with_state AS
SELECT u.*, usage.used AS used_bytes, usage.lifetime AS lifetime_bytes,
       CASE WHEN NOT u.enabled THEN 'disabled'
            WHEN u.expires_at <= now() THEN 'expired'
            WHEN usage.used >= u.quota_bytes THEN 'over_quota'
            ELSE 'active'
       END AS state
  FROM users u
 CROSS JOIN LATERAL (
   -- One lookup through counters_user_name per user.
   SELECT lifetime,
          GREATEST(lifetime - u.usage_offset, 0) AS used
     FROM (SELECT LEAST(coalesce(sum(c.uplink::numeric + c.downlink), 0),
                        9223372036854775807)::bigint AS lifetime
             FROM counters c
            WHERE c.kind = 'user' AND c.name = u.name) AS sums
 ) AS usage;

CREATE VIEW user_quota_status AS
SELECT id, name, enabled, quota_bytes, used_bytes,
       CASE WHEN quota_bytes IS NOT NULL
            THEN GREATEST(quota_bytes - used_bytes, 0)
       END AS remaining_bytes,
       CASE WHEN quota_bytes = 0 THEN 100.0
            ELSE round(100.0 * used_bytes / quota_bytes, 1)
       END AS percent,
       period_start, expires_at, lifetime_bytes, state
  FROM users_with_state;

-- 0002's eligible_users, now from the rule above (same columns), so that
-- usage counts from the start of the current quota period.
CREATE OR REPLACE VIEW eligible_users AS
SELECT id, name, uuid, password, flow, alter_id, quota_bytes, expires_at
  FROM users_with_state
 WHERE state = 'active';

-- Per node: when its collector last committed (an idle node commits
-- nothing, so an old time means idle or down), how many counters it has,
-- and today's traffic through its inbounds (each byte also shows in a user
-- and an outbound counter, so those are not added again). Today's traffic
-- reads only the inbound counters' hourly rows, a handful per node, through
-- counter_hourly's primary key: cheap whatever the number of users.
CREATE VIEW node_summary AS
SELECT n.name AS node, n.last_commit_at, n.commit_seq AS commits,
       counts.counters, counts.user_counters,
       today.uplink AS today_uplink, today.downlink AS today_downlink,
       LEAST(today.uplink::numeric + today.downlink,
             9223372036854775807)::bigint AS today_total
  FROM nodes n
 CROSS JOIN LATERAL (
   SELECT count(*) AS counters,
          count(*) FILTER (WHERE c.kind = 'user') AS user_counters
     FROM counters c
    WHERE c.node = n.name) AS counts
 CROSS JOIN LATERAL (
   SELECT LEAST(coalesce(sum(h.uplink), 0), 9223372036854775807)::bigint
            AS uplink,
          LEAST(coalesce(sum(h.downlink), 0), 9223372036854775807)::bigint
            AS downlink
     FROM counters c
     JOIN counter_hourly h ON h.counter_id = c.id
    WHERE c.node = n.name AND c.kind = 'inbound'
      AND h.hour >= current_date::timestamptz) AS today;

-- Counters whose user is not in users, or whose inbound is not in inbounds
-- for that node: users added to sing-box by hand, deleted users whose
-- history was kept, the old name of a renamed user until sing-box has its
-- new config. Outbounds are not managed in tables and never show here.
CREATE VIEW unknown_counters AS
SELECT c.node, c.kind, c.name, c.uplink, c.downlink,
       LEAST(c.uplink::numeric + c.downlink, 9223372036854775807)::bigint
         AS total,
       c.first_seen, c.last_seen
  FROM counters c
 WHERE (c.kind = 'user'
        AND NOT EXISTS (SELECT 1 FROM users u WHERE u.name = c.name))
    OR (c.kind = 'inbound'
        AND NOT EXISTS (SELECT 1 FROM inbounds i
                         WHERE i.node = c.node AND i.tag = c.name));

-- The users who moved the most traffic in the hours that start in
-- [from_time, to_time), over all nodes, most first.
CREATE FUNCTION top_users(from_time timestamptz, to_time timestamptz)
RETURNS TABLE (rank bigint, name text, uplink bigint, downlink bigint,
               total bigint)
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $top_users$
BEGIN
  IF from_time IS NULL OR to_time IS NULL THEN
    RAISE EXCEPTION 'top_users: from_time and to_time must not be NULL '
                    '(got % and %)', coalesce(from_time::text, 'NULL'),
                    coalesce(to_time::text, 'NULL')
      USING ERRCODE = 'null_value_not_allowed',
            HINT = 'e.g. top_users(now() - interval ''7 days'', now())';
  END IF;
  IF from_time >= to_time THEN
    RAISE EXCEPTION 'top_users: from_time % is not before to_time %',
                    from_time, to_time
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'the range is [from_time, to_time); swap them?';
  END IF;
  RETURN QUERY
  SELECT rank() OVER (ORDER BY t.total DESC), t.name, t.uplink, t.downlink,
         t.total
    FROM (SELECT h.name,
                 LEAST(sum(h.uplink), 9223372036854775807)::bigint AS uplink,
                 LEAST(sum(h.downlink), 9223372036854775807)::bigint
                   AS downlink,
                 LEAST(sum(h.uplink) + sum(h.downlink),
                       9223372036854775807)::bigint AS total
            FROM user_node_hourly h
           WHERE h.hour >= date_trunc('hour', from_time) AND h.hour < to_time
           GROUP BY h.name) AS t
   ORDER BY t.total DESC, t.name;
END
$top_users$;

-- Helpers of the functions below.

-- Rejects a user name that cannot be right.
CREATE FUNCTION boxmeter_check_user_name(what text, user_name text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path FROM CURRENT
AS $check$
BEGIN
  IF user_name IS NULL THEN
    RAISE EXCEPTION '%: the user name must not be NULL', what
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  IF user_name = '' OR user_name <> btrim(user_name, E' \t\r\n') THEN
    RAISE EXCEPTION '%: user name "%" is empty or starts or ends with '
                    'white space', what, user_name
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'sing-box matches names exactly; pass the name without '
                   'surrounding spaces';
  END IF;
  -- Well below what a btree index entry can hold (about 2700 bytes).
  IF octet_length(user_name) > 1000 THEN
    RAISE EXCEPTION '%: user name "%..." is % bytes long, more than 1000',
                    what, left(user_name, 20), octet_length(user_name)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'choose a shorter name';
  END IF;
END
$check$;

-- The user named `user_name`, locked for the rest of the transaction.
CREATE FUNCTION boxmeter_lock_user(what text, user_name text)
RETURNS users
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $lock$
DECLARE
  locked users;
BEGIN
  PERFORM boxmeter_check_user_name(what, user_name);
  SELECT * INTO locked FROM users u WHERE u.name = user_name FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION '%: there is no user named "%"', what, user_name
      USING ERRCODE = 'no_data_found',
            HINT = 'list the users with: SELECT name FROM users ORDER BY name';
  END IF;
  RETURN locked;
END
$lock$;

-- The lifetime traffic counted under `user_name`, over all nodes.
CREATE FUNCTION boxmeter_lifetime_bytes(user_name text)
RETURNS bigint
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $lifetime$
SELECT LEAST(coalesce(sum(c.uplink::numeric + c.downlink), 0),
             9223372036854775807)::bigint
  FROM counters c
 WHERE c.kind = 'user' AND c.name = user_name
$lifetime$;

CREATE FUNCTION boxmeter_status(user_id bigint)
RETURNS user_quota_status
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $status$
SELECT * FROM user_quota_status s WHERE s.id = user_id
$status$;

-- 32 bytes from the operating system's random source (gen_random_uuid,
-- core since PostgreSQL 13; each carries 122 random bits), base64-encoded:
-- 44 characters, usable as any sing-box password and as a shadowsocks 2022
-- key for 2022-blake3-aes-256-gcm and 2022-blake3-chacha20-poly1305.
CREATE FUNCTION boxmeter_random_password()
RETURNS text
LANGUAGE sql VOLATILE
AS $password$
SELECT encode(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()),
              'base64')
$password$;

-- The functions an operator calls. Each returns the user's quota status
-- after the change (add_user: the new users row, with its credentials).

-- Adds a user. uuid and password are generated when not given. A user
-- added under the name of a deleted user whose history was kept starts
-- with an empty quota period: that history stays in the lifetime total.
CREATE FUNCTION add_user(user_name text,
                         quota_bytes bigint DEFAULT NULL,
                         expires_at timestamptz DEFAULT NULL,
                         uuid uuid DEFAULT NULL,
                         password text DEFAULT NULL,
                         flow text DEFAULT NULL,
                         note text DEFAULT NULL)
RETURNS users
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $add_user$
#variable_conflict use_variable
DECLARE
  added users;
BEGIN
  PERFORM boxmeter_check_user_name('add_user', user_name);
  IF quota_bytes < 0 THEN
    RAISE EXCEPTION 'add_user: quota_bytes % for user "%" is negative',
                    quota_bytes, user_name
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'pass bytes, e.g. pg_size_bytes(''50 GB''), or NULL for '
                   'no quota';
  END IF;
  IF password = '' THEN
    RAISE EXCEPTION 'add_user: the password of user "%" is empty', user_name
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'pass NULL (or leave it out) to have one generated';
  END IF;
  IF EXISTS (SELECT 1 FROM users u WHERE u.name = user_name) THEN
    RAISE EXCEPTION 'add_user: user "%" already exists', user_name
      USING ERRCODE = 'unique_violation',
            HINT = 'choose another name, or change that user with '
                   'set_quota, set_expiry, enable_user or rename_user';
  END IF;
  INSERT INTO users AS u (name, quota_bytes, expires_at, uuid, password,
                          flow, note, usage_offset, period_start)
  VALUES (user_name, quota_bytes, expires_at,
          coalesce(uuid, gen_random_uuid()),
          coalesce(password, boxmeter_random_password()), flow, note,
          boxmeter_lifetime_bytes(user_name), now())
  RETURNING u.* INTO added;
  RETURN added;
END
$add_user$;

-- Lets a user use an inbound (node, tag). True when newly linked, false
-- when it already was.
CREATE FUNCTION link_user(user_name text, node text, tag text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $link$
#variable_conflict use_variable
DECLARE
  the_user users := boxmeter_lock_user('link_user', user_name);
  inbound_id bigint;
BEGIN
  SELECT i.id INTO inbound_id FROM inbounds i
   WHERE i.node = node AND i.tag = tag;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'link_user: node "%" has no inbound tagged "%"',
                    coalesce(node, 'NULL'), coalesce(tag, 'NULL')
      USING ERRCODE = 'no_data_found',
            HINT = 'list the inbounds with: SELECT node, tag, type FROM '
                   'inbounds ORDER BY node, tag';
  END IF;
  INSERT INTO inbound_users (inbound_id, user_id)
  VALUES (inbound_id, the_user.id)
  ON CONFLICT DO NOTHING;
  RETURN FOUND;
END
$link$;

-- Takes an inbound away from a user. True when it was linked.
CREATE FUNCTION unlink_user(user_name text, node text, tag text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $unlink$
#variable_conflict use_variable
DECLARE
  the_user users := boxmeter_lock_user('unlink_user', user_name);
  inbound_id bigint;
BEGIN
  SELECT i.id INTO inbound_id FROM inbounds i
   WHERE i.node = node AND i.tag = tag;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unlink_user: node "%" has no inbound tagged "%"',
                    coalesce(node, 'NULL'), coalesce(tag, 'NULL')
      USING ERRCODE = 'no_data_found',
            HINT = 'list the user''s inbounds with: SELECT i.node, i.tag '
                   'FROM inbounds i JOIN inbound_users l ON l.inbound_id = '
                   'i.id JOIN users u ON u.id = l.user_id WHERE u.name = '
                   '''' || user_name || '''';
  END IF;
  DELETE FROM inbound_users l
   WHERE l.inbound_id = inbound_id AND l.user_id = the_user.id;
  RETURN FOUND;
END
$unlink$;

CREATE FUNCTION set_quota(user_name text, quota_bytes bigint)
RETURNS user_quota_status
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $set_quota$
#variable_conflict use_variable
DECLARE
  the_user users := boxmeter_lock_user('set_quota', user_name);
BEGIN
  IF quota_bytes IS NULL THEN
    RAISE EXCEPTION 'set_quota: quota_bytes for user "%" is NULL', user_name
      USING ERRCODE = 'null_value_not_allowed',
            HINT = 'to remove the quota call clear_quota(''' || user_name
                   || ''')';
  END IF;
  IF quota_bytes < 0 THEN
    RAISE EXCEPTION 'set_quota: quota_bytes % for user "%" is negative',
                    quota_bytes, user_name
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'pass bytes, e.g. pg_size_bytes(''50 GB'')';
  END IF;
  UPDATE users u SET quota_bytes = set_quota.quota_bytes
   WHERE u.id = the_user.id;
  RETURN boxmeter_status(the_user.id);
END
$set_quota$;

CREATE FUNCTION clear_quota(user_name text)
RETURNS user_quota_status
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $clear_quota$
DECLARE
  the_user users := boxmeter_lock_user('clear_quota', user_name);
BEGIN
  UPDATE users u SET quota_bytes = NULL WHERE u.id = the_user.id;
  RETURN boxmeter_status(the_user.id);
END
$clear_quota$;

-- An expiry in the past is allowed: it expires the user now.
CREATE FUNCTION set_expiry(user_name text, expires_at timestamptz)
RETURNS user_quota_status
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $set_expiry$
#variable_conflict use_variable
DECLARE
  the_user users := boxmeter_lock_user('set_expiry', user_name);
BEGIN
  IF expires_at IS NULL THEN
    RAISE EXCEPTION 'set_expiry: expires_at for user "%" is NULL', user_name
      USING ERRCODE = 'null_value_not_allowed',
            HINT = 'to remove the expiry call clear_expiry(''' || user_name
                   || ''')';
  END IF;
  IF NOT isfinite(expires_at) THEN
    RAISE EXCEPTION 'set_expiry: expires_at % for user "%" is not a time',
                    expires_at, user_name
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'for no expiry call clear_expiry(''' || user_name || ''')';
  END IF;
  UPDATE users u SET expires_at = set_expiry.expires_at
   WHERE u.id = the_user.id;
  RETURN boxmeter_status(the_user.id);
END
$set_expiry$;

CREATE FUNCTION clear_expiry(user_name text)
RETURNS user_quota_status
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $clear_expiry$
DECLARE
  the_user users := boxmeter_lock_user('clear_expiry', user_name);
BEGIN
  UPDATE users u SET expires_at = NULL WHERE u.id = the_user.id;
  RETURN boxmeter_status(the_user.id);
END
$clear_expiry$;

CREATE FUNCTION enable_user(user_name text)
RETURNS user_quota_status
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $enable$
DECLARE
  the_user users := boxmeter_lock_user('enable_user', user_name);
BEGIN
  UPDATE users u SET enabled = true WHERE u.id = the_user.id;
  RETURN boxmeter_status(the_user.id);
END
$enable$;

CREATE FUNCTION disable_user(user_name text)
RETURNS user_quota_status
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $disable$
DECLARE
  the_user users := boxmeter_lock_user('disable_user', user_name);
BEGIN
  UPDATE users u SET enabled = false WHERE u.id = the_user.id;
  RETURN boxmeter_status(the_user.id);
END
$disable$;

-- Starts a new quota period for a user: usage counts from zero again, the
-- lifetime totals and the hourly history stay. Traffic that a collector
-- commits after this counts in the new period.
CREATE FUNCTION reset_usage(user_name text)
RETURNS user_quota_status
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $reset$
DECLARE
  the_user users := boxmeter_lock_user('reset_usage', user_name);
BEGIN
  UPDATE users u
     SET usage_offset = boxmeter_lifetime_bytes(u.name), period_start = now()
   WHERE u.id = the_user.id;
  RETURN boxmeter_status(the_user.id);
END
$reset$;

-- reset_usage for every user at once (the monthly reset); returns how many.
CREATE FUNCTION reset_all_usage()
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $reset_all$
DECLARE
  changed bigint;
BEGIN
  UPDATE users u
     SET usage_offset = boxmeter_lifetime_bytes(u.name), period_start = now();
  GET DIAGNOSTICS changed = ROW_COUNT;
  RETURN changed;
END
$reset_all$;

-- Renames a user; their traffic follows. On every node, the totals and the
-- hourly history of counter (user, old_name) move to (user, new_name); the
-- old row stays with zero totals and its baseline. Why: sing-box keeps
-- counting under old_name until boxmeter-gen has written the new config and
-- sing-box has reloaded it. Meanwhile the collector adds that traffic to the
-- old row (it shows in unknown_counters; nothing is lost or counted twice),
-- and a collector restarted in that window still finds the old name's
-- baseline, so it does not count sing-box's whole cumulative value again.
-- After the reload sing-box counts new_name from zero.
-- If counters named new_name exist (history of a deleted user, or of an
-- earlier name), they are merged in: they add to the lifetime total, not to
-- the current period's usage.
CREATE FUNCTION rename_user(user_name text, new_name text)
RETURNS user_quota_status
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $rename$
#variable_conflict use_variable
DECLARE
  the_user users := boxmeter_lock_user('rename_user', user_name);
  old_ids bigint[];
  merged bigint;
BEGIN
  PERFORM boxmeter_check_user_name('rename_user', new_name);
  IF new_name = user_name THEN
    RAISE EXCEPTION 'rename_user: user "%" already has that name', user_name
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF EXISTS (SELECT 1 FROM users u WHERE u.name = new_name) THEN
    RAISE EXCEPTION 'rename_user: cannot rename user "%" to "%": a user '
                    'with that name exists', user_name, new_name
      USING ERRCODE = 'unique_violation',
            HINT = 'choose another name, or delete_user that user first';
  END IF;
  -- Lock the counters that move, so that a collector's commit either lands
  -- before (and moves with them) or after (and stays under the old name).
  SELECT array_agg(c.id ORDER BY c.id) INTO old_ids
    FROM (SELECT c.id FROM counters c
           WHERE c.kind = 'user' AND c.name = user_name
           ORDER BY c.id
             FOR UPDATE) AS c;
  merged := boxmeter_lifetime_bytes(new_name);
  INSERT INTO counters (node, kind, name, instance_start, first_seen,
                        last_seen)
  SELECT o.node, 'user', new_name, timestamptz 'epoch', o.first_seen,
         o.last_seen
    FROM counters o
   WHERE o.id = ANY (old_ids)
  ON CONFLICT DO NOTHING;
  UPDATE counters n
     SET uplink = LEAST(n.uplink::numeric + o.uplink,
                        9223372036854775807)::bigint,
         downlink = LEAST(n.downlink::numeric + o.downlink,
                          9223372036854775807)::bigint,
         first_seen = LEAST(n.first_seen, o.first_seen),
         last_seen = GREATEST(n.last_seen, o.last_seen)
    FROM counters o
   WHERE o.id = ANY (old_ids)
     AND n.node = o.node AND n.kind = 'user' AND n.name = new_name;
  INSERT INTO counter_hourly AS h (counter_id, hour, uplink, downlink)
  SELECT n.id, oh.hour, oh.uplink, oh.downlink
    FROM counter_hourly oh
    JOIN counters o ON o.id = oh.counter_id
    JOIN counters n ON n.node = o.node AND n.kind = 'user'
                   AND n.name = new_name
   WHERE o.id = ANY (old_ids)
  ON CONFLICT (counter_id, hour) DO UPDATE SET
    uplink = LEAST(h.uplink::numeric + excluded.uplink,
                   9223372036854775807)::bigint,
    downlink = LEAST(h.downlink::numeric + excluded.downlink,
                     9223372036854775807)::bigint;
  DELETE FROM counter_hourly oh WHERE oh.counter_id = ANY (old_ids);
  UPDATE counters o SET uplink = 0, downlink = 0 WHERE o.id = ANY (old_ids);
  UPDATE users u
     SET name = new_name,
         usage_offset = LEAST(u.usage_offset::numeric + merged,
                              9223372036854775807)::bigint
   WHERE u.id = the_user.id;
  RETURN boxmeter_status(the_user.id);
END
$rename$;

-- Deletes a user and their inbound links. keep_history (no default, on
-- purpose) says what happens to their traffic:
--   true   the counters and hourly history stay under the name (they show
--          in user_traffic and unknown_counters);
--   false  the counters and hourly history of the name are deleted on every
--          node. If sing-box still counts the user (boxmeter-gen has not run
--          yet), the collector records that traffic under the name again.
CREATE FUNCTION delete_user(user_name text, keep_history boolean)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $delete$
#variable_conflict use_variable
DECLARE
  the_user users := boxmeter_lock_user('delete_user', user_name);
  nodes bigint;  -- a user has one counter per node
BEGIN
  IF keep_history IS NULL THEN
    RAISE EXCEPTION 'delete_user: keep_history for user "%" is NULL',
                    user_name
      USING ERRCODE = 'null_value_not_allowed',
            HINT = 'say what happens to the traffic history: true keeps it, '
                   'false deletes it';
  END IF;
  DELETE FROM users u WHERE u.id = the_user.id;
  IF keep_history THEN
    SELECT count(*) INTO nodes FROM counters c
     WHERE c.kind = 'user' AND c.name = user_name;
    RETURN format('deleted user "%s"; kept their traffic history on %s '
                  'node%s', user_name, nodes,
                  CASE WHEN nodes = 1 THEN '' ELSE 's' END);
  END IF;
  DELETE FROM counters c WHERE c.kind = 'user' AND c.name = user_name;
  GET DIAGNOSTICS nodes = ROW_COUNT;
  RETURN format('deleted user "%s" and their traffic history on %s node%s',
                user_name, nodes, CASE WHEN nodes = 1 THEN '' ELSE 's' END);
END
$delete$;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0003_operations.sql')
ON CONFLICT (name) DO NOTHING;
