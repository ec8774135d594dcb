-- 0001: the foundation. Metered traffic (nodes, counters, hourly history),
-- the management tables the generator reads (users, inbounds and their
-- link), and the views that are the stable contract for operators.
--
-- Applied once, in one transaction, by `boxmeter-collector --migrate` or at
-- start-up, or with `psql -1 -v ON_ERROR_STOP=1 -f`; recorded in
-- schema_migrations (at its end, by each file itself). Later changes go in
-- new numbered files; never edit an applied one.

-- One row per sing-box node that a collector meters. commit_seq guards every
-- commit: a collector's commit applies only if commit_seq is still the value
-- it last saw, and moves it by one, so a replayed or duplicated commit can
-- never count twice.
CREATE TABLE nodes (
  name text PRIMARY KEY CHECK (name <> ''),
  commit_seq bigint NOT NULL DEFAULT 0,
  last_commit_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per counter of a node: running totals in bytes, and the baseline
-- (the last cumulative values of sing-box that were added to the totals,
-- with the start time of the sing-box instance they came from). Totals and
-- baseline always move together in one transaction.
--
-- fillfactor 50 leaves room in every page so the commit's updates are HOT:
-- no index churn and no bloat, about twice as fast as the default on large
-- nodes (see docs/design.md). No index may cover the columns a commit updates,
-- or updates stop being HOT.
CREATE TABLE counters (
  id bigserial PRIMARY KEY,
  node text NOT NULL REFERENCES nodes (name) ON UPDATE CASCADE,
  kind text NOT NULL CHECK (kind IN ('inbound', 'outbound', 'user')),
  name text NOT NULL,
  uplink bigint NOT NULL DEFAULT 0,
  downlink bigint NOT NULL DEFAULT 0,
  base_uplink bigint NOT NULL DEFAULT 0,
  base_downlink bigint NOT NULL DEFAULT 0,
  instance_start timestamptz NOT NULL,
  first_seen timestamptz NOT NULL DEFAULT now(),
  last_seen timestamptz NOT NULL DEFAULT now(),
  UNIQUE (node, kind, name)
) WITH (fillfactor = 50);

COMMENT ON COLUMN counters.uplink IS
  'total bytes, saturating at the bigint maximum';
COMMENT ON COLUMN counters.base_uplink IS
  'the last cumulative sing-box value added to uplink';
COMMENT ON COLUMN counters.instance_start IS
  'start time of the sing-box instance the baseline came from (ms precision)';
COMMENT ON COLUMN counters.last_seen IS
  'the last commit that changed this counter';

-- Per-user lookups across nodes (user_traffic for one name). Neither column
-- ever changes, so updates stay HOT.
CREATE INDEX counters_user_name ON counters (name) WHERE kind = 'user';

-- The traffic added to each counter per UTC hour, for history and quotas by
-- period. Rows of the current hour are updated by every commit, hence the
-- fillfactor.
CREATE TABLE counter_hourly (
  counter_id bigint NOT NULL REFERENCES counters (id) ON DELETE CASCADE,
  hour timestamptz NOT NULL,
  uplink bigint NOT NULL DEFAULT 0,
  downlink bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (counter_id, hour)
) WITH (fillfactor = 50);

-- Time-range queries and pruning of old history.
CREATE INDEX counter_hourly_hour ON counter_hourly (hour);

-- The users the generator puts into sing-box's inbounds. Which credential
-- fields matter depends on the inbound type (see docs/design.md's table).
-- The stats user name is `name`.
CREATE TABLE users (
  id bigserial PRIMARY KEY,
  name text NOT NULL UNIQUE CHECK (name <> ''),
  enabled boolean NOT NULL DEFAULT true,
  quota_bytes bigint CHECK (quota_bytes >= 0),  -- NULL: unlimited
  expires_at timestamptz,                        -- NULL: never
  uuid uuid,                                     -- vless, vmess, tuic
  password text,           -- trojan, shadowsocks, hysteria2, tuic, socks...
  flow text,                                     -- vless
  alter_id integer CHECK (alter_id >= 0),        -- vmess
  created_at timestamptz NOT NULL DEFAULT now(),
  note text
);

-- The inbounds the generator writes for each node. `options` holds the
-- type-specific fields (tls, transport, method, ...) merged into the inbound.
CREATE TABLE inbounds (
  id bigserial PRIMARY KEY,
  node text NOT NULL CHECK (node <> ''),
  tag text NOT NULL CHECK (tag <> ''),
  type text NOT NULL CHECK (type <> ''),
  listen text NOT NULL DEFAULT '::',
  listen_port integer CHECK (listen_port BETWEEN 1 AND 65535),  -- NULL: none
  options jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(options) = 'object'),
  enabled boolean NOT NULL DEFAULT true,
  created_at timestamptz NOT NULL DEFAULT now(),
  note text,
  UNIQUE (node, tag)
);

-- Which users each inbound accepts.
CREATE TABLE inbound_users (
  inbound_id bigint NOT NULL REFERENCES inbounds (id) ON DELETE CASCADE,
  user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  PRIMARY KEY (inbound_id, user_id)
);
CREATE INDEX inbound_users_user ON inbound_users (user_id);

-- The views: the stable contract. All amounts are bytes, as bigint,
-- saturating at the bigint maximum rather than failing. Every counter shows,
-- whether or not its name is in users or inbounds.

-- Per user, summed over all nodes.
CREATE VIEW user_traffic AS
SELECT name,
       LEAST(sum(uplink), 9223372036854775807)::bigint AS uplink,
       LEAST(sum(downlink), 9223372036854775807)::bigint AS downlink,
       LEAST(sum(uplink) + sum(downlink), 9223372036854775807)::bigint
         AS total,
       count(*) AS nodes,  -- how many nodes counted this user
       max(last_seen) AS last_seen
  FROM counters
 WHERE kind = 'user'
 GROUP BY name;

CREATE VIEW inbound_traffic AS
SELECT node, name AS tag, uplink, downlink,
       LEAST(uplink::numeric + downlink, 9223372036854775807)::bigint AS total
  FROM counters
 WHERE kind = 'inbound';

CREATE VIEW outbound_traffic AS
SELECT node, name AS tag, uplink, downlink,
       LEAST(uplink::numeric + downlink, 9223372036854775807)::bigint AS total
  FROM counters
 WHERE kind = 'outbound';

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0001_init.sql')
ON CONFLICT (name) DO NOTHING;
