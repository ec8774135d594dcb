#include "snapshot.h"

#include <gtest/gtest.h>

namespace boxmeter {
namespace {

constexpr int64_t kNow = 1'700'000'100'000;

StatsReply Reply(std::vector<RawStat> stats, uint32_t uptime_s = 100) {
  StatsReply reply;
  reply.before = {kNow - 20, uptime_s};
  reply.stats = std::move(stats);
  reply.after = {kNow, uptime_s};
  return reply;
}

TEST(SnapshotTest, MergesDirectionsIntoOneEntry) {
  Snapshot snapshot;
  ASSERT_TRUE(MakeSnapshot(Reply({{"user>>>a>>>traffic>>>uplink", 10},
                                  {"user>>>a>>>traffic>>>downlink", 20},
                                  {"inbound>>>a>>>traffic>>>uplink", 30}}),
                           &snapshot)
                  .ok());
  ASSERT_EQ(snapshot.counters.size(), 2u);
  EXPECT_EQ((snapshot.counters[{CounterKind::kUser, "a"}]),
            (CounterValues{10, 20}));
  EXPECT_EQ((snapshot.counters[{CounterKind::kInbound, "a"}]),
            (CounterValues{30, 0}));
  EXPECT_EQ(snapshot.taken_at_ms, kNow);
  EXPECT_EQ(snapshot.instance_start_ms, kNow - 100'000);
}

TEST(SnapshotTest, DropsDuplicatesKeepingTheLargerValue) {
  Snapshot snapshot;
  ASSERT_TRUE(MakeSnapshot(Reply({{"user>>>a>>>traffic>>>uplink", 10},
                                  {"user>>>a>>>traffic>>>uplink", 12},
                                  {"user>>>a>>>traffic>>>uplink", 11}}),
                           &snapshot)
                  .ok());
  EXPECT_EQ(snapshot.duplicates, 2u);
  EXPECT_EQ((snapshot.counters[{CounterKind::kUser, "a"}].uplink), 12);
}

TEST(SnapshotTest, CountsMalformedAndNegativeWithoutKeepingThem) {
  Snapshot snapshot;
  ASSERT_TRUE(MakeSnapshot(Reply({{"bogus", 1},
                                  {"user>>>a>>>traffic>>>sideways", 2},
                                  {"user>>>b>>>traffic>>>uplink", -5}}),
                           &snapshot)
                  .ok());
  EXPECT_TRUE(snapshot.counters.empty());
  EXPECT_EQ(snapshot.malformed, 2u);
  EXPECT_EQ(snapshot.first_malformed, "bogus");
  EXPECT_EQ(snapshot.negative, 1u);
}

TEST(SnapshotTest, RestartDuringTheFetchIsRefused) {
  StatsReply reply = Reply({{"user>>>a>>>traffic>>>uplink", 1}}, 500);
  reply.after.uptime_s = 0;  // sing-box restarted between the calls
  Snapshot snapshot;
  Status status = MakeSnapshot(reply, &snapshot);
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.code(), Status::Code::kUnavailable);
  EXPECT_NE(status.message().find("restarted during the fetch"),
            std::string::npos);
}

TEST(SnapshotTest, UptimeTruncationIsWithinTolerance) {
  StatsReply reply = Reply({});
  reply.before = {kNow - 900, 99};  // 99.9 s truncated to 99
  reply.after = {kNow, 100};
  Snapshot snapshot;
  EXPECT_TRUE(MakeSnapshot(reply, &snapshot).ok());
}

}  // namespace
}  // namespace boxmeter
