#include "collector.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <optional>

#include "fakes/collector_fixture.h"
#include "fakes/fake_notifier.h"
#include "fakes/fake_stats_source.h"
#include "fakes/fake_store.h"

namespace boxmeter {
namespace {

using namespace std::chrono_literals;
using testing::CollectorFixture;
using testing::FakeNotifier;
using testing::FakeStatsSource;
using testing::FakeStore;

const CounterKey kAlice{CounterKind::kUser, "alice"};

class CollectorTest : public CollectorFixture {
 protected:
  CollectorTest()
      : CollectorFixture(10ms, "postgresql://boxmeter:secret@db/boxmeter") {
    Create();
  }

  int Count(const std::string& event) {
    return std::count(notifier_.events.begin(), notifier_.events.end(), event);
  }

  // alice's 10/20 committed, then the collector crashes (its lease stays
  // with it, lapsing in 600 ms); a new one starts in standby, and alice's
  // next 5/5 are seen by two of its polls, not committed.
  void RestartInStandbyAfterACrash() {
    source_.Add(CounterKind::kUser, "alice", 10, 20);
    collector_->Start();
    ASSERT_TRUE(RunUntil([&] { return store_.applied() == 1; }));
    collector_.reset();
    store_.StealLease("host fake pid 1 crashed", 600ms);
    Create();
    collector_->Start();
    source_.Add(CounterKind::kUser, "alice", 5, 5);
    int fetches = source_.fetches();
    ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= fetches + 2; }));
  }
};

TEST_F(CollectorTest, OnceCommitsWhatWasCounted) {
  source_.Add(CounterKind::kUser, "alice", 10, 20);
  collector_->StartOnce();
  io_.run();
  EXPECT_TRUE(collector_->succeeded());
  EXPECT_EQ(store_.Total(kAlice), (CounterValues{10, 20}));
  EXPECT_EQ(Count("READY=1"), 1);
}

TEST_F(CollectorTest, OnceFailsWhenTheDatabaseIsDown) {
  store_.SetUp(false);
  source_.Add(CounterKind::kUser, "alice", 10, 20);
  collector_->StartOnce();
  io_.run();
  EXPECT_FALSE(collector_->succeeded());
  EXPECT_EQ(Count("READY=1"), 0);
}

TEST_F(CollectorTest, OnceFailsWhenTheStatsApiFails) {
  source_.Fail(Status::Unavailable("nothing listens"));
  collector_->StartOnce();
  io_.run();
  EXPECT_FALSE(collector_->succeeded());
}

TEST_F(CollectorTest, OnceWithNothingCountedSucceedsWithoutWriting) {
  collector_->StartOnce();
  io_.run();
  EXPECT_TRUE(collector_->succeeded());
  EXPECT_EQ(store_.commits(), 0);
}

TEST_F(CollectorTest, DatabaseDownAtStartLosesNothing) {
  store_.SetUp(false);
  source_.Add(CounterKind::kUser, "alice", 10, 20);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= 3; }));
  source_.Add(CounterKind::kUser, "alice", 1, 2);
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= 6; }));
  EXPECT_EQ(Count("READY=1"), 0);  // not ready before the database answers
  store_.SetUp(true);
  EXPECT_TRUE(RunUntil([&] {
    return store_.Total(kAlice) == CounterValues{11, 22};
  }));
  EXPECT_EQ(Count("READY=1"), 1);
}

TEST_F(CollectorTest, FailedCommitsKeepTheirTraffic) {
  store_.Script({FakeStore::Next::kNotApplied, FakeStore::Next::kNotApplied});
  source_.Add(CounterKind::kUser, "alice", 10, 20);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return store_.commits() >= 1; }));
  source_.Add(CounterKind::kUser, "alice", 5, 5);
  EXPECT_TRUE(RunUntil([&] {
    return store_.Total(kAlice) == CounterValues{15, 25};
  }));
  EXPECT_EQ(store_.applied(), 1);  // one commit carried everything
}

TEST_F(CollectorTest, UnknownOutcomeThatAppliedIsNotCountedTwice) {
  store_.Script({FakeStore::Next::kUnknownApplied});
  source_.Add(CounterKind::kUser, "alice", 10, 20);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return store_.applied() >= 1; }));
  source_.Add(CounterKind::kUser, "alice", 1, 1);
  ASSERT_TRUE(RunUntil([&] { return store_.applied() >= 2; }));
  int fetches = source_.fetches();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= fetches + 5; }));
  EXPECT_EQ(store_.Total(kAlice), (CounterValues{11, 21}));
}

TEST_F(CollectorTest, UnknownOutcomeThatDidNotApplyIsRetried) {
  store_.Script({FakeStore::Next::kUnknown});
  source_.Add(CounterKind::kUser, "alice", 10, 20);
  collector_->Start();
  EXPECT_TRUE(RunUntil([&] {
    return store_.Total(kAlice) == CounterValues{10, 20};
  }));
}

TEST_F(CollectorTest, IdlePollsWriteNothing) {
  source_.Add(CounterKind::kUser, "alice", 10, 20);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return store_.applied() == 1; }));
  int commits = store_.commits();
  int fetches = source_.fetches();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= fetches + 10; }));
  EXPECT_EQ(store_.commits(), commits);
}

TEST_F(CollectorTest, SingBoxRestartIsCountedFromZero) {
  source_.Add(CounterKind::kUser, "alice", 100, 100);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] {
    return store_.Total(kAlice) == CounterValues{100, 100};
  }));
  source_.Restart();
  source_.Add(CounterKind::kUser, "alice", 30, 40);
  EXPECT_TRUE(RunUntil([&] {
    return store_.Total(kAlice) == CounterValues{130, 140};
  }));
}

TEST_F(CollectorTest, StopPollsAndCommitsOnceMore) {
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return Count("READY=1") == 1; }));
  source_.Add(CounterKind::kUser, "alice", 7, 8);
  collector_->Stop();
  io_.run();  // returns once the collector stopped the loop
  EXPECT_EQ(store_.Total(kAlice), (CounterValues{7, 8}));
  EXPECT_EQ(Count("STOPPING=1"), 1);
}

TEST_F(CollectorTest, StopWaitsForTheCommitInFlightThenCommitsTheFinalPoll) {
  source_.Add(CounterKind::kUser, "alice", 10, 20);
  store_.HoldCommits(true);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return store_.commits() == 1; }));
  // The commit of the first poll is stuck (a row lock); more traffic comes,
  // then SIGTERM.
  source_.Add(CounterKind::kUser, "alice", 1, 2);
  collector_->Stop();
  io_.run_for(50ms);
  store_.HoldCommits(false);
  io_.run();  // returns once the collector stopped the loop
  EXPECT_EQ(store_.Total(kAlice), (CounterValues{11, 22}));
  EXPECT_EQ(collector_->ExitCode(), 0);
}

TEST_F(CollectorTest, StopRetriesAFailedFinalCommit) {
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return Count("READY=1") == 1; }));
  source_.Add(CounterKind::kUser, "alice", 7, 8);
  store_.Script({FakeStore::Next::kNotApplied});
  collector_->Stop();
  io_.run();
  EXPECT_EQ(store_.Total(kAlice), (CounterValues{7, 8}));
  EXPECT_EQ(collector_->ExitCode(), 0);
  EXPECT_EQ(store_.commits(), 2);
}

// After an outage the database is tried again at growing intervals (1, 2,
// 4 s, up to 30 s). A stop must not wait out such a pause: its budget is
// 3 x source.timeout + 10 s. Here the next try would come 4 s after the
// third failure; the stop tries within a second.
TEST_F(CollectorTest, StopAfterAnOutageTriesTheDatabaseWithinASecond) {
  store_.SetUp(false);
  source_.Add(CounterKind::kUser, "alice", 7, 8);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return store_.connects() >= 3; }));
  store_.SetUp(true);
  collector_->Stop();
  auto stopped_by = std::chrono::steady_clock::now() + 2500ms;
  while (!io_.stopped() && std::chrono::steady_clock::now() < stopped_by) {
    io_.run_for(10ms);
  }
  EXPECT_TRUE(io_.stopped()) << "the stop waited for the outage's backoff";
  EXPECT_EQ(store_.Total(kAlice), (CounterValues{7, 8}));
  EXPECT_EQ(collector_->ExitCode(), 0);
}

TEST_F(CollectorTest, StopRightAfterARestartCountsTheNewInstanceOnce) {
  source_.Add(CounterKind::kUser, "alice", 100, 100);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] {
    return store_.Total(kAlice) == CounterValues{100, 100};
  }));
  source_.Restart();
  source_.Add(CounterKind::kUser, "alice", 30, 40);
  collector_->Stop();
  io_.run();
  EXPECT_EQ(store_.Total(kAlice), (CounterValues{130, 140}));
  EXPECT_EQ(collector_->ExitCode(), 0);
}

TEST_F(CollectorTest, StopTriesAFailedFinalPollAgain) {
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return Count("READY=1") == 1; }));
  int fetches = source_.fetches();
  source_.Fail(Status::Unavailable("sing-box is gone"));
  collector_->Stop();
  io_.run();
  EXPECT_EQ(source_.fetches(), fetches + 4) << "one final poll, three retries";
  EXPECT_EQ(collector_->ExitCode(), 0) << "nothing counted was left";
}

TEST_F(CollectorTest, FlushIsAnsweredOnceTrafficBeforeItIsCommitted) {
  config_.poll.interval = std::chrono::hours(1);  // only the flush polls
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() == 1; }));
  source_.Add(CounterKind::kUser, "alice", 3, 4);
  std::optional<Status> answer;
  collector_->Flush([&](Status status) { answer = status; });
  ASSERT_TRUE(RunUntil([&] { return answer.has_value(); }));
  EXPECT_TRUE(answer->ok()) << answer->message();
  EXPECT_EQ(store_.Total(kAlice), (CounterValues{3, 4}))
      << "the flush answered before its traffic was committed";
  EXPECT_EQ(source_.fetches(), 2);
}

TEST_F(CollectorTest, FlushDuringACommitInFlightWaitsForAFetchAfterIt) {
  config_.poll.interval = std::chrono::hours(1);
  Create();
  source_.Add(CounterKind::kUser, "alice", 1, 1);
  store_.HoldCommits(true);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return store_.commits() == 1; }));
  source_.Add(CounterKind::kUser, "alice", 5, 5);
  std::optional<Status> answer;
  collector_->Flush([&](Status status) { answer = status; });
  io_.run_for(50ms);
  EXPECT_FALSE(answer.has_value()) << "answered while its commit was held";
  store_.HoldCommits(false);
  ASSERT_TRUE(RunUntil([&] { return answer.has_value(); }));
  EXPECT_TRUE(answer->ok()) << answer->message();
  EXPECT_EQ(store_.Total(kAlice), (CounterValues{6, 6}));
}

TEST_F(CollectorTest, FlushFailsWhenTheStatsApiFails) {
  config_.poll.interval = std::chrono::hours(1);
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() == 1; }));
  source_.Fail(Status::Unavailable("sing-box is gone"));
  std::optional<Status> answer;
  collector_->Flush([&](Status status) { answer = status; });
  ASSERT_TRUE(RunUntil([&] { return answer.has_value(); }));
  EXPECT_FALSE(answer->ok());
  EXPECT_NE(answer->message().find("sing-box is gone"), std::string::npos)
      << answer->message();
  EXPECT_EQ(source_.fetches(), 1 + 7) << "the flush's poll, six retries";
}

// Right after a sing-box restart gRPC fails calls at once until its
// reconnect backoff ends: a reload's flush then must wait, not fail (the
// chaos run that found this: --flush exited 69 just after a v2ray-core
// restart, with the database healthy).
TEST_F(CollectorTest, FlushTriesAFailedPollAgain) {
  config_.poll.interval = std::chrono::hours(1);
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() == 1; }));
  source_.Add(CounterKind::kUser, "alice", 3, 4);
  source_.FailNext(3);
  std::optional<Status> answer;
  collector_->Flush([&](Status status) { answer = status; });
  ASSERT_TRUE(RunUntil([&] { return answer.has_value(); }));
  EXPECT_TRUE(answer->ok()) << answer->message();
  EXPECT_EQ(store_.Total(kAlice), (CounterValues{3, 4}));
  EXPECT_EQ(source_.fetches(), 1 + 4) << "three failed tries, one that worked";
}

// A collector restarted after a crash finds its predecessor's lease; a
// reload's flush in that window must wait for the takeover and commit, or the
// traffic counted since the predecessor's last commit is lost at the reload.
TEST_F(CollectorTest, FlushWaitsForTheLeaseOfACrashedCollectorToLapse) {
  ASSERT_TRUE(store_.TakeLeaseAs("host fake pid 2 crashed", 400ms));
  source_.Add(CounterKind::kUser, "alice", 3, 4);
  std::optional<Status> answer;
  collector_->Start();
  collector_->Flush([&](Status status) { answer = status; });
  ASSERT_TRUE(RunUntil([&] { return store_.lease_takes() >= 3; }));
  EXPECT_FALSE(answer.has_value()) << "answered before the lease lapsed";
  ASSERT_TRUE(RunUntil([&] { return answer.has_value(); }));
  EXPECT_TRUE(answer->ok()) << answer->message();
  EXPECT_EQ(store_.Total(kAlice), (CounterValues{3, 4}));
  EXPECT_TRUE(store_.lease().held);
}

// The predecessor crashed after a commit; while its successor waits for the
// lease, sing-box restarts. What the old instance counted after that commit
// was seen by a standby poll only: the takeover must commit it, and the new
// instance's traffic too.
TEST_F(CollectorTest, ASingBoxRestartWhileWaitingForTheLeaseLosesNothing) {
  ASSERT_NO_FATAL_FAILURE(RestartInStandbyAfterACrash());
  EXPECT_FALSE(store_.lease().held) << "took over before the lease lapsed";
  source_.Restart();
  source_.Add(CounterKind::kUser, "alice", 1, 2);
  EXPECT_TRUE(RunUntil([&] {
    return store_.Total(kAlice) == CounterValues{16, 27};
  })) << store_.Total(kAlice).uplink
      << " " << store_.Total(kAlice).downlink;
}

// SIGTERM while waiting for a crashed predecessor's lease: what the standby
// polls saw is committed by no one else, so the stop waits for the takeover
// (the lease lapses well within the stop budget) and commits it.
TEST_F(CollectorTest, StopWhileWaitingForACrashedPredecessorCommitsAfterIt) {
  ASSERT_NO_FATAL_FAILURE(RestartInStandbyAfterACrash());
  ASSERT_FALSE(store_.lease().held);
  collector_->Stop();
  io_.run();
  EXPECT_EQ(store_.Total(kAlice), (CounterValues{15, 25}));
  EXPECT_EQ(collector_->ExitCode(), 0);
}

// A second collector configured with the node's name: once the holder is
// seen to renew its lease it is running, and the flush fails (saying who)
// rather than hang until the client gives up.
TEST_F(CollectorTest, FlushFailsOnceTheHolderIsSeenRenewingItsLease) {
  const std::string other = "host fake pid 2 running";
  ASSERT_TRUE(store_.TakeLeaseAs(other, 400ms));
  std::optional<Status> answer;
  collector_->Start();
  collector_->Flush([&](Status status) { answer = status; });
  ASSERT_TRUE(RunUntil([&] {
    EXPECT_TRUE(store_.TakeLeaseAs(other, 400ms));  // it keeps renewing
    return answer.has_value();
  }));
  EXPECT_FALSE(answer->ok());
  EXPECT_NE(answer->message().find(other), std::string::npos)
      << answer->message();
  EXPECT_EQ(store_.applied(), 0);
  // A flush now fails at once.
  answer.reset();
  collector_->Flush([&](Status status) { answer = status; });
  EXPECT_TRUE(answer.has_value());
}

TEST_F(CollectorTest, StatusLinesDescribeThePoll) {
  source_.Add(CounterKind::kUser, "alice", 7, 8);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return store_.applied() == 1; }));
  auto status = std::find_if(
      notifier_.events.rbegin(), notifier_.events.rend(),
      [](const std::string& e) { return e.rfind("STATUS=", 0) == 0; });
  ASSERT_NE(status, notifier_.events.rend());
  EXPECT_NE(status->find("1 counters"), std::string::npos) << *status;
  EXPECT_EQ(status->find("secret"), std::string::npos) << *status;
}

TEST_F(CollectorTest, ReloadAppliesANewIntervalAtOnce) {
  config_.poll.interval = std::chrono::hours(1);
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() == 1; }));
  Config faster = config_;
  faster.poll.interval = 10ms;
  faster.log.level = LogLevel::kWarn;
  collector_->Reload(faster);
  EXPECT_TRUE(RunUntil([&] { return source_.fetches() >= 5; }));
  EXPECT_FALSE(LogEnabled(LogLevel::kInfo));
  SetLogLevel(LogLevel::kInfo);
}

TEST_F(CollectorTest, HealthyOnlyAfterAPollThatReachedBothPeers) {
  store_.SetUp(false);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= 3; }));
  EXPECT_EQ(Count("HEALTHY"), 0);
  store_.SetUp(true);
  ASSERT_TRUE(RunUntil([&] { return Count("READY=1") == 1; }));
  EXPECT_TRUE(RunUntil([&] { return Count("HEALTHY") >= 1; }));
  source_.Fail(Status::Unavailable("sing-box is gone"));
  int fetches = source_.fetches();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= fetches + 2; }));
  int healthy = Count("HEALTHY");
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= fetches + 5; }));
  EXPECT_EQ(Count("HEALTHY"), healthy);
}

TEST(CollectorWatchdogTest, PingsAtTheRequestedRate) {
  Config config;
  config.node = "n";
  config.source.address = "127.0.0.1:1";
  config.poll.interval = 1h;  // only the watchdog should tick
  FakeStatsSource source;
  FakeStore store;
  FakeNotifier notifier;
  notifier.watchdog = std::chrono::milliseconds(20);
  boost::asio::io_context io;
  Collector collector(io, config, source, store, notifier);
  collector.Start();
  io.run_for(300ms);
  int pings = std::count(notifier.events.begin(), notifier.events.end(),
                         std::string("WATCHDOG=1"));
  // 300 ms at one ping per 20 ms: about 15; allow a slow machine.
  EXPECT_GE(pings, 5);
  EXPECT_LE(pings, 17);
}

}  // namespace
}  // namespace boxmeter
