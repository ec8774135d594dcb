// End to end against the fake: the boxmeter-collector binary polling the
// fake-stats-server binary (sing-box's StatsService semantics, faults on
// demand through its stdin) into a throwaway PostgreSQL. These are the faults
// v2ray-core cannot be made to show: duplicate counters, a reload that resets
// counters and uptime, UNIMPLEMENTED, slow replies, and a very large node.
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "collector_runner.h"
#include "fake_stats_process.h"
#include "pg_server.h"
#include "process.h"

namespace boxmeter::testing {
namespace {

using namespace std::chrono_literals;

constexpr const char* kNode = "fake";
constexpr const char* kDatabase = "fake";
constexpr auto kMatchTimeout = 20s;

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

class CollectorFakeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pg_ = std::make_unique<PgServer>();
    database_url_ = pg_->CreateDatabase(kDatabase);
    fake_ = std::make_unique<FakeStatsProcess>(BOXMETER_FAKE_STATS_SERVER_BIN);
  }

  void StartCollector(std::string timeout = "2s") {
    collector_ = std::make_unique<CollectorRunner>(
        BOXMETER_COLLECTOR_BIN,
        CollectorRunner::Settings{.node = kNode,
                                  .source_address = fake_->address(),
                                  .database_url = database_url_,
                                  .poll_interval = "200ms",
                                  .source_timeout = std::move(timeout)});
    collector_->Start();
  }

  // Awaits (bounded) the database holding exactly `expected`.
  ::testing::AssertionResult DatabaseHolds(
      const CounterMap& expected,
      std::chrono::milliseconds timeout = kMatchTimeout) {
    CounterMap actual;
    std::string error;
    if (WaitUntil(
            [&] {
              // Fails until the collector has migrated the fresh database.
              error = TryTrafficInDatabase(*pg_, kDatabase, kNode, &actual);
              actual = WithoutZeros(std::move(actual));
              return error.empty() && actual == expected;
            },
            timeout, 100ms)) {
      return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure()
           << "the database differs from what the fake served:\n"
           << DescribeDifference(expected, actual) << error
           << "\ncollector log tail:\n"
           << collector_->LogTail();
  }

  ::testing::AssertionResult AwaitPolls(size_t count) {
    if (collector_->AwaitPolls(count, 10s)) {
      return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure()
           << count << " polls did not happen within 10 s; log tail:\n"
           << collector_->LogTail();
  }

  std::unique_ptr<PgServer> pg_;
  std::string database_url_;
  std::unique_ptr<FakeStatsProcess> fake_;
  std::unique_ptr<CollectorRunner> collector_;
};

constexpr const char* kAliceUp = "user>>>alice>>>traffic>>>uplink";
constexpr const char* kAliceDown = "user>>>alice>>>traffic>>>downlink";
constexpr const char* kInUp = "inbound>>>in>>>traffic>>>uplink";
constexpr const char* kOutDown = "outbound>>>direct>>>traffic>>>downlink";

TEST_F(CollectorFakeTest, DuplicatesInEveryReplyAreCountedOnce) {
  ASSERT_EQ(fake_->Command("duplicate on"), "");
  ASSERT_EQ(fake_->Command(std::string("set ") + kAliceUp + " 1000"), "");
  ASSERT_EQ(fake_->Command(std::string("set ") + kAliceDown + " 2000"), "");
  ASSERT_EQ(fake_->Command(std::string("set ") + kInUp + " 1000"), "");
  StartCollector();
  ASSERT_TRUE(
      DatabaseHolds({{kAliceUp, 1000}, {kAliceDown, 2000}, {kInUp, 1000}}));

  ASSERT_EQ(fake_->Command(std::string("add ") + kAliceDown + " 500"), "");
  ASSERT_EQ(fake_->Command(std::string("set ") + kOutDown + " 77"), "");
  ASSERT_TRUE(DatabaseHolds(
      {{kAliceUp, 1000}, {kAliceDown, 2500}, {kInUp, 1000}, {kOutDown, 77}}));
  // Further polls of the same duplicated values add nothing.
  ASSERT_TRUE(AwaitPolls(3));
  EXPECT_TRUE(DatabaseHolds(
      {{kAliceUp, 1000}, {kAliceDown, 2500}, {kInUp, 1000}, {kOutDown, 77}},
      0ms));
}

TEST_F(CollectorFakeTest, ReloadThatResetsCountersAndUptimeIsCountedRight) {
  // An instance that has run for an hour, so the reload shows in its uptime.
  ASSERT_EQ(fake_->Command("uptime 3600"), "");
  ASSERT_EQ(fake_->Command(std::string("set ") + kAliceUp + " 1000"), "");
  ASSERT_EQ(fake_->Command(std::string("set ") + kAliceDown + " 5000"), "");
  StartCollector();
  ASSERT_TRUE(DatabaseHolds({{kAliceUp, 1000}, {kAliceDown, 5000}}));

  ASSERT_EQ(fake_->Command("restart"), "");
  // Uplink comes back higher than before: only the uptime tells that this is
  // a new instance (counting the difference would lose 1000 bytes).
  ASSERT_EQ(fake_->Command(std::string("set ") + kAliceUp + " 4000"), "");
  ASSERT_EQ(fake_->Command(std::string("set ") + kAliceDown + " 2000"), "");
  ASSERT_TRUE(DatabaseHolds({{kAliceUp, 5000}, {kAliceDown, 7000}}));
  EXPECT_TRUE(collector_->Running());
}

TEST_F(CollectorFakeTest, UnimplementedIsExplainedAndSurvived) {
  ASSERT_EQ(fake_->Command("fail UNIMPLEMENTED"), "");
  StartCollector();
  ASSERT_TRUE(WaitUntil(
      [&] {
        std::string log = collector_->Log();
        return log.find("with_v2ray_api") != std::string::npos &&
               log.find("experimental.v2ray_api") != std::string::npos;
      },
      10s))
      << "the log does not say how to enable the API:\n"
      << collector_->LogTail();
  // Keeps running (a window, by nature: it must not exit within it).
  EXPECT_FALSE(collector_->Wait(1s).has_value()) << collector_->LogTail();

  // And picks up once the API is there.
  ASSERT_EQ(fake_->Command("fail none"), "");
  ASSERT_EQ(fake_->Command(std::string("set ") + kAliceUp + " 42"), "");
  ASSERT_TRUE(DatabaseHolds({{kAliceUp, 42}}));
}

TEST_F(CollectorFakeTest, SlowReplyIsAWarningAndTotalsRecover) {
  ASSERT_EQ(fake_->Command(std::string("set ") + kAliceUp + " 1000"), "");
  StartCollector("1s");
  ASSERT_TRUE(DatabaseHolds({{kAliceUp, 1000}}));

  ASSERT_EQ(fake_->Command("delay 1500"), "");  // longer than source.timeout
  ASSERT_EQ(fake_->Command(std::string("add ") + kAliceUp + " 500"), "");
  ASSERT_TRUE(WaitUntil(
      [&] {
        for (const std::string& line : Lines(collector_->Log())) {
          if (line.find(" warn ") != std::string::npos &&
              line.find("source.timeout") != std::string::npos) {
            return true;
          }
        }
        return false;
      },
      10s))
      << "no warning about the deadline:\n"
      << collector_->LogTail();
  EXPECT_TRUE(collector_->Running()) << collector_->LogTail();

  ASSERT_EQ(fake_->Command("delay 0"), "");
  ASSERT_TRUE(DatabaseHolds({{kAliceUp, 1500}}));
  EXPECT_TRUE(collector_->Running()) << collector_->LogTail();
}

// SIGTERM while the stats API hangs: every try of a poll costs a
// source.timeout, and all five (the one in flight, the final one and three
// retries) outlast the stop budget of 3 x source.timeout + 10 s. The tries
// stop while the budget still holds a commit; nothing seen is left, so the
// exit is 0, not the budget's give-up (75).
TEST_F(CollectorFakeTest, SigtermWhileTheStatsApiHangsExitsZeroInItsBudget) {
  ASSERT_EQ(fake_->Command(std::string("set ") + kAliceUp + " 1000"), "");
  StartCollector("5s");
  ASSERT_TRUE(DatabaseHolds({{kAliceUp, 1000}}));
  ASSERT_EQ(fake_->Command("delay 600000"), "");
  // A fetch hangs in flight when the signal comes: the worst case.
  const std::string in_flight = "the previous fetch is still running";
  size_t before = collector_->CountLogLines(in_flight);
  ASSERT_TRUE(WaitUntil(
      [&] { return collector_->CountLogLines(in_flight) > before; }, 10s));
  collector_->Signal(SIGTERM);
  std::optional<int> code = collector_->Wait(40s);
  ASSERT_TRUE(code.has_value()) << collector_->LogTail();
  EXPECT_EQ(*code, 0) << collector_->LogTail();
  EXPECT_EQ(collector_->CountLogLines("gave up waiting"), 0u)
      << collector_->LogTail();
  ASSERT_EQ(fake_->Command("delay 0"), "");
  EXPECT_TRUE(DatabaseHolds({{kAliceUp, 1000}}, 1s));
}

TEST_F(CollectorFakeTest, TwoHundredThousandCountersAreCommittedInFull) {
  // 200,000 counters are 100,000 uplink/downlink pairs: one row each.
  constexpr int64_t kCounters = 200'000;
  constexpr int64_t kRows = kCounters / 2;
  ASSERT_EQ(fake_->Command("populate " + std::to_string(kCounters)), "");
  ASSERT_EQ(fake_->Command("touch 1 7"), "");  // every counter: 7 bytes
  // A reply of several MiB, over gRPC's default 4 MiB limit; a generous
  // timeout for a shared, busy test machine.
  StartCollector("10s");
  auto totals = [&]() -> std::string {
    try {
      return pg_->Query(kDatabase,
                        "SELECT count(*), coalesce(sum(uplink + downlink), 0) "
                        "FROM counters WHERE node = 'fake'");
    } catch (const std::runtime_error& e) {
      return e.what();  // not migrated yet
    }
  };
  std::string expected =
      std::to_string(kRows) + "|" + std::to_string(kCounters * 7);
  EXPECT_TRUE(WaitUntil([&] { return totals() == expected; }, 60s, 200ms))
      << "rows|bytes: " << totals() << "\ncollector log tail:\n"
      << collector_->LogTail();

  // A tenth of them move again: only those are added.
  ASSERT_EQ(fake_->Command("touch 0.1 3"), "");
  expected = std::to_string(kRows) + "|" +
             std::to_string(kCounters * 7 + kCounters / 10 * 3);
  EXPECT_TRUE(WaitUntil([&] { return totals() == expected; }, 60s, 200ms))
      << "rows|bytes: " << totals() << "\ncollector log tail:\n"
      << collector_->LogTail();
}

// Reloads 1-2 s apart whose counters come back higher than before: only the
// uptime tells the instances apart (taking one for the previous one would
// count `value - last` and lose what it counted first). Each instance is
// polled at least once after its last value. Issue 10: the first sightings
// of an instance this young can be taken for the previous one; a later one
// proves the restart and dates it back (DeltaEngine's checkpoints).
TEST_F(CollectorFakeTest, ReloadStormWithRisingCountersLosesNothing) {
  int64_t total = 0;
  std::mt19937 rng(10);
  for (int64_t instance = 1; instance <= 9; ++instance) {
    auto started = std::chrono::steady_clock::now();
    auto life = std::chrono::milliseconds(
        std::uniform_int_distribution<int>(1000, 2000)(rng));
    ASSERT_EQ(fake_->Command("restart"), "");
    int64_t value = instance * 100;  // above every earlier instance's
    ASSERT_EQ(fake_->Command(std::string("set ") + kAliceUp + " " +
                             std::to_string(value)),
              "");
    total += value;
    if (instance == 1) {
      StartCollector();
      ASSERT_TRUE(DatabaseHolds({{kAliceUp, 100}}));
    }
    ASSERT_TRUE(AwaitPolls(2)) << "instance " << instance;
    // The rest of its 1-2 s of life; the collector keeps polling.
    ASSERT_TRUE(AwaitPolls(1));
    WaitUntil(
        [&] { return std::chrono::steady_clock::now() - started >= life; },
        life);
  }
  ASSERT_TRUE(DatabaseHolds({{kAliceUp, total}}));
  ASSERT_TRUE(AwaitPolls(3));
  EXPECT_TRUE(DatabaseHolds({{kAliceUp, total}}, 0ms));
}

}  // namespace
}  // namespace boxmeter::testing
