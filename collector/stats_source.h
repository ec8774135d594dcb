// StatsSource: where the collector reads cumulative counters from. The real
// one is GrpcStatsSource (sing-box's or v2ray-core's StatsService); tests use
// hand-written fakes.
#pragma once

#include <chrono>
#include <functional>

#include "stats_reply.h"
#include "status.h"

namespace boxmeter {

class StatsSource {
 public:
  using Callback = std::function<void(Status status, StatsReply reply)>;

  virtual ~StatsSource() = default;

  // Starts one fetch: GetSysStats, QueryStats for every traffic counter
  // (never resetting them), GetSysStats again. `done` is called exactly once,
  // on any thread, within about `timeout` per call. On failure the status
  // says what went wrong and what to do about it:
  //   kUnavailable    nothing listens at the address, or it went away
  //   kUnimplemented  the stats service is not compiled in or not enabled
  //   kDeadline       no answer within `timeout`
  // Only one fetch is in progress at a time.
  virtual void Fetch(std::chrono::milliseconds timeout, Callback done) = 0;
};

}  // namespace boxmeter
