#include "delta_engine.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <random>
#include <string>

#include "counter_name.h"
#include "snapshot.h"

namespace boxmeter {
namespace {

// Times are CLOCK_MONOTONIC ms of the boot kBoot unless a test says so.
constexpr char kBoot[] = "boot-1";
constexpr int64_t kStart = 3'600'000;  // some instance start
constexpr int64_t kWall = 1'700'000'000'000;

CounterKey User(const std::string& name) {
  return CounterKey{CounterKind::kUser, name};
}

// What a poll sent at `sent_ms` and answered `latency_ms` later sees of an
// instance that started at `start_ms`: the service reads its clock halfway.
InstanceSighting Seen(int64_t start_ms, int64_t sent_ms,
                      int64_t latency_ms = 10, std::string boot = kBoot,
                      bool same_kernel = true) {
  int64_t read_ms = sent_ms + latency_ms / 2;
  UptimeSample sample{sent_ms, sent_ms + latency_ms,
                      static_cast<uint32_t>((read_ms - start_ms) / 1000)};
  return {std::move(boot), same_kernel, StartIntervalOf(sample, same_kernel),
          sent_ms, sent_ms + latency_ms};
}

Snapshot Snap(InstanceSighting instance,
              std::vector<std::pair<CounterKey, CounterValues>> counters,
              int64_t taken_at_ms = kWall) {
  Snapshot snapshot;
  snapshot.instance = std::move(instance);
  snapshot.taken_at_ms = taken_at_ms;
  for (auto& [key, values] : counters) snapshot.counters[key] = values;
  return snapshot;
}

// An engine loaded with the instance that started at kStart, generation 4,
// as seen at kStart + 100 s, and these baselines of it.
DeltaEngine Loaded(std::vector<Baseline> baselines, int64_t seq = 0) {
  DeltaEngine engine;
  InstanceSighting seen = Seen(kStart, kStart + 100'000);
  engine.Load(seq, {kBoot, 4, seen.start}, baselines);
  return engine;
}

// The rows of a batch by name, for assertions.
std::map<std::string, CommitRow> Rows(const CommitBatch& batch) {
  std::map<std::string, CommitRow> rows;
  for (const CommitRow& row : batch.rows) rows[row.key.name] = row;
  return rows;
}

TEST(DeltaEngineTest, FirstSightOfANewCounterCountsEverything) {
  DeltaEngine engine;
  engine.Load(0, {}, {});
  InstanceSighting seen = Seen(kStart, kStart + 5000);
  engine.Observe(Snap(seen, {{User("a"), {100, 200}}}, kWall + 5000));
  CommitBatch batch = engine.Prepare();
  ASSERT_EQ(batch.rows.size(), 1u);
  EXPECT_EQ(batch.expected_seq, 0);
  EXPECT_EQ(batch.rows[0].delta, (CounterValues{100, 200}));
  EXPECT_EQ(batch.rows[0].baseline, (CounterValues{100, 200}));
  EXPECT_EQ(batch.rows[0].generation, 0);
  EXPECT_EQ(batch.observed_at_ms, kWall + 5000);
  // Nothing was stored: the first sighting is the node's instance.
  EXPECT_EQ(batch.instance, (InstanceIdentity{kBoot, 0, seen.start}));
}

TEST(DeltaEngineTest, SameInstanceCountsTheDifferenceAndNarrowsItsInterval) {
  DeltaEngine engine = Loaded({{User("a"), {100, 200}, 4}}, 3);
  // Loaded: started in (kStart - 1000, kStart + 11). This poll, at another
  // phase of the uptime's second: (kStart - 700, kStart + 311).
  auto result = engine.Observe(
      Snap(Seen(kStart, kStart + 200'300), {{User("a"), {150, 260}}}));
  EXPECT_FALSE(result.new_instance);
  EXPECT_EQ(result.restarted, 0u);
  CommitBatch batch = engine.Prepare();
  ASSERT_EQ(batch.rows.size(), 1u);
  EXPECT_EQ(batch.expected_seq, 3);
  EXPECT_EQ(batch.rows[0].delta, (CounterValues{50, 60}));
  EXPECT_EQ(batch.rows[0].baseline, (CounterValues{150, 260}));
  EXPECT_EQ(batch.rows[0].generation, 4);
  EXPECT_EQ(batch.instance,
            (InstanceIdentity{kBoot, 4, {kStart - 700, kStart + 11}}));
}

TEST(DeltaEngineTest, AWallClockStepChangesNothing) {
  // The identity is measured on the monotonic clock; the wall clock only
  // files traffic under an hour. Steps of -90 s and +3 s between polls.
  DeltaEngine engine = Loaded({{User("a"), {100, 200}, 4}});
  auto back = engine.Observe(Snap(Seen(kStart, kStart + 110'000),
                                  {{User("a"), {110, 210}}}, kWall - 90'000));
  auto forward = engine.Observe(Snap(Seen(kStart, kStart + 120'000),
                                     {{User("a"), {120, 220}}}, kWall + 3'000));
  EXPECT_FALSE(back.new_instance);
  EXPECT_FALSE(forward.new_instance);
  CommitBatch batch = engine.Prepare();
  ASSERT_EQ(batch.rows.size(), 1u);
  EXPECT_EQ(batch.rows[0].delta, (CounterValues{20, 20}));
  EXPECT_EQ(batch.observed_at_ms, kWall + 3'000);
}

TEST(DeltaEngineTest, ARestartWithinTwoSecondsIsSeenWithoutAFall) {
  // Issue 10, item 2: the old tolerance took a restart 1.5 s after the
  // previous start, whose counters did not fall, for the same instance.
  DeltaEngine engine;
  engine.Load(0, {}, {});
  // Started in (kStart - 400, kStart + 611).
  engine.Observe(Snap(Seen(kStart, kStart + 600), {{User("a"), {100, 200}}}));
  // The next instance, 1.5 s later: (kStart + 900, kStart + 1911).
  auto result = engine.Observe(
      Snap(Seen(kStart + 1500, kStart + 2900), {{User("a"), {150, 260}}}));
  EXPECT_TRUE(result.new_instance);
  EXPECT_EQ(result.restarted, 1u);
  CommitBatch batch = engine.Prepare();
  ASSERT_EQ(batch.rows.size(), 1u);
  EXPECT_EQ(batch.rows[0].delta, (CounterValues{100 + 150, 200 + 260}));
  EXPECT_EQ(batch.rows[0].generation, 1);
  EXPECT_EQ(batch.instance,
            (InstanceIdentity{kBoot, 1, {kStart + 900, kStart + 1911}}));
}

// Issue 10: instances that live about a second. The engine is on
// generation 5, an instance that started at K; polled 100, 400 and 990 ms
// after its start. The next one starts at K + 1050 and its first sighting,
// 10 ms later, overlaps the old interval: it is taken for the old instance
// (value - last) and narrows the interval to (K + 60, K + 111).
class ShortLivedInstances : public ::testing::Test {
 protected:
  static constexpr int64_t K = kStart + 200'000;
  static constexpr int64_t kNext = K + 1050;

  void SetUp() override {
    engine_ = Loaded({{User("a"), {100, 200}, 4}});
    ASSERT_TRUE(Poll(K, K + 100, 10).new_instance);
    Poll(K, K + 400, 20);
    Poll(K, K + 990, 30);
    ASSERT_FALSE(Poll(kNext, kNext + 10, 40).new_instance);
    ASSERT_EQ(engine_.instance().start, (StartInterval{K + 60, K + 111}));
  }
  ObserveResult Poll(int64_t start, int64_t sent, int64_t value) {
    return engine_.Observe(
        Snap(Seen(start, sent), {{User("a"), {value, value}}}));
  }
  int64_t Pending() { return engine_.Prepare().rows.at(0).delta.uplink; }

  DeltaEngine engine_;
};

TEST_F(ShortLivedInstances, ARestartProvenLaterIsDatedBackToItsFirstSighting) {
  // (K + 1001, K + 2012): disjoint from the old interval, so a new
  // instance, which started after K + 990 when the poll before the first
  // one overlapping was asked. What that poll counted (10) is not added
  // again: the old instance counted 30, the new one 45.
  auto result = Poll(kNext, K + 2001, 45);
  EXPECT_TRUE(result.new_instance);
  EXPECT_EQ(Pending(), 30 + 45);
  EXPECT_EQ(engine_.instance().generation, 6);
  EXPECT_EQ(engine_.instance().start, (StartInterval{K + 1001, K + 2012}));
}

TEST_F(ShortLivedInstances, ARestartThatCouldBeEarlierErrsLow) {
  // (K + 500, K + 1511): the new instance may have started before the
  // 990 ms poll, which would then have been its. Dated back to that poll:
  // the old instance's last 10 are lost, nothing is counted twice.
  EXPECT_TRUE(Poll(kNext, K + 1500, 45).new_instance);
  EXPECT_EQ(Pending(), 30 + 45 - 10);
}

TEST_F(ShortLivedInstances,
       SightingsTakenForTheOldOneForMinutesAreNotAddedTwice) {
  // Polls 10 s apart at phases that keep overlapping the old interval:
  // (K + 70, K + 1081), then (K + 90, K + 1101); each counts value - last.
  EXPECT_FALSE(Poll(kNext, kNext + 10'020, 500).new_instance);
  EXPECT_FALSE(Poll(kNext, kNext + 20'040, 900).new_instance);
  // Then (K + 150, K + 1161) proves it new. Whether it started before the
  // 400 ms poll (which then was its) the uptimes cannot tell: dated back
  // that far, which loses the old instance's last 20, never adds 900 again.
  EXPECT_TRUE(Poll(kNext, kNext + 30'100, 1000).new_instance);
  EXPECT_EQ(Pending(), 30 + 1000 - 20);
}

TEST_F(ShortLivedInstances, ACommitStoresTheIntervalFromBeforeTheCheckpoints) {
  // A collector that starts from the database compares with the interval
  // before the oldest open checkpoint (the 400 ms poll): there the next
  // sighting overlaps and is taken for the same instance (value - last,
  // erring low), not proven new (which would count 45 whole again).
  EXPECT_EQ(engine_.Prepare().instance.start,
            (StartInterval{K - 900, K + 111}));
}

TEST(DeltaEngineTest, IntervalsSharingOneMillisecondAreOneInstance) {
  // Loaded: (kStart - 1000, kStart + 11).
  DeltaEngine engine = Loaded({{User("a"), {100, 200}, 4}});
  auto result = engine.Observe(Snap({kBoot, true, {kStart + 10, kStart + 900}},
                                    {{User("a"), {150, 260}}}));
  EXPECT_FALSE(result.new_instance);
  EXPECT_EQ(engine.Prepare().rows[0].delta, (CounterValues{50, 60}));
  EXPECT_EQ(engine.instance().start, (StartInterval{kStart + 10, kStart + 11}));
}

TEST(DeltaEngineTest, IntervalsThatOnlyTouchAreTwoInstances) {
  DeltaEngine engine = Loaded({{User("a"), {100, 200}, 4}});
  auto result = engine.Observe(Snap({kBoot, true, {kStart + 11, kStart + 900}},
                                    {{User("a"), {150, 260}}}));
  EXPECT_TRUE(result.new_instance);
  EXPECT_EQ(engine.Prepare().rows[0].delta, (CounterValues{150, 260}));
  EXPECT_EQ(engine.instance().generation, 5);
}

TEST(DeltaEngineTest, AnAnswerOneAndAHalfSecondsLateIsTheSameInstance) {
  for (int64_t read_after_ms : {0, 750, 1500}) {
    SCOPED_TRACE(read_after_ms);
    DeltaEngine engine = Loaded({{User("a"), {100, 200}, 4}});
    int64_t sent = kStart + 300'000;
    UptimeSample late{
        sent, sent + 1500,
        static_cast<uint32_t>((sent + read_after_ms - kStart) / 1000)};
    auto result = engine.Observe(Snap(
        {kBoot, true, StartIntervalOf(late, true)}, {{User("a"), {150, 260}}}));
    EXPECT_FALSE(result.new_instance);
    EXPECT_EQ(engine.Prepare().rows[0].delta, (CounterValues{50, 60}));
    EXPECT_EQ(engine.instance().generation, 4);
  }
}

TEST(DeltaEngineTest, AFallingCounterReplacesTheIdentityForGood) {
  // Issue 10, item 1: a restart caught only by a falling counter kept the
  // old start, and a later poll or collector start counted everything again.
  DeltaEngine engine =
      Loaded({{User("a"), {100, 200}, 4}, {User("b"), {50, 50}, 4}});
  // The next instance started 500 ms after the stored one: its interval,
  // (kStart, kStart + 1011), overlaps the stored (kStart - 1000, kStart +
  // 11), so only a's fall tells. b did not fall and still counts whole.
  InstanceSighting next = Seen(kStart + 500, kStart + 10'000);
  auto result = engine.Observe(
      Snap(next, {{User("a"), {40, 250}}, {User("b"), {60, 60}}}));
  EXPECT_TRUE(result.new_instance);
  EXPECT_EQ(result.restarted, 2u);
  CommitBatch batch = engine.Prepare();
  auto rows = Rows(batch);
  EXPECT_EQ(rows["a"].delta, (CounterValues{40, 250}));
  EXPECT_EQ(rows["b"].delta, (CounterValues{60, 60}));
  EXPECT_EQ(rows["a"].generation, 5);
  EXPECT_EQ(batch.instance, (InstanceIdentity{kBoot, 5, next.start}));
  engine.Committed();

  // A later poll of the same (new) instance counts the difference only.
  auto later = engine.Observe(
      Snap(Seen(kStart + 500, kStart + 20'000), {{User("a"), {45, 260}}}));
  EXPECT_FALSE(later.new_instance);
  EXPECT_EQ(Rows(engine.Prepare())["a"].delta, (CounterValues{5, 10}));
  engine.Committed();

  // So does a collector that starts from what was committed.
  DeltaEngine restarted;
  restarted.Load(2, batch.instance,
                 {{User("a"), {45, 260}, 5}, {User("b"), {60, 60}, 5}});
  auto first =
      restarted.Observe(Snap(Seen(kStart + 500, kStart + 30'000),
                             {{User("a"), {46, 260}}, {User("b"), {60, 61}}}));
  EXPECT_FALSE(first.new_instance);
  auto after = Rows(restarted.Prepare());
  EXPECT_EQ(after["a"].delta, (CounterValues{1, 0}));
  EXPECT_EQ(after["b"].delta, (CounterValues{0, 1}));
}

TEST(DeltaEngineTest, ABootIdChangeOnThisKernelIsANewInstance) {
  DeltaEngine engine = Loaded({{User("a"), {100, 200}, 4}});
  // After a reboot the monotonic clock starts again near zero; by chance
  // the interval even overlaps the stored one's numbers.
  InstanceSighting after_reboot = Seen(kStart, kStart + 100'000, 10, "boot-2");
  auto result = engine.Observe(Snap(after_reboot, {{User("a"), {150, 260}}}));
  EXPECT_TRUE(result.new_instance);
  EXPECT_EQ(engine.Prepare().rows[0].delta, (CounterValues{150, 260}));
  EXPECT_EQ(engine.instance(),
            (InstanceIdentity{"boot-2", 5, after_reboot.start}));
}

TEST(DeltaEngineTest, ABootIdChangeSaysNothingAboutARemoteSource) {
  // The collector's host rebooted; the remote sing-box did not: its
  // interval is restated on the new boot's clock, same generation.
  DeltaEngine engine = Loaded({{User("a"), {100, 200}, 4}});
  InstanceSighting remote = Seen(-5'000'000, 20'000, 10, "boot-2", false);
  auto result = engine.Observe(Snap(remote, {{User("a"), {150, 260}}}));
  EXPECT_FALSE(result.new_instance);
  EXPECT_EQ(engine.Prepare().rows[0].delta, (CounterValues{50, 60}));
  EXPECT_EQ(engine.instance(), (InstanceIdentity{"boot-2", 4, remote.start}));
  engine.NotCommitted();

  // A falling counter still tells a remote restart.
  auto fell = engine.Observe(Snap(Seen(-5'000'000, 30'000, 10, "boot-2", false),
                                  {{User("a"), {10, 10}}}));
  EXPECT_TRUE(fell.new_instance);
  EXPECT_EQ(engine.instance().generation, 5);
}

TEST(DeltaEngineTest, NothingStoredYetIsTheSameInstanceUnlessACounterFell) {
  // A database from before instance identities: no boot id, every baseline
  // in generation 0.
  for (bool fell : {false, true}) {
    SCOPED_TRACE(fell ? "fell" : "grew");
    DeltaEngine engine;
    engine.Load(0, {}, {{User("a"), {100, 200}, 0}});
    InstanceSighting seen = Seen(kStart, kStart + 5000);
    CounterValues value =
        fell ? CounterValues{90, 300} : CounterValues{150, 260};
    auto result = engine.Observe(Snap(seen, {{User("a"), value}}));
    EXPECT_EQ(result.new_instance, fell);
    EXPECT_EQ(engine.Prepare().rows[0].delta,
              fell ? value : (CounterValues{50, 60}));
    EXPECT_EQ(engine.instance(),
              (InstanceIdentity{kBoot, fell ? 1 : 0, seen.start}));
  }
}

TEST(DeltaEngineTest, ACounterOfAnOlderGenerationCountsItsWholeValue) {
  // z was last seen from generation 2; the running generation 4 counted
  // z from zero. Its value below the baseline is no evidence of a restart.
  DeltaEngine engine =
      Loaded({{User("a"), {100, 200}, 4}, {User("z"), {500, 500}, 2}});
  auto result =
      engine.Observe(Snap(Seen(kStart, kStart + 110'000),
                          {{User("a"), {110, 210}}, {User("z"), {10, 20}}}));
  EXPECT_FALSE(result.new_instance);
  EXPECT_EQ(result.restarted, 1u);
  auto rows = Rows(engine.Prepare());
  EXPECT_EQ(rows["a"].delta, (CounterValues{10, 10}));
  EXPECT_EQ(rows["z"].delta, (CounterValues{10, 20}));
  EXPECT_EQ(rows["z"].generation, 4);
}

TEST(DeltaEngineTest, UnchangedCountersAreNotWritten) {
  DeltaEngine engine =
      Loaded({{User("a"), {100, 200}, 4}, {User("b"), {1, 1}, 4}});
  auto result =
      engine.Observe(Snap(Seen(kStart, kStart + 109'000),
                          {{User("a"), {100, 200}}, {User("b"), {2, 1}}}));
  EXPECT_EQ(result.changed, 1u);
  CommitBatch batch = engine.Prepare();
  ASSERT_EQ(batch.rows.size(), 1u);
  EXPECT_EQ(batch.rows[0].key.name, "b");
}

TEST(DeltaEngineTest, IdleNodeHasNothingToCommit) {
  DeltaEngine engine = Loaded({{User("a"), {100, 200}, 4}});
  engine.Observe(
      Snap(Seen(kStart, kStart + 109'000), {{User("a"), {100, 200}}}));
  EXPECT_FALSE(engine.HasPending());
  EXPECT_TRUE(engine.Prepare().rows.empty());
}

TEST(DeltaEngineTest, PendingSurvivesFailedCommitsAndRestarts) {
  DeltaEngine engine;
  engine.Load(0, {}, {});
  engine.Observe(Snap(Seen(kStart, kStart + 1000), {{User("a"), {10, 20}}}));
  engine.Prepare();
  engine.NotCommitted();  // the database is down
  engine.Observe(Snap(Seen(kStart, kStart + 2000), {{User("a"), {15, 30}}}));
  // sing-box restarts while the database is still down.
  int64_t new_start = kStart + 10'000;
  engine.Observe(
      Snap(Seen(new_start, new_start + 1000), {{User("a"), {7, 8}}}));
  engine.Prepare();
  engine.NotCommitted();
  engine.Observe(
      Snap(Seen(new_start, new_start + 2000), {{User("a"), {9, 9}}}));
  CommitBatch batch = engine.Prepare();
  ASSERT_EQ(batch.rows.size(), 1u);
  EXPECT_EQ(batch.rows[0].delta, (CounterValues{15 + 9, 30 + 9}));
  EXPECT_EQ(batch.rows[0].baseline, (CounterValues{9, 9}));
  EXPECT_EQ(batch.rows[0].generation, 1);
  engine.Committed();
  EXPECT_FALSE(engine.HasPending());
  EXPECT_EQ(engine.commit_seq(), 1);
}

TEST(DeltaEngineTest, TrafficSeenDuringACommitStaysPending) {
  DeltaEngine engine;
  engine.Load(0, {}, {});
  engine.Observe(Snap(Seen(kStart, kStart + 1000), {{User("a"), {10, 0}}}));
  engine.Prepare();
  engine.Observe(Snap(Seen(kStart, kStart + 2000), {{User("a"), {25, 0}}}));
  engine.Committed();
  CommitBatch batch = engine.Prepare();
  ASSERT_EQ(batch.rows.size(), 1u);
  EXPECT_EQ(batch.rows[0].delta, (CounterValues{15, 0}));
  EXPECT_EQ(batch.expected_seq, 1);
}

TEST(DeltaEngineTest, UnknownOutcomeIsResolvedByTheSequence) {
  for (bool applied : {true, false}) {
    SCOPED_TRACE(applied ? "applied" : "not applied");
    DeltaEngine engine;
    engine.Load(5, {}, {});
    engine.Observe(Snap(Seen(kStart, kStart + 1000), {{User("a"), {10, 0}}}));
    engine.Prepare();
    EXPECT_TRUE(engine.Resolve(applied ? 6 : 5));
    EXPECT_EQ(engine.commit_seq(), applied ? 6 : 5);
    EXPECT_EQ(engine.HasPending(), !applied);
  }
}

TEST(DeltaEngineTest, ASequenceFromAnotherWriterAsksForAReload) {
  DeltaEngine engine;
  engine.Load(5, {}, {});
  engine.Observe(Snap(Seen(kStart, kStart + 1000), {{User("a"), {10, 0}}}));
  engine.Prepare();
  EXPECT_FALSE(engine.Resolve(9));
  EXPECT_FALSE(engine.in_flight());
}

TEST(DeltaEngineTest, ReplayedBatchCarriesTheSameExpectedSequence) {
  // The store applies a batch only while the node's sequence equals
  // expected_seq, so a batch that is sent twice applies once. The engine's
  // part: a batch prepared after a commit expects the next sequence.
  DeltaEngine engine;
  engine.Load(0, {}, {});
  engine.Observe(Snap(Seen(kStart, kStart + 1000), {{User("a"), {10, 0}}}));
  CommitBatch first = engine.Prepare();
  engine.Committed();
  engine.Observe(Snap(Seen(kStart, kStart + 2000), {{User("a"), {11, 0}}}));
  CommitBatch second = engine.Prepare();
  EXPECT_EQ(first.expected_seq, 0);
  EXPECT_EQ(second.expected_seq, 1);
}

// The stored state the Load tests start from: the instance that started at
// kStart, generation 4, seen in (kStart - 1000, kStart + 11).
const InstanceIdentity kStored{kBoot, 4, {kStart - 1000, kStart + 11}};

TEST(DeltaEngineTest, ObservationsBeforeLoadContinueFromTheStoredBaseline) {
  DeltaEngine engine;
  // The database is down at start; two polls happen first.
  engine.Observe(Snap(Seen(kStart, kStart + 200'300),
                      {{User("a"), {150, 250}}, {User("new"), {5, 5}}}));
  engine.Observe(Snap(Seen(kStart, kStart + 201'300),
                      {{User("a"), {160, 260}}, {User("new"), {6, 6}}}));
  EXPECT_FALSE(engine.loaded());
  engine.Load(2, kStored,
              {{User("a"), {100, 200}, 4}, {User("idle"), {1, 1}, 3}});
  auto rows = Rows(engine.Prepare());
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows["a"].delta, (CounterValues{60, 60}));
  EXPECT_EQ(rows["a"].generation, 4);
  EXPECT_EQ(rows["new"].delta, (CounterValues{6, 6}));
  EXPECT_EQ(engine.size(), 3u);
  // The stored interval, narrowed by the polls: (kStart - 700, kStart + 11).
  EXPECT_EQ(engine.instance(),
            (InstanceIdentity{kBoot, 4, {kStart - 700, kStart + 11}}));
}

TEST(DeltaEngineTest, ObservationsBeforeLoadOfAnInstanceTheClocksTellApart) {
  DeltaEngine engine;
  InstanceSighting seen = Seen(kStart + 50'000, kStart + 51'000);
  engine.Observe(Snap(seen, {{User("a"), {130, 240}}}));
  engine.Load(0, kStored, {{User("a"), {100, 200}, 4}});
  auto rows = Rows(engine.Prepare());
  EXPECT_EQ(rows["a"].delta, (CounterValues{130, 240}));
  EXPECT_EQ(rows["a"].generation, 5);
  EXPECT_EQ(engine.instance(), (InstanceIdentity{kBoot, 5, seen.start}));
}

TEST(DeltaEngineTest, ObservationsBeforeLoadOfAnInstanceACounterTellsApart) {
  // The clocks cannot tell (the intervals overlap), a's fall can: the whole
  // instance is new, b's higher value included.
  DeltaEngine engine;
  InstanceSighting seen = Seen(kStart + 500, kStart + 10'000);
  engine.Observe(Snap(seen, {{User("a"), {30, 400}}, {User("b"), {70, 70}}}));
  engine.Load(0, kStored,
              {{User("a"), {100, 200}, 4}, {User("b"), {60, 60}, 4}});
  auto rows = Rows(engine.Prepare());
  EXPECT_EQ(rows["a"].delta, (CounterValues{30, 400}));
  EXPECT_EQ(rows["b"].delta, (CounterValues{70, 70}));
  EXPECT_EQ(engine.instance(), (InstanceIdentity{kBoot, 5, seen.start}));
}

TEST(DeltaEngineTest, ObservationsBeforeLoadAcrossARestart) {
  for (bool first_is_stored : {true, false}) {
    SCOPED_TRACE(first_is_stored ? "first is the stored" : "first is new");
    DeltaEngine engine;
    int64_t first_start = first_is_stored ? kStart : kStart + 30'000;
    engine.Observe(
        Snap(Seen(first_start, kStart + 200'000), {{User("a"), {150, 250}}}));
    InstanceSighting second = Seen(kStart + 300'000, kStart + 302'000);
    engine.Observe(Snap(second, {{User("a"), {5, 6}}}));
    engine.Load(0, kStored, {{User("a"), {100, 200}, 4}});
    auto rows = Rows(engine.Prepare());
    // The first instance's traffic since the baseline (all of it when it
    // is not the stored one), then all of the second's.
    CounterValues first =
        first_is_stored ? CounterValues{50, 50} : CounterValues{150, 250};
    EXPECT_EQ(rows["a"].delta,
              (CounterValues{first.uplink + 5, first.downlink + 6}));
    int64_t generation = first_is_stored ? 5 : 6;
    EXPECT_EQ(rows["a"].generation, generation);
    EXPECT_EQ(engine.instance(),
              (InstanceIdentity{kBoot, generation, second.start}));
  }
}

TEST(DeltaEngineTest, HugeValuesSaturateInsteadOfWrapping) {
  DeltaEngine engine;
  engine.Load(0, {}, {});
  int64_t max = std::numeric_limits<int64_t>::max();
  engine.Observe(Snap(Seen(kStart, kStart + 1000), {{User("a"), {max, 0}}}));
  engine.Observe(
      Snap(Seen(kStart + 60'000, kStart + 61'000), {{User("a"), {max, 0}}}));
  auto rows = Rows(engine.Prepare());
  EXPECT_EQ(rows["a"].delta.uplink, max);
}

// A randomized run: the engine, a simulated database applying its batches the
// way the store does, and an independent model of what the totals must be,
// driven by one random sequence of traffic, polls answered up to 1.5 s late,
// commits with every outcome, sing-box restarts, collector crashes, reboots
// of the host, wall-clock steps and database outages.
class Simulation {
 public:
  explicit Simulation(uint32_t seed) : random_(seed) {}

  void Run(int steps) {
    engine_ = std::make_unique<DeltaEngine>();
    NewInstance();
    for (int i = 0; i < steps; ++i) Step();
    Drain();
    for (const auto& [name, expected] : expected_) {
      SCOPED_TRACE(name);
      EXPECT_EQ(Db(name).total, expected);
    }
    for (const auto& [name, row] : db_) {
      if (!expected_.count(name)) {
        EXPECT_EQ(row.total, (CounterValues{})) << name;
      }
    }
  }

 private:
  struct DbRow {
    CounterValues total;
    CounterValues base;
    int64_t generation = 0;
    int instance = -1;  // the sing-box instance base came from; -1: older
  };

  const DbRow& Db(const std::string& name) const {
    static const DbRow kNone;
    auto it = db_.find(name);
    return it == db_.end() ? kNone : it->second;
  }

  int Pick(int n) {
    return std::uniform_int_distribution<int>(0, n - 1)(random_);
  }

  int64_t Between(int64_t min_ms, int64_t max_ms) {
    return std::uniform_int_distribution<int64_t>(min_ms, max_ms)(random_);
  }

  void Advance(int64_t min_ms, int64_t max_ms) {
    int64_t ms = Between(min_ms, max_ms);
    now_ms_ += ms;
    wall_ms_ += ms;
  }

  void NewInstance() {
    // Starts 5.1 s apart at least: two start intervals of 1 s plus a 1.5 s
    // round trip each cannot overlap then, so every restart is provable.
    Advance(5100, 20'000);
    instance_start_ms_ = now_ms_;
    ++instance_;
    live_.clear();
    polled_.clear();
  }

  // The host reboots: a new boot id, the monotonic clock from near zero,
  // sing-box and the collector start again.
  void Reboot() {
    boot_ = "boot-" + std::to_string(++boots_);
    now_ms_ = Between(3000, 60'000);
    NewInstance();
    Crash();
  }

  void Traffic() {
    std::string name = "u" + std::to_string(Pick(6));
    int64_t up = Pick(1'000'000), down = Pick(1'000'000);
    live_[name].uplink += up;
    live_[name].downlink += down;
  }

  // One GetSysStats: sing-box reads its clock somewhere in the round trip.
  UptimeSample Sample() {
    int64_t sent = now_ms_;
    int64_t latency = Pick(3) == 0 ? Between(0, 1500) : Between(0, 20);
    int64_t read = sent + Between(0, latency);
    Advance(latency, latency);
    return {sent, now_ms_,
            static_cast<uint32_t>((read - instance_start_ms_) / 1000)};
  }

  void Poll() {
    Advance(500, 10'000);
    StatsReply reply;
    reply.boot_id = boot_;
    reply.same_kernel = true;
    reply.before = Sample();
    for (const auto& [name, values] : live_) {
      reply.stats.push_back(
          {FormatCounterName(CounterKind::kUser, name, Direction::kUplink),
           values.uplink});
      reply.stats.push_back(
          {FormatCounterName(CounterKind::kUser, name, Direction::kDownlink),
           values.downlink});
      CounterValues& polled = polled_[name];
      expected_[name].uplink += values.uplink - polled.uplink;
      expected_[name].downlink += values.downlink - polled.downlink;
      polled = values;
    }
    reply.answered_wall_ms = wall_ms_;
    reply.after = Sample();
    Snapshot snapshot;
    Status status = MakeSnapshot(reply, &snapshot);
    ASSERT_TRUE(status.ok()) << status.message();
    engine_->Observe(snapshot);
    engine_instance_ = instance_;
  }

  void Apply(const CommitBatch& batch, int instance) {
    if (batch.expected_seq != db_seq_) return;
    for (const CommitRow& row : batch.rows) {
      DbRow& db = db_[row.key.name];
      db.total.uplink += row.delta.uplink;
      db.total.downlink += row.delta.downlink;
      db.base = row.baseline;
      db.generation = row.generation;
      db.instance = row.generation == batch.instance.generation ? instance : -1;
    }
    db_instance_ = batch.instance;
    ++db_seq_;
  }

  void Commit() {
    if (!engine_->loaded() || engine_->in_flight()) return;
    CommitBatch batch = engine_->Prepare();
    // The instance the engine's current identity stands for: the one it
    // polled last (none since it started: then it has nothing to commit).
    int instance = engine_instance_;
    if (instance < 0) {
      ASSERT_TRUE(batch.rows.empty());
    }
    if (Pick(3) == 0) Poll();  // a poll lands while the commit is in flight
    switch (Pick(5)) {
      case 0:
      case 1:
        Apply(batch, instance);
        engine_->Committed();
        break;
      case 2:
        engine_->NotCommitted();
        break;
      case 3:  // connection lost during COMMIT, which did apply
        Apply(batch, instance);
        ASSERT_TRUE(engine_->Resolve(db_seq_));
        break;
      case 4:  // connection lost during COMMIT, which did not apply
        ASSERT_TRUE(engine_->Resolve(db_seq_));
        break;
    }
  }

  // The collector dies: what it had pending is gone. What sing-box's
  // cumulative counters hold beyond the database's baseline is found again
  // by the next poll, unless sing-box restarts first.
  void Crash() {
    engine_ = std::make_unique<DeltaEngine>();
    engine_instance_ = -1;
    for (auto& [name, expected] : expected_) expected = Db(name).total;
    for (const auto& [name, values] : live_) {
      const DbRow& db = Db(name);
      polled_[name] = db.instance == instance_ ? db.base : CounterValues{};
    }
  }

  void Load() {
    if (engine_->loaded()) return;
    std::vector<Baseline> baselines;
    for (const auto& [name, row] : db_) {
      baselines.push_back({User(name), row.base, row.generation});
    }
    engine_->Load(db_seq_, db_instance_, baselines);
  }

  void Step() {
    int roll = Pick(100);
    if (roll < 42) {
      Traffic();
    } else if (roll < 62) {
      Poll();
    } else if (roll < 77) {
      Commit();
    } else if (roll < 83) {
      NewInstance();  // sing-box restarts or reloads
    } else if (roll < 88) {
      Crash();
    } else if (roll < 90) {
      Reboot();
    } else if (roll < 93) {
      // ntpd steps the wall clock; only the history's hours may move.
      wall_ms_ += std::vector<int64_t>{-90'000, -3000, 3000, 90'000}[Pick(4)];
    } else {
      Load();  // the database answers at start-up
    }
  }

  // The end: sing-box stays up, the database answers, and the collector
  // polls and commits until nothing is pending.
  void Drain() {
    Load();
    Poll();
    while (engine_->HasPending()) {
      CommitBatch batch = engine_->Prepare();
      Apply(batch, engine_instance_);
      engine_->Committed();
    }
  }

  std::mt19937 random_;
  std::unique_ptr<DeltaEngine> engine_;
  std::string boot_ = "boot-0";
  int boots_ = 0;
  int64_t now_ms_ = 10'000;  // CLOCK_MONOTONIC
  int64_t wall_ms_ = kWall;  // CLOCK_REALTIME
  int64_t instance_start_ms_ = 0;
  int instance_ = 0;                           // sing-box's instances, numbered
  int engine_instance_ = -1;                   // the one the engine polled last
  std::map<std::string, CounterValues> live_;  // sing-box's counters
  std::map<std::string, CounterValues> polled_;  // last poll, this instance
  std::map<std::string, CounterValues> expected_;
  std::map<std::string, DbRow> db_;
  InstanceIdentity db_instance_;
  int64_t db_seq_ = 0;
};

TEST(DeltaEngineTest, RandomizedAgainstAModel) {
  for (uint32_t seed = 1; seed <= 300; ++seed) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    Simulation(seed).Run(400);
    if (HasFailure()) break;
  }
}

}  // namespace
}  // namespace boxmeter
