-- 0015: the hourly history per inbound and node (issue 14: the traffic
-- dashboard's per-inbound panel over time).
--
-- counter_hourly already holds every counter's hours, inbounds' too; only
-- users had a view over them. An hour is the UTC hour the traffic was
-- committed in, as in user_node_hourly. Read-only, like the other traffic
-- views: boxmeter_readonly (Grafana) and boxmeter_operator may read it.
-- (0013 and 0014 are the usage-event delivery and time-based events.)

SELECT set_config('search_path', format('%I, pg_temp', current_schema()),
                  true);

CREATE VIEW inbound_node_hourly AS
SELECT c.node, c.name AS tag, h.hour, h.uplink, h.downlink,
       LEAST(h.uplink::numeric + h.downlink, 9223372036854775807)::bigint
         AS total
  FROM counter_hourly h
  JOIN counters c ON c.id = h.counter_id
 WHERE c.kind = 'inbound';

GRANT SELECT ON inbound_node_hourly TO boxmeter_operator, boxmeter_readonly;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0015_inbound_hourly.sql')
ON CONFLICT (name) DO NOTHING;
