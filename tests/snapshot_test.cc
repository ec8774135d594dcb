#include "snapshot.h"

#include <gtest/gtest.h>

namespace boxmeter {
namespace {

constexpr int64_t kNow = 500'000;  // CLOCK_MONOTONIC ms
constexpr int64_t kWallNow = 1'700'000'100'000;

StatsReply Reply(std::vector<RawStat> stats, uint32_t uptime_s = 100) {
  StatsReply reply;
  reply.boot_id = "boot-a";
  reply.same_kernel = true;
  reply.answered_wall_ms = kWallNow;
  reply.before = {kNow - 30, kNow - 20, uptime_s};
  reply.stats = std::move(stats);
  reply.after = {kNow - 10, kNow, uptime_s};
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
  EXPECT_EQ(snapshot.taken_at_ms, kWallNow);
  // Before: (kNow - 30 - 101 s, kNow - 20 + 1 - 100 s); after: (kNow - 10 -
  // 101 s, kNow + 1 - 100 s). The instance started inside both, and read
  // its counters between the first request and the last answer.
  EXPECT_EQ(snapshot.instance,
            (InstanceSighting{"boot-a",
                              true,
                              {kNow - 10 - 101'000, kNow - 19 - 100'000},
                              kNow - 30,
                              kNow}));
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

TEST(SnapshotTest, UptimeTruncationIsOneInstance) {
  StatsReply reply = Reply({});
  reply.before = {kNow - 901, kNow - 900, 99};  // 99.9 s truncated to 99
  reply.after = {kNow - 1, kNow, 100};
  Snapshot snapshot;
  ASSERT_TRUE(MakeSnapshot(reply, &snapshot).ok());
  // Before: (kNow - 100.901 s, kNow - 99.899 s); after: (kNow - 101.001 s,
  // kNow - 99.999 s).
  EXPECT_EQ(snapshot.instance.start,
            (StartInterval{kNow - 901 - 100'000, kNow + 1 - 100'000}));
}

TEST(SnapshotTest, ALateAnswerWidensTheIntervalWithoutShiftingIt) {
  StatsReply reply = Reply({});
  // The first answer took 1.5 s to arrive, the second 20 ms.
  reply.before = {kNow - 1'600, kNow - 100, 100};
  reply.after = {kNow - 20, kNow, 100};
  Snapshot snapshot;
  ASSERT_TRUE(MakeSnapshot(reply, &snapshot).ok());
  EXPECT_EQ(snapshot.instance.start,
            (StartInterval{kNow - 20 - 101'000, kNow - 99 - 100'000}));
}

TEST(SnapshotTest, AnswersWhoseIntervalsOnlyTouchAreTwoInstances) {
  StatsReply reply = Reply({});
  // Before: started in (kNow - 1000 - 101 s, kNow - 999 - 100 s).
  reply.before = {kNow - 1'000, kNow - 1'000, 100};
  // 1 ms later the uptime is 99: started in (kNow - 999 - 100 s, ...).
  reply.after = {kNow - 999, kNow - 999, 99};
  Snapshot snapshot;
  EXPECT_EQ(MakeSnapshot(reply, &snapshot).code(), Status::Code::kUnavailable);
  // Sent 1 ms earlier, the two intervals share one millisecond.
  reply.after.sent_ms -= 1;
  ASSERT_TRUE(MakeSnapshot(reply, &snapshot).ok());
  EXPECT_EQ(snapshot.instance.start,
            (StartInterval{kNow - 1'000 - 100'000, kNow - 999 - 100'000}));
}

TEST(SnapshotTest, ARemoteSourceAllowsForClockDrift) {
  StatsReply reply = Reply({});
  reply.same_kernel = false;
  Snapshot snapshot;
  ASSERT_TRUE(MakeSnapshot(reply, &snapshot).ok());
  // 101 s at 500 ppm: 50.5 ms, rounded up, on each side.
  EXPECT_EQ(snapshot.instance.start, (StartInterval{kNow - 10 - 101'000 - 51,
                                                    kNow - 19 - 100'000 + 51}));
  EXPECT_FALSE(snapshot.instance.same_kernel);
}

}  // namespace
}  // namespace boxmeter
