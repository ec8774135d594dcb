#include "delta_engine.h"

#include <cassert>
#include <limits>

namespace boxmeter {
namespace {

bool IsZero(const CounterValues& v) { return v.uplink == 0 && v.downlink == 0; }

// Counters are int64 on the wire; a hostile or broken peer could make sums
// overflow. Saturate instead of wrapping into negative traffic.
int64_t SaturatingAdd(int64_t a, int64_t b) {
  int64_t sum;
  if (__builtin_add_overflow(a, b, &sum)) {
    return b > 0 ? std::numeric_limits<int64_t>::max()
                 : std::numeric_limits<int64_t>::min();
  }
  return sum;
}

// Either direction below the last reading: the counter started again.
bool Fell(const CounterValues& to, const CounterValues& from) {
  return to.uplink < from.uplink || to.downlink < from.downlink;
}

// The traffic between two readings of one counter: the difference within one
// instance, everything the later one counted when it is from another.
CounterValues TrafficBetween(const CounterValues& from, int64_t from_generation,
                             const CounterValues& to, int64_t to_generation) {
  if (from_generation != to_generation || Fell(to, from)) return to;
  return {to.uplink - from.uplink, to.downlink - from.downlink};
}

}  // namespace

void DeltaEngine::AddPending(Entry& entry, const CounterValues& delta) {
  if (IsZero(delta)) return;
  if (IsZero(entry.pending)) ++counters_with_pending_;
  entry.pending.uplink = SaturatingAdd(entry.pending.uplink, delta.uplink);
  entry.pending.downlink =
      SaturatingAdd(entry.pending.downlink, delta.downlink);
  // Saturation can bring a sum back to zero only with negative deltas, which
  // TrafficBetween never produces.
}

void DeltaEngine::Load(int64_t commit_seq, const InstanceIdentity& instance,
                       const std::vector<Baseline>& baselines) {
  assert(!in_flight());
  if (loaded_) {
    // A reload after another writer committed for this node: what is in
    // memory can no longer be trusted, the database can.
    counters_.clear();
    counters_with_pending_ = 0;
    observed_before_load_ = false;
  }
  commit_seq_ = commit_seq;
  // Generations seen before Load count from 0: the first instance seen is
  // either the stored one (offset = its generation) or the next.
  int64_t offset = instance.generation;
  if (!observed_before_load_) {
    instance_ = instance;
  } else {
    const InstanceIdentity& first =
        first_instance_ ? *first_instance_ : instance_;
    bool first_is_new =
        instance.ProvesNew({first.boot_id, same_kernel_, first.start});
    for (const Baseline& baseline : baselines) {
      if (first_is_new) break;
      auto anchor = anchors_.find(baseline.key);
      first_is_new = anchor != anchors_.end() &&
                     anchor->second.generation == 0 &&
                     baseline.generation == instance.generation &&
                     Fell(anchor->second.values, baseline.values);
    }
    if (first_is_new) ++offset;
    if (first_instance_ || first_is_new) {
      instance_.generation += offset;
    } else {
      // Still the first instance, and it is the stored one: narrow the
      // stored interval with what was seen.
      InstanceIdentity stored = instance;
      stored.Continue({first.boot_id, same_kernel_, first.start});
      instance_ = stored;
    }
    for (auto& [key, entry] : counters_) entry.generation += offset;
  }
  for (const Baseline& baseline : baselines) {
    auto [it, inserted] = counters_.try_emplace(baseline.key);
    Entry& entry = it->second;
    if (inserted) {
      entry.last = baseline.values;
      entry.generation = baseline.generation;
      continue;
    }
    // Seen before the database answered: add the traffic between the stored
    // baseline and the first observation. The rest is already pending.
    auto anchor = anchors_.find(baseline.key);
    assert(anchor != anchors_.end());
    AddPending(entry, TrafficBetween(baseline.values, baseline.generation,
                                     anchor->second.values,
                                     anchor->second.generation + offset));
    anchors_.erase(anchor);
  }
  // Anchors without a baseline are counters the database has never seen:
  // everything they counted is new.
  for (const auto& [key, anchor] : anchors_) {
    AddPending(counters_[key], anchor.values);
  }
  anchors_.clear();
  first_instance_.reset();
  loaded_ = true;
}

ObserveResult DeltaEngine::Observe(const Snapshot& snapshot) {
  ObserveResult result;
  // First find every counter's entry and whether one of the current
  // instance fell: that decides how all of them count. The entries are kept
  // in the snapshot's order (8 bytes a counter, freed on return), so the
  // second pass looks nothing up again.
  std::vector<Entry*> entries;
  entries.reserve(snapshot.counters.size());
  bool fell = false;
  for (const auto& [key, values] : snapshot.counters) {
    Entry& entry = counters_.try_emplace(key).first->second;
    fell = fell || (entry.generation == instance_.generation &&
                    Fell(values, entry.last));
    entries.push_back(&entry);
  }
  result.new_instance = fell || instance_.ProvesNew(snapshot.instance);
  if (result.new_instance) {
    if (!loaded_ && !first_instance_) first_instance_ = instance_;
    instance_.Restart(snapshot.instance);
  } else {
    instance_.Continue(snapshot.instance);
  }
  same_kernel_ = snapshot.instance.same_kernel;
  observed_before_load_ = observed_before_load_ || !loaded_;
  int64_t generation = instance_.generation;
  auto next_entry = entries.begin();
  for (const auto& [key, values] : snapshot.counters) {
    Entry* entry = *next_entry++;
    if (entry->generation == kNotSeen) {
      if (loaded_) {
        // Not in the database: a counter this instance created.
        AddPending(*entry, values);
      } else {
        anchors_.emplace(key, Baseline{key, values, generation});
      }
      if (!IsZero(values)) ++result.changed;
    } else {
      if (entry->generation != generation) ++result.restarted;
      if (!(values == entry->last)) ++result.changed;
      AddPending(*entry, TrafficBetween(entry->last, entry->generation, values,
                                        generation));
    }
    entry->last = values;
    entry->generation = generation;
  }
  last_observed_at_ms_ = snapshot.taken_at_ms;
  return result;
}

void DeltaEngine::ReleaseInFlight() {
  // Swapped with an empty vector, not cleared: clear() keeps the capacity,
  // a batch's worth of memory for as long as the engine lives.
  std::vector<std::pair<Entry*, CounterValues>>().swap(in_flight_);
  in_flight_seq_.reset();
}

CommitBatch DeltaEngine::Prepare() {
  assert(loaded_ && !in_flight());
  CommitBatch batch;
  batch.expected_seq = commit_seq_;
  batch.observed_at_ms = last_observed_at_ms_;
  batch.instance = instance_;
  batch.rows.reserve(counters_with_pending_);
  in_flight_.reserve(counters_with_pending_);
  for (auto& [key, entry] : counters_) {
    if (IsZero(entry.pending)) continue;
    in_flight_.emplace_back(&entry, entry.pending);
    batch.rows.push_back(
        CommitRow{key, entry.pending, entry.last, entry.generation});
  }
  in_flight_seq_ = commit_seq_;
  return batch;
}

void DeltaEngine::Committed() {
  assert(in_flight());
  for (auto& [entry, taken] : in_flight_) {
    entry->pending.uplink -= taken.uplink;
    entry->pending.downlink -= taken.downlink;
    if (IsZero(entry->pending)) --counters_with_pending_;
  }
  commit_seq_ = *in_flight_seq_ + 1;
  ReleaseInFlight();
}

void DeltaEngine::NotCommitted() {
  assert(in_flight());
  ReleaseInFlight();
}

bool DeltaEngine::Resolve(int64_t database_seq) {
  assert(in_flight());
  if (database_seq == *in_flight_seq_ + 1) {
    Committed();
    return true;
  }
  NotCommitted();
  return database_seq == commit_seq_;
}

int64_t DeltaEngine::pending_bytes() const {
  int64_t total = 0;
  for (const auto& [key, entry] : counters_) {
    total = SaturatingAdd(total, entry.pending.uplink);
    total = SaturatingAdd(total, entry.pending.downlink);
  }
  return total;
}

}  // namespace boxmeter
