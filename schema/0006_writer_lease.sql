-- 0006: one writer per node. A collector takes its node's lease before it
-- loads or commits anything, renews it with every commit and with a cheap
-- UPDATE while idle, and hands it back on a clean stop. A second collector
-- configured with the same node: finds the lease live, logs who holds it
-- and writes nothing; it takes over only once the lease has lapsed (the
-- holder crashed or lost the database), which is a failover, not a fight.
--
-- lease_holder      who holds the lease, human-readable:
--                   'host <hostname> pid <pid> <random>' (the random part
--                   tells two runs of one pid apart). NULL: nobody (never
--                   taken, or released on a clean stop).
-- lease_token       the fencing token: +1 every time the lease passes to
--                   another holder (or is taken again after a release).
--                   Every commit's guard requires the token its writer got
--                   with the lease, so a writer that lost the lease (a long
--                   pause, a network partition) can never apply a commit
--                   after the new holder started, whatever the clocks say.
-- lease_expires_at  when the lease lapses unless renewed, on the DATABASE's
--                   clock (clock_timestamp() at the renewal plus the TTL):
--                   a collector's clock stepping changes nothing.
--
-- Everything is one row of nodes, read and written by single statements in
-- short transactions: no session advisory lock and no session state, so it
-- works through a transaction-pooling connection pooler (pgbouncer
-- pool_mode = transaction).
--
-- No index covers these columns: an update of them stays HOT, like the
-- commit's update of commit_seq.

ALTER TABLE nodes
  ADD COLUMN lease_holder text,
  ADD COLUMN lease_token bigint NOT NULL DEFAULT 0,
  ADD COLUMN lease_expires_at timestamptz,
  ADD CONSTRAINT nodes_lease_whole
    CHECK ((lease_holder IS NULL) = (lease_expires_at IS NULL));

-- The collector takes, renews and releases its lease (schema/0004_roles.sql
-- granted SELECT and INSERT on the whole table already).
GRANT UPDATE (lease_holder, lease_token, lease_expires_at)
  ON nodes TO boxmeter_collector;

-- Recorded by the file itself, so that it applies on its own with plain
-- psql (psql -1 -v ON_ERROR_STOP=1 -f) as well as through the collector's
-- migration runner, which creates the same table first.
CREATE TABLE IF NOT EXISTS schema_migrations (
  name text PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (name) VALUES ('0006_writer_lease.sql')
ON CONFLICT (name) DO NOTHING;
