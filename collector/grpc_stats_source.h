// GrpcStatsSource: the StatsSource that reads sing-box's (or v2ray-core's)
// V2Ray-compatible StatsService over gRPC.
//
// One fetch is three unary calls chained with gRPC's callback API:
// GetSysStats, QueryStats, GetSysStats, each with its own deadline. The
// query sends both `pattern` (read by v2ray-core 4.x) and one `patterns`
// entry (read by sing-box) for ">>>traffic>>>", and never resets: a reset
// read that is then lost would lose traffic. The reply is returned raw;
// MakeSnapshot drops the duplicates sing-box may send.
//
// Each uptime answer is stamped with the HostClock's monotonic time before
// the request and after the answer. The reply says whether the source shares
// this kernel: when its address is a loopback one (IsLoopbackAddress), which
// is how a sidecar reaches sing-box. A tunnel from loopback to another
// machine would break that assumption (see instance_identity.h).
//
// The channel is created once and reused. It has no TLS (the API has none)
// and ignores http_proxy (the API lives on loopback or in the pod). Its
// reconnect backoff is capped at 2 s, so a sing-box that restarted
// is seen again on the next poll.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "host_clock.h"
#include "stats_source.h"

namespace boxmeter {

class GrpcStatsSource : public StatsSource {
 public:
  // `address` is host:port (sing-box's experimental.v2ray_api.listen).
  // `max_message_size` is source.max_message_size in bytes: the largest
  // reply accepted. gRPC takes an int, so anything above INT_MAX means
  // INT_MAX; zero or below means no limit. Connects lazily: constructing
  // never fails, and an unreachable address shows up in Fetch.
  GrpcStatsSource(std::string address, int64_t max_message_size,
                  HostClock clock = HostClock::System());

  // Cancels a fetch in progress and waits until its `done` has returned and
  // gRPC has let go of it, so `done` never runs after the source is gone.
  // Called from inside `done` it cannot wait for that `done`: it returns at
  // once and a helper thread releases the channel later.
  ~GrpcStatsSource() override;

  GrpcStatsSource(const GrpcStatsSource&) = delete;
  GrpcStatsSource& operator=(const GrpcStatsSource&) = delete;

  // See StatsSource. `done` runs on a gRPC thread and must not block; the
  // fetch counts as over when `done` starts, so `done` may start the next.
  // A Fetch while one is in progress calls its `done` at once, here, with
  // kError. On failure the reply is empty. Besides the contract's codes:
  // kError for a reply larger than source.max_message_size (the message says
  // so) and for anything else gRPC reports (its code and message included).
  void Fetch(std::chrono::milliseconds timeout, Callback done) override;

  const std::string& address() const;

 private:
  struct Shared;  // the stub and the fetch in progress; outlives this object
                  // while a call is in flight
  class Call;     // one fetch

  std::shared_ptr<Shared> shared_;
};

}  // namespace boxmeter
