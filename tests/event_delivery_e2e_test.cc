// Usage events delivered to hooks.on_event end to end (issue 13): the real
// boxmeter-collector, v2ray-core carrying the traffic and a throwaway
// PostgreSQL (collector_e2e_fixture.h). A user whose traffic crosses 80% of
// her quota reaches the hook exactly once; when the collector is killed -9
// while the hook runs (after the commit that recorded the event, before it
// is marked delivered), the restarted collector hands the same event over
// again, with the same id, and delivered_at is set once.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "collector_e2e_fixture.h"
#include "process.h"

namespace boxmeter::testing {
namespace {

using namespace std::chrono_literals;

constexpr auto kWait = 30s;

class EventDeliveryE2eTest : public CollectorE2eTest {
 protected:
  void SetUp() override {
    CollectorE2eTest::SetUp();
    if (HasFatalFailure()) return;
    // Records each run ("<id> <json>"); while the file `block` exists, the
    // first run after it blocks until `release` appears (bounded), as a
    // hook that is still posting when the collector dies.
    std::ofstream(hook_) << "#!/bin/sh\n"
                         << "dir='" << dir_.path() << "'\n"
                         << R"sh(json=$(cat)
echo "$BOXMETER_EVENT_ID $json" >> "$dir/runs"
if [ -e "$dir/block" ] && [ ! -e "$dir/blocked" ]; then
  : > "$dir/blocked"
  i=0
  while [ ! -e "$dir/release" ] && [ $i -lt 600 ]; do
    sleep 0.05
    i=$((i + 1))
  done
  : > "$dir/unblocked"
fi
)sh";
  }

  // The hook's runs, one line each.
  std::vector<std::string> Runs() const {
    std::vector<std::string> lines;
    std::istringstream in(ReadFile(dir_.path() + "/runs"));
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }

  std::string Sql(const std::string& sql) { return pg_->Query(kDatabase, sql); }

  // The id of `user`'s 80% threshold event, or "".
  std::string ThresholdEvent(const std::string& user) {
    return Sql(
        "SELECT id FROM usage_events WHERE kind = 'threshold' "
        "AND threshold = 80 AND user_name = '" +
        user + "'");
  }
  std::string DeliveredAt(const std::string& id) {
    return Sql("SELECT delivered_at FROM usage_events WHERE id = " + id);
  }

  TempDir dir_;
  std::string hook_ = dir_.path() + "/hook.sh";
};

TEST_F(EventDeliveryE2eTest, EightyPercentReachesTheHookOnceEvenAcrossKill9) {
  CollectorRunner::Settings settings = CollectorSettings();
  settings.more_yaml = "hooks:\n  on_event: \"sh '" + hook_ +
                       "'\"\n"
                       "  timeout: 30s\n";
  collector_ = NewCollector(settings);
  collector_->Start();
  ASSERT_TRUE(AwaitFirstCommit());  // migrated, polling

  // Quota 1 MB each; their first traffic is counted before events are on,
  // so the only events are the thresholds crossed below.
  Sql("SELECT add_user('alice', 1000000); SELECT add_user('bob', 1000000);");
  Push(kAlice, kSocksIn, 100'000, 0);
  Push(kBob, kSocksIn, 100'000, 0);
  ASSERT_TRUE(WaitUntil(
      [&] {
        return Sql("SELECT count(*) FROM user_traffic WHERE total >= 100000 "
                   "AND name IN ('alice', 'bob')") == "2";
      },
      kWait, 100ms))
      << collector_->LogTail();
  Sql("SELECT set_usage_events(true)");

  // alice crosses 80%: one event, one run, marked delivered.
  Push(kAlice, kSocksIn, 750'000, 0);
  ASSERT_TRUE(
      WaitUntil([&] { return !ThresholdEvent("alice").empty(); }, kWait, 100ms))
      << collector_->LogTail();
  std::string alice = ThresholdEvent("alice");
  ASSERT_TRUE(
      WaitUntil([&] { return !DeliveredAt(alice).empty(); }, kWait, 100ms))
      << collector_->LogTail();
  ASSERT_TRUE(AwaitPolls(5));
  std::vector<std::string> runs = Runs();
  ASSERT_EQ(runs.size(), 1u) << collector_->LogTail();
  EXPECT_EQ(runs[0].substr(0, runs[0].find(' ')), alice);
  EXPECT_NE(runs[0].find("\"kind\": \"threshold\""), std::string::npos)
      << runs[0];
  EXPECT_NE(runs[0].find("\"user\": \"alice\""), std::string::npos) << runs[0];
  EXPECT_EQ(Sql("SELECT count(*) FROM usage_events"), "1");

  // bob crosses 80%, and the collector dies while the hook has his event.
  std::ofstream(dir_.path() + "/block").put('\n');
  Push(kBob, kSocksIn, 750'000, 0);
  ASSERT_TRUE(WaitUntil([&] { return Runs().size() == 2; }, kWait, 50ms))
      << collector_->LogTail();
  std::string bob = ThresholdEvent("bob");
  ASSERT_FALSE(bob.empty());
  EXPECT_EQ(Runs()[1].substr(0, Runs()[1].find(' ')), bob);
  EXPECT_EQ(DeliveredAt(bob), "") << "marked before the hook finished";
  collector_->Kill();
  std::ofstream(dir_.path() + "/release").put('\n');
  // The orphaned hook ends by itself; nothing of the old collector is left.
  ASSERT_TRUE(WaitUntil(
      [&] { return std::ifstream(dir_.path() + "/unblocked").good(); }, kWait,
      50ms));
  EXPECT_EQ(DeliveredAt(bob), "");

  // Restarted: the same event again, with the same id, then marked once.
  collector_->Start();
  ASSERT_TRUE(
      WaitUntil([&] { return !DeliveredAt(bob).empty(); }, kWait, 100ms))
      << collector_->LogTail();
  std::string delivered_at = DeliveredAt(bob);
  ASSERT_TRUE(AwaitPolls(5));
  runs = Runs();
  ASSERT_EQ(runs.size(), 3u) << collector_->LogTail();
  EXPECT_EQ(runs[2], runs[1]) << "the redelivery is the same event";
  EXPECT_EQ(DeliveredAt(bob), delivered_at);
  EXPECT_EQ(DeliveredAt(alice).empty(), false);
  EXPECT_EQ(Sql("SELECT count(*), count(delivered_at) FROM usage_events"),
            "2|2");
  EXPECT_TRUE(StopsWithZero(*collector_));
}

}  // namespace
}  // namespace boxmeter::testing
