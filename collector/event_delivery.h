// EventDelivery: which usage event the collector hands to hooks.on_event
// next, and when it reads or marks events (schema/0013_event_delivery.sql).
// Pure: the collector does the database calls and runs the hook, and tells
// it what happened.
//
// At most one read per poll, and only when nothing is left of the previous
// one: events come in id order and go to the hook one at a time, the next
// only once the previous one is marked delivered. A hook run that fails
// leaves the event undelivered and drops the rest of the batch, so the next
// read (no earlier than the backoff, 1 s doubling up to 5 min, on a later
// poll) starts from that event again: events reach the hook in id order.
//
// Delivery is at least once towards the hook: a crash between a successful
// run and its mark hands the event over again, with the same id.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

#include "store.h"

namespace boxmeter {

class EventDelivery {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds kMinBackoff{1000};
  static constexpr std::chrono::milliseconds kMaxBackoff{300000};
  // Events read at a time.
  static constexpr int kBatch = 100;

  // A new poll: one read may start, and a failed mark is tried again.
  void Tick() {
    read_in_poll_ = false;
    mark_held_ = false;
  }

  // Whether a read is due: none yet in this poll, nothing left of the last
  // one, and any backoff after a failed run is over.
  bool WantsRead(Clock::time_point now) const;
  void ReadStarted() { read_in_poll_ = true; }
  // What the read returned (in id order).
  void Read(std::vector<UsageEvent> events);

  // The event to run the hook for now, or null: none is running or waiting
  // for its mark.
  const UsageEvent* Next() const;
  // The hook now runs for Next().
  void Started();
  // The run for event `id` ended: `ok` when the hook exited 0. Returns the
  // backoff before the next try when it failed.
  std::chrono::milliseconds Finished(int64_t id, bool ok,
                                     Clock::time_point now);

  // An event whose hook succeeded and that is not marked yet (none after a
  // failed mark until the next poll).
  std::optional<int64_t> ToMark() const {
    return mark_held_ ? std::nullopt : to_mark_;
  }
  void Marked() { to_mark_.reset(); }
  void MarkFailed() { mark_held_ = true; }

  // Stop handing out what was read (this collector is no longer the node's
  // writer); a running hook and a mark due are still seen through.
  void Drop() { queue_.clear(); }

  bool running() const { return running_ != 0; }
  int64_t delivered() const { return delivered_; }
  int64_t failed() const { return failed_; }

 private:
  std::deque<UsageEvent> queue_;
  int64_t running_ = 0;  // the event whose hook runs; 0: none
  std::optional<int64_t> to_mark_;
  bool read_in_poll_ = false;
  bool mark_held_ = false;
  int failures_in_a_row_ = 0;
  Clock::time_point retry_after_{};
  int64_t delivered_ = 0;
  int64_t failed_ = 0;
};

}  // namespace boxmeter
