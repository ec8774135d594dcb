-- 0008: operations in SQL, hardened (issue 12).
--
-- Security
--   * A collector writes only the nodes it was granted (grant_node): row-level
--     security on nodes, counters and counter_hourly, and it deletes hourly
--     history only past history_retention.keep.
--   * boxmeter_operator: users, inbounds, links and quotas; reads traffic.
--   * Every value put into a message or hint is quoted as a literal (%L).
--   * User names are NFC-normalized and must be printable; passwords, flows
--     and expiries are checked by a trigger, whatever path writes users.
-- Correctness
--   * One expiry rule: expires_at is a finite time or NULL (never).
--   * A user inserted with plain INSERT starts a fresh quota period, like
--     add_user: history of an earlier user of the name is lifetime only.
--   * rename_user records the old name (renamed_users): traffic sing-box still
--     counts under it is the user's, in the lifetime and in the quota.
--   * State no_inbound: a user with no enabled inbound cannot connect.
--   * percent never rounds up to 100.0 below the quota.
--   * top_users sums the hours that start in [from_time, to_time) exactly.
--   * retire_node(name): a node leaves, its totals and history stay.
-- Speed (scripts/sql-bench.sh): reset_all_usage and top_users in one pass,
-- user_daily_between for per-day reports by range, node_inbound_users and
-- users_fingerprint in proportion to the node's users.
--
-- Apply with `boxmeter-collector --migrate` or `psql -1 -f` as the schema's
-- owner (after 0001 to 0007). Upgrading: a collector that connects as a
-- login granted boxmeter_collector may write nothing until the owner runs
-- grant_node(its node, its login) (see COOKBOOK.md, "Access").

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

-- Names -----------------------------------------------------------------

-- Characters no name may contain: controls (C0, DEL, C1), characters that
-- show nothing (soft hyphen, zero-width and joiner characters, bidi
-- controls, word joiners, variation selectors, byte order mark, fillers,
-- tags), line and paragraph separators, and every space but U+0020 (a
-- no-break space looks like a space and is not one).
CREATE FUNCTION boxmeter_forbidden_characters()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $forbidden$
SELECT '[\u0001-\u001f\u007f-\u009f\u00a0\u00ad\u034f\u061c\u115f\u1160'
       '\u1680\u17b4\u17b5\u180b-\u180f\u2000-\u200f\u2028-\u202f'
       '\u205f-\u206f\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb'
       '\U000e0000-\U000e0fff]'
$forbidden$;

-- What is wrong with `value` as a name or password, or NULL when nothing
-- is: it says which character, where, as U+XXXX (never the value itself,
-- which may be a secret).
CREATE FUNCTION boxmeter_text_problem(value text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $problem$
DECLARE
  at integer;
BEGIN
  IF value = '' THEN
    RETURN 'is empty';
  END IF;
  at := regexp_instr(value, boxmeter_forbidden_characters());
  IF at > 0 THEN
    RETURN format('has an invisible, control or unusual space character '
                  'U+%s at position %s',
                  upper(lpad(to_hex(ascii(substr(value, at, 1))), 4, '0')),
                  at);
  END IF;
  IF value LIKE ' %' OR value LIKE '% ' THEN
    RETURN 'starts or ends with a space';
  END IF;
  RETURN NULL;
END
$problem$;

-- `user_name` in NFC (composed and decomposed `café` are one name), or an
-- error that names the problem. Replaces 0003's check, which returned
-- nothing and allowed invisible characters.
CREATE FUNCTION boxmeter_user_name(what text, user_name text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path FROM CURRENT
AS $user_name$
DECLARE
  normalized text;
  problem text;
BEGIN
  IF user_name IS NULL THEN
    RAISE EXCEPTION '%: the user name must not be NULL', what
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  normalized := normalize(user_name, NFC);
  problem := boxmeter_text_problem(normalized);
  IF problem IS NOT NULL THEN
    RAISE EXCEPTION '%: user name % %', what, quote_literal(user_name), problem
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'sing-box matches names exactly; use printable characters, '
                   'spaces only inside the name';
  END IF;
  -- Well below what a btree index entry can hold (about 2700 bytes).
  IF octet_length(normalized) > 1000 THEN
    RAISE EXCEPTION '%: user name %... is % bytes long, more than 1000',
                    what, quote_literal(left(normalized, 20)),
                    octet_length(normalized)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'choose a shorter name';
  END IF;
  RETURN normalized;
END
$user_name$;

CREATE OR REPLACE FUNCTION boxmeter_check_user_name(what text, user_name text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path FROM CURRENT
AS $check$
BEGIN
  PERFORM boxmeter_user_name(what, user_name);
END
$check$;

-- A node's name, checked like a user's (grant_node, retire_node).
CREATE FUNCTION boxmeter_node_name(what text, node_name text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path FROM CURRENT
AS $node_name$
DECLARE
  problem text;
BEGIN
  IF node_name IS NULL THEN
    RAISE EXCEPTION '%: the node name must not be NULL', what
      USING ERRCODE = 'null_value_not_allowed';
  END IF;
  problem := boxmeter_text_problem(node_name);
  IF problem IS NOT NULL THEN
    RAISE EXCEPTION '%: node name % %', what, quote_literal(node_name), problem
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'pass the node: value of the collector''s configuration';
  END IF;
  RETURN node_name;
END
$node_name$;

-- Renamed users ---------------------------------------------------------

-- The names a user had before rename_user. sing-box counts under the old
-- name until boxmeter-gen has written the new config and sing-box reloaded
-- it; that traffic is the user's: it counts in their lifetime and their
-- quota, and the views show it under their current name. The row goes with
-- the user.
CREATE TABLE renamed_users (
  old_name text PRIMARY KEY,
  user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  renamed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX renamed_users_user ON renamed_users (user_id);

-- The lifetime traffic of a user: their counters under `user_name` and
-- under their old names, over all nodes.
CREATE FUNCTION boxmeter_user_lifetime(user_id bigint, user_name text)
RETURNS bigint
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $lifetime$
SELECT LEAST(coalesce(sum(c.uplink::numeric + c.downlink), 0),
             9223372036854775807)::bigint
  FROM counters c
 WHERE c.kind = 'user'
   AND c.name = ANY (user_name || ARRAY(SELECT r.old_name
                                           FROM renamed_users r
                                          WHERE r.user_id = $1))
$lifetime$;

-- Users: one set of rules for every writer ---------------------------------

-- On every INSERT or UPDATE of users, by a function or by hand:
--   * the name is normalized to NFC and must be printable;
--   * a password must be printable and not start or end with a space;
--   * flow is NULL or a flow sing-box knows;
--   * expires_at is a finite time or NULL;
--   * a new user starts a fresh quota period: traffic already counted under
--     the name (history of a deleted user) is in the lifetime, not in the
--     quota, exactly as add_user does it;
--   * a name that another user had before a rename is not taken over while
--     its counters count for that user.
-- Runs as the owner, so it reads counters for a role that cannot.
CREATE FUNCTION boxmeter_users_rules()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $rules$
DECLARE
  what text := TG_OP || ' on users';
  problem text;
  previous_owner text;
BEGIN
  NEW.name := boxmeter_user_name(what, NEW.name);
  IF NEW.password IS NOT NULL THEN
    problem := boxmeter_text_problem(NEW.password);
    IF problem IS NOT NULL THEN
      RAISE EXCEPTION '%: the password of user % %', what,
                      quote_literal(NEW.name), problem
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'leave the password out of add_user to have one '
                     'generated';
    END IF;
  END IF;
  -- sing-box v1.13.2, docs/configuration/inbound/vless.md: the only flow
  -- of a vless user is xtls-rprx-vision; an empty flow means none.
  IF NEW.flow IS NOT NULL AND NEW.flow <> 'xtls-rprx-vision' THEN
    RAISE EXCEPTION '%: flow % of user % is not a flow sing-box knows', what,
                    quote_literal(NEW.flow), quote_literal(NEW.name)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'use ''xtls-rprx-vision'', or NULL for none';
  END IF;
  IF NEW.expires_at IS NOT NULL AND NOT isfinite(NEW.expires_at) THEN
    RAISE EXCEPTION '%: expires_at % of user % is not a time', what,
                    quote_literal(NEW.expires_at), quote_literal(NEW.name)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'NULL means never (clear_expiry); an expiry in the past '
                   'expires the user now';
  END IF;
  IF TG_OP = 'INSERT' OR NEW.name <> OLD.name THEN
    SELECT u.name INTO previous_owner
      FROM renamed_users r JOIN users u ON u.id = r.user_id
     WHERE r.old_name = NEW.name AND r.user_id <> NEW.id;
    IF FOUND THEN
      RAISE EXCEPTION '%: user name % was user %''s before a rename, and '
                      'its traffic still counts for them', what,
                      quote_literal(NEW.name), quote_literal(previous_owner)
        USING ERRCODE = 'unique_violation',
              HINT = 'choose another name';
    END IF;
  END IF;
  IF TG_OP = 'INSERT' THEN
    NEW.usage_offset := boxmeter_user_lifetime(NEW.id, NEW.name);
  END IF;
  RETURN NEW;
END
$rules$;

-- Not on other updates: reset_all_usage writes every row.
CREATE TRIGGER users_rules
  BEFORE INSERT OR UPDATE OF name, password, flow, expires_at ON users
  FOR EACH ROW EXECUTE FUNCTION boxmeter_users_rules();

-- Nodes: retirement, grants, retention --------------------------------------

ALTER TABLE nodes ADD COLUMN retired_at timestamptz;
COMMENT ON COLUMN nodes.retired_at IS
  'when retire_node retired the node; NULL while it is in service';

-- Which login (or group) role may write which node's rows: the collector of
-- the node connects as it. See grant_node.
CREATE TABLE node_grants (
  node text NOT NULL REFERENCES nodes (name) ON UPDATE CASCADE
                                             ON DELETE CASCADE,
  role_name name NOT NULL,
  granted_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (node, role_name)
);

-- How long hourly history stays: a collector deletes only rows older than
-- this (set it to the collectors' history.retention). One row.
CREATE TABLE history_retention (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  keep interval NOT NULL DEFAULT '400 days'
    CHECK (keep >= interval '1 hour')
);
INSERT INTO history_retention DEFAULT VALUES;

-- The nodes the current role may write: granted to it, or to a role it is a
-- member of. Used by the policies below, as one InitPlan per statement.
CREATE FUNCTION boxmeter_writable_nodes()
RETURNS text[]
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $writable$
SELECT coalesce(array_agg(g.node), '{}')
  FROM node_grants g
  JOIN pg_roles r ON r.rolname = g.role_name
 WHERE pg_has_role(r.oid, 'MEMBER')
$writable$;

-- Row-level security. The schema's owner (migrations, the functions that
-- run as it) and superusers are not subject to it; every other role sees
-- every row (nothing here is secret), and writes only as the policies say.
-- Only boxmeter_collector has write privileges on these tables.
ALTER TABLE nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE counters ENABLE ROW LEVEL SECURITY;
ALTER TABLE counter_hourly ENABLE ROW LEVEL SECURITY;

CREATE POLICY read_all ON nodes FOR SELECT USING (true);
CREATE POLICY read_all ON counters FOR SELECT USING (true);
CREATE POLICY read_all ON counter_hourly FOR SELECT USING (true);

-- A collector registers and moves its own node only, never retires it.
CREATE POLICY collector_insert ON nodes FOR INSERT TO boxmeter_collector
  WITH CHECK (name = ANY ((SELECT boxmeter_writable_nodes())::text[])
              AND retired_at IS NULL);
CREATE POLICY collector_update ON nodes FOR UPDATE TO boxmeter_collector
  USING (name = ANY ((SELECT boxmeter_writable_nodes())::text[]))
  WITH CHECK (name = ANY ((SELECT boxmeter_writable_nodes())::text[])
              AND retired_at IS NULL);

CREATE POLICY collector_insert ON counters FOR INSERT TO boxmeter_collector
  WITH CHECK (node = ANY ((SELECT boxmeter_writable_nodes())::text[]));
CREATE POLICY collector_update ON counters FOR UPDATE TO boxmeter_collector
  USING (node = ANY ((SELECT boxmeter_writable_nodes())::text[]))
  WITH CHECK (node = ANY ((SELECT boxmeter_writable_nodes())::text[]));

-- The history of the node's counters: one hashed lookup per row in the set
-- of the node's counters as the statement started. A counter that the
-- same statement inserted (the commit's first sighting of a user) is not in
-- that snapshot; for those few rows a volatile function looks again, with a
-- snapshot that sees them.
CREATE FUNCTION boxmeter_counter_writable(counter_id bigint)
RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path FROM CURRENT
AS $writable$
SELECT EXISTS (SELECT 1 FROM counters c
                WHERE c.id = $1 AND c.node = ANY (boxmeter_writable_nodes()))
$writable$;

CREATE POLICY collector_insert ON counter_hourly FOR INSERT
  TO boxmeter_collector
  WITH CHECK (counter_id IN (SELECT c.id FROM counters c
                              WHERE c.node = ANY (
                                (SELECT boxmeter_writable_nodes())::text[]))
              OR boxmeter_counter_writable(counter_id));
CREATE POLICY collector_update ON counter_hourly FOR UPDATE
  TO boxmeter_collector
  USING (counter_id IN (SELECT c.id FROM counters c
                         WHERE c.node = ANY (
                           (SELECT boxmeter_writable_nodes())::text[]))
         OR boxmeter_counter_writable(counter_id))
  WITH CHECK (counter_id IN (SELECT c.id FROM counters c
                              WHERE c.node = ANY (
                                (SELECT boxmeter_writable_nodes())::text[]))
              OR boxmeter_counter_writable(counter_id));
-- Retention, of every node (one collector prunes for all): only rows older
-- than history_retention.keep.
CREATE POLICY collector_retention ON counter_hourly FOR DELETE
  TO boxmeter_collector
  USING (hour < now() - (SELECT r.keep FROM history_retention r));

-- Lets `role_name` (a collector's login role, granted boxmeter_collector)
-- write the rows of node `node`: registers the node if it is new. A node
-- may be granted to several roles (a new login before the old is dropped).
CREATE FUNCTION grant_node(node text, role_name text)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $grant$
#variable_conflict use_variable
DECLARE
  node_name text := boxmeter_node_name('grant_node', node);
  retired timestamptz;
BEGIN
  IF role_name IS NULL OR NOT EXISTS (SELECT 1 FROM pg_roles r
                                       WHERE r.rolname = role_name) THEN
    RAISE EXCEPTION 'grant_node: there is no role %',
                    coalesce(quote_literal(role_name), 'NULL')
      USING ERRCODE = 'undefined_object',
            HINT = format('create it first: CREATE ROLE %I LOGIN IN ROLE '
                          'boxmeter_collector',
                          coalesce(role_name, 'meter_' || node_name));
  END IF;
  IF NOT pg_has_role(role_name, 'boxmeter_collector', 'MEMBER') THEN
    RAISE EXCEPTION 'grant_node: role % is not a member of boxmeter_collector',
                    quote_literal(role_name)
      USING ERRCODE = 'invalid_grant_operation',
            HINT = format('first: GRANT boxmeter_collector TO %I', role_name);
  END IF;
  INSERT INTO nodes (name) VALUES (node_name) ON CONFLICT DO NOTHING;
  SELECT n.retired_at INTO retired FROM nodes n WHERE n.name = node_name;
  IF retired IS NOT NULL THEN
    RAISE EXCEPTION 'grant_node: node % was retired on %',
                    quote_literal(node_name), retired
      USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'give the new node a new name';
  END IF;
  INSERT INTO node_grants (node, role_name) VALUES (node_name, role_name)
  ON CONFLICT DO NOTHING;
  RETURN format('role %s may write node %s', quote_literal(role_name),
                quote_literal(node_name));
END
$grant$;

-- Takes the right back; true when it was granted.
CREATE FUNCTION revoke_node(node text, role_name text)
RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path FROM CURRENT
AS $revoke$
WITH gone AS (
  DELETE FROM node_grants g
   WHERE g.node = $1 AND g.role_name = $2
  RETURNING 1)
SELECT EXISTS (SELECT 1 FROM gone)
$revoke$;

-- Retires a node that is gone for good: no collector may write it again
-- (its grants go), its inbounds are disabled (so boxmeter-gen writes
-- nothing for it), and its counters and hourly history stay, so users'
-- lifetime totals and quota usage do not change (deleting the counters
-- would hand out free quota). Its history leaves with the retention. Stop
-- its collector first: a superuser or the owner is not held back by grants.
CREATE FUNCTION retire_node(node text)
RETURNS text
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $retire$
#variable_conflict use_variable
DECLARE
  node_name text := boxmeter_node_name('retire_node', node);
  the_node nodes;
  disabled bigint;
BEGIN
  SELECT * INTO the_node FROM nodes n WHERE n.name = node_name FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'retire_node: there is no node %', quote_literal(node_name)
      USING ERRCODE = 'no_data_found',
            HINT = 'list the nodes with: SELECT node FROM node_summary';
  END IF;
  IF the_node.retired_at IS NOT NULL THEN
    RAISE EXCEPTION 'retire_node: node % was already retired on %',
                    quote_literal(node_name), the_node.retired_at
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  DELETE FROM node_grants g WHERE g.node = node_name;
  UPDATE inbounds i SET enabled = false
   WHERE i.node = node_name AND i.enabled;
  GET DIAGNOSTICS disabled = ROW_COUNT;
  UPDATE nodes n SET retired_at = now() WHERE n.name = node_name;
  RETURN format('retired node %s: disabled %s inbound%s; its traffic stays',
                quote_literal(node_name), disabled,
                CASE WHEN disabled = 1 THEN '' ELSE 's' END);
END
$retire$;

-- Views -----------------------------------------------------------------

-- The user counters, each with its user's name: the current name of a
-- renamed user for the counters of their old names. Two branches, so that a
-- filter on user_name reaches the index on counters (name) in each.
CREATE VIEW boxmeter_user_counters AS
SELECT c.*, c.name AS user_name
  FROM counters c
 WHERE c.kind = 'user'
   AND NOT EXISTS (SELECT 1 FROM renamed_users r WHERE r.old_name = c.name)
UNION ALL
SELECT c.*, u.name AS user_name
  FROM renamed_users r
  JOIN users u ON u.id = r.user_id
  JOIN counters c ON c.kind = 'user' AND c.name = r.old_name;

CREATE OR REPLACE VIEW user_traffic AS
SELECT user_name AS name,
       LEAST(sum(uplink), 9223372036854775807)::bigint AS uplink,
       LEAST(sum(downlink), 9223372036854775807)::bigint AS downlink,
       LEAST(sum(uplink) + sum(downlink), 9223372036854775807)::bigint
         AS total,
       count(DISTINCT node) AS nodes,  -- how many nodes counted this user
       max(last_seen) AS last_seen
  FROM boxmeter_user_counters
 GROUP BY user_name;

CREATE OR REPLACE VIEW user_node_hourly AS
SELECT c.user_name AS name, c.node, h.hour, h.uplink, h.downlink,
       LEAST(h.uplink::numeric + h.downlink, 9223372036854775807)::bigint
         AS total
  FROM counter_hourly h
  JOIN boxmeter_user_counters c ON c.id = h.counter_id;

-- Old names of renamed users are known: they are not unknown counters.
CREATE OR REPLACE VIEW unknown_counters AS
SELECT c.node, c.kind, c.name, c.uplink, c.downlink,
       LEAST(c.uplink::numeric + c.downlink, 9223372036854775807)::bigint
         AS total,
       c.first_seen, c.last_seen
  FROM counters c
 WHERE (c.kind = 'user'
        AND NOT EXISTS (SELECT 1 FROM users u WHERE u.name = c.name)
        AND NOT EXISTS (SELECT 1 FROM renamed_users r
                         WHERE r.old_name = c.name))
    OR (c.kind = 'inbound'
        AND NOT EXISTS (SELECT 1 FROM inbounds i
                         WHERE i.node = c.node AND i.tag = c.name));

-- The state rule, now with no_inbound (after over_quota): a user linked to
-- no enabled inbound is in no node's config, so cannot connect.
CREATE OR REPLACE VIEW users_with_state AS
SELECT u.*, usage.used AS used_bytes, usage.lifetime AS lifetime_bytes,
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
       END AS state
  FROM users u
 CROSS JOIN LATERAL (
   -- One lookup through counters_user_name per user; the old names only
   -- for the few users who have any (a hashed set, read once).
   SELECT lifetime, GREATEST(lifetime - u.usage_offset, 0) AS used
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

-- percent is truncated, so it shows 100.0 only at the quota.
CREATE OR REPLACE VIEW user_quota_status AS
SELECT id, name, enabled, quota_bytes, used_bytes,
       CASE WHEN quota_bytes IS NOT NULL
            THEN GREATEST(quota_bytes - used_bytes, 0)
       END AS remaining_bytes,
       CASE WHEN quota_bytes = 0 THEN 100.0
            ELSE trunc(100.0 * used_bytes / quota_bytes, 1)
       END AS percent,
       period_start, expires_at, lifetime_bytes, state
  FROM users_with_state;

-- From the node's links to its users, so reading one node checks only its
-- users (0002's version checked every user's state first).
CREATE OR REPLACE VIEW node_inbound_users AS
SELECT i.node, i.tag AS inbound_tag, u.name AS user_name, u.uuid, u.password,
       u.flow, u.alter_id
  FROM inbounds i
  JOIN inbound_users l ON l.inbound_id = i.id
  JOIN LATERAL (SELECT s.name, s.uuid, s.password, s.flow, s.alter_id,
                       s.state
                  FROM users_with_state s
                 WHERE s.id = l.user_id) AS u ON true
 WHERE i.enabled AND u.state = 'active';

-- 0003's node_summary, plus when the node was retired.
CREATE OR REPLACE VIEW node_summary AS
SELECT n.name AS node, n.last_commit_at, n.commit_seq AS commits,
       counts.counters, counts.user_counters,
       today.uplink AS today_uplink, today.downlink AS today_downlink,
       LEAST(today.uplink::numeric + today.downlink,
             9223372036854775807)::bigint AS today_total,
       n.retired_at
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

-- Reports ---------------------------------------------------------------

-- Sums each counter's hours first, then names them: one pass over the
-- range's history instead of a join per hourly row. Runs as the owner so
-- that boxmeter_readonly needs no table.
CREATE OR REPLACE FUNCTION top_users(from_time timestamptz,
                                     to_time timestamptz)
RETURNS TABLE (rank bigint, name text, uplink bigint, downlink bigint,
               total bigint)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
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
    FROM (SELECT c.user_name AS name,
                 LEAST(sum(s.uplink), 9223372036854775807)::bigint AS uplink,
                 LEAST(sum(s.downlink), 9223372036854775807)::bigint
                   AS downlink,
                 LEAST(sum(s.uplink) + sum(s.downlink),
                       9223372036854775807)::bigint AS total
            FROM (SELECT h.counter_id, sum(h.uplink) AS uplink,
                         sum(h.downlink) AS downlink
                    FROM counter_hourly h
                   WHERE h.hour >= from_time AND h.hour < to_time
                   GROUP BY h.counter_id) AS s
            JOIN boxmeter_user_counters c ON c.id = s.counter_id
           GROUP BY c.user_name) AS t
   ORDER BY t.total DESC, t.name;
END
$top_users$;

-- user_daily for the days first_day to last_day (both included), read by
-- their range of hours: `user_daily WHERE day = current_date` has to sum
-- every hour of the history first, this reads one day's. Days are the
-- session's, as in user_daily.
CREATE FUNCTION user_daily_between(first_day date, last_day date)
RETURNS TABLE (name text, day date, uplink bigint, downlink bigint,
               total bigint)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $daily$
BEGIN
  IF first_day IS NULL OR last_day IS NULL THEN
    RAISE EXCEPTION 'user_daily_between: first_day and last_day must not be '
                    'NULL (got % and %)', coalesce(first_day::text, 'NULL'),
                    coalesce(last_day::text, 'NULL')
      USING ERRCODE = 'null_value_not_allowed',
            HINT = 'e.g. user_daily_between(current_date - 6, current_date)';
  END IF;
  IF first_day > last_day THEN
    RAISE EXCEPTION 'user_daily_between: first_day % is after last_day %',
                    first_day, last_day
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'both days are included; swap them?';
  END IF;
  RETURN QUERY
  SELECT h.name, h.hour::date,
         LEAST(sum(h.uplink), 9223372036854775807)::bigint,
         LEAST(sum(h.downlink), 9223372036854775807)::bigint,
         LEAST(sum(h.uplink) + sum(h.downlink), 9223372036854775807)::bigint
    FROM user_node_hourly h
   WHERE h.hour >= first_day::timestamptz
     AND h.hour < (last_day + 1)::timestamptz
   GROUP BY h.name, h.hour::date;
END
$daily$;

-- users_fingerprint (0002) reads node_inbound_users above, so it is now in
-- proportion to the node's users too; its digest is of the same rows.

-- The operator's functions, again: values quoted as literals in every
-- message and hint, names normalized, old names followed. -----------------

CREATE OR REPLACE FUNCTION boxmeter_lock_user(what text, user_name text)
RETURNS users
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $lock$
DECLARE
  name_nfc text := boxmeter_user_name(what, user_name);
  locked users;
BEGIN
  SELECT * INTO locked FROM users u WHERE u.name = name_nfc FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION '%: there is no user named %', what,
                    quote_literal(name_nfc)
      USING ERRCODE = 'no_data_found',
            HINT = 'list the users with: SELECT name FROM users ORDER BY name';
  END IF;
  RETURN locked;
END
$lock$;

CREATE OR REPLACE FUNCTION add_user(user_name text,
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
  name_nfc text := boxmeter_user_name('add_user', user_name);
  added users;
BEGIN
  IF quota_bytes < 0 THEN
    RAISE EXCEPTION 'add_user: quota_bytes % for user % is negative',
                    quota_bytes, quote_literal(name_nfc)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'pass bytes, e.g. pg_size_bytes(''50 GB''), or NULL for '
                   'no quota';
  END IF;
  IF password = '' THEN
    RAISE EXCEPTION 'add_user: the password of user % is empty',
                    quote_literal(name_nfc)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'pass NULL (or leave it out) to have one generated';
  END IF;
  IF EXISTS (SELECT 1 FROM users u WHERE u.name = name_nfc) THEN
    RAISE EXCEPTION 'add_user: user % already exists', quote_literal(name_nfc)
      USING ERRCODE = 'unique_violation',
            HINT = 'choose another name, or change that user with '
                   'set_quota, set_expiry, enable_user or rename_user';
  END IF;
  -- usage_offset: set by the users_rules trigger, as for any INSERT.
  INSERT INTO users AS u (name, quota_bytes, expires_at, uuid, password,
                          flow, note, period_start)
  VALUES (name_nfc, quota_bytes, expires_at,
          coalesce(uuid, gen_random_uuid()),
          coalesce(password, boxmeter_random_password()), flow, note, now())
  RETURNING u.* INTO added;
  RETURN added;
END
$add_user$;

-- The inbound (node, tag), or an error naming both.
CREATE FUNCTION boxmeter_inbound_id(what text, node text, tag text,
                                    user_name text)
RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $inbound$
#variable_conflict use_variable
DECLARE
  found_id bigint;
BEGIN
  SELECT i.id INTO found_id FROM inbounds i
   WHERE i.node = node AND i.tag = tag;
  IF NOT FOUND THEN
    RAISE EXCEPTION '%: node % has no inbound tagged %', what,
                    quote_nullable(node), quote_nullable(tag)
      USING ERRCODE = 'no_data_found',
            HINT = format('list the inbounds with: SELECT i.node, i.tag FROM '
                          'inbounds i%s ORDER BY i.node, i.tag',
                          CASE WHEN what = 'unlink_user' THEN format(
                            ' JOIN inbound_users l ON l.inbound_id = i.id '
                            'JOIN users u ON u.id = l.user_id WHERE u.name '
                            '= %L', user_name) ELSE '' END);
  END IF;
  RETURN found_id;
END
$inbound$;

CREATE OR REPLACE FUNCTION link_user(user_name text, node text, tag text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $link$
#variable_conflict use_variable
DECLARE
  the_user users := boxmeter_lock_user('link_user', user_name);
  inbound_id bigint :=
    boxmeter_inbound_id('link_user', node, tag, the_user.name);
BEGIN
  INSERT INTO inbound_users (inbound_id, user_id)
  VALUES (inbound_id, the_user.id)
  ON CONFLICT DO NOTHING;
  RETURN FOUND;
END
$link$;

CREATE OR REPLACE FUNCTION unlink_user(user_name text, node text, tag text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $unlink$
#variable_conflict use_variable
DECLARE
  the_user users := boxmeter_lock_user('unlink_user', user_name);
  inbound_id bigint :=
    boxmeter_inbound_id('unlink_user', node, tag, the_user.name);
BEGIN
  DELETE FROM inbound_users l
   WHERE l.inbound_id = inbound_id AND l.user_id = the_user.id;
  RETURN FOUND;
END
$unlink$;

CREATE OR REPLACE FUNCTION set_quota(user_name text, quota_bytes bigint)
RETURNS user_quota_status
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $set_quota$
#variable_conflict use_variable
DECLARE
  the_user users := boxmeter_lock_user('set_quota', user_name);
BEGIN
  IF quota_bytes IS NULL THEN
    RAISE EXCEPTION 'set_quota: quota_bytes for user % is NULL',
                    quote_literal(the_user.name)
      USING ERRCODE = 'null_value_not_allowed',
            HINT = format('to remove the quota call clear_quota(%L)',
                          the_user.name);
  END IF;
  IF quota_bytes < 0 THEN
    RAISE EXCEPTION 'set_quota: quota_bytes % for user % is negative',
                    quota_bytes, quote_literal(the_user.name)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'pass bytes, e.g. pg_size_bytes(''50 GB'')';
  END IF;
  UPDATE users u SET quota_bytes = set_quota.quota_bytes
   WHERE u.id = the_user.id;
  RETURN boxmeter_status(the_user.id);
END
$set_quota$;

CREATE OR REPLACE FUNCTION set_expiry(user_name text, expires_at timestamptz)
RETURNS user_quota_status
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $set_expiry$
#variable_conflict use_variable
DECLARE
  the_user users := boxmeter_lock_user('set_expiry', user_name);
BEGIN
  IF expires_at IS NULL THEN
    RAISE EXCEPTION 'set_expiry: expires_at for user % is NULL',
                    quote_literal(the_user.name)
      USING ERRCODE = 'null_value_not_allowed',
            HINT = format('to remove the expiry call clear_expiry(%L)',
                          the_user.name);
  END IF;
  -- The users_rules trigger has the rule (a finite time); this says it
  -- with the function's name.
  IF NOT isfinite(expires_at) THEN
    RAISE EXCEPTION 'set_expiry: expires_at % of user % is not a time',
                    quote_literal(expires_at), quote_literal(the_user.name)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = format('for no expiry call clear_expiry(%L)',
                          the_user.name);
  END IF;
  UPDATE users u SET expires_at = set_expiry.expires_at
   WHERE u.id = the_user.id;
  RETURN boxmeter_status(the_user.id);
END
$set_expiry$;

CREATE OR REPLACE FUNCTION reset_usage(user_name text)
RETURNS user_quota_status
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $reset$
DECLARE
  the_user users := boxmeter_lock_user('reset_usage', user_name);
BEGIN
  UPDATE users u
     SET usage_offset = boxmeter_user_lifetime(u.id, u.name),
         period_start = now()
   WHERE u.id = the_user.id;
  RETURN boxmeter_status(the_user.id);
END
$reset$;

-- Every user's lifetime in one pass over the counters, instead of one
-- function call (and plan) per user.
CREATE OR REPLACE FUNCTION reset_all_usage()
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $reset_all$
DECLARE
  changed bigint;
BEGIN
  WITH names AS (
    SELECT u.id AS user_id, u.name FROM users u
    UNION ALL
    SELECT r.user_id, r.old_name FROM renamed_users r
  ), lifetimes AS (
    SELECT x.id,
           LEAST(coalesce(sum(c.uplink::numeric + c.downlink), 0),
                 9223372036854775807)::bigint AS lifetime
      FROM users x
      LEFT JOIN names n ON n.user_id = x.id
      LEFT JOIN counters c ON c.kind = 'user' AND c.name = n.name
     GROUP BY x.id)
  UPDATE users u SET usage_offset = l.lifetime, period_start = now()
    FROM lifetimes l
   WHERE u.id = l.id;
  GET DIAGNOSTICS changed = ROW_COUNT;
  RETURN changed;
END
$reset_all$;

-- 0003's rename_user, which also records the old name (renamed_users), so
-- that what sing-box still counts under it, until it has the new config,
-- counts for the user. Runs as the owner: it moves counters, which
-- boxmeter_operator may only read.
CREATE OR REPLACE FUNCTION rename_user(user_name text, new_name text)
RETURNS user_quota_status
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $rename$
#variable_conflict use_variable
DECLARE
  the_user users := boxmeter_lock_user('rename_user', user_name);
  new_nfc text := boxmeter_user_name('rename_user', new_name);
  old_ids bigint[];
  merged bigint := 0;
BEGIN
  IF new_nfc = the_user.name THEN
    RAISE EXCEPTION 'rename_user: user % already has that name',
                    quote_literal(the_user.name)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF EXISTS (SELECT 1 FROM users u WHERE u.name = new_nfc) THEN
    RAISE EXCEPTION 'rename_user: cannot rename user % to %: a user with '
                    'that name exists', quote_literal(the_user.name),
                    quote_literal(new_nfc)
      USING ERRCODE = 'unique_violation',
            HINT = 'choose another name, or delete_user that user first';
  END IF;
  -- Lock the counters that move, so that a collector's commit either lands
  -- before (and moves with them) or after (and stays under the old name,
  -- which now counts for the user).
  SELECT array_agg(c.id ORDER BY c.id) INTO old_ids
    FROM (SELECT c.id FROM counters c
           WHERE c.kind = 'user' AND c.name = the_user.name
           ORDER BY c.id
             FOR UPDATE) AS c;
  -- Counters under new_name that are not the user's (a deleted user's
  -- history) join the lifetime, not the period. An old name of the user's
  -- own counts already.
  IF NOT EXISTS (SELECT 1 FROM renamed_users r
                  WHERE r.old_name = new_nfc AND r.user_id = the_user.id) THEN
    SELECT LEAST(coalesce(sum(c.uplink::numeric + c.downlink), 0),
                 9223372036854775807)::bigint INTO merged
      FROM counters c WHERE c.kind = 'user' AND c.name = new_nfc;
  END IF;
  INSERT INTO counters (node, kind, name, instance_start, first_seen,
                        last_seen)
  SELECT o.node, 'user', new_nfc, timestamptz 'epoch', o.first_seen,
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
     AND n.node = o.node AND n.kind = 'user' AND n.name = new_nfc;
  INSERT INTO counter_hourly AS h (counter_id, hour, uplink, downlink)
  SELECT n.id, oh.hour, oh.uplink, oh.downlink
    FROM counter_hourly oh
    JOIN counters o ON o.id = oh.counter_id
    JOIN counters n ON n.node = o.node AND n.kind = 'user'
                   AND n.name = new_nfc
   WHERE o.id = ANY (old_ids)
  ON CONFLICT (counter_id, hour) DO UPDATE SET
    uplink = LEAST(h.uplink::numeric + excluded.uplink,
                   9223372036854775807)::bigint,
    downlink = LEAST(h.downlink::numeric + excluded.downlink,
                     9223372036854775807)::bigint;
  DELETE FROM counter_hourly oh WHERE oh.counter_id = ANY (old_ids);
  UPDATE counters o SET uplink = 0, downlink = 0 WHERE o.id = ANY (old_ids);
  -- Back to an old name of the user's (another user's is refused by the
  -- users_rules trigger).
  DELETE FROM renamed_users r
   WHERE r.old_name = new_nfc AND r.user_id = the_user.id;
  INSERT INTO renamed_users (old_name, user_id)
  VALUES (the_user.name, the_user.id)
  ON CONFLICT (old_name) DO UPDATE SET user_id = excluded.user_id,
                                       renamed_at = excluded.renamed_at;
  UPDATE users u
     SET name = new_nfc,
         usage_offset = LEAST(u.usage_offset::numeric + merged,
                              9223372036854775807)::bigint
   WHERE u.id = the_user.id;
  RETURN boxmeter_status(the_user.id);
END
$rename$;

-- 0003's delete_user; keep_history false now also deletes the counters of
-- the user's old names. Runs as the owner, as rename_user.
CREATE OR REPLACE FUNCTION delete_user(user_name text, keep_history boolean)
RETURNS text
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $delete$
#variable_conflict use_variable
DECLARE
  the_user users := boxmeter_lock_user('delete_user', user_name);
  names text[];
  nodes bigint;  -- a user has one counter per node and name
BEGIN
  IF keep_history IS NULL THEN
    RAISE EXCEPTION 'delete_user: keep_history for user % is NULL',
                    quote_literal(the_user.name)
      USING ERRCODE = 'null_value_not_allowed',
            HINT = 'say what happens to the traffic history: true keeps it, '
                   'false deletes it';
  END IF;
  names := the_user.name || ARRAY(SELECT r.old_name FROM renamed_users r
                                    WHERE r.user_id = the_user.id);
  DELETE FROM users u WHERE u.id = the_user.id;  -- and renamed_users rows
  IF keep_history THEN
    SELECT count(DISTINCT c.node) INTO nodes FROM counters c
     WHERE c.kind = 'user' AND c.name = ANY (names);
    RETURN format('deleted user %s; kept their traffic history on %s node%s',
                  quote_literal(the_user.name), nodes,
                  CASE WHEN nodes = 1 THEN '' ELSE 's' END);
  END IF;
  WITH gone AS (
    DELETE FROM counters c WHERE c.kind = 'user' AND c.name = ANY (names)
    RETURNING c.node)
  SELECT count(DISTINCT node) INTO nodes FROM gone;
  RETURN format('deleted user %s and their traffic history on %s node%s',
                quote_literal(the_user.name), nodes,
                CASE WHEN nodes = 1 THEN '' ELSE 's' END);
END
$delete$;

-- Roles -----------------------------------------------------------------

-- boxmeter_operator: the daily work on users, inbounds, links and quotas,
-- through the tables and the functions, and reading all traffic. No
-- right on nodes, counters or history beyond reading, no DDL: the functions
-- that move traffic (rename_user, delete_user) run as the owner.
DO $roles$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'boxmeter_operator')
  THEN
    BEGIN
      CREATE ROLE boxmeter_operator NOLOGIN;
    EXCEPTION
      WHEN duplicate_object OR unique_violation THEN
        NULL;  -- created meanwhile by a migration of another database
      WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'cannot create role boxmeter_operator: % has no '
                        'CREATEROLE', current_user
          USING ERRCODE = 'insufficient_privilege',
                HINT = 'run the migration as a superuser, or have one run: '
                       'CREATE ROLE boxmeter_operator NOLOGIN;';
    END;
  END IF;
END
$roles$;

DO $access$
BEGIN
  IF has_database_privilege(current_database(), 'CONNECT WITH GRANT OPTION')
  THEN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO boxmeter_operator',
                   current_database());
  END IF;
  IF has_schema_privilege(current_schema(), 'USAGE WITH GRANT OPTION') THEN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO boxmeter_operator',
                   current_schema());
  END IF;
END
$access$;

REVOKE EXECUTE ON FUNCTION
  grant_node(text, text), revoke_node(text, text), retire_node(text),
  user_daily_between(date, date), boxmeter_inbound_id(text, text, text, text),
  boxmeter_users_rules()
  FROM PUBLIC;

GRANT SELECT, INSERT, UPDATE, DELETE ON users, inbounds, inbound_users
  TO boxmeter_operator;
GRANT USAGE ON SEQUENCE users_id_seq, inbounds_id_seq TO boxmeter_operator;
GRANT SELECT ON nodes, counters, counter_hourly, renamed_users, node_grants,
                history_retention, schema_migrations,
                user_traffic, inbound_traffic, outbound_traffic,
                user_node_hourly, user_hourly, user_node_daily, user_daily,
                users_with_state, user_quota_status, eligible_users,
                node_inbound_users, node_summary, unknown_counters
  TO boxmeter_operator;
GRANT EXECUTE ON FUNCTION
  add_user(text, bigint, timestamptz, uuid, text, text, text),
  link_user(text, text, text), unlink_user(text, text, text),
  set_quota(text, bigint), clear_quota(text),
  set_expiry(text, timestamptz), clear_expiry(text),
  enable_user(text), disable_user(text),
  reset_usage(text), reset_all_usage(),
  rename_user(text, text), delete_user(text, boolean),
  boxmeter_lock_user(text, text), boxmeter_random_password(),
  boxmeter_inbound_id(text, text, text, text),
  top_users(timestamptz, timestamptz), user_daily_between(date, date),
  users_fingerprint(text)
  TO boxmeter_operator;

-- Reporting: the new per-day function, like top_users.
GRANT EXECUTE ON FUNCTION user_daily_between(date, date)
  TO boxmeter_readonly;

-- The collector: reads the grants and the retention its policies consult.
-- It may update every column of nodes and counters but their keys (and a
-- node's retirement): the columns of 0005 and 0006 too, so the statements
-- that write them work for the granted node. The policies above keep it on
-- that node.
GRANT SELECT ON node_grants, history_retention TO boxmeter_collector;
DO $collector$
DECLARE
  columns text;
BEGIN
  SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
    INTO columns
    FROM pg_attribute a
   WHERE a.attrelid = 'nodes'::regclass AND a.attnum > 0
     AND NOT a.attisdropped
     AND a.attname NOT IN ('name', 'created_at', 'retired_at');
  EXECUTE format('GRANT UPDATE (%s) ON nodes TO boxmeter_collector', columns);
  SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
    INTO columns
    FROM pg_attribute a
   WHERE a.attrelid = 'counters'::regclass AND a.attnum > 0
     AND NOT a.attisdropped
     AND a.attname NOT IN ('id', 'node', 'kind', 'name', 'first_seen');
  EXECUTE format('GRANT UPDATE (%s) ON counters TO boxmeter_collector',
                 columns);
END
$collector$;

-- The generator: the old names are part of what it may read about users.
GRANT SELECT ON renamed_users TO boxmeter_generator;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0008_hardening.sql')
ON CONFLICT (name) DO NOTHING;
