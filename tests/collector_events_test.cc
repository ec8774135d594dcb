// The collector delivering usage events to hooks.on_event, against fakes:
// each event's JSON on the hook's stdin in id order, marked delivered once
// the hook exits 0, retried with backoff while it fails, and a hook that
// takes its time blocks neither polls nor commits. Also EventDelivery's
// rules on their own.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "collector.h"
#include "event_delivery.h"
#include "fakes/collector_fixture.h"
#include "process.h"

namespace boxmeter {
namespace {

using namespace std::chrono_literals;
using testing::CollectorFixture;
using ::testing::ElementsAre;
using testing::ReadFile;
using testing::TempDir;

class CollectorEventsTest : public CollectorFixture {
 protected:
  CollectorEventsTest() : CollectorFixture(20ms) {}
  // The collector, and a hook it may be running, go before the directory.
  ~CollectorEventsTest() override { collector_.reset(); }

  // The lines the hook appended to `runs`.
  std::vector<std::string> Runs() const {
    std::vector<std::string> lines;
    std::istringstream in(ReadFile(runs_));
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }

  TempDir dir_;
  std::string runs_ = dir_.path() + "/runs";
  std::string go_ = dir_.path() + "/go";
};

TEST_F(CollectorEventsTest, EachEventGoesToTheHookOnceInIdOrderThenIsMarked) {
  // Records the id in its environment and the JSON on its stdin.
  config_.hooks.on_event =
      "echo \"$BOXMETER_EVENT_ID $(cat)\" >> '" + runs_ + "'";
  store_.AddEvent(3);
  store_.AddEvent(1);
  store_.AddEvent(2);
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return store_.marks(3) == 1; }));
  EXPECT_THAT(Runs(),
              ElementsAre("1 {\"id\":1}", "2 {\"id\":2}", "3 {\"id\":3}"));
  EXPECT_EQ(store_.marks(1), 1);
  EXPECT_EQ(store_.marks(2), 1);
  // One hook run and the calls around it fit in the delivery lease.
  EXPECT_GT(store_.last_event_lease(), config_.hooks.timeout);

  // A later event, on a later poll; nothing is delivered twice, and events
  // are read at most once a poll (the poll in flight may add one).
  int fetches = source_.fetches();
  int reads = store_.event_reads();
  store_.AddEvent(4);
  ASSERT_TRUE(RunUntil([&] { return store_.marks(4) == 1; }));
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= fetches + 5; }));
  EXPECT_EQ(Runs().size(), 4u);
  EXPECT_LE(store_.event_reads() - reads, source_.fetches() - fetches + 1);
}

TEST_F(CollectorEventsTest, AFailingHookIsRetriedWithBackoffUntilItSucceeds) {
  // Fails until the file `go` exists.
  config_.hooks.on_event =
      "echo \"$BOXMETER_EVENT_ID\" >> '" + runs_ + "'; test -e '" + go_ + "'";
  store_.AddEvent(7);
  store_.AddEvent(8);
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return Runs().size() == 1; }));
  auto failed = std::chrono::steady_clock::now();
  // Polls go on every 20 ms; the retry waits for the backoff (1 s).
  ASSERT_TRUE(RunUntil([&] { return Runs().size() == 2; }));
  EXPECT_GE(std::chrono::steady_clock::now() - failed,
            EventDelivery::kMinBackoff);
  EXPECT_EQ(store_.marks(7), 0);
  EXPECT_THAT(Runs(), ElementsAre("7", "7")) << "8 waits for 7";
  std::ofstream(go_).put('\n');
  ASSERT_TRUE(RunUntil([&] { return store_.marks(8) == 1; }));
  EXPECT_EQ(store_.marks(7), 1);
  EXPECT_THAT(Runs(), ElementsAre("7", "7", "7", "8"));
}

TEST_F(CollectorEventsTest, AHookThatTakesItsTimeBlocksNeitherPollsNorCommits) {
  // Waits (boundedly) for the file `go`.
  config_.hooks.on_event = "echo \"$BOXMETER_EVENT_ID\" >> '" + runs_ +
                           "'; i=0; while [ ! -e '" + go_ +
                           "' ] && [ $i -lt 200 ]; do sleep 0.05; "
                           "i=$((i+1)); done";
  store_.AddEvent(1);
  store_.AddEvent(2);
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return Runs().size() == 1; }));
  int applied = store_.applied();
  int fetches = source_.fetches();
  source_.Add(CounterKind::kUser, "alice", 100, 200);
  ASSERT_TRUE(RunUntil([&] {
    return store_.applied() > applied && source_.fetches() >= fetches + 5;
  }));
  EXPECT_EQ(store_.Total({CounterKind::kUser, "alice"}),
            (CounterValues{100, 200}));
  EXPECT_THAT(Runs(), ElementsAre("1")) << "one hook at a time";
  EXPECT_EQ(store_.marks(1), 0);
  std::ofstream(go_).put('\n');
  ASSERT_TRUE(RunUntil([&] { return store_.marks(2) == 1; }));
  EXPECT_EQ(store_.marks(1), 1);
}

TEST_F(CollectorEventsTest, WithoutTheHookOrTheLeaseNothingIsDelivered) {
  store_.AddEvent(1);
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= 5; }));
  EXPECT_EQ(store_.event_reads(), 0) << "no hooks.on_event, no reads";

  // Another node delivers: reads find nothing to hand over.
  collector_.reset();
  config_.hooks.on_event = "echo run >> '" + runs_ + "'";
  store_.DeliverEventsElsewhere(true);
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return store_.event_reads() >= 3; }));
  EXPECT_TRUE(Runs().empty());
  EXPECT_EQ(store_.marks(1), 0);
}

TEST(EventDeliveryTest, BackoffDoublesUpToItsCapAndASuccessResetsIt) {
  EventDelivery delivery;
  auto now = EventDelivery::Clock::now();
  std::chrono::milliseconds backoff{0};
  for (int i = 0; i < 12; ++i) {
    delivery.Tick();
    ASSERT_TRUE(delivery.WantsRead(now + backoff));
    now += backoff;
    delivery.ReadStarted();
    delivery.Read({{5, "{}"}, {6, "{}"}});
    ASSERT_NE(delivery.Next(), nullptr);
    EXPECT_EQ(delivery.Next()->id, 5);
    delivery.Started();
    EXPECT_EQ(delivery.Next(), nullptr) << "one run at a time";
    backoff = delivery.Finished(5, false, now);
    EXPECT_FALSE(delivery.WantsRead(now)) << "not within this poll";
    delivery.Tick();
    EXPECT_FALSE(delivery.WantsRead(now + backoff - 1ms)) << "backoff";
  }
  EXPECT_EQ(backoff, EventDelivery::kMaxBackoff);
  delivery.Tick();
  now += backoff;
  delivery.ReadStarted();
  delivery.Read({{5, "{}"}, {6, "{}"}});
  delivery.Started();
  EXPECT_EQ(delivery.Finished(5, true, now), 0ms);
  EXPECT_EQ(delivery.ToMark(), 5);
  EXPECT_EQ(delivery.Next(), nullptr) << "6 waits for 5's mark";
  delivery.MarkFailed();
  EXPECT_EQ(delivery.ToMark(), std::nullopt) << "tried again next poll";
  delivery.Tick();
  EXPECT_EQ(delivery.ToMark(), 5);
  delivery.Marked();
  ASSERT_NE(delivery.Next(), nullptr);
  EXPECT_EQ(delivery.Next()->id, 6);
  delivery.Started();
  EXPECT_EQ(delivery.Finished(6, false, now), EventDelivery::kMinBackoff)
      << "a success resets the backoff";
  EXPECT_EQ(delivery.delivered(), 1);
  EXPECT_EQ(delivery.failed(), 13);
}

}  // namespace
}  // namespace boxmeter
