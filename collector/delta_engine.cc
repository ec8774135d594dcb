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

void DeltaEngine::TrackCheckpoints(const InstanceSighting& seen,
                                   const StartInterval& before) {
  for (Checkpoint& checkpoint : checkpoints_) {
    // `seen` overlapped the instance's interval, which lies inside this.
    checkpoint.start = checkpoint.start.Intersect(seen.start);
  }
  // A newer instance than the previous sighting's started after that was
  // asked; one `seen` could be the first sighting of opens a checkpoint.
  if (loaded_ && previous_asked_ms_ && seen.start.hi_ms > *previous_asked_ms_) {
    if (checkpoints_.size() == kMaxCheckpoints) {
      checkpoints_.erase(checkpoints_.begin());
    }
    checkpoints_.push_back({*previous_asked_ms_, seen.start, before, {}});
  }
  // Closed once no start is both after the sighting before it was asked and
  // inside its interval, or once that interval lies inside `before` (a
  // sighting disjoint from the instance's interval is then disjoint from
  // the checkpoint's too).
  std::erase_if(checkpoints_, [](const Checkpoint& checkpoint) {
    return checkpoint.start.hi_ms <= checkpoint.previous_asked_ms ||
           (checkpoint.before.lo_ms <= checkpoint.start.lo_ms &&
            checkpoint.start.hi_ms <= checkpoint.before.hi_ms);
  });
}

const DeltaEngine::Checkpoint* DeltaEngine::RedatedCheckpoint(
    const InstanceSighting& seen) const {
  for (const Checkpoint& checkpoint : checkpoints_) {
    // Oldest first: where two are possible, dating further back errs low.
    if (checkpoint.start.Overlaps(seen.start) &&
        checkpoint.start.Intersect(seen.start).hi_ms >
            checkpoint.previous_asked_ms) {
      return &checkpoint;
    }
  }
  return nullptr;
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
    checkpoints_.clear();
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
  const InstanceSighting& seen = snapshot.instance;
  if (instance_.boot_id.empty() || instance_.boot_id != seen.boot_id) {
    // Times on another boot's clock (or none yet) say nothing here.
    checkpoints_.clear();
    previous_asked_ms_.reset();
  }
  result.new_instance = fell || instance_.ProvesNew(seen);
  // A restart the clocks alone prove may have happened at a checkpoint.
  const Checkpoint* redated =
      result.new_instance && !fell ? RedatedCheckpoint(seen) : nullptr;
  int64_t previous_generation = instance_.generation;
  if (result.new_instance) {
    if (!loaded_ && !first_instance_) first_instance_ = instance_;
    // Dated back or not, the new instance's interval is `seen`'s alone: the
    // sightings since a checkpoint may have been the old instance's (dating
    // back errs low), and a narrower interval than the truth would later
    // prove this instance new again and count it twice.
    instance_.Restart(seen);
  } else {
    StartInterval before = instance_.start;
    instance_.Continue(seen);
    TrackCheckpoints(seen, before);
  }
  previous_asked_ms_ = seen.asked_ms;
  same_kernel_ = seen.same_kernel;
  observed_before_load_ = observed_before_load_ || !loaded_;
  int64_t generation = instance_.generation;
  auto next_entry = entries.begin();
  for (const auto& [key, values] : snapshot.counters) {
    Entry* entry = *next_entry++;
    CounterValues delta = values;
    if (entry->generation == kNotSeen) {
      // Before Load, an anchor (Load counts it); after, a counter the
      // database has never seen, which this instance created.
      if (!loaded_) {
        anchors_.emplace(key, Baseline{key, values, generation});
        delta = {};
      }
      if (!IsZero(values)) ++result.changed;
    } else {
      if (entry->generation != generation) ++result.restarted;
      if (!(values == entry->last)) ++result.changed;
      if (redated && entry->generation == previous_generation) {
        // Dated back to the checkpoint: of this instance's `values`, what
        // was counted since is counted already (no more than the last
        // value seen, which did not fall).
        auto counted = redated->counted.find(entry);
        if (counted != redated->counted.end()) {
          entry->last = counted->second;
          entry->generation = generation;
        }
      }
      delta =
          TrafficBetween(entry->last, entry->generation, values, generation);
    }
    AddPending(*entry, delta);
    if (!result.new_instance && !IsZero(delta)) {
      for (Checkpoint& checkpoint : checkpoints_) {
        CounterValues& counted = checkpoint.counted[entry];
        counted.uplink = SaturatingAdd(counted.uplink, delta.uplink);
        counted.downlink = SaturatingAdd(counted.downlink, delta.downlink);
      }
    }
    entry->last = values;
    entry->generation = generation;
  }
  if (result.new_instance) checkpoints_.clear();
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
  // The sightings since a checkpoint may yet prove a newer instance's.
  if (!checkpoints_.empty()) {
    batch.instance.start = checkpoints_.front().before;
  }
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
