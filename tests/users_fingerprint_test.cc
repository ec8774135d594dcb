// users_fingerprint() through PgStore on a throwaway PostgreSQL: it moves
// exactly when boxmeter-gen's input for the node does (a quota crossed by a
// commit, an expiry passing, an operator's change), and not for traffic that
// changes no one's eligibility or for another node's rows.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>

#include "pg_database_test.h"
#include "pg_store.h"
#include "process.h"

namespace boxmeter {
namespace {

using boxmeter::testing::MigrateAndLoad;
using boxmeter::testing::PgDatabaseTest;
using boxmeter::testing::WaitUntil;
using namespace std::chrono_literals;

class UsersFingerprintTest : public PgDatabaseTest {
 protected:
  UsersFingerprintTest() : PgDatabaseTest("fingerprint_test") {}

  void SetUp() override {
    PgDatabaseTest::SetUp();
    if (HasFatalFailure()) return;
    store_ = std::make_unique<PgStore>(url(), "edge-1");
    NodeState state;
    MigrateAndLoad(*store_, &state, &lease_token_);
    if (HasFatalFailure()) return;
    seq_ = state.commit_seq;
    Sql(R"sql(
      INSERT INTO users (name, uuid, password, quota_bytes) VALUES
        ('alice', gen_random_uuid(), 'pw', 1000),
        ('bob', gen_random_uuid(), 'pw', NULL);
      INSERT INTO inbounds (node, tag, type) VALUES
        ('edge-1', 'vless-in', 'vless'), ('edge-2', 'other-in', 'vless');
      INSERT INTO inbound_users SELECT i.id, u.id FROM inbounds i, users u;
    )sql");
  }

  std::string Sql(const std::string& sql) {
    return server().Query(database(), sql);
  }

  std::string Read() {
    std::string fingerprint;
    Status status = store_->ReadUsersFingerprint(&fingerprint);
    EXPECT_TRUE(status.ok()) << status.message();
    EXPECT_EQ(fingerprint.size(), 32u) << fingerprint;
    return fingerprint;
  }

  // Commits `up` bytes of uplink for user `name`; the fingerprint reported.
  std::string CommitTraffic(const std::string& name, int64_t up) {
    total_ += up;
    CommitBatch batch{seq_,
                      0,
                      {CommitRow{CounterKey{CounterKind::kUser, name},
                                 {up, 0},
                                 {total_, 0},
                                 1767320000000}}};
    batch.read_users_fingerprint = true;
    batch.lease_token = lease_token_;
    CommitResult result = store_->Commit(batch);
    EXPECT_EQ(result.outcome, CommitOutcome::kApplied)
        << result.status.message();
    ++seq_;
    return result.users_fingerprint;
  }

  std::unique_ptr<PgStore> store_;
  int64_t seq_ = 0;
  int64_t lease_token_ = 0;
  int64_t total_ = 0;  // the baseline grows with every commit
};

TEST_F(UsersFingerprintTest, MovesInTheCommitThatCrossesAQuota) {
  std::string start = Read();
  EXPECT_EQ(CommitTraffic("alice", 999), start) << "still under quota";
  EXPECT_EQ(Read(), start);
  std::string crossed = CommitTraffic("alice", 1);
  EXPECT_NE(crossed, start) << "the commit itself reports the crossing";
  EXPECT_EQ(Read(), crossed);
  EXPECT_EQ(CommitTraffic("alice", 5000), crossed) << "already out";
}

TEST_F(UsersFingerprintTest, TrafficOfUnlimitedOrUnknownUsersChangesNothing) {
  std::string start = Read();
  EXPECT_EQ(CommitTraffic("bob", 1'000'000), start);
  EXPECT_EQ(CommitTraffic("not-in-users", 1'000'000), start);
}

TEST_F(UsersFingerprintTest, OperatorChangesMoveIt) {
  std::string last = Read();
  for (const char* change : {
           "UPDATE users SET enabled = false WHERE name = 'bob'",
           "UPDATE users SET enabled = true WHERE name = 'bob'",
           "UPDATE users SET password = 'new' WHERE name = 'bob'",
           "UPDATE users SET flow = 'xtls-rprx-vision' WHERE name = 'bob'",
           "UPDATE users SET quota_bytes = 0 WHERE name = 'bob'",
           "UPDATE inbounds SET options = '{\"tls\": {}}' WHERE tag = "
           "'vless-in'",
           "INSERT INTO inbounds (node, tag, type) VALUES ('edge-1', 'x', "
           "'trojan')",
           "UPDATE inbounds SET enabled = false WHERE tag = 'x'",
           "DELETE FROM inbound_users WHERE user_id = (SELECT id FROM users "
           "WHERE name = 'alice')",
       }) {
    Sql(change);
    std::string now = Read();
    EXPECT_NE(now, last) << change;
    last = now;
  }
}

TEST_F(UsersFingerprintTest, AnotherNodesRowsDoNotMoveIt) {
  std::string start = Read();
  Sql("UPDATE inbounds SET listen_port = 9 WHERE tag = 'other-in'");
  Sql("INSERT INTO users (name, password) VALUES ('zed', 'pw')");
  Sql("UPDATE users SET note = 'a note' WHERE name = 'alice'");
  EXPECT_EQ(Read(), start);
}

TEST_F(UsersFingerprintTest, MovesWhenAnExpiryPassesWithoutAnyWrite) {
  Sql("UPDATE users SET expires_at = now() + interval '1 second' "
      "WHERE name = 'bob'");
  std::string before = Read();
  EXPECT_TRUE(WaitUntil([&] { return Read() != before; }, 10s, 100ms));
  EXPECT_EQ(Sql("SELECT name FROM eligible_users"), "alice");
}

// 0022 changed how the digest is computed, not what: it is still 0002's
// formula (each row's text hashed twice, the hashes summed), so an upgrade
// moves no fingerprint; and it still runs as its owner, without JIT.
TEST_F(UsersFingerprintTest, DigestIsUnchangedAndRunsAsItsOwner) {
  EXPECT_EQ(Read(), Sql(R"sql(
    SELECT md5(concat_ws(':', i.n, i.h0, i.h1, u.n, u.h0, u.h1))
      FROM (SELECT count(*) AS n,
                   coalesce(sum(hashtextextended(r::text, 0)), 0) AS h0,
                   coalesce(sum(hashtextextended(r::text, 1)), 0) AS h1
              FROM (SELECT ROW(tag, type, listen, listen_port, options) AS r
                      FROM inbounds
                     WHERE node = 'edge-1' AND enabled) AS rows) AS i,
           (SELECT count(*) AS n,
                   coalesce(sum(hashtextextended(r::text, 0)), 0) AS h0,
                   coalesce(sum(hashtextextended(r::text, 1)), 0) AS h1
              FROM (SELECT ROW(inbound_tag, user_name, uuid, password, flow,
                               alter_id) AS r
                      FROM node_inbound_users
                     WHERE node = 'edge-1') AS rows) AS u)sql"));
  EXPECT_EQ(Sql("SELECT prosecdef, proconfig::text LIKE '%jit=off%' "
                "FROM pg_proc WHERE proname = 'users_fingerprint'"),
            "t|t");
}

}  // namespace
}  // namespace boxmeter
