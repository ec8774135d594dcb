-- 0002: what boxmeter-gen reads, defined once, so that the generator and the
-- collector's change detection (hooks.on_users_changed) always agree on
-- which users a node's sing-box should accept.

-- The users allowed to connect now: enabled, not expired, and under their
-- quota. Usage is the user's total traffic over all nodes (user_traffic);
-- a user whose usage has reached quota_bytes is over quota, so a quota of 0
-- admits no traffic at all. The one place this rule lives.
CREATE VIEW eligible_users AS
SELECT u.id, u.name, u.uuid, u.password, u.flow, u.alter_id, u.quota_bytes,
       u.expires_at
  FROM users u
 WHERE u.enabled
   AND (u.expires_at IS NULL OR u.expires_at > now())
   AND (u.quota_bytes IS NULL
        -- Per user, so that only users with a quota are looked up, each
        -- through the counters_user_name index.
        OR coalesce((SELECT t.total FROM user_traffic t WHERE t.name = u.name),
                    0) < u.quota_bytes);

-- Per node: each enabled inbound's eligible users with their credentials,
-- exactly the rows boxmeter-gen turns into the inbounds' users.
CREATE VIEW node_inbound_users AS
SELECT i.node, i.tag AS inbound_tag, u.name AS user_name, u.uuid, u.password,
       u.flow, u.alter_id
  FROM inbounds i
  JOIN inbound_users l ON l.inbound_id = i.id
  JOIN eligible_users u ON u.id = l.user_id
 WHERE i.enabled;

-- A digest of everything boxmeter-gen reads from the database for `node`:
-- its enabled inbounds and node_inbound_users. It changes exactly when the
-- generated config would (for the same template and config file): a user
-- crossing its quota or expiry, an operator enabling, disabling, relinking
-- or changing credentials, an inbound added, changed or disabled. The
-- collector computes it after every commit and on polls without one, and
-- runs hooks.on_users_changed when it moves.
--
-- Each row is hashed on its own and the hashes are summed, so no sort is
-- needed; two 64-bit hashes per row make an accidental match after a change
-- practically impossible. Its cost is one eligibility check per user linked
-- to the node (about 0.3 s for 50,000 users).
--
-- The query is planned for the node's actual name each time: a generic plan
-- (what a cached plan with a parameter becomes) misjudges how many users are
-- eligible and checks every user of every node first. JIT is off for the
-- same misjudgement: compiling would cost more than running.
CREATE FUNCTION users_fingerprint(p_node text) RETURNS text
LANGUAGE plpgsql STABLE SET jit = off AS $fingerprint$
DECLARE
  digest text;
BEGIN
  EXECUTE format($query$
    SELECT md5(concat_ws(':', i.n, i.h0, i.h1, u.n, u.h0, u.h1))
      FROM (SELECT count(*) AS n,
                   coalesce(sum(hashtextextended(r::text, 0)), 0) AS h0,
                   coalesce(sum(hashtextextended(r::text, 1)), 0) AS h1
              FROM (SELECT ROW(tag, type, listen, listen_port, options) AS r
                      FROM inbounds
                     WHERE node = %1$L AND enabled) AS rows) AS i,
           (SELECT count(*) AS n,
                   coalesce(sum(hashtextextended(r::text, 0)), 0) AS h0,
                   coalesce(sum(hashtextextended(r::text, 1)), 0) AS h1
              FROM (SELECT ROW(inbound_tag, user_name, uuid, password, flow,
                               alter_id) AS r
                      FROM node_inbound_users
                     WHERE node = %1$L) AS rows) AS u
  $query$, p_node) INTO digest;
  RETURN digest;
END
$fingerprint$;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0002_generator.sql')
ON CONFLICT (name) DO NOTHING;
