// Hostile names and extreme values end to end through the core and a real
// PostgreSQL: MakeSnapshot -> DeltaEngine -> PgStore -> the views, and back
// through LoadNode, as the collector does it.
#include <gtest/gtest.h>

#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "delta_engine.h"
#include "pg_database_test.h"
#include "pg_store.h"
#include "snapshot.h"

namespace boxmeter {
namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
constexpr int64_t kStartMs = 1'767'320'000'000;

class HostilePgTest : public testing::PgDatabaseTest {
 protected:
  HostilePgTest() : PgDatabaseTest("hostile") {}

  void SetUp() override {
    PgDatabaseTest::SetUp();
    if (HasFatalFailure()) return;
    store_ = std::make_unique<PgStore>(url(), "hostile-node");
    Status status = store_->Migrate();
    ASSERT_TRUE(status.ok()) << status.message();
    Load();
  }

  // (Re)loads the engine from the database, as a collector start does.
  void Load() {
    NodeState state;
    Status status = store_->LoadNode(&state);
    ASSERT_TRUE(status.ok()) << status.message();
    engine_ = DeltaEngine();
    engine_.Load(state.commit_seq, state.instance, state.baselines);
  }

  // One poll and commit of `stats` (uplink/downlink per name) from the
  // instance that started at `start_ms`.
  void PollAndCommit(const std::map<std::string, CounterValues>& counters,
                     int64_t start_ms = kStartMs) {
    StatsReply reply;
    poll_ms_ += 1000;
    uint32_t uptime = static_cast<uint32_t>((poll_ms_ - start_ms) / 1000);
    reply.boot_id = "boot";
    reply.same_kernel = true;
    reply.answered_wall_ms = poll_ms_;
    reply.before = {poll_ms_, poll_ms_, uptime};
    reply.after = {poll_ms_, poll_ms_, uptime};
    for (const auto& [name, values] : counters) {
      reply.stats.push_back(
          {FormatCounterName(CounterKind::kUser, name, Direction::kUplink),
           values.uplink});
      reply.stats.push_back(
          {FormatCounterName(CounterKind::kUser, name, Direction::kDownlink),
           values.downlink});
    }
    Snapshot snapshot;
    ASSERT_TRUE(MakeSnapshot(reply, &snapshot).ok());
    engine_.Observe(snapshot);
    if (!engine_.HasPending()) return;
    CommitResult result = store_->Commit(engine_.Prepare());
    ASSERT_EQ(result.outcome, CommitOutcome::kApplied)
        << result.status.message();
    engine_.Committed();
  }

  // user_traffic as name -> "uplink|downlink|total".
  std::map<std::string, std::string> UserTraffic() {
    std::map<std::string, std::string> out;
    // One row per line; names may hold anything, so select them encoded.
    std::string rows = server().Query(
        database(),
        "SELECT encode(convert_to(name, 'UTF8'), 'hex') || '|' || uplink "
        "|| '|' || downlink || '|' || total FROM user_traffic");
    size_t start = 0;
    while (start < rows.size()) {
      size_t end = rows.find('\n', start);
      if (end == std::string::npos) end = rows.size();
      std::string row = rows.substr(start, end - start);
      start = end + 1;
      if (row.empty()) continue;
      size_t bar = row.find('|');
      std::string hex = row.substr(0, bar), name;
      for (size_t i = 0; i + 1 < hex.size(); i += 2) {
        name += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
      }
      out[name] = row.substr(bar + 1);
    }
    return out;
  }

  std::unique_ptr<PgStore> store_;
  DeltaEngine engine_;
  int64_t poll_ms_ = kStartMs + 3'600'000;
};

// 64 KiB of printable ASCII: repetitive (PostgreSQL compresses it) or
// random (it cannot).
std::string LongName(bool random) {
  std::string name = "long>>>";
  std::mt19937 rng(7);
  while (name.size() < 64 * 1024) {
    name += random ? static_cast<char>(' ' + rng() % 95)
                   : "ab'\"\\>>>"[name.size() % 8];
  }
  return name;
}

TEST_F(HostilePgTest, HostileNamesSurviveTheWholePath) {
  const std::map<std::string, CounterValues> counters = {
      {"it's \"quoted\"", {1, 2}},
      {"back\\slash\\", {3, 4}},
      {"\\N", {5, 6}},
      {"'; DROP TABLE counters; --", {7, 8}},
      {"$1); DELETE FROM nodes; --", {9, 10}},
      {"ünïcødé 用户 🚀 \u202eRTL\u202c zero\u200bwidth", {11, 12}},
      {">>>", {13, 14}},
      {"a>>>b>>>traffic>>>uplink", {15, 16}},
      {"tab\tnew\nline", {17, 18}},
      {LongName(false), {19, 20}},
  };
  PollAndCommit(counters);
  std::map<std::string, std::string> traffic = UserTraffic();
  ASSERT_EQ(traffic.size(), counters.size());
  for (const auto& [name, values] : counters) {
    EXPECT_EQ(traffic[name],
              std::to_string(values.uplink) + "|" +
                  std::to_string(values.downlink) + "|" +
                  std::to_string(values.uplink + values.downlink))
        << name.substr(0, 60);
  }
  // A restarted collector continues from the stored baselines: the same
  // values again add nothing, so every name came back byte for byte.
  Load();
  PollAndCommit(counters);
  EXPECT_EQ(UserTraffic(), traffic);
  EXPECT_EQ(server().Query(database(), "SELECT commit_seq FROM nodes"), "1");
}

TEST_F(HostilePgTest, AnIncompressibleLongNameDoesNotBlockTheNode) {
  // 64 KiB of random text does not fit a btree index entry (about 2.7 kB).
  // Whatever happens to that one counter, the node's other counters must
  // keep being committed.
  PollAndCommit({{LongName(true), {1, 1}}, {"alice", {10, 20}}});
  PollAndCommit({{LongName(true), {2, 2}}, {"alice", {30, 40}}});
  EXPECT_EQ(UserTraffic()["alice"], "30|40|70");
}

TEST_F(HostilePgTest, MaximumValuesSaturateEndToEnd) {
  // The largest value sing-box could report, then a restart that counts it
  // again: totals, history and views stay at the bigint maximum instead of
  // failing (which would block every later commit) or wrapping.
  PollAndCommit({{"huge", {kMax, kMax}}, {"zero", {0, 0}}});
  const std::string max = std::to_string(kMax);
  EXPECT_EQ(UserTraffic()["huge"], max + "|" + max + "|" + max);
  PollAndCommit({{"huge", {kMax, kMax}}, {"zero", {0, 0}}}, kStartMs + 600'000);
  EXPECT_EQ(UserTraffic()["huge"], max + "|" + max + "|" + max);
  EXPECT_EQ(server().Query(database(),
                           "SELECT h.uplink, h.downlink FROM counter_hourly h "
                           "JOIN counters c ON c.id = h.counter_id "
                           "WHERE c.name = 'huge'"),
            max + "|" + max);
  // A counter that never moved is not written (nothing to add); once it
  // moves it is.
  EXPECT_EQ(UserTraffic().count("zero"), 0u);
  PollAndCommit({{"huge", {kMax, kMax}}, {"zero", {0, 5}}}, kStartMs + 600'000);
  EXPECT_EQ(UserTraffic()["zero"], "0|5|5");
  EXPECT_EQ(UserTraffic()["huge"], max + "|" + max + "|" + max);
}

}  // namespace
}  // namespace boxmeter
