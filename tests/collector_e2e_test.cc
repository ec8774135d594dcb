// End to end: the boxmeter-collector binary against the real v2ray-core
// and a throwaway PostgreSQL, with real traffic pushed through v2ray's socks
// inbounds by curl (collector_e2e_fixture.h): through a collector crash,
// v2ray-core restarts and database outages, the database ends equal to
// v2ray-core's own counters byte for byte.
#include <signal.h>

#include <chrono>
#include <optional>

#include "collector_e2e_fixture.h"
#include "process.h"

namespace boxmeter::testing {
namespace {

using namespace std::chrono_literals;

TEST_F(CollectorE2eTest, NormalRunMatchesV2RayByteForByte) {
  StartCollector();
  PushFromEveryone(1);
  ASSERT_TRUE(DatabaseMatchesV2Ray());
  ExpectEveryUserCounted();

  // More traffic on a collector that already has baselines.
  Push(kAlice, kSocksIn, 50'001, 0);
  Push(kCarol, kSocksB, 0, 33'333);
  ASSERT_TRUE(DatabaseMatchesV2Ray());
  EXPECT_TRUE(collector_->Running()) << collector_->LogTail();
}

TEST_F(CollectorE2eTest, SurvivesKill9AndKeepsTrafficCountedWhileDown) {
  StartCollector();
  PushFromEveryone(1);
  ASSERT_TRUE(DatabaseMatchesV2Ray());

  collector_->Kill();
  // Counted by v2ray while no collector runs: picked up from the stored
  // baselines on the next start.
  PushFromEveryone(2);
  collector_->Start();
  ASSERT_TRUE(DatabaseMatchesV2Ray());

  Push(kBob, kSocksIn, 10'000, 10'000);
  ASSERT_TRUE(DatabaseMatchesV2Ray());
  ExpectEveryUserCounted();
}

TEST_F(CollectorE2eTest, SurvivesV2RayRestart) {
  StartCollector();
  PushFromEveryone(1);
  ASSERT_NO_FATAL_FAILURE(BankAndStopV2Ray(/*database_up=*/true));

  v2ray_->Start();  // every counter from 0 again
  PushFromEveryone(2);
  ASSERT_TRUE(DatabaseMatchesV2Ray());
  ExpectEveryUserCounted();
  EXPECT_GE(collector_->CountLogLines("started again from zero"), 1u)
      << collector_->LogTail();
}

TEST_F(CollectorE2eTest, SurvivesPostgresStopAndStart) {
  StartCollector();
  PushFromEveryone(1);
  ASSERT_TRUE(DatabaseMatchesV2Ray());

  pg_->Stop(PgServer::StopMode::kFast);
  PushFromEveryone(2);
  ASSERT_TRUE(AwaitPolls(2));  // the collector keeps polling meanwhile
  ASSERT_TRUE(collector_->Running()) << collector_->LogTail();

  pg_->Start();
  ASSERT_TRUE(DatabaseMatchesV2Ray());
  EXPECT_TRUE(collector_->Running()) << collector_->LogTail();
  ExpectEveryUserCounted();
}

TEST_F(CollectorE2eTest, SurvivesV2RayRestartWhilePostgresIsDown) {
  StartCollector();
  PushFromEveryone(1);
  ASSERT_TRUE(DatabaseMatchesV2Ray());

  pg_->Stop(PgServer::StopMode::kFast);
  // Pending in the collector only: v2ray's counters holding this traffic are
  // about to be lost with the restart.
  PushFromEveryone(2);
  ASSERT_NO_FATAL_FAILURE(BankAndStopV2Ray(/*database_up=*/false));
  v2ray_->Start();
  PushFromEveryone(3);
  ASSERT_TRUE(AwaitPolls(2));
  ASSERT_TRUE(collector_->Running()) << collector_->LogTail();

  pg_->Start();
  ASSERT_TRUE(DatabaseMatchesV2Ray());
  EXPECT_TRUE(collector_->Running()) << collector_->LogTail();
  ExpectEveryUserCounted();
}

TEST_F(CollectorE2eTest, SigtermCommitsAFinalPollAndExitsZero) {
  // An hour between polls: only the poll at start and the final one run, so
  // the traffic below reaches the database only through the final poll.
  collector_ = NewCollector("1h");
  collector_->Start();
  ASSERT_TRUE(AwaitFirstCommit());

  PushFromEveryone(1);
  auto start = std::chrono::steady_clock::now();
  collector_->Signal(SIGTERM);
  std::optional<int> code = collector_->Wait(10s);
  ASSERT_TRUE(code.has_value()) << "still running 10 s after SIGTERM:\n"
                                << collector_->LogTail();
  EXPECT_EQ(*code, 0) << collector_->LogTail();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  ASSERT_TRUE(DatabaseMatchesV2Ray());
  ExpectEveryUserCounted();
}

TEST_F(CollectorE2eTest, OnceCommitsAndExitsZero) {
  collector_ = NewCollector();
  PushFromEveryone(1);
  ASSERT_EQ(collector_->RunOnce(30s), 0) << collector_->LogTail();
  // Nothing runs any more: the database must already match.
  EXPECT_TRUE(DatabaseEqualsV2RayNow());

  // A second run continues from the stored baselines.
  Push(kAlice, kSocksIn, 12'345, 678);
  ASSERT_EQ(collector_->RunOnce(30s), 0) << collector_->LogTail();
  EXPECT_TRUE(DatabaseEqualsV2RayNow());
  ExpectEveryUserCounted();
}

}  // namespace
}  // namespace boxmeter::testing
