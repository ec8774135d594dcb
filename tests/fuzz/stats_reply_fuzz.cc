// Fuzzes the decoding of a stats reply: the input is parsed as a
// QueryStatsResponse (the bytes a hostile or broken peer could send), turned
// into a Snapshot and fed to a DeltaEngine. Properties, beyond "no crash,
// no UB":
//   - every stat is accounted for exactly once: kept (one direction of one
//     counter), a duplicate, malformed, or negative;
//   - the snapshot holds no negative value;
//   - a first commit carries exactly the snapshot's values, and the same
//     snapshot observed again leaves nothing pending;
//   - a second snapshot of the same instance adds exactly the growth.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>

#include "delta_engine.h"
#include "fuzz_check.h"
#include "snapshot.h"
#include "stats.pb.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace boxmeter;
  v2ray::core::app::stats::command::QueryStatsResponse response;
  if (!response.ParseFromArray(data, static_cast<int>(size))) return 0;

  StatsReply reply;
  reply.same_kernel = true;
  reply.before = {1'000'000, 1'000'010, 3600};
  reply.after = {1'000'240, 1'000'250, 3600};
  for (const auto& stat : response.stat()) {
    reply.stats.push_back({stat.name(), stat.value()});
  }
  Snapshot snapshot;
  FUZZ_CHECK(MakeSnapshot(reply, &snapshot).ok());
  size_t kept = 0;
  for (const auto& [key, values] : snapshot.counters) {
    FUZZ_CHECK(values.uplink >= 0 && values.downlink >= 0);
    FUZZ_CHECK(!key.name.empty());
  }
  // Count the directions kept independently of MakeSnapshot.
  std::map<std::pair<CounterKey, Direction>, int> seen;
  for (const RawStat& stat : reply.stats) {
    std::optional<CounterName> name = ParseCounterName(stat.name);
    if (name && stat.value >= 0) ++seen[{name->key, name->direction}];
  }
  kept = seen.size();
  FUZZ_CHECK(kept + snapshot.duplicates + snapshot.malformed +
                 snapshot.negative ==
             reply.stats.size());

  DeltaEngine engine;
  engine.Load(0, {}, {});
  engine.Observe(snapshot);
  CommitBatch batch = engine.Prepare();
  FUZZ_CHECK(batch.expected_seq == 0);
  for (const CommitRow& row : batch.rows) {
    FUZZ_CHECK(row.delta == snapshot.counters.at(row.key));
    FUZZ_CHECK(row.baseline == snapshot.counters.at(row.key));
  }
  engine.Committed();
  engine.Observe(snapshot);
  FUZZ_CHECK(!engine.HasPending());

  // The same instance a second later, every counter grown by 1 byte up and
  // (unless saturated) 2 bytes down.
  Snapshot later = snapshot;
  later.taken_at_ms += 1000;
  for (auto& [key, values] : later.counters) {
    if (values.uplink < INT64_MAX) ++values.uplink;
    if (values.downlink < INT64_MAX - 1) values.downlink += 2;
  }
  engine.Observe(later);
  if (engine.HasPending()) {
    CommitBatch second = engine.Prepare();
    FUZZ_CHECK(second.expected_seq == 1);
    for (const CommitRow& row : second.rows) {
      const CounterValues& before = snapshot.counters.at(row.key);
      const CounterValues& after = later.counters.at(row.key);
      FUZZ_CHECK(row.delta.uplink == after.uplink - before.uplink);
      FUZZ_CHECK(row.delta.downlink == after.downlink - before.downlink);
    }
    engine.NotCommitted();
  }
  return 0;
}
