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

// The traffic between two readings of one counter. A reading from another
// instance, or lower than the previous one, starts from zero.
CounterValues TrafficBetween(const CounterValues& from, int64_t from_instance,
                             const CounterValues& to, int64_t to_instance) {
  bool same_instance = SameInstance(from_instance, to_instance) &&
                       to.uplink >= from.uplink && to.downlink >= from.downlink;
  if (!same_instance) return to;
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

void DeltaEngine::Accumulate(Entry& entry, const CounterValues& from,
                             int64_t from_instance, const CounterValues& to,
                             int64_t to_instance) {
  AddPending(entry, TrafficBetween(from, from_instance, to, to_instance));
}

void DeltaEngine::Load(int64_t commit_seq,
                       const std::vector<Baseline>& baselines) {
  assert(!in_flight());
  if (loaded_) {
    // A reload after another writer committed for this node: what is in
    // memory can no longer be trusted, the database can.
    counters_.clear();
    counters_with_pending_ = 0;
  }
  commit_seq_ = commit_seq;
  for (const Baseline& baseline : baselines) {
    auto anchor = anchors_.find(baseline.key);
    auto [it, inserted] = counters_.try_emplace(baseline.key);
    Entry& entry = it->second;
    if (inserted) {
      entry.last = baseline.values;
      entry.instance_start_ms = baseline.instance_start_ms;
      continue;
    }
    // Seen before the database answered: add the traffic between the stored
    // baseline and the first observation. The rest is already pending.
    assert(anchor != anchors_.end());
    Accumulate(entry, baseline.values, baseline.instance_start_ms,
               anchor->second.values, anchor->second.instance_start_ms);
    anchors_.erase(anchor);
  }
  // Anchors without a baseline are counters the database has never seen:
  // everything they counted is new.
  for (const auto& [key, anchor] : anchors_) {
    AddPending(counters_[key], anchor.values);
  }
  anchors_.clear();
  loaded_ = true;
}

ObserveResult DeltaEngine::Observe(const Snapshot& snapshot) {
  ObserveResult result;
  for (const auto& [key, values] : snapshot.counters) {
    auto [it, inserted] = counters_.try_emplace(key);
    Entry& entry = it->second;
    if (inserted) {
      if (loaded_) {
        // Not in the database: a counter this instance created.
        AddPending(entry, values);
      } else {
        anchors_.emplace(key,
                         Baseline{key, values, snapshot.instance_start_ms});
      }
      if (!IsZero(values)) ++result.changed;
    } else {
      if (!SameInstance(entry.instance_start_ms, snapshot.instance_start_ms) ||
          values.uplink < entry.last.uplink ||
          values.downlink < entry.last.downlink) {
        ++result.restarted;
      }
      if (!(values == entry.last)) ++result.changed;
      Accumulate(entry, entry.last, entry.instance_start_ms, values,
                 snapshot.instance_start_ms);
    }
    entry.last = values;
    // Keep the first start time seen for an instance so that the uptime's
    // jitter does not walk the stored identity away from the true one.
    if (!SameInstance(entry.instance_start_ms, snapshot.instance_start_ms) ||
        inserted) {
      entry.instance_start_ms = snapshot.instance_start_ms;
    }
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
  batch.rows.reserve(counters_with_pending_);
  in_flight_.reserve(counters_with_pending_);
  for (auto& [key, entry] : counters_) {
    if (IsZero(entry.pending)) continue;
    in_flight_.emplace_back(&entry, entry.pending);
    batch.rows.push_back(
        CommitRow{key, entry.pending, entry.last, entry.instance_start_ms});
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
