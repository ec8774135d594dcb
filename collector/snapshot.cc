#include "snapshot.h"

#include <fmt/core.h>

#include <algorithm>

#include "safe_text.h"

namespace boxmeter {

Status MakeSnapshot(const StatsReply& reply, Snapshot* out) {
  StartInterval before = StartIntervalOf(reply.before, reply.same_kernel);
  StartInterval after = StartIntervalOf(reply.after, reply.same_kernel);
  if (!before.Overlaps(after)) {
    return Status::Unavailable(fmt::format(
        "the stats service restarted during the fetch (uptime {}s before the "
        "query, {}s after); the next poll will read the new instance",
        reply.before.uptime_s, reply.after.uptime_s));
  }
  Snapshot snapshot;
  snapshot.taken_at_ms = reply.answered_wall_ms;
  snapshot.instance = {reply.boot_id, reply.same_kernel,
                       before.Intersect(after), reply.before.sent_ms,
                       reply.after.received_ms};
  snapshot.counters.reserve(reply.stats.size() / 2 + 1);
  // A direction not seen yet holds kUnseen (values below zero are skipped
  // before they get here), so one map both merges the two directions of a
  // key and spots a full name seen twice. A second map of seen directions
  // cost a third of the time of a large poll.
  constexpr int64_t kUnseen = -1;
  size_t half_seen = 0;  // entries still holding a kUnseen
  for (const RawStat& stat : reply.stats) {
    std::optional<CounterName> name = ParseCounterName(stat.name);
    if (!name) {
      // The peer's text: escaped and cut here, so the log line cannot
      // rewrite a terminal and a huge name is not copied.
      if (snapshot.malformed++ == 0) {
        snapshot.first_malformed = SafeText(stat.name, kMaxShownName);
      }
      continue;
    }
    if (stat.value < 0) {
      ++snapshot.negative;
      continue;
    }
    auto [it, inserted] = snapshot.counters.try_emplace(
        std::move(name->key), CounterValues{kUnseen, kUnseen});
    int64_t& slot = name->direction == Direction::kUplink ? it->second.uplink
                                                          : it->second.downlink;
    if (slot != kUnseen) {
      ++snapshot.duplicates;
      // Counters only grow: of two reads, the larger is the later.
      slot = std::max(slot, stat.value);
      continue;
    }
    slot = stat.value;
    if (inserted) {
      ++half_seen;
    } else if (it->second.uplink != kUnseen && it->second.downlink != kUnseen) {
      --half_seen;
    }
  }
  // A direction that was never reported is zero.
  if (half_seen > 0) {
    for (auto& [key, values] : snapshot.counters) {
      if (values.uplink == kUnseen) values.uplink = 0;
      if (values.downlink == kUnseen) values.downlink = 0;
    }
  }
  *out = std::move(snapshot);
  return Status::Ok();
}

}  // namespace boxmeter
