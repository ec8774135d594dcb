// TcpProxy (tests/support) in front of a real PostgreSQL, driving PgStore
// through the faults the chaos run injects: the connection lost right after
// or right before COMMIT reaches the server, stalls, refusals and cuts.
// These also pin PgStore's contract for a commit whose outcome is unknown.
#include "tcp_proxy.h"

#include <gtest/gtest.h>

#include <chrono>
#include <memory>

#include "pg_database_test.h"
#include "pg_store.h"

namespace boxmeter {
namespace {

using namespace std::chrono_literals;
using testing::TcpProxy;

constexpr int64_t kStartMs = 1'767'320'000'000;

class TcpProxyTest : public testing::PgDatabaseTest {
 protected:
  TcpProxyTest() : PgDatabaseTest("proxy") {}

  void SetUp() override {
    PgDatabaseTest::SetUp();
    if (HasFatalFailure()) return;
    proxy_ = std::make_unique<TcpProxy>("127.0.0.1", server().port());
    store_ =
        std::make_unique<PgStore>("postgresql://postgres@" + proxy_->address() +
                                      "/" + database() + "?connect_timeout=2",
                                  "proxied");
    NodeState state;
    testing::MigrateAndLoad(*store_, &state);
  }

  CommitBatch Batch(int64_t seq, int64_t up) {
    return CommitBatch{
        seq,
        kStartMs,
        {CommitRow{{CounterKind::kUser, "alice"}, {up, 0}, {up, 0}, kStartMs}}};
  }

  int64_t Seq() {
    return std::stoll(server().Query(
        database(), "SELECT commit_seq FROM nodes WHERE name = 'proxied'"));
  }

  std::unique_ptr<TcpProxy> proxy_;
  std::unique_ptr<PgStore> store_;
};

TEST_F(TcpProxyTest, CommitWhoseReplyIsLostAppliedAndSaysUnknown) {
  proxy_->CutOnClientBytes(TcpProxy::PostgresCommitMessage(),
                           TcpProxy::CutWhen::kAfterForwarding);
  CommitResult result = store_->Commit(Batch(0, 100));
  EXPECT_EQ(result.outcome, CommitOutcome::kUnknown) << result.status.message();
  EXPECT_EQ(proxy_->pattern_cuts(), 1);
  // The server did commit; the sequence tells the collector so.
  int64_t seq = -1;
  ASSERT_TRUE(testing::WaitUntil([&] { return Seq() == 1; }, 10s));
  Status status = store_->ReadCommitSeq(&seq);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(seq, 1);
  // Replaying the batch cannot count it twice.
  EXPECT_EQ(store_->Commit(Batch(0, 100)).outcome, CommitOutcome::kNotApplied);
  EXPECT_EQ(server().Query(database(), "SELECT uplink FROM counters"), "100");
}

TEST_F(TcpProxyTest, CommitCutBeforeTheServerSeesItDidNotApply) {
  proxy_->CutOnClientBytes(TcpProxy::PostgresCommitMessage(),
                           TcpProxy::CutWhen::kBeforeForwarding);
  CommitResult result = store_->Commit(Batch(0, 100));
  EXPECT_EQ(result.outcome, CommitOutcome::kUnknown) << result.status.message();
  int64_t seq = -1;
  Status status = store_->ReadCommitSeq(&seq);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(seq, 0);
  EXPECT_EQ(server().Query(database(), "SELECT count(*) FROM counters"), "0");
  // So the same batch is committed again, once.
  result = store_->Commit(Batch(0, 100));
  ASSERT_EQ(result.outcome, CommitOutcome::kApplied) << result.status.message();
  EXPECT_EQ(server().Query(database(), "SELECT uplink FROM counters"), "100");
}

TEST_F(TcpProxyTest, StallIsBoundedByTheConnectTimeoutOfANewConnection) {
  proxy_->CutAll();  // the store reconnects through the stalled proxy
  ASSERT_TRUE(testing::WaitUntil([&] { return proxy_->cuts() >= 1; }, 5s));
  int64_t ignored;
  EXPECT_FALSE(store_->ReadCommitSeq(&ignored).ok());  // notices the cut
  proxy_->SetStalled(true);
  auto start = std::chrono::steady_clock::now();
  int64_t seq = -1;
  Status status = store_->ReadCommitSeq(&seq);
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.code(), Status::Code::kUnavailable) << status.message();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
  proxy_->SetStalled(false);
  status = store_->ReadCommitSeq(&seq);
  EXPECT_TRUE(status.ok()) << status.message();
}

TEST_F(TcpProxyTest, RefusedAndCutConnectionsFailCleanlyAndRecover) {
  proxy_->CutAll();
  ASSERT_TRUE(testing::WaitUntil([&] { return proxy_->cuts() >= 1; }, 5s));
  int64_t seq = -1;
  Status status = store_->ReadCommitSeq(&seq);
  EXPECT_EQ(status.code(), Status::Code::kUnavailable) << status.message();
  proxy_->SetRefusing(true);
  status = store_->ReadCommitSeq(&seq);
  EXPECT_EQ(status.code(), Status::Code::kUnavailable) << status.message();
  EXPECT_GE(proxy_->refused(), 1);
  proxy_->SetRefusing(false);
  status = store_->ReadCommitSeq(&seq);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(seq, 0);
  EXPECT_GE(proxy_->cuts(), 1);
}

TEST_F(TcpProxyTest, DelayedAnswersArriveWholeAndLate) {
  int64_t seq = -1;
  ASSERT_TRUE(store_->ReadCommitSeq(&seq).ok());  // connected, undelayed
  proxy_->SetAnswerDelay(400ms, /*seed=*/3);
  auto started = std::chrono::steady_clock::now();
  for (int i = 0; i < 5; ++i) {
    Status status = store_->ReadCommitSeq(&seq);
    ASSERT_TRUE(status.ok()) << status.message();
    EXPECT_EQ(seq, 0);
  }
  auto elapsed = std::chrono::steady_clock::now() - started;
  EXPECT_GE(proxy_->delayed_answers(), 5);
  // Five answers, each held 0-400 ms (seed 3 does not draw five zeros).
  EXPECT_GT(elapsed, 100ms);
  proxy_->SetAnswerDelay(0ms);
  int64_t delayed = proxy_->delayed_answers();
  ASSERT_TRUE(store_->ReadCommitSeq(&seq).ok());
  EXPECT_EQ(proxy_->delayed_answers(), delayed);
}

}  // namespace
}  // namespace boxmeter
