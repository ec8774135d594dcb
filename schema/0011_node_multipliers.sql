-- 0011: node multipliers (issue 13, item 4).
--
-- A node's multiplier (node_multipliers; 1 when it has none) weighs the
-- traffic counted on it in quota usage only: 0.5 on a cheap node, 2.0 on
-- an expensive one, 0 for a free one. Lifetime totals, counters, the
-- hourly history and every traffic view stay in real bytes, so billing and
-- metering stay exact.
--
-- How: quota usage is measured against a user's weighted lifetime (each
-- node's traffic times that node's multiplier now) instead of the raw one;
-- usage_offset holds the weighted lifetime at the period's start. A change
-- of a node's multiplier moves the offset of every user with traffic there
-- by (new - old) x that traffic, so what they used before the change keeps
-- the weight it had and only later traffic takes the new one. Weighted
-- bytes are rounded down to whole bytes; usage_offset may now be negative
-- (after a multiplier was lowered).
--
-- Known limit: rename_user onto a name whose earlier history was kept adds
-- that history to usage_offset unweighted (raw bytes).

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

ALTER TABLE users DROP CONSTRAINT users_usage_offset_check;
COMMENT ON COLUMN users.usage_offset IS
  'weighted lifetime traffic (bytes x node multipliers) when the current '
  'quota period started; negative after a multiplier was lowered';

CREATE TABLE node_multipliers (
  node text PRIMARY KEY CHECK (node <> ''),
  multiplier numeric NOT NULL CHECK (multiplier >= 0 AND multiplier <= 1000),
  set_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE node_multipliers IS
  'quota usage weight of each node''s traffic (set_node_multiplier); a node '
  'without a row weighs 1';

-- The weighted lifetime (0009 defined it as the raw one).
CREATE OR REPLACE FUNCTION boxmeter_user_usage_lifetime(user_id bigint,
                                                        user_name text)
RETURNS bigint
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $usage_lifetime$
SELECT LEAST(floor(coalesce(sum((c.uplink::numeric + c.downlink)
                                * coalesce(m.multiplier, 1)), 0)),
             9223372036854775807)::bigint
  FROM counters c
  LEFT JOIN node_multipliers m ON m.node = c.node
 WHERE c.kind = 'user'
   AND c.name = ANY (user_name || ARRAY(SELECT r.old_name
                                           FROM renamed_users r
                                          WHERE r.user_id = $1))
$usage_lifetime$;

-- A new user's period starts at their weighted lifetime (users_rules set
-- the raw one); fires after users_rules and users_rules_on_hold.
CREATE FUNCTION boxmeter_users_weighted_offset()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $weighted$
BEGIN
  NEW.usage_offset := boxmeter_user_usage_lifetime(NEW.id, NEW.name);
  RETURN NEW;
END
$weighted$;

CREATE TRIGGER users_rules_weighted_offset
  BEFORE INSERT ON users
  FOR EACH ROW EXECUTE FUNCTION boxmeter_users_weighted_offset();

-- The state rule (0010's) with weighted usage; the same columns.
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

-- 0009's reset_all_usage over weighted lifetimes.
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
           LEAST(floor(coalesce(sum((c.uplink::numeric + c.downlink)
                                    * coalesce(m.multiplier, 1)), 0)),
                 9223372036854775807)::bigint AS lifetime
      FROM users x
      LEFT JOIN names n ON n.user_id = x.id
      LEFT JOIN counters c ON c.kind = 'user' AND c.name = n.name
      LEFT JOIN node_multipliers m ON m.node = c.node
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

-- Sets node `node`'s multiplier (1: as if it had none). Usage counted so
-- far keeps its weight; traffic committed from now on takes the new one.
-- Runs as the owner: it moves every affected user's offset.
CREATE FUNCTION set_node_multiplier(node text, multiplier numeric)
RETURNS text
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $set_multiplier$
#variable_conflict use_variable
DECLARE
  node_name text := boxmeter_node_name('set_node_multiplier', node);
  old numeric;
  moved bigint;
BEGIN
  IF multiplier IS NULL OR multiplier < 0 OR multiplier > 1000 THEN
    RAISE EXCEPTION 'set_node_multiplier: multiplier % for node % is not '
                    'between 0 and 1000', coalesce(multiplier::text, 'NULL'),
                    quote_literal(node_name)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'e.g. 0.5 (half), 2 (double), 0 (free); 1 counts bytes '
                   'as they are';
  END IF;
  -- Serializes changes of one node's multiplier.
  INSERT INTO node_multipliers AS m (node, multiplier)
  VALUES (node_name, 1)
  ON CONFLICT ON CONSTRAINT node_multipliers_pkey DO NOTHING;
  SELECT m.multiplier INTO old FROM node_multipliers m
   WHERE m.node = node_name FOR UPDATE;
  -- Periods that ended are closed with the old weights first.
  PERFORM boxmeter_roll_periods(now());
  UPDATE users u
     SET usage_offset = u.usage_offset + floor((multiplier - old) * t.total)
    FROM (SELECT x.id, sum(c.uplink::numeric + c.downlink) AS total
            FROM users x
            JOIN boxmeter_user_counters c ON c.user_name = x.name
           WHERE c.node = node_name
           GROUP BY x.id) AS t
   WHERE u.id = t.id AND t.total > 0 AND multiplier <> old;
  GET DIAGNOSTICS moved = ROW_COUNT;
  UPDATE node_multipliers m SET multiplier = set_node_multiplier.multiplier,
                                set_at = now()
   WHERE m.node = node_name;
  RETURN format('node %s: quota usage counts its traffic x %s from now on '
                '(was x %s); the usage so far of %s user%s keeps its weight',
                quote_literal(node_name), multiplier, old, moved,
                CASE WHEN moved = 1 THEN '' ELSE 's' END);
END
$set_multiplier$;

REVOKE EXECUTE ON FUNCTION set_node_multiplier(text, numeric),
                           boxmeter_users_weighted_offset()
  FROM PUBLIC;
GRANT SELECT ON node_multipliers TO boxmeter_operator, boxmeter_readonly;
GRANT EXECUTE ON FUNCTION set_node_multiplier(text, numeric)
  TO boxmeter_operator;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0011_node_multipliers.sql')
ON CONFLICT (name) DO NOTHING;
