// Exactly-once, end to end (issue 10): the faults that made the old design
// lose or double-count bytes, against the real v2ray-core, PostgreSQL and
// the boxmeter-collector binary (collector_e2e_fixture.h). Each scenario ends
// with user_traffic and inbound_traffic (and outbound_traffic) equal to
// v2ray-core's counters over all its lives, byte for byte, compared after
// the collector has stopped.
//
// The contracts these tests hold the collector to:
//   - the instance identity comes from a monotonic clock bracketing each
//     uptime answer, so a late answer, a wall-clock step or a restart soon
//     after the previous one is neither a new instance nor a missed one;
//   - SIGTERM waits for a commit in flight and commits what the final poll
//     fetched; exit 0 only when nothing is left uncommitted, otherwise a
//     sysexits code and the bytes left in the log;
//   - one writer per node: a lease in the nodes table; a second collector
//     for the node names the holder in its log and never writes;
//   - `boxmeter-collector --flush` asks the running collector (over
//     control.socket) to poll and commit now and exits 0 once committed.
//
// MARKER: a test still named DISABLED_ waits for a branch that implements
// its contract (identity, lease) to be merged into main; run them with
//   build/tests/boxmeter_e2e_tests --gtest_also_run_disabled_tests
//       --gtest_filter='ExactlyOnce*:*WallClock*:*ReloadStorm*'
// and drop the prefix of each test that passes.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <optional>
#include <random>
#include <string>

#include "collector_e2e_fixture.h"
#include "node_row_lock.h"
#include "process.h"
#include "tcp_proxy.h"

namespace boxmeter::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// sysexits.h's range: 64 (EX_USAGE) to 78 (EX_CONFIG).
bool IsSysexitsFailure(int code) { return code >= 64 && code <= 78; }

class ExactlyOnceE2eTest : public CollectorE2eTest {
 protected:
  // Starts a fresh instance of v2ray-core after BankAndStop.
  void StartV2Ray() { v2ray_->Start(); }

  // The end of every scenario: SIGTERM, exit 0, and the database equal to
  // v2ray-core over all its lives with nothing running any more.
  void StopAndCompare() {
    ASSERT_TRUE(StopsWithZero(*collector_));
    EXPECT_TRUE(DatabaseEqualsV2RayNow());
    ExpectEveryUserCounted();
  }
};

// Instances of v2ray-core that live 1-2 s, each with traffic that makes
// every counter end higher than the previous instance's (so only the
// identity, not a falling counter, can tell them apart), each polled at least
// once after its traffic: what a reload per poll looks like.
TEST_F(ExactlyOnceE2eTest, ReloadStormOfShortLivedInstances) {
  StartCollector();
  constexpr int kInstances = 8;
  for (int round = 1; round <= kInstances; ++round) {
    auto started = Clock::now();
    PushFromEveryone(round * 1000);
    ASSERT_TRUE(AwaitPolls(2)) << "instance " << round;
    // At least a second of life, and the database never ahead meanwhile.
    ASSERT_TRUE(WaitUntil([&] { return v2ray_->Uptime() >= 1; }, 5s, 50ms));
    ASSERT_TRUE(DatabaseNeverAhead()) << "instance " << round;
    auto lived = std::chrono::duration_cast<std::chrono::milliseconds>(
        Clock::now() - started);
    BankAndStop();
    RecordProperty("instance_" + std::to_string(round) + "_ms",
                   static_cast<int>(lived.count()));
    StartV2Ray();
  }
  PushFromEveryone(1);
  ASSERT_TRUE(DatabaseMatchesV2Ray());
  StopAndCompare();
}

// SIGTERM right after a v2ray-core restart: once after a poll saw the
// restart (the demo's over-count: the final poll counted the new instance a
// second time), once before any poll did; and a collector start after each,
// which compares with the identity stored in the database.
TEST_F(ExactlyOnceE2eTest, SigtermRightAfterARestart) {
  StartCollector();
  PushFromEveryone(100'000);  // more than the next instance: counters fall
  ASSERT_TRUE(DatabaseMatchesV2Ray());

  BankAndStop();
  StartV2Ray();
  PushFromEveryone(1);
  ASSERT_TRUE(AwaitPolls(2));
  ASSERT_TRUE(StopsWithZero(*collector_));
  ASSERT_TRUE(DatabaseEqualsV2RayNow()) << "after the first SIGTERM";

  collector_->Start();  // the stored identity is the new instance's
  ASSERT_TRUE(AwaitPolls(3));
  ASSERT_TRUE(DatabaseEqualsV2RayNow()) << "after a start";

  BankAndStop();
  StartV2Ray();
  PushFromEveryone(2);
  ASSERT_TRUE(StopsWithZero(*collector_));  // the final poll sees it first
  ASSERT_TRUE(DatabaseEqualsV2RayNow()) << "after the second SIGTERM";

  collector_->Start();
  ASSERT_TRUE(AwaitPolls(3));
  ASSERT_TRUE(DatabaseEqualsV2RayNow()) << "after the second start";
  StopAndCompare();
}

// SIGTERM while the commit waits for the lock: the collector waits, commits
// once the lock goes (within its stop budget), and exits 0.
TEST_F(ExactlyOnceE2eTest, SigtermWhileTheNodeRowIsLocked) {
  StartCollector();
  PushFromEveryone(1);
  ASSERT_TRUE(DatabaseMatchesV2Ray());

  NodeRowLock lock(database_url_, kNode);
  PushFromEveryone(2);
  ASSERT_TRUE(AwaitPolls(2));  // its commit now waits for the lock
  collector_->Signal(SIGTERM);
  // Whatever it does before the lock goes, it cannot have committed: an
  // exit now would leave bytes behind.
  std::optional<int> early = collector_->Wait(2s);
  ASSERT_FALSE(early.has_value())
      << "exited with " << *early << " while its commit could not run:\n"
      << collector_->LogTail();
  lock.Release();
  std::optional<int> code = collector_->Wait(30s);
  ASSERT_TRUE(code.has_value()) << collector_->LogTail();
  EXPECT_EQ(*code, 0) << collector_->LogTail();
  EXPECT_TRUE(DatabaseEqualsV2RayNow());
  ExpectEveryUserCounted();
}

// The lock outlives the stop budget: the collector gives up with a sysexits
// code and says how many bytes it leaves; the next start commits them from
// v2ray-core's counters (still running).
TEST_F(ExactlyOnceE2eTest, SigtermWhileTheNodeRowStaysLocked) {
  CollectorRunner::Settings settings = CollectorSettings();
  settings.source_timeout = "1s";  // a short stop budget
  collector_ = NewCollector(settings);
  collector_->Start();
  PushFromEveryone(1);
  ASSERT_TRUE(DatabaseMatchesV2Ray());
  {
    NodeRowLock lock(database_url_, kNode);
    PushFromEveryone(2);
    ASSERT_TRUE(AwaitPolls(2));
    collector_->Signal(SIGTERM);
    std::optional<int> code = collector_->Wait(120s);
    ASSERT_TRUE(code.has_value()) << "still running 120 s after SIGTERM:\n"
                                  << collector_->LogTail();
    EXPECT_TRUE(IsSysexitsFailure(*code))
        << "exit code " << *code
        << ", expected a sysexits failure (64-78) with bytes uncommitted:\n"
        << collector_->LogTail();
    std::string tail = collector_->LogTail(10);
    EXPECT_NE(tail.find("bytes"), std::string::npos)
        << "the log does not say how many bytes are left:\n"
        << tail;
    lock.Release();
  }
  ASSERT_TRUE(DatabaseNeverAhead());
  collector_->Start();
  ASSERT_TRUE(DatabaseMatchesV2Ray());
  StopAndCompare();
}

// Every answer of the stats API arrives 0-1.5 s late (through a relay):
// latency widens the identity's uncertainty but never makes one instance
// look like two. Includes two restarts of v2ray-core. Two rounds of two
// polls per instance: with four, this was CI's longest test (90 s).
TEST_F(ExactlyOnceE2eTest, AnswersDelayedByUpToOneAndAHalfSeconds) {
  int api_port = std::stoi(
      v2ray_->ApiAddress().substr(v2ray_->ApiAddress().rfind(':') + 1));
  TcpProxy relay("127.0.0.1", api_port);
  relay.SetAnswerDelay(1500ms, /*seed=*/10);
  CollectorRunner::Settings settings = CollectorSettings();
  settings.source_address = relay.address();
  settings.source_timeout = "8s";  // an answer may be delayed more than once
  collector_ = NewCollector(settings);
  collector_->Start();

  for (int instance = 1; instance <= 3; ++instance) {
    for (int round = 1; round <= 2; ++round) {
      PushFromEveryone(instance * 10 + round);
      ASSERT_TRUE(collector_->AwaitPolls(2, 60s)) << collector_->LogTail();
      ASSERT_TRUE(DatabaseNeverAhead())
          << "instance " << instance << ", round " << round;
    }
    ASSERT_TRUE(WaitUntil(
        [&] {
          CounterMap expected = Expected();
          return InDatabase() == expected;
        },
        60s, 200ms))
        << DescribeDifference(Expected(), InDatabase())
        << collector_->LogTail();
    if (instance < 3) {
      BankAndStop();
      StartV2Ray();
    }
  }
  EXPECT_GT(relay.delayed_answers(), 10);
  ASSERT_TRUE(StopsWithZero(*collector_, 60s));
  EXPECT_TRUE(DatabaseEqualsV2RayNow());
  ExpectEveryUserCounted();
}

// The wall clock steps by `offset` between two collector runs and back
// (libfaketime; CLOCK_MONOTONIC and CLOCK_BOOTTIME untouched), with one
// running v2ray-core instance throughout: still one instance.
class WallClockStepTest : public ExactlyOnceE2eTest,
                          public ::testing::WithParamInterface<int> {};

TEST_P(WallClockStepTest, BetweenCollectorRunsChangesNothing) {
  const std::chrono::seconds offset(GetParam());
  collector_ = NewCollector();
  int round = 0;
  for (std::chrono::seconds wall : {0s, offset, 0s}) {
    SCOPED_TRACE("wall clock " + std::to_string(wall.count()) + " s off");
    if (wall != 0s) {
      collector_->SetEnvironment(FakeTimeEnvironment(wall));
    } else {
      collector_->SetEnvironment({});
    }
    PushFromEveryone(++round);  // counted while no collector runs
    collector_->Start();
    ASSERT_TRUE(DatabaseMatchesV2Ray());
    ASSERT_TRUE(AwaitPolls(3));
    ASSERT_TRUE(DatabaseEqualsV2RayNow());
    ASSERT_TRUE(StopsWithZero(*collector_));
    ASSERT_TRUE(DatabaseEqualsV2RayNow());
  }
  ExpectEveryUserCounted();
}

INSTANTIATE_TEST_SUITE_P(PlusMinus3And90Seconds, WallClockStepTest,
                         ::testing::Values(3, -3, 90, -90),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return (info.param < 0 ? "minus" : "plus") +
                                  std::to_string(std::abs(info.param)) + "s";
                         });

// Two collectors configured with the same node, each beside its own core:
// the second never writes (it names the holder of the node in its log), so
// the totals stay the first core's counters.
TEST_F(ExactlyOnceE2eTest, TwoCollectorsForOneNodeOnTwoCores) {
  StartCollector();
  PushFromEveryone(1);
  ASSERT_TRUE(DatabaseMatchesV2Ray());

  V2RayServer other_core(v2ray_->options());
  other_core.Start();
  CollectorRunner::Settings settings = CollectorSettings();
  settings.source_address = other_core.ApiAddress();
  std::unique_ptr<CollectorRunner> second = NewCollector(settings);
  second->Start();
  const std::string holder = std::to_string(collector_->pid());
  ASSERT_TRUE(WaitUntil(
      [&] { return second->Log().find(holder) != std::string::npos; }, 10s))
      << "the second collector's log does not name the holder (pid " << holder
      << ") within 10 s:\n"
      << second->LogTail();
  for (int round = 2; round <= 5; ++round) {
    PushFromEveryone(round);
    PushTraffic(*target_, other_core.SocksPort(kSocksIn), kAlice.user,
                kAlice.password, 2'000'000 + round, 100'000);
    ASSERT_TRUE(AwaitPolls(2));
    ASSERT_TRUE(DatabaseNeverAhead()) << "round " << round;
    ASSERT_TRUE(DatabaseMatchesV2Ray()) << "round " << round;
  }
  EXPECT_TRUE(second->Running()) << second->LogTail();
  second->Signal(SIGTERM);
  EXPECT_TRUE(second->Wait(30s).has_value()) << second->LogTail();
  ASSERT_TRUE(DatabaseEqualsV2RayNow()) << "after the second collector left";
  StopAndCompare();
}

// `--flush` commits what the core counted so far; a core restart right after
// it (as every shipped reload path does) loses nothing, with no poll of the
// collector's own in between (poll.interval 1h).
TEST_F(ExactlyOnceE2eTest, FlushThenImmediateRestartLosesNothing) {
  TempDir runtime;
  CollectorRunner::Settings settings = CollectorSettings("1h");
  settings.control_socket = runtime.path() + "/collector.sock";
  collector_ = NewCollector(settings);
  collector_->Start();
  ASSERT_TRUE(AwaitFirstCommit());

  // Each instance counts less than the one before: a restart the counters
  // show, so this test is about the flush, not the identity.
  for (int round = 4; round >= 1; --round) {
    PushFromEveryone(round * 100'000);
    ASSERT_EQ(collector_->Flush(30s), 0) << collector_->LogTail();
    ASSERT_TRUE(DatabaseEqualsV2RayNow()) << "right after --flush " << round;
    BankAndStop();
    StartV2Ray();
  }
  PushFromEveryone(1);
  ASSERT_EQ(collector_->Flush(30s), 0) << collector_->LogTail();
  ASSERT_TRUE(DatabaseEqualsV2RayNow()) << "after the last --flush";
  StopAndCompare();
}

// A core restart that the collector's polls saw as an outage puts gRPC's
// channel in its reconnect backoff, in which calls fail at once: a --flush
// right after the core is back (a second reload soon after a first) must
// wait for the channel, not fail (found by chaos: --flush exited 69 just after
// a v2ray-core restart with the database healthy).
TEST_F(ExactlyOnceE2eTest, FlushRightAfterACoreRestartWaitsForTheStatsApi) {
  TempDir runtime;
  CollectorRunner::Settings settings = CollectorSettings();
  settings.control_socket = runtime.path() + "/collector.sock";
  collector_ = NewCollector(settings);
  collector_->Start();
  ASSERT_TRUE(AwaitFirstCommit());
  for (int round = 1; round <= 3; ++round) {
    PushFromEveryone(round * 10'000);
    ASSERT_EQ(collector_->Flush(30s), 0) << collector_->LogTail();
    size_t outages = collector_->CountLogLines("cannot reach the stats API");
    BankAndStop();
    ASSERT_TRUE(WaitUntil(
        [&] {
          return collector_->CountLogLines("cannot reach the stats API") >
                 outages;
        },
        10s, 20ms))
        << "no poll saw the core gone\n"
        << collector_->LogTail();
    StartV2Ray();
    PushFromEveryone(round * 1000);
    ASSERT_EQ(collector_->Flush(30s), 0) << "round " << round << "\n"
                                         << collector_->LogTail();
    ASSERT_TRUE(DatabaseEqualsV2RayNow()) << "right after --flush " << round;
  }
  StopAndCompare();
}

// --flush with no collector running for the config: 69 (EX_UNAVAILABLE).
TEST_F(ExactlyOnceE2eTest, FlushWithoutACollectorFails) {
  TempDir runtime;
  CollectorRunner::Settings settings = CollectorSettings();
  settings.control_socket = runtime.path() + "/collector.sock";
  collector_ = NewCollector(settings);
  EXPECT_EQ(collector_->Flush(30s), 69) << collector_->LogTail();
}

}  // namespace
}  // namespace boxmeter::testing
