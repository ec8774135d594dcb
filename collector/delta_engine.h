// DeltaEngine: turns snapshots of cumulative counters into the traffic that
// is not yet in the database, and tracks what a commit has to do so that
// every byte is added exactly once.
//
// It keeps the node's current sing-box instance (an InstanceIdentity: the
// interval its start lies in, and a generation that grows by one at every
// restart seen) and, for each counter, the last observed values with the
// generation they came from, plus the pending traffic not yet committed.
//
// A snapshot is from a new instance when the clocks prove it
// (InstanceIdentity::ProvesNew) or when any counter of the current
// generation fell: sing-box's counters only grow while it runs. Either way
// the new instance's identity replaces the current one, so a later poll or a
// later collector compares with the instance that really runs. Otherwise it
// is the same instance and its interval narrows. Then each counter whose
// values came from the current generation adds `value - last` to pending;
// any other counter (one of an older instance, or new) adds `value`. Where
// the evidence cannot tell, the engine takes the same instance: see
// instance_identity.h for why that errs by a bounded amount. A counter reset
// by another client of the stats API (the collector never resets) looks like
// a restart, so every counter of the instance is counted whole again.
//
// Hindsight corrects the one case where that choice would later count
// twice. The first sightings of an instance that started within about a
// second of the current one's start may overlap its interval and be taken
// for it (counting `value - last`) while narrowing the interval towards the
// new start; a later sighting then proves a new instance, and counting its
// whole value would add those differences a second time. sing-box closes an
// instance before it creates the next (a reload, like a restart), so a new
// instance's first sighting has a start interval reaching past the time the
// sighting before it was asked. Each such sighting taken for the current
// instance opens a checkpoint, which records per counter what is counted
// from then on. A sighting that proves a new instance dates the restart back
// to the earliest checkpoint the new instance can have started at: after the
// sighting before it was asked, and inside the start interval of it and of
// every later sighting. Each counter then adds its value minus what was
// counted since; its interval is the proving sighting's alone, since the
// sightings since the checkpoint may have been the old instance's after all.
// A checkpoint closes at the next restart, or once no start
// can be both. While one is open, a commit stores the interval from before
// the oldest, so a collector that starts later cannot count twice either.
// Checkpoints need a previous sighting of this collector's, so the first
// sighting after a collector starts opens none. They cost nothing per
// counter: only the counters that move while one is open are recorded, and
// outside an instance's first second or two none is open.
//
// A commit adds pending to the database totals, sets the database's baseline
// to the last observed values and their generation, and stores the current
// identity, in one transaction guarded by the node's commit sequence number:
// the commit applies only when the database's sequence is the one this
// engine last saw, so a replayed or duplicated commit can never count
// twice. When a commit fails, pending stays and keeps growing,
// across further polls and across sing-box restarts. When its outcome is
// unknown, the database's sequence number tells whether it applied.
//
// Observations made before the database state is loaded are kept as anchors
// and reconciled with the stored identity and baselines on Load under the
// same rules, so a collector that starts while PostgreSQL is down still
// counts from the right place.
//
// Pure: no clock, no I/O. Not thread-safe; the poll loop owns it.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "counter_name.h"
#include "instance_identity.h"
#include "snapshot.h"

namespace boxmeter {

// What the database holds for one counter: the last cumulative values added
// to its totals and the generation (InstanceIdentity) they came from.
struct Baseline {
  CounterKey key;
  CounterValues values;
  int64_t generation = 0;
};

struct CommitRow {
  CounterKey key;
  CounterValues delta;     // add to the totals
  CounterValues baseline;  // the new baseline
  int64_t generation = 0;  // the baseline's instance
};

// One transaction's worth of work. Applies only if the node's commit sequence
// in the database is still `expected_seq`; it then becomes expected_seq + 1.
struct CommitBatch {
  int64_t expected_seq = 0;
  int64_t observed_at_ms = 0;  // when the newest included traffic was seen
  std::vector<CommitRow> rows;
  // Also read the node's users fingerprint in the same transaction (only the
  // hooks need it, and it costs a scan of the node's users).
  bool read_users_fingerprint = false;
  // The writer lease (writer_lease.h, Store::TakeLease): the batch applies
  // only while the lease with this fencing token is still this writer's,
  // and the commit renews it to lapse `lease_ttl` after it (never earlier
  // than it already would; 0 leaves it). Set by the collector, not Prepare.
  int64_t lease_token = 0;
  std::chrono::milliseconds lease_ttl{0};
  // The node's current instance, stored with the rows' generations.
  InstanceIdentity instance = {};
};

struct ObserveResult {
  size_t changed = 0;         // counters whose value moved
  size_t restarted = 0;       // counters seen from a new instance
  bool new_instance = false;  // the snapshot is from a new instance
};

class DeltaEngine {
 public:
  // Starts from the database: its commit sequence, the node's stored
  // instance and every stored baseline of this node. Observations made
  // before (anchors) are reconciled now: their first instance is a new one
  // when the clocks prove it or an anchor of it is below a baseline of the
  // stored generation. Precondition: no batch in flight.
  void Load(int64_t commit_seq, const InstanceIdentity& instance,
            const std::vector<Baseline>& baselines);
  bool loaded() const { return loaded_; }

  ObserveResult Observe(const Snapshot& snapshot);

  // True when Prepare would return rows.
  bool HasPending() const { return counters_with_pending_ > 0; }

  // The batch for the next commit: every counter with pending traffic.
  // Preconditions: loaded(), no batch in flight. The batch stays in flight
  // until one of Committed, NotCommitted or Resolve is called.
  CommitBatch Prepare();
  bool in_flight() const { return in_flight_seq_.has_value(); }

  // The in-flight batch applied: its traffic leaves pending.
  void Committed();
  // The in-flight batch certainly did not apply: pending keeps it.
  void NotCommitted();
  // The outcome was unknown; the database now says its sequence is
  // `database_seq`. Returns false when that matches neither outcome (another
  // writer committed for this node): the caller must Load again.
  bool Resolve(int64_t database_seq);

  int64_t commit_seq() const { return commit_seq_; }
  // The node's current instance (before Load: generations count from 0).
  const InstanceIdentity& instance() const { return instance_; }
  size_t size() const { return counters_.size(); }
  // Sum of pending uplink + downlink bytes, for status lines.
  int64_t pending_bytes() const;

 private:
  // One per tracked counter, so its size is most of the collector's memory:
  // what a batch in flight took from pending lives in in_flight_ instead.
  struct Entry {
    CounterValues last;
    int64_t generation = kNotSeen;
    CounterValues pending;
  };
  // A sighting of the current generation that may have been the first of a
  // newer instance, taken for the current one.
  struct Checkpoint {
    // The sighting before it was asked then: a newer instance it was the
    // first sighting of started later.
    int64_t previous_asked_ms = 0;
    StartInterval start;   // its start interval and every later sighting's
    StartInterval before;  // the instance's interval before it
    // What was counted since, for each counter that moved.
    std::unordered_map<Entry*, CounterValues> counted;
  };
  // The generation of an entry made by the current Observe.
  static constexpr int64_t kNotSeen = INT64_MIN;

  void AddPending(Entry& entry, const CounterValues& delta);
  // After `seen` was taken as the current instance, whose interval was
  // `before`: opens, narrows and closes checkpoints.
  void TrackCheckpoints(const InstanceSighting& seen,
                        const StartInterval& before);
  // The checkpoint a restart proven by `seen` dates back to, or null.
  const Checkpoint* RedatedCheckpoint(const InstanceSighting& seen) const;
  // Forgets the batch in flight and frees what it held.
  void ReleaseInFlight();

  std::unordered_map<CounterKey, Entry, CounterKeyHash> counters_;
  // The first observation of each counter made before Load, with the
  // generation (counted from 0 before Load) it came from.
  std::unordered_map<CounterKey, Baseline, CounterKeyHash> anchors_;
  InstanceIdentity instance_;
  // Oldest first; at most kMaxCheckpoints (a reload storm that nothing
  // proves for a while), the oldest dropped beyond.
  std::vector<Checkpoint> checkpoints_;
  static constexpr size_t kMaxCheckpoints = 16;
  // When this collector's previous sighting was asked, if it had one on the
  // clock of instance_.
  std::optional<int64_t> previous_asked_ms_;
  // Before Load: the first instance seen, once a restart replaced it, and
  // whether any snapshot was seen at all.
  std::optional<InstanceIdentity> first_instance_;
  bool observed_before_load_ = false;
  bool same_kernel_ = false;  // of the last snapshot
  bool loaded_ = false;
  int64_t commit_seq_ = 0;
  int64_t last_observed_at_ms_ = 0;
  size_t counters_with_pending_ = 0;
  // The batch in flight: the sequence it expects, the entries it covers and
  // what it took from their pending. Entry addresses are stable: an
  // unordered_map never moves its elements. Released after each commit, so
  // a batch of every counter does not stay allocated between commits.
  std::optional<int64_t> in_flight_seq_;
  std::vector<std::pair<Entry*, CounterValues>> in_flight_;
};

}  // namespace boxmeter
