#include "snapshot.h"

#include <fmt/core.h>

#include <algorithm>

namespace boxmeter {

Status MakeSnapshot(const StatsReply& reply, Snapshot* out) {
  int64_t start_before =
      reply.before.at_ms - int64_t{reply.before.uptime_s} * 1000;
  int64_t start_after =
      reply.after.at_ms - int64_t{reply.after.uptime_s} * 1000;
  if (!SameInstance(start_before, start_after)) {
    return Status::Unavailable(fmt::format(
        "the stats service restarted during the fetch (uptime {}s before the "
        "query, {}s after); the next poll will read the new instance",
        reply.before.uptime_s, reply.after.uptime_s));
  }
  Snapshot snapshot;
  snapshot.taken_at_ms = reply.after.at_ms;
  // The later sample is the closer one to the query's answer.
  snapshot.instance_start_ms = start_after;
  snapshot.counters.reserve(reply.stats.size() / 2 + 1);
  // A full name seen twice is a duplicate; two directions of one key are not.
  std::unordered_map<CounterKey, uint8_t, CounterKeyHash> seen_directions;
  seen_directions.reserve(reply.stats.size() / 2 + 1);
  for (const RawStat& stat : reply.stats) {
    std::optional<CounterName> name = ParseCounterName(stat.name);
    if (!name) {
      if (snapshot.malformed++ == 0) snapshot.first_malformed = stat.name;
      continue;
    }
    if (stat.value < 0) {
      ++snapshot.negative;
      continue;
    }
    uint8_t bit = name->direction == Direction::kUplink ? 1 : 2;
    uint8_t& seen = seen_directions[name->key];
    CounterValues& values = snapshot.counters[name->key];
    int64_t& slot =
        name->direction == Direction::kUplink ? values.uplink : values.downlink;
    if (seen & bit) {
      ++snapshot.duplicates;
      // Counters only grow: of two reads, the larger is the later.
      slot = std::max(slot, stat.value);
      continue;
    }
    seen |= bit;
    slot = stat.value;
  }
  *out = std::move(snapshot);
  return Status::Ok();
}

}  // namespace boxmeter
