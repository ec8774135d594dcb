// FakeStatsSource: a StatsSource whose counters and uptime the test sets.
// Fetch answers at once, on the caller's thread. Thread-safe.
#pragma once

#include <map>
#include <mutex>

#include "counter_name.h"
#include "stats_source.h"

namespace boxmeter::testing {

class FakeStatsSource : public StatsSource {
 public:
  void Fetch(std::chrono::milliseconds, Callback done) override {
    Status status;
    StatsReply reply;
    {
      std::lock_guard lock(mu_);
      ++fetches_;
      status = failure_;
      if (status.ok() && fail_next_ > 0) {
        --fail_next_;
        status = Status::Unavailable("sing-box is not listening yet");
      }
      if (status.ok()) {
        // The instance started at start_ms_; uptime is in whole seconds.
        uint32_t uptime = static_cast<uint32_t>((now_ms_ - start_ms_) / 1000);
        // The monotonic clock shares the wall clock's origin: nothing
        // here steps.
        reply.boot_id = "fake-boot";
        reply.same_kernel = true;
        reply.answered_wall_ms = now_ms_;
        reply.before = {now_ms_, now_ms_, uptime};
        reply.after = {now_ms_, now_ms_, uptime};
        for (const auto& [name, value] : counters_) {
          reply.stats.push_back({name, value});
        }
      }
      now_ms_ += 1000;  // each fetch is a second later
    }
    done(status, std::move(reply));
  }

  void Add(CounterKind kind, const std::string& name, int64_t up,
           int64_t down) {
    std::lock_guard lock(mu_);
    counters_[FormatCounterName(kind, name, Direction::kUplink)] += up;
    counters_[FormatCounterName(kind, name, Direction::kDownlink)] += down;
  }
  // A sing-box restart or reload: every counter gone, uptime from zero.
  void Restart() {
    std::lock_guard lock(mu_);
    counters_.clear();
    now_ms_ += 10'000;
    start_ms_ = now_ms_;
  }
  void Fail(Status status) {
    std::lock_guard lock(mu_);
    failure_ = status;
  }
  // The next `count` fetches fail, as while gRPC waits out its reconnect
  // backoff after a sing-box restart.
  void FailNext(int count) {
    std::lock_guard lock(mu_);
    fail_next_ = count;
  }
  int fetches() {
    std::lock_guard lock(mu_);
    return fetches_;
  }

 private:
  std::mutex mu_;
  std::map<std::string, int64_t> counters_;
  int64_t start_ms_ = 1'700'000'000'000;
  int64_t now_ms_ = start_ms_ + 100'000;
  Status failure_;
  int fail_next_ = 0;
  int fetches_ = 0;
};

}  // namespace boxmeter::testing
