// The instance identity's arithmetic at every boundary, with made-up clock
// readings: the uptime rule is sing-box v1.13.2's experimental/v2rayapi/
// stats.go (`uint32(time.Since(createdAt).Seconds())`, whole seconds
// truncated, on Go's monotonic clock).
#include "instance_identity.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace boxmeter {
namespace {

constexpr int64_t kStart = 7'200'000;  // the instance's start, monotonic ms

// What sing-box answers when it reads its clock at `read_ms`.
uint32_t UptimeAt(int64_t read_ms) {
  return static_cast<uint32_t>((read_ms - kStart) / 1000);
}

bool Contains(const StartInterval& interval, int64_t ms) {
  return interval.lo_ms < ms && ms < interval.hi_ms;
}

TEST(InstanceIdentityTest, AnAnswerBoundsTheStartByOneSecondPlusTheRoundTrip) {
  UptimeSample sample{kStart + 42'300, kStart + 42'350,
                      UptimeAt(kStart + 42'320)};
  EXPECT_EQ(sample.uptime_s, 42u);
  StartInterval start = StartIntervalOf(sample, true);
  EXPECT_EQ(start, (StartInterval{kStart + 42'300 - 43'000,
                                  kStart + 42'351 - 42'000}));
  EXPECT_EQ(start.hi_ms - start.lo_ms, 1000 + 50 + 1);
  EXPECT_TRUE(Contains(start, kStart));
}

TEST(InstanceIdentityTest, BothEndsOfTheTruncationStillContainTheStart) {
  // Read exactly at a whole second, and 1 ms before the next one.
  StartInterval exact = StartIntervalOf(
      {kStart + 5000, kStart + 5000, UptimeAt(kStart + 5000)}, true);
  StartInterval late = StartIntervalOf(
      {kStart + 5999, kStart + 5999, UptimeAt(kStart + 5999)}, true);
  EXPECT_EQ(exact, (StartInterval{kStart - 1000, kStart + 1}));
  EXPECT_EQ(late, (StartInterval{kStart - 1, kStart + 1000}));
  ASSERT_TRUE(exact.Overlaps(late));
  // Together they leave one possible millisecond: the true one.
  EXPECT_EQ(exact.Intersect(late), (StartInterval{kStart - 1, kStart + 1}));
}

TEST(InstanceIdentityTest, LatencyWidensTheIntervalAndNeverShiftsIt) {
  for (int64_t latency : {0, 10, 1500}) {
    for (int64_t read_at : {int64_t{0}, latency / 2, latency}) {
      SCOPED_TRACE(testing::Message() << latency << " ms, read at " << read_at);
      int64_t sent = kStart + 86'400'123;
      StartInterval start = StartIntervalOf(
          {sent, sent + latency, UptimeAt(sent + read_at)}, true);
      EXPECT_TRUE(Contains(start, kStart));
      EXPECT_EQ(start.hi_ms - start.lo_ms, 1001 + latency);
    }
  }
}

TEST(InstanceIdentityTest, TouchingIntervalsDoNotOverlapOneMillisecondDoes) {
  StartInterval a{100, 200};
  EXPECT_FALSE(a.Overlaps({200, 300}));
  EXPECT_FALSE((StartInterval{200, 300}).Overlaps(a));
  EXPECT_TRUE(a.Overlaps({199, 300}));
  EXPECT_EQ(a.Intersect({199, 300}), (StartInterval{199, 200}));
  EXPECT_TRUE(a.Overlaps({120, 130}));
  EXPECT_EQ(a.Intersect({120, 130}), (StartInterval{120, 130}));
}

TEST(InstanceIdentityTest, ARemoteSourceIsWidenedForClockDrift) {
  // 10 days of uptime at up to 500 ppm: 432 s either way.
  uint32_t uptime = 864'000;
  int64_t sent = 5'000'000'000;
  StartInterval local = StartIntervalOf({sent, sent + 10, uptime}, true);
  StartInterval remote = StartIntervalOf({sent, sent + 10, uptime}, false);
  int64_t drift = (int64_t{uptime} + 1) * kMaxDriftPpm / 1000 + 1;
  EXPECT_EQ(drift, 432'001);
  EXPECT_EQ(remote.lo_ms, local.lo_ms - drift);
  EXPECT_EQ(remote.hi_ms, local.hi_ms + drift);
  // A remote clock 400 ppm fast: its uptime reads 345.6 s more than ours
  // passed; the start it implies is still inside.
  int64_t true_start = sent - 864'000'000 + 345'600 + 500;
  EXPECT_TRUE(Contains(remote, true_start));
  EXPECT_FALSE(Contains(local, true_start));
}

InstanceIdentity Known() { return {"boot-1", 3, {kStart - 1000, kStart + 11}}; }

TEST(InstanceIdentityTest, ProvesNewOnlyOnEvidence) {
  InstanceIdentity identity = Known();
  // Same boot: the intervals decide.
  EXPECT_FALSE(
      identity.ProvesNew({"boot-1", true, {kStart + 10, kStart + 900}}));
  EXPECT_TRUE(
      identity.ProvesNew({"boot-1", true, {kStart + 11, kStart + 900}}));
  EXPECT_TRUE(
      identity.ProvesNew({"boot-1", false, {kStart + 11, kStart + 900}}));
  // Another boot: on this kernel the source restarted with it; a remote
  // source did not, and its interval on the old clock means nothing now.
  EXPECT_TRUE(identity.ProvesNew({"boot-2", true, {kStart, kStart + 5}}));
  EXPECT_FALSE(identity.ProvesNew({"boot-2", false, {9, 99}}));
  // Nothing known on one side: no evidence.
  EXPECT_FALSE(InstanceIdentity{}.ProvesNew({"boot-1", true, {9, 99}}));
  EXPECT_FALSE(identity.ProvesNew({"", true, {9, 99}}));
}

TEST(InstanceIdentityTest, ContinueNarrowsOnTheSameBootAndRestatesOtherwise) {
  InstanceIdentity identity = Known();
  identity.Continue({"boot-1", true, {kStart - 300, kStart + 700}});
  EXPECT_EQ(identity,
            (InstanceIdentity{"boot-1", 3, {kStart - 300, kStart + 11}}));

  identity.Continue({"boot-2", false, {40, 1100}});
  EXPECT_EQ(identity, (InstanceIdentity{"boot-2", 3, {40, 1100}}));

  InstanceIdentity unknown;
  unknown.Continue({"boot-1", true, {5, 6}});
  EXPECT_EQ(unknown, (InstanceIdentity{"boot-1", 0, {5, 6}}));
}

TEST(InstanceIdentityTest, RestartTakesTheNextGenerationAndTheNewInterval) {
  InstanceIdentity identity = Known();
  identity.Restart({"boot-1", true, {kStart + 5000, kStart + 6020}});
  EXPECT_EQ(identity,
            (InstanceIdentity{"boot-1", 4, {kStart + 5000, kStart + 6020}}));
}

}  // namespace
}  // namespace boxmeter
