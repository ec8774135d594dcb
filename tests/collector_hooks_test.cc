// The collector's quota loop against fakes: the users fingerprint read in
// commits and on idle polls drives hooks.on_users_changed.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "collector.h"
#include "fakes/collector_fixture.h"
#include "recording_hook.h"

namespace boxmeter {
namespace {

using namespace std::chrono_literals;
using testing::CollectorFixture;
using testing::RecordingHook;

class CollectorHooksTest : public CollectorFixture {
 protected:
  CollectorHooksTest() : CollectorFixture(20ms) {
    config_.hooks.on_users_changed = hook_.Command();
  }
  // The collector, and a hook it may be running, go before the hook's
  // directory.
  ~CollectorHooksTest() override { collector_.reset(); }

  RecordingHook hook_;
};

TEST_F(CollectorHooksTest, RunsOnceAtStartThenWhenACommitChangesTheUsers) {
  Create();
  source_.Add(CounterKind::kUser, "alice", 10, 20);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return hook_.Runs() == 1; }))
      << "the run at start";
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= 5; }));
  EXPECT_EQ(hook_.Runs(), 1) << "nothing changed, nothing ran";

  // The commit that carries alice over her quota reports a new fingerprint.
  store_.SetUsersFingerprint("alice over quota");
  int commits = store_.applied();
  source_.Add(CounterKind::kUser, "alice", 1000, 0);
  ASSERT_TRUE(RunUntil([&] { return hook_.Runs() == 2; }));
  EXPECT_GT(store_.applied(), commits);
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= 10; }));
  EXPECT_EQ(hook_.Runs(), 2);
}

// The flush before a run retries a poll that failed (a sing-box restarted
// a moment ago), so the run's reload does not lose what was counted.
TEST_F(CollectorHooksTest, TheFlushBeforeARunTriesAFailedPollAgain) {
  config_.poll.interval = std::chrono::hours(1);  // only the flush polls
  Create();
  source_.Add(CounterKind::kUser, "alice", 10, 20);
  source_.FailNext(3);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return hook_.Runs() == 1; }));
  EXPECT_EQ(source_.fetches(), 4) << "three failed polls, then one that worked";
  EXPECT_EQ(store_.Total(CounterKey{CounterKind::kUser, "alice"}),
            (CounterValues{10, 20}));
}

TEST_F(CollectorHooksTest, AChangeWithoutTrafficIsNoticedOnAnIdlePoll) {
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return hook_.Runs() == 1; }));
  store_.SetUsersFingerprint("an operator disabled bob");
  ASSERT_TRUE(RunUntil([&] { return hook_.Runs() == 2; }));
  EXPECT_EQ(store_.commits(), 0) << "no traffic, no commit";
  int reads = store_.fingerprint_reads();
  int fetches = source_.fetches();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= fetches + 5; }));
  // One read per poll at most (the poll in flight may add one).
  EXPECT_LE(store_.fingerprint_reads() - reads,
            source_.fetches() - fetches + 1);
  EXPECT_EQ(hook_.Runs(), 2);
}

// The commit reads the fingerprint; a poll with traffic must not also read
// it on its own while its fetch is in flight (scripts/fleet.sh: the
// fingerprint was most of PostgreSQL's work for a fleet, and was read twice
// per poll).
TEST_F(CollectorHooksTest, APollWithTrafficReadsTheFingerprintOnce) {
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return hook_.Runs() == 1; }));
  int reads = store_.fingerprint_reads();
  int commits = store_.applied();
  int fetches = source_.fetches();
  ASSERT_TRUE(RunUntil([&] {
    source_.Add(CounterKind::kUser, "alice", 10, 20);
    return source_.fetches() >= fetches + 10;
  }));
  EXPECT_GE(store_.applied() - commits, 5) << "traffic on most polls";
  // One read per poll at most (the poll in flight may add one).
  EXPECT_LE(store_.fingerprint_reads() - reads,
            source_.fetches() - fetches + 1);
}

TEST_F(CollectorHooksTest, AFailingHookIsRetriedAtMostOncePerPoll) {
  config_.hooks.on_users_changed += "; exit 1";
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return hook_.Runs() >= 4; }));
  EXPECT_LE(hook_.Runs(), source_.fetches() + 1);
}

TEST_F(CollectorHooksTest, WithoutAHookTheFingerprintIsNeverRead) {
  config_.hooks.on_users_changed = "";
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= 5; }));
  EXPECT_EQ(store_.fingerprint_reads(), 0);
}

TEST_F(CollectorHooksTest, OnceNeverRunsTheHook) {
  Create();
  source_.Add(CounterKind::kUser, "alice", 10, 20);
  collector_->StartOnce();
  io_.run();
  EXPECT_TRUE(collector_->succeeded());
  EXPECT_EQ(store_.applied(), 1);
  EXPECT_EQ(hook_.Runs(), 0);
}

TEST_F(CollectorHooksTest, ReloadWithANewHookRunsIt) {
  config_.hooks.on_users_changed = "";
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= 3; }));
  Config reloaded = config_;
  reloaded.hooks.on_users_changed = hook_.Command();
  collector_->Reload(reloaded);
  EXPECT_TRUE(RunUntil([&] { return hook_.Runs() == 1; }));
}

}  // namespace
}  // namespace boxmeter
