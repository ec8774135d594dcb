-- 0004: three group roles, so that each program connects with no more
-- rights than it needs. They are NOLOGIN: an operator creates a login role
-- per program and grants it one of them, e.g.
--
--   CREATE ROLE meter_edge1 LOGIN PASSWORD '...' IN ROLE boxmeter_collector;
--   CREATE ROLE gen_edge1 LOGIN PASSWORD '...' IN ROLE boxmeter_generator;
--   CREATE ROLE grafana LOGIN PASSWORD '...' IN ROLE boxmeter_readonly;
--
-- boxmeter_collector  boxmeter-collector: registers its node, reads and moves
--                     its counters and baselines, writes the hourly history
--                     and deletes history past history.retention. Reads the
--                     applied migrations, and the users' fingerprint
--                     (users_fingerprint, which runs with its owner's rights
--                     so that no credential is readable). Cannot read or
--                     change users, inbounds or their credentials.
-- boxmeter_generator  boxmeter-gen: reads users (with credentials),
--                     inbounds, their links and eligibility. Writes nothing.
-- boxmeter_readonly   dashboards and reports: the views and top_users only;
--                     no table, so no credential, and no writes.
--
-- Migrations are run by the owner of the schema (`boxmeter-collector
-- --migrate` connected as that role, or a superuser): they create tables
-- and grant on them. A collector connected as boxmeter_collector starts
-- normally once the database is migrated; when a migration is pending it
-- reports that --migrate must be run by the owner, and retries.
--
-- Roles belong to the whole PostgreSQL cluster, so this migration creates
-- them only if they do not exist yet (several boxmeter databases in one
-- cluster share them). Creating roles needs CREATEROLE (or a superuser);
-- an owner without it can have an administrator create the three roles
-- first (CREATE ROLE boxmeter_collector NOLOGIN; and so on), then migrate.
--
-- The management functions (add_user, set_quota, ...) run with the
-- caller's rights and are not granted to these roles: the owner calls them.
--
-- A later migration that adds a table, view or function grants it here too.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

DO $roles$
DECLARE
  role_name text;
BEGIN
  FOREACH role_name IN ARRAY ARRAY['boxmeter_collector', 'boxmeter_generator',
                                   'boxmeter_readonly'] LOOP
    CONTINUE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name);
    BEGIN
      EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
    EXCEPTION
      WHEN duplicate_object OR unique_violation THEN
        NULL;  -- created meanwhile by a migration of another database
      WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'cannot create role %: % has no CREATEROLE',
                        role_name, current_user
          USING ERRCODE = 'insufficient_privilege',
                HINT = 'run --migrate as a superuser, or have one run: '
                       'CREATE ROLE boxmeter_collector NOLOGIN; '
                       'CREATE ROLE boxmeter_generator NOLOGIN; '
                       'CREATE ROLE boxmeter_readonly NOLOGIN;';
    END;
  END LOOP;
END
$roles$;

-- CONNECT, TEMP (the collector's commit uses a temporary table) and USAGE
-- on the schema are PUBLIC's by default; granted here as well in case an
-- administrator revoked them from PUBLIC. Only the database's or schema's
-- owner can grant those, so they are skipped when migrating as neither.
DO $access$
BEGIN
  IF has_database_privilege(current_database(), 'CONNECT WITH GRANT OPTION')
  THEN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO boxmeter_collector, '
                   'boxmeter_generator, boxmeter_readonly', current_database());
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO boxmeter_collector',
                   current_database());
  END IF;
  IF has_schema_privilege(current_schema(), 'USAGE WITH GRANT OPTION') THEN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO boxmeter_collector, '
                   'boxmeter_generator, boxmeter_readonly', current_schema());
  END IF;
END
$access$;

-- Functions are executable by PUBLIC unless revoked. The ones that change
-- things would fail for a role without table rights anyway; revoking makes
-- that plain.
REVOKE EXECUTE ON FUNCTION
  add_user(text, bigint, timestamptz, uuid, text, text, text),
  link_user(text, text, text), unlink_user(text, text, text),
  set_quota(text, bigint), clear_quota(text),
  set_expiry(text, timestamptz), clear_expiry(text),
  enable_user(text), disable_user(text),
  reset_usage(text), reset_all_usage(),
  rename_user(text, text), delete_user(text, boolean),
  boxmeter_lock_user(text, text), boxmeter_random_password(),
  top_users(timestamptz, timestamptz),
  users_fingerprint(text)
  FROM PUBLIC;

-- The collector.
GRANT SELECT ON schema_migrations TO boxmeter_collector;
GRANT SELECT, INSERT ON nodes TO boxmeter_collector;
GRANT UPDATE (commit_seq, last_commit_at) ON nodes TO boxmeter_collector;
GRANT SELECT, INSERT ON counters TO boxmeter_collector;
GRANT UPDATE (uplink, downlink, base_uplink, base_downlink, instance_start,
              last_seen)
  ON counters TO boxmeter_collector;
GRANT USAGE ON SEQUENCE counters_id_seq TO boxmeter_collector;
GRANT SELECT, INSERT, DELETE ON counter_hourly TO boxmeter_collector;
GRANT UPDATE (uplink, downlink) ON counter_hourly TO boxmeter_collector;

-- users_fingerprint(node) digests users' credentials; run as its owner, the
-- collector gets the digest without any right to read what it digests.
ALTER FUNCTION users_fingerprint(text) SECURITY DEFINER
  SET search_path FROM CURRENT;
GRANT EXECUTE ON FUNCTION users_fingerprint(text)
  TO boxmeter_collector, boxmeter_generator;

-- The generator.
GRANT SELECT ON schema_migrations, nodes, users, inbounds, inbound_users,
                eligible_users, node_inbound_users, user_quota_status
  TO boxmeter_generator;

-- Read-only reporting: the views without credentials, and top_users (which
-- reads user_node_hourly with the caller's rights).
GRANT SELECT ON user_traffic, inbound_traffic, outbound_traffic,
                user_node_hourly, user_hourly, user_node_daily, user_daily,
                user_quota_status, node_summary, unknown_counters
  TO boxmeter_readonly;
GRANT EXECUTE ON FUNCTION top_users(timestamptz, timestamptz)
  TO boxmeter_readonly;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0004_roles.sql')
ON CONFLICT (name) DO NOTHING;
