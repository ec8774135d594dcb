#include "event_delivery.h"

#include <algorithm>

namespace boxmeter {

bool EventDelivery::WantsRead(Clock::time_point now) const {
  return !read_in_poll_ && queue_.empty() && running_ == 0 && !to_mark_ &&
         now >= retry_after_;
}

void EventDelivery::Read(std::vector<UsageEvent> events) {
  queue_.assign(std::make_move_iterator(events.begin()),
                std::make_move_iterator(events.end()));
}

const UsageEvent* EventDelivery::Next() const {
  if (running_ != 0 || to_mark_ || queue_.empty()) return nullptr;
  return &queue_.front();
}

void EventDelivery::Started() {
  if (const UsageEvent* next = Next()) running_ = next->id;
}

std::chrono::milliseconds EventDelivery::Finished(int64_t id, bool ok,
                                                  Clock::time_point now) {
  if (running_ == id) running_ = 0;
  if (!queue_.empty() && queue_.front().id == id) queue_.pop_front();
  if (ok) {
    ++delivered_;
    failures_in_a_row_ = 0;
    to_mark_ = id;
    return std::chrono::milliseconds(0);
  }
  ++failed_;
  ++failures_in_a_row_;
  // The rest waits: the next read starts from this event again.
  queue_.clear();
  std::chrono::milliseconds backoff = kMinBackoff;
  for (int i = 1; i < failures_in_a_row_ && backoff < kMaxBackoff; ++i) {
    backoff *= 2;
  }
  backoff = std::min(backoff, kMaxBackoff);
  retry_after_ = now + backoff;
  return backoff;
}

}  // namespace boxmeter
