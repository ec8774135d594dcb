// StableClock: wall-clock milliseconds that never jump while the process
// runs: the wall clock read once at construction plus steady time since.
//
// The collector identifies a sing-box instance by its start time, now minus
// its uptime. With the plain wall clock an NTP step of a few seconds would
// make every counter look like a new instance and count its whole value
// again. With this clock only a collector restart re-reads the wall clock.
#pragma once

#include <chrono>
#include <cstdint>

namespace boxmeter {

class StableClock {
 public:
  StableClock()
      : wall_at_start_ms_(
            std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::system_clock::now().time_since_epoch())
                .count()),
        steady_at_start_(std::chrono::steady_clock::now()) {}

  int64_t NowMs() const {
    return wall_at_start_ms_ +
           std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now() - steady_at_start_)
               .count();
  }

 private:
  int64_t wall_at_start_ms_;
  std::chrono::steady_clock::time_point steady_at_start_;
};

}  // namespace boxmeter
