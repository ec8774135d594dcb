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

// One GetSysStats answer: the service's uptime and when (on the collector's
// clock, in milliseconds since the epoch) the answer arrived.
struct UptimeSample {
  int64_t at_ms = 0;
  uint32_t uptime_s = 0;
};

// A fetch asks for the uptime before and after QueryStats, so a sing-box
// restart in the middle of the fetch is seen instead of mixing two instances.
struct StatsReply {
  UptimeSample before;
  std::vector<RawStat> stats;
  UptimeSample after;
};

}  // namespace boxmeter
