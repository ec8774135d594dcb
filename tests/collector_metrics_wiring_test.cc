// The Collector keeps CollectorMetrics up to date (against the fakes): the
// traffic series are the database's totals, loaded at start and moved only
// by commits that applied, and the health gauges follow the loop.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "collector.h"
#include "collector_metrics.h"
#include "fakes/collector_fixture.h"
#include "process.h"

namespace boxmeter {
namespace {

using namespace std::chrono_literals;
using testing::CollectorFixture;
using testing::FakeStore;
using ::testing::HasSubstr;

const CounterKey kAlice{CounterKind::kUser, "alice"};

class CollectorMetricsWiringTest : public CollectorFixture {
 protected:
  CollectorMetricsWiringTest() : CollectorFixture(10ms) {}

  // Commits alice's {10, 20} with a collector without metrics, then makes
  // collector_ with metrics_, as after a collector restart.
  void CommitFirstThenRestartWithMetrics() {
    source_.Add(CounterKind::kUser, "alice", 10, 20);
    Create();
    collector_->StartOnce();
    io_.run();
    ASSERT_EQ(store_.Total(kAlice), (CounterValues{10, 20}));
    io_.restart();
    CreateWithMetrics();
  }

  void CreateWithMetrics() {
    collector_.reset();
    collector_ = std::make_unique<Collector>(io_, config_, source_, store_,
                                             notifier_, &metrics_);
  }

  // The value of the sample that starts with `series` and a space.
  std::optional<int64_t> Sample(const std::string& series) {
    std::istringstream in(metrics_.Render());
    for (std::string line; std::getline(in, line);) {
      if (line.starts_with(series + " ")) {
        return std::stoll(line.substr(series.size() + 1));
      }
    }
    return std::nullopt;
  }
  std::optional<int64_t> Alice(const char* direction) {
    return Sample(
        std::string("v2ray_traffic_") + direction +
        R"(_bytes_total{dimension="user",target="alice",node="test-node"})");
  }
  bool AliceIs(int64_t up, int64_t down) {
    return Alice("uplink") == up && Alice("downlink") == down;
  }

  CollectorMetrics metrics_{{"test-node", true, "test"}};
};

TEST_F(CollectorMetricsWiringTest,
       TotalsAreLoadedThenMovedOnlyByAppliedCommits) {
  ASSERT_NO_FATAL_FAILURE(CommitFirstThenRestartWithMetrics());
  EXPECT_EQ(Alice("uplink"), std::nullopt);  // nothing loaded yet
  store_.Script({FakeStore::Next::kNotApplied});
  source_.Add(CounterKind::kUser, "alice", 5, 5);
  collector_->Start();
  // Loaded from the database before any commit of this collector.
  ASSERT_TRUE(RunUntil([&] { return AliceIs(10, 20); }));
  // A commit that did not apply leaves the totals; the traffic is pending
  // until the retry (a second later: the database's backoff).
  ASSERT_TRUE(RunUntil([&] { return store_.commits() >= 2; }));
  ASSERT_EQ(store_.applied(), 1);  // only the first collector's commit
  EXPECT_TRUE(AliceIs(10, 20)) << metrics_.Render();
  EXPECT_TRUE(RunUntil([&] {
    return Sample(R"(boxmeter_pending_bytes{node="test-node"})") == 10;
  }));
  EXPECT_TRUE(AliceIs(10, 20)) << metrics_.Render();
  ASSERT_TRUE(RunUntil([&] { return AliceIs(15, 25); })) << metrics_.Render();
  EXPECT_EQ(
      Sample(
          R"(boxmeter_commits_total{node="test-node",outcome="not_applied"})"),
      1);

  // A sing-box restart: its counters start from zero, the series do not.
  source_.Restart();
  source_.Add(CounterKind::kUser, "alice", 1, 1);
  ASSERT_TRUE(RunUntil([&] { return AliceIs(16, 26); })) << metrics_.Render();
  EXPECT_EQ(Sample(R"(boxmeter_sing_box_restarts_total{node="test-node"})"), 1);
  EXPECT_EQ(store_.Total(kAlice), (CounterValues{16, 26}));
  EXPECT_TRUE(RunUntil([&] {
    return Sample(R"(boxmeter_pending_bytes{node="test-node"})") == 0 &&
           Sample(R"(boxmeter_writer{node="test-node"})") == 1 &&
           Sample(R"(boxmeter_source_up{node="test-node"})") == 1 &&
           Sample(R"(boxmeter_database_up{node="test-node"})") == 1;
  })) << metrics_.Render();
}

TEST_F(CollectorMetricsWiringTest, UnknownOutcomeThatAppliedCountsOnce) {
  CreateWithMetrics();
  store_.Script({FakeStore::Next::kUnknownApplied});
  source_.Add(CounterKind::kUser, "alice", 10, 20);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return AliceIs(10, 20); })) << metrics_.Render();
  source_.Add(CounterKind::kUser, "alice", 1, 1);
  ASSERT_TRUE(RunUntil([&] { return store_.applied() >= 2; }));
  int fetches = source_.fetches();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= fetches + 5; }));
  EXPECT_TRUE(AliceIs(11, 21)) << metrics_.Render();
  EXPECT_EQ(
      Sample(R"(boxmeter_commits_total{node="test-node",outcome="unknown"})"),
      1);
}

TEST_F(CollectorMetricsWiringTest, UnknownOutcomeThatDidNotApplyCountsOnce) {
  CreateWithMetrics();
  store_.Script({FakeStore::Next::kUnknown});
  source_.Add(CounterKind::kUser, "alice", 10, 20);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return store_.applied() >= 1; }));
  int fetches = source_.fetches();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= fetches + 5; }));
  EXPECT_TRUE(AliceIs(10, 20)) << metrics_.Render();
}

TEST_F(CollectorMetricsWiringTest, FailedPollsShowInTheHealthSeries) {
  CreateWithMetrics();
  source_.Fail(Status::Unavailable("nothing listens"));
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] {
    return Sample(
               R"(boxmeter_polls_total{node="test-node",outcome="failure"})") >=
           2;
  }));
  EXPECT_EQ(Sample(R"(boxmeter_source_up{node="test-node"})"), 0);
  EXPECT_THAT(metrics_.Render(),
              ::testing::Not(HasSubstr("last_successful_poll")));
}

// boxmeter_hook_runs_total counts hooks.on_users_changed only: a run of
// hooks.on_event in progress takes nothing off its successes.
TEST_F(CollectorMetricsWiringTest, AnEventHookRunIsNoUsersHookRun) {
  testing::TempDir dir;
  std::string started = dir.path() + "/started", go = dir.path() + "/go";
  config_.hooks.on_event = "touch '" + started + "'; i=0; while [ ! -e '" + go +
                           "' ] && [ $i -lt 200 ]; do sleep 0.05; "
                           "i=$((i+1)); done";
  store_.AddEvent(1);
  CreateWithMetrics();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return std::ifstream(started).good(); }));
  EXPECT_EQ(
      Sample(R"(boxmeter_hook_runs_total{node="test-node",outcome="success"})"),
      0)
      << metrics_.Render();
  std::ofstream(go).put('\n');
  ASSERT_TRUE(RunUntil([&] { return store_.marks(1) == 1; }));
  collector_.reset();  // before the directory goes
}

// boxmeter_event_hook_runs_total counts the runs of hooks.on_event: here
// one that fails, then, after the backoff, one that delivers the event.
TEST_F(CollectorMetricsWiringTest, EventHookRunsAreCountedByOutcome) {
  testing::TempDir dir;
  std::string tried = dir.path() + "/tried";
  config_.hooks.on_event =
      "[ -e '" + tried + "' ] || { touch '" + tried + "'; exit 3; }";
  store_.AddEvent(1);
  CreateWithMetrics();
  collector_->Start();
  const std::string series =
      R"(boxmeter_event_hook_runs_total{node="test-node",)";
  ASSERT_TRUE(RunUntil([&] {
    return Sample(series + R"(outcome="failure"})") == 1;
  })) << metrics_.Render();
  EXPECT_EQ(Sample(series + R"(outcome="success"})"), 0);
  // The first retry comes after EventDelivery::kMinBackoff (1 s).
  ASSERT_TRUE(RunUntil([&] {
    return Sample(series + R"(outcome="success"})") == 1;
  })) << metrics_.Render();
  EXPECT_EQ(Sample(series + R"(outcome="failure"})"), 1);
  EXPECT_TRUE(RunUntil([&] { return store_.marks(1) == 1; }));
  collector_.reset();  // before the directory goes
}

}  // namespace
}  // namespace boxmeter
