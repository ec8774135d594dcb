// The collector's quota loop against fakes: the users fingerprint read in
// commits and on idle polls drives hooks.on_users_changed.
#include <gtest/gtest.h>

#include <memory>
#include <sstream>
#include <string>

#include "collector.h"
#include "fakes/fake_notifier.h"
#include "fakes/fake_stats_source.h"
#include "fakes/fake_store.h"
#include "process.h"

namespace boxmeter {
namespace {

using namespace std::chrono_literals;
using testing::FakeNotifier;
using testing::FakeStatsSource;
using testing::FakeStore;
using testing::ReadFile;
using testing::TempDir;

class CollectorHooksTest : public ::testing::Test {
 protected:
  CollectorHooksTest() {
    config_.node = "test-node";
    config_.source.address = "127.0.0.1:1";
    config_.database.url = "postgresql://boxmeter@db/boxmeter";
    config_.poll.interval = 20ms;
    config_.source.timeout = 1s;
    runs_file_ = dir_.path() + "/runs";
    config_.hooks.on_users_changed = "echo run >> '" + runs_file_ + "'";
  }

  void Create() {
    collector_ =
        std::make_unique<Collector>(io_, config_, source_, store_, notifier_);
  }

  template <typename Done>
  bool RunUntil(Done done) {
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!done()) {
      if (io_.stopped() || std::chrono::steady_clock::now() > deadline) {
        return done();
      }
      io_.run_for(5ms);
    }
    return true;
  }

  int Runs() const {
    std::istringstream in(ReadFile(runs_file_));
    int lines = 0;
    for (std::string line; std::getline(in, line);) ++lines;
    return lines;
  }

  TempDir dir_;
  std::string runs_file_;
  Config config_;
  FakeStatsSource source_;
  FakeStore store_;
  FakeNotifier notifier_;
  boost::asio::io_context io_;
  std::unique_ptr<Collector> collector_;
};

TEST_F(CollectorHooksTest, RunsOnceAtStartThenWhenACommitChangesTheUsers) {
  Create();
  source_.Add(CounterKind::kUser, "alice", 10, 20);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return Runs() == 1; })) << "the run at start";
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= 5; }));
  EXPECT_EQ(Runs(), 1) << "nothing changed, nothing ran";

  // The commit that carries alice over her quota reports a new fingerprint.
  store_.SetUsersFingerprint("alice over quota");
  int commits = store_.applied();
  source_.Add(CounterKind::kUser, "alice", 1000, 0);
  ASSERT_TRUE(RunUntil([&] { return Runs() == 2; }));
  EXPECT_GT(store_.applied(), commits);
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= 10; }));
  EXPECT_EQ(Runs(), 2);
}

TEST_F(CollectorHooksTest, AChangeWithoutTrafficIsNoticedOnAnIdlePoll) {
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return Runs() == 1; }));
  store_.SetUsersFingerprint("an operator disabled bob");
  ASSERT_TRUE(RunUntil([&] { return Runs() == 2; }));
  EXPECT_EQ(store_.commits(), 0) << "no traffic, no commit";
  int reads = store_.fingerprint_reads();
  int fetches = source_.fetches();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= fetches + 5; }));
  // One read per poll at most (the poll in flight may add one).
  EXPECT_LE(store_.fingerprint_reads() - reads,
            source_.fetches() - fetches + 1);
  EXPECT_EQ(Runs(), 2);
}

TEST_F(CollectorHooksTest, AFailingHookIsRetriedAtMostOncePerPoll) {
  config_.hooks.on_users_changed += "; exit 1";
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return Runs() >= 4; }));
  EXPECT_LE(Runs(), source_.fetches() + 1);
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
  EXPECT_EQ(Runs(), 0);
}

TEST_F(CollectorHooksTest, ReloadWithANewHookRunsIt) {
  config_.hooks.on_users_changed = "";
  Create();
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return source_.fetches() >= 3; }));
  Config reloaded = config_;
  reloaded.hooks.on_users_changed = "echo run >> '" + runs_file_ + "'";
  collector_->Reload(reloaded);
  EXPECT_TRUE(RunUntil([&] { return Runs() == 1; }));
}

}  // namespace
}  // namespace boxmeter
