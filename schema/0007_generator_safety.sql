-- 0007: no two users of one inbound with the credential sing-box finds
-- users by. sing-box (v1.13) keeps its users of an inbound in a map keyed by
-- that credential: for trojan two users with one password make sing-box
-- refuse to start ("user already exists"); for the others the last one
-- wins, so one user's traffic would be counted under another's name.
-- boxmeter-gen refuses such rows too (a data error naming both users); this
-- stops them where they are made, naming both users and the inbound.
--
-- Rows that collided before this migration are left as they are (the
-- generator reports them); any further link or credential change of an
-- inbound that has a collision is checked.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

-- The column of the credential sing-box finds a user of an inbound of
-- `inbound_type` by, or NULL when it finds them by name (socks, http, mixed,
-- naive: sing common/auth/auth.go; names are unique already):
--   vless, vmess, tuic: uuid (protocol/vless, protocol/vmess, protocol/tuic);
--   trojan, shadowsocks, hysteria, hysteria2, anytls: password.
CREATE FUNCTION boxmeter_credential_column(inbound_type text)
RETURNS text LANGUAGE sql IMMUTABLE AS $column$
  SELECT CASE
           WHEN inbound_type IN ('vless', 'vmess', 'tuic') THEN 'uuid'
           WHEN inbound_type IN ('trojan', 'shadowsocks', 'hysteria',
                                 'hysteria2', 'anytls') THEN 'password'
         END
$column$;

-- Each check looks up the users with one credential: without these, linking
-- n users at once would compare every pair. Hash indexes, since passwords
-- may be longer than a btree entry allows and only equality is asked.
CREATE INDEX users_uuid ON users USING hash (uuid);
CREATE INDEX users_password ON users USING hash (password);

-- Raises unique_violation when a user linked to inbound `p_inbound_id`
-- (`p_user_id`, or any when NULL) shares the credential with another user
-- linked to it. The inbound's row is locked first, so two transactions
-- linking colliding users at once are checked one after the other. Called
-- by the triggers below, which run as the schema's owner (SECURITY
-- DEFINER): whoever may link users may be unable to lock inbounds, and
-- nobody else needs to call it.
CREATE FUNCTION boxmeter_check_inbound_credentials(p_inbound_id bigint,
                                                   p_user_id bigint)
RETURNS void LANGUAGE plpgsql SET search_path FROM CURRENT AS $check$
DECLARE
  inbound record;
  credential text;
  me record;
  other text;
BEGIN
  SELECT i.id, i.node, i.tag, i.type INTO inbound
    FROM inbounds i WHERE i.id = p_inbound_id FOR NO KEY UPDATE;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  credential := boxmeter_credential_column(inbound.type);
  IF credential IS NULL THEN
    RETURN;
  END IF;
  FOR me IN SELECT u.id, u.name, u.uuid, u.password
              FROM users u JOIN inbound_users l ON l.user_id = u.id
             WHERE l.inbound_id = p_inbound_id
               AND (p_user_id IS NULL OR u.id = p_user_id)
             ORDER BY u.name LOOP
    IF credential = 'uuid' THEN
      SELECT o.name INTO other
        FROM users o JOIN inbound_users l ON l.user_id = o.id
       WHERE o.uuid = me.uuid AND o.id <> me.id
         AND l.inbound_id = p_inbound_id
       ORDER BY o.name LIMIT 1;
    ELSE
      SELECT o.name INTO other
        FROM users o JOIN inbound_users l ON l.user_id = o.id
       WHERE o.password = me.password AND o.id <> me.id
         AND l.inbound_id = p_inbound_id
       ORDER BY o.name LIMIT 1;
    END IF;
    IF other IS NOT NULL THEN
      -- The user already there first; both by name when none is new.
      RAISE EXCEPTION
        'users % and % of inbound % (node %, type %) have the same %',
        quote_literal(CASE WHEN p_user_id IS NULL
                           THEN least(other, me.name) ELSE other END),
        quote_literal(CASE WHEN p_user_id IS NULL
                           THEN greatest(other, me.name) ELSE me.name END),
        quote_literal(inbound.tag), quote_literal(inbound.node), inbound.type,
        credential
        USING ERRCODE = 'unique_violation',
              HINT = format('sing-box finds %s users by %s, so one would be '
                            'counted under the other''s name (or, for '
                            'trojan, sing-box would not start); give %s its '
                            'own %s, or do not link both to this inbound',
                            inbound.type, credential,
                            quote_literal(me.name), credential);
    END IF;
  END LOOP;
END
$check$;

-- A link made or moved.
CREATE FUNCTION boxmeter_inbound_users_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT
AS $trigger$
BEGIN
  PERFORM boxmeter_check_inbound_credentials(NEW.inbound_id, NEW.user_id);
  RETURN NULL;
END
$trigger$;

CREATE CONSTRAINT TRIGGER inbound_users_unique_credentials
  AFTER INSERT OR UPDATE ON inbound_users
  DEFERRABLE INITIALLY IMMEDIATE
  FOR EACH ROW EXECUTE FUNCTION boxmeter_inbound_users_check();

-- A linked user's uuid or password changed: every inbound of theirs.
CREATE FUNCTION boxmeter_users_credential_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT
AS $trigger$
DECLARE
  link record;
BEGIN
  FOR link IN SELECT inbound_id FROM inbound_users
               WHERE user_id = NEW.id ORDER BY inbound_id LOOP
    PERFORM boxmeter_check_inbound_credentials(link.inbound_id, NEW.id);
  END LOOP;
  RETURN NULL;
END
$trigger$;

CREATE CONSTRAINT TRIGGER users_unique_credentials
  AFTER UPDATE OF uuid, password ON users
  DEFERRABLE INITIALLY IMMEDIATE
  FOR EACH ROW
  WHEN (OLD.uuid IS DISTINCT FROM NEW.uuid
        OR OLD.password IS DISTINCT FROM NEW.password)
  EXECUTE FUNCTION boxmeter_users_credential_check();

-- An inbound's type changed (say socks to trojan): its users are now found
-- by another credential.
CREATE FUNCTION boxmeter_inbounds_type_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT
AS $trigger$
BEGIN
  PERFORM boxmeter_check_inbound_credentials(NEW.id, NULL);
  RETURN NULL;
END
$trigger$;

CREATE CONSTRAINT TRIGGER inbounds_unique_credentials
  AFTER UPDATE OF type ON inbounds
  DEFERRABLE INITIALLY IMMEDIATE
  FOR EACH ROW WHEN (OLD.type IS DISTINCT FROM NEW.type)
  EXECUTE FUNCTION boxmeter_inbounds_type_check();

REVOKE EXECUTE ON FUNCTION
  boxmeter_check_inbound_credentials(bigint, bigint)
  FROM PUBLIC;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0007_generator_safety.sql')
ON CONFLICT (name) DO NOTHING;
