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

namespace boxmeter {

// The node's writer lease (schema/0006_writer_lease.sql): at most one
// collector commits for a node. `token` fences every commit.
struct LeaseState {
  bool held = false;   // this collector holds it
  int64_t token = 0;   // when held: the fencing token its commits carry
  std::string holder;  // when not held: who holds it (host, pid)
  std::chrono::milliseconds expires_in{0};  // when not held: until it lapses
};

struct NodeState {
  int64_t commit_seq = 0;
  // The instance the newest baselines came from (an empty boot id when none
  // is stored yet).
  InstanceIdentity instance;
  std::vector<Baseline> baselines;
};

enum class CommitOutcome {
  kApplied,     // committed: totals, baselines and sequence moved together
  kNotApplied,  // certainly not committed (rolled back or never sent)
  kUnknown,     // the connection failed during COMMIT: ask ReadCommitSeq
  kLeaseLost,   // not applied: another collector holds the node's lease now
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

struct PruneResult {
  int64_t deleted = 0;  // hourly rows deleted
  bool done = true;     // false: the budget ran out before the last old row
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
  // instance and its baselines, all as of one moment.
  virtual Status LoadNode(NodeState* out) = 0;

  // Applies `batch` in one transaction if the node's commit sequence is still
  // batch.expected_seq: adds the deltas to the totals and the hourly history,
  // sets the baselines (with their generations) and the node's instance
  // (batch.instance), and increments the sequence. A batch whose sequence
  // no longer matches changes nothing and is kNotApplied.
  virtual CommitResult Commit(const CommitBatch& batch) = 0;

  // Takes the node's lease for `ttl` if it is free, lapsed or already ours
  // (then renews it). Never takes a live lease of another holder: `out`
  // then says who holds it and for how long.
  virtual Status TakeLease(std::chrono::milliseconds ttl, LeaseState* out) = 0;

  // Gives the lease up (a clean stop), so the next collector need not wait
  // for it to lapse.
  virtual Status ReleaseLease(int64_t token) = 0;

  // The node's commit sequence as the database has it now.
  virtual Status ReadCommitSeq(int64_t* seq) = 0;

  // A digest of everything boxmeter-gen reads for this node: its enabled
  // inbounds and their eligible users (enabled, not expired, under quota)
  // with their credentials (users_fingerprint() in the schema). It changes
  // exactly when the generated config would; the collector runs
  // hooks.on_users_changed when it does.
  virtual Status ReadUsersFingerprint(std::string* fingerprint) = 0;

  // Deletes hourly history older than `retention` (by the database's clock),
  // of every node, in small batches, each its own short transaction, until
  // none is left or `budget` has passed. Rows left over go on a later call.
  virtual Status PruneHistory(std::chrono::hours retention,
                              std::chrono::milliseconds budget,
                              PruneResult* out) = 0;
};

}  // namespace boxmeter
