-- 0020: the operator functions that change many users take them in id
-- order first, as every commit does.
--
-- A commit's guard runs boxmeter_roll_periods, which locks the users whose
-- period has ended in id order. reset_all_usage, set_node_multiplier and a
-- new database-wide time zone (set_default_time_zone's trigger) changed
-- many users in whatever order their plan produced: a hash join's, a
-- scan's. When a period ended while one of them ran (its now() is older
-- than the commit's), the commit could hold the first user due and wait
-- for one the call held, while the call waited for that first user, and
-- PostgreSQL aborted one of the two ("deadlock detected").
-- OperatorLockOrderTest reproduces it for each. Each now locks every user
-- in id order before anything else, so it waits for a commit's users
-- holding none above them. FOR NO KEY UPDATE: they change no key, so
-- foreign key checks (a new inbound link) do not wait for them.
--
-- The bodies are 0011's and 0009's with that one statement added.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

CREATE OR REPLACE FUNCTION reset_all_usage()
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $reset_all$
DECLARE
  changed bigint;
BEGIN
  -- Every user in id order first, as commits take them (0020).
  PERFORM 1 FROM users u ORDER BY u.id FOR NO KEY UPDATE;
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

CREATE OR REPLACE FUNCTION set_node_multiplier(node text, multiplier numeric)
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
  -- Every user in id order first, as commits take them (0020).
  PERFORM 1 FROM users u ORDER BY u.id FOR NO KEY UPDATE;
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

CREATE OR REPLACE FUNCTION boxmeter_settings_time_zone_moved()
RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $moved$
BEGIN
  -- Every user in id order first, as commits take them (0020).
  PERFORM 1 FROM users u ORDER BY u.id FOR NO KEY UPDATE;
  PERFORM boxmeter_roll_periods(now());
  UPDATE users u
     SET period_end = (boxmeter_user_period(u, now())).period_end
   WHERE u.time_zone IS NULL AND u.reset_strategy <> 'none';
  RETURN NULL;
END
$moved$;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0020_operator_lock_order.sql')
ON CONFLICT (name) DO NOTHING;
