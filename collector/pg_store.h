// PgStore: the Store on PostgreSQL, through libpqxx.
//
// One connection, opened lazily and dropped after any failure, so the next
// call reconnects: a restarted or failed-over server needs no restart of the
// collector. Every pqxx exception is caught here and becomes a Status whose
// message names the database (its URL with any password hidden).
//
// A commit is one transaction of a fixed number of statements whatever the
// batch size: bump the node's commit sequence (only if it is still the
// expected one), store the node's current instance, COPY the rows into a
// temporary table, then one INSERT ... ON CONFLICT that adds the deltas to
// the totals, sets the baselines and their generations, and upserts the
// hourly history in the same statement.
//
// Contract details beyond Store's:
// - An empty batch is valid: it only moves the commit sequence.
// - Totals and hourly sums saturate at the bigint maximum instead of failing,
//   so an absurd counter can never make every later commit fail.
// - A row whose name PostgreSQL cannot store (not UTF-8, or containing NUL)
//   is left out with a warning; the rest of the batch applies. Such a name
//   cannot come from sing-box (protobuf strings are UTF-8), only from a
//   broken peer, and rejecting the batch would block the node forever.
//   The same holds for a name too long for the counters' unique index
//   (past about 2.7 kB once compressed; tried only for names over 2000
//   bytes).
// - Duplicate keys in one batch are a caller bug: kNotApplied, kInvalid.
// - A batch whose expected_seq is not the database's is kNotApplied with
//   Status::kInvalid: another writer committed for this node (two collectors
//   with the same node name?); the caller must LoadNode again.
// - The hourly row is the UTC hour of batch.observed_at_ms (this machine's
//   clock when it is 0).
// - The writer lease lives in the node's row (schema/0006_writer_lease.sql)
//   and its expiry on the database's clock (clock_timestamp(), not now():
//   a statement that waited for the row's lock does not date the lease
//   from before the wait). TakeLease, ReleaseLease and the commit's guard
//   are single statements on that row in short transactions: no session
//   lock or setting, so all of it works through a transaction-pooling
//   pooler. (Migrate and PruneHistory take transaction advisory locks.)
//   Statements name their node (WHERE name = $1), so row security may
//   restrict a role to its own node.
//
// Not thread-safe: one PgStore per thread (Store's calls come from one
// database worker).
#pragma once

#include <memory>
#include <string>

#include "store.h"

namespace boxmeter {

class PgStore : public Store {
 public:
  // `url`: a libpq URL or key=value string; `node`: this node's name;
  // `lease_holder`: who this store is in the node's writer lease (see
  // NewLeaseHolder); unique to this store.
  PgStore(std::string url, std::string node,
          std::string lease_holder = NewLeaseHolder());
  ~PgStore() override;

  PgStore(const PgStore&) = delete;
  PgStore& operator=(const PgStore&) = delete;

  Status Connect() override;
  Status Migrate() override;
  // Grants this store's node to the login `role` (schema/0008_hardening.sql's
  // grant_node: that login may then write the node's rows). Run as the
  // schema's owner, after Migrate.
  Status GrantNode(const std::string& role);
  Status LoadNode(NodeState* out) override;
  Status TakeLease(std::chrono::milliseconds ttl, LeaseState* out) override;
  Status ReleaseLease(int64_t token) override;
  CommitResult Commit(const CommitBatch& batch) override;
  Status ReadCommitSeq(int64_t* seq) override;
  Status ReadUsersFingerprint(std::string* fingerprint) override;
  // The delivery lease's holder is the node's name, so a collector restarted
  // after a crash takes it back at once. Each call is one statement.
  Status ReadUndeliveredEvents(int max_events, std::chrono::milliseconds lease,
                               std::vector<UsageEvent>* out) override;
  Status MarkEventDelivered(int64_t id,
                            std::chrono::milliseconds lease) override;

  // schema/0016_partitioned_history.sql's ensure_history_partitions, in
  // one transaction (it runs as the schema's owner: a collector's login may
  // create partitions only through it). Fails, to be tried again later, when
  // it waited 5 s for a table lock.
  Status EnsureHistoryPartitions(int days_ahead, int* created) override;

  // Drops the partitions of the hourly history whose hours all started
  // before now() - retention (prune_history, as the schema's owner), then
  // deletes, in batches of kPruneBatchRows, the remaining hourly rows
  // older than that (in the partition that straddles the cutoff, the
  // legacy one and the default one), oldest first. One collector of a
  // database prunes at a time (each transaction takes an advisory lock; a
  // collector that finds it taken returns at once, leaving the rest to the
  // other). Each batch walks the index on hour from where the previous one
  // stopped. Then sums the days that ended into the weekly sums top_users
  // reads (roll_history_day, one day per transaction, at least one per
  // call, more while the budget lasts). Holds no session state, so it works
  // through a transaction-pooling pooler, as Migrate does.
  Status PruneHistory(std::chrono::hours retention,
                      std::chrono::milliseconds budget,
                      PruneResult* out) override;
  static constexpr int64_t kPruneBatchRows = 10'000;
  // The advisory lock each pruning transaction takes
  // (pg_try_advisory_xact_lock).
  static constexpr int64_t kPruneLockKey = 7093020349380715891;

  // The URL with any password replaced, as used in messages.
  const std::string& redacted_url() const { return redacted_url_; }
  const std::string& lease_holder() const { return lease_holder_; }

 private:
  struct Connection;  // wraps pqxx::connection, kept out of this header

  // Status for a failure of `what`; drops the connection.
  Status Failed(const std::string& what, const std::exception& e);

  std::string url_;
  std::string redacted_url_;
  std::string node_;
  std::string lease_holder_;
  std::unique_ptr<Connection> connection_;
};

}  // namespace boxmeter
