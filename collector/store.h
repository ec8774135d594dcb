// Store: the collector's view of PostgreSQL. The real one is PgStore; tests
// use hand-written fakes. All calls block and are made from one thread (the
// collector's database worker), never from the poll loop.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "delta_engine.h"
#include "status.h"
#include "writer_lease.h"

namespace boxmeter {

// A counter's committed running totals (the counters table's uplink and
// downlink): what the metrics endpoint exposes.
struct CounterTotal {
  CounterKey key;
  CounterValues total;
};

struct NodeState {
  int64_t commit_seq = 0;
  // The instance the newest baselines came from (an empty boot id when none
  // is stored yet).
  InstanceIdentity instance;
  std::vector<Baseline> baselines;
  // The node's totals, one per baseline, as of the same moment.
  std::vector<CounterTotal> totals;
};

enum class CommitOutcome {
  kApplied,     // committed: totals, baselines and sequence moved together
  kNotApplied,  // certainly not committed (rolled back or never sent)
  kUnknown,     // the connection failed during COMMIT: ask ReadCommitSeq
  // Certainly not committed, and nothing changed: the batch's lease token is
  // no longer the node's (another collector took the node over after this
  // one's lease lapsed, or this one released it). The status names the
  // holder now. The writer must stop writing: TakeLease again, and only
  // once it holds the lease, LoadNode before committing anything.
  kLeaseLost,
};

struct CommitResult {
  CommitOutcome outcome = CommitOutcome::kNotApplied;
  Status status;  // why, when not applied
  // When applied: the node's users fingerprint (see ReadUsersFingerprint)
  // as of the end of this commit, read in its transaction, so a user whose
  // quota this commit crossed shows at once. Empty when not known or not
  // asked for (CommitBatch::read_users_fingerprint).
  std::string users_fingerprint = {};
};

// A usage event (schema/0012_usage_events.sql) as hooks.on_event receives
// it: its id and its JSON (usage_event_json's event, which holds the id too).
struct UsageEvent {
  int64_t id = 0;
  std::string json;
};

struct PruneResult {
  int64_t deleted = 0;             // hourly rows deleted one by one
  int64_t partitions_dropped = 0;  // whole days of history dropped
  bool done = true;         // false: the budget ran out before the last old row
  int64_t days_summed = 0;  // days added to the weekly sums (top_users)
  bool summed = true;       // false: stopped (budget, another collector's lock)
                            // before the last day that ended was summed
};

class Store {
 public:
  virtual ~Store() = default;

  // Connects (or reconnects) if needed. Cheap when already connected.
  virtual Status Connect() = 0;

  // Applies pending schema migrations under an advisory lock, so several
  // collectors may start at once. Each migration runs once.
  virtual Status Migrate() = 0;

  // Registers the node if new and reads its commit sequence, its current
  // instance, its baselines and its counters' totals, all as of one moment. A
  // writer calls it only while it holds the node's lease (TakeLease), so it
  // never adopts the baselines of another writer.
  virtual Status LoadNode(NodeState* out) = 0;

  // Takes the node's writer lease (writer_lease.h) if nobody holds it, if
  // it lapsed (by the database's clock), or if this store holds it already
  // (then it renews it; the token stays). Never takes a live lease from
  // another holder: then out->held is false and out names the holder. Sets
  // the lease to lapse `ttl` from now on the database's clock. Registers
  // the node if new. The token grows by one at every change of holder, so
  // a holder that lost the lease can tell, and its commits are refused.
  // One short transaction (usually one UPDATE): cheap enough to renew the
  // lease while idle. A status that is not ok says nothing of the lease.
  virtual Status TakeLease(std::chrono::milliseconds ttl, LeaseState* out) = 0;

  // Hands the lease back at once (on a clean stop), so that a collector
  // started next need not wait for it to lapse. Does nothing when the lease
  // with `token` is no longer this store's. Ok in both cases.
  virtual Status ReleaseLease(int64_t token) = 0;

  // Applies `batch` in one transaction if this store still holds the node's
  // lease with batch.lease_token and the node's commit sequence is still
  // batch.expected_seq: adds the deltas to the totals and the hourly history,
  // sets the baselines (with their generations) and the node's instance
  // (batch.instance), increments the sequence and renews the lease by
  // batch.lease_ttl. A batch whose lease was lost changes nothing and is
  // kLeaseLost (checked first); one whose sequence no longer matches changes
  // nothing and is kNotApplied with Status::kInvalid.
  virtual CommitResult Commit(const CommitBatch& batch) = 0;

  // The node's commit sequence as the database has it now.
  virtual Status ReadCommitSeq(int64_t* seq) = 0;

  // A digest of everything boxmeter-gen reads for this node: its enabled
  // inbounds and their eligible users (enabled, not expired, under quota)
  // with their credentials (users_fingerprint() in the schema). It changes
  // exactly when the generated config would; the collector runs
  // hooks.on_users_changed when it does.
  virtual Status ReadUsersFingerprint(std::string* fingerprint) = 0;

  // Takes or renews, for this store's node, the lease on delivering the
  // database's usage events (schema/0013_event_delivery.sql: events are
  // database-wide, and one collector at a time hands them to its hook),
  // lapsing `lease` from now on the database's clock. While this node holds
  // it, reads the first `max_events` undelivered events in id order into
  // *out; *out is empty when there are none or another node's lease is live.
  virtual Status ReadUndeliveredEvents(int max_events,
                                       std::chrono::milliseconds lease,
                                       std::vector<UsageEvent>* out) = 0;

  // Sets event `id`'s delivered_at, unless it is set already (then nothing
  // changes: marking is idempotent), and renews this node's delivery lease
  // by `lease` if it still holds it. An id that no event has is an error.
  virtual Status MarkEventDelivered(int64_t id,
                                    std::chrono::milliseconds lease) = 0;

  // Creates the partitions of the hourly history (one per UTC day) that are
  // missing from yesterday to `days_ahead` days ahead, so that commits find
  // theirs; moves rows that landed in the default partition into the days
  // it creates. *created: how many it created.
  virtual Status EnsureHistoryPartitions(int days_ahead, int* created) = 0;

  // Deletes hourly history older than `retention` (by the database's clock),
  // of every node: first whole partitions (days) entirely older, then the
  // rest in small batches, each its own short transaction, until none is
  // left or `budget` has passed. Rows left over go on a later call. Never a
  // row younger than `retention`.
  virtual Status PruneHistory(std::chrono::hours retention,
                              std::chrono::milliseconds budget,
                              PruneResult* out) = 0;
};

}  // namespace boxmeter
