-- 0021: renames keep quota usage right.
--
-- rename_user onto a name whose history was kept charges nothing.
-- delete_user(name, keep_history => true) leaves the name's counters; a
-- user renamed onto that name takes them into their lifetime, and 0008's
-- rename_user moved the usage offset by their raw bytes so that the period
-- would not count them. It missed two things, both reproduced by
-- SqlQuotaTest.RenameOntoKeptHistoryIsLikeAddingTheUser:
--   * node multipliers (0011): usage counts that history weighted, the
--     offset took it raw, so a rename onto 1,000 bytes kept on a node that
--     counts double charged the user 1,000 bytes they never used (0011's
--     "known limit");
--   * first use (0010): created_lifetime stayed, so the history counted as
--     the user's first traffic: an on-hold user's expiry clock started and
--     first_seen was set, without a byte of theirs.
-- add_user under such a name sets both (users_rules_weighted_offset and
-- users_rules_on_hold); rename_user now does the same. The body is 0008's
-- with the history locked, summed raw and weighted, and both columns moved,
-- and the rename announced to the rules below for as long as it runs.
--
-- A name changes only through rename_user. Operators may UPDATE users, and
-- a plain UPDATE of the name left the user's counters under the old name:
-- their usage and lifetime fell to 0, a way around the quota
-- (SqlHardeningTest.NamesChangeOnlyThroughRenameUser). The rule
-- users_rules_rename refuses it and names the call to make instead.
-- rename_user sets boxmeter.renaming_user to the user's id while it moves
-- the counters (transaction-local), which is also how 0023's usage events
-- know that those moves are no traffic.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

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
  merged_raw numeric := 0;
  merged_weighted numeric := 0;
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
  -- history) join the lifetime, not the period, nor the user's first use:
  -- the offset takes them weighted, as the usage counts them, and
  -- created_lifetime raw, as add_user does for a name with history. An old
  -- name of the user's own counts already.
  IF NOT EXISTS (SELECT 1 FROM renamed_users r
                  WHERE r.old_name = new_nfc AND r.user_id = the_user.id) THEN
    -- Locked, as the user's own above: traffic a collector still commits
    -- under the name lands before (history) or after the rename (theirs).
    SELECT coalesce(sum(c.uplink::numeric + c.downlink), 0),
           coalesce(sum((c.uplink::numeric + c.downlink)
                        * coalesce(m.multiplier, 1)), 0)
      INTO merged_raw, merged_weighted
      FROM (SELECT h.node, h.uplink, h.downlink FROM counters h
             WHERE h.kind = 'user' AND h.name = new_nfc
             ORDER BY h.id
               FOR UPDATE) AS c
      LEFT JOIN node_multipliers m ON m.node = c.node;
  END IF;
  -- What follows moves counters and renames: no traffic, no rule broken.
  PERFORM set_config('boxmeter.renaming_user', the_user.id::text, true);
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
         usage_offset = LEAST(u.usage_offset + floor(merged_weighted),
                              9223372036854775807)::bigint,
         created_lifetime = LEAST(u.created_lifetime + merged_raw,
                                  9223372036854775807)::bigint
   WHERE u.id = the_user.id;
  PERFORM set_config('boxmeter.renaming_user', '', true);
  RETURN boxmeter_status(the_user.id);
END
$rename$;

-- Refuses a change of a user's name outside rename_user (above), which
-- moves their traffic with it. Runs after users_rules, so a name that only
-- changes its Unicode form is no rename.
CREATE FUNCTION boxmeter_users_rename_rule()
RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $rename_rule$
BEGIN
  IF NEW.name IS DISTINCT FROM OLD.name
     AND coalesce(current_setting('boxmeter.renaming_user', true), '')
         <> OLD.id::text THEN
    RAISE EXCEPTION 'UPDATE on users: user % cannot be renamed to % by an '
                    'UPDATE: their traffic and quota usage would stay '
                    'under the old name', quote_literal(OLD.name),
                    quote_literal(NEW.name)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = format('rename_user moves them: SELECT rename_user(%L, '
                          '%L)', OLD.name, NEW.name);
  END IF;
  RETURN NEW;
END
$rename_rule$;

CREATE TRIGGER users_rules_rename
  BEFORE UPDATE OF name ON users
  FOR EACH ROW EXECUTE FUNCTION boxmeter_users_rename_rule();

REVOKE EXECUTE ON FUNCTION boxmeter_users_rename_rule() FROM PUBLIC;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0021_renames.sql')
ON CONFLICT (name) DO NOTHING;
