// StatsReply: what one fetch from the stats API returned, before any
// interpretation. A StatsSource produces it; MakeSnapshot turns it into a
// Snapshot.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace boxmeter {

struct RawStat {
  std::string name;
  int64_t value = 0;
};

// One GetSysStats answer: the service's uptime in whole seconds, and when
// the request was sent and the answer received, in milliseconds (rounded
// down) of the collector host's CLOCK_MONOTONIC (see HostClock): a clock that
// never steps, the one the service's uptime is measured on.
struct UptimeSample {
  int64_t sent_ms = 0;
  int64_t received_ms = 0;
  uint32_t uptime_s = 0;
};

// A fetch asks for the uptime before and after QueryStats, so a sing-box
// restart in the middle of the fetch is seen instead of mixing two instances.
struct StatsReply {
  // The kernel boot the samples' clock belongs to
  // (/proc/sys/kernel/random/boot_id); empty when unknown.
  std::string boot_id;
  // The source runs on this kernel (a loopback address), so it measures its
  // uptime on the very clock the samples are taken on.
  bool same_kernel = false;
  // Wall-clock milliseconds since the epoch when QueryStats answered: only
  // files the traffic under an hour of the history.
  int64_t answered_wall_ms = 0;
  UptimeSample before;
  std::vector<RawStat> stats;
  UptimeSample after;
};

}  // namespace boxmeter
