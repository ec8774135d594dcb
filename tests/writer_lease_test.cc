// One writer per node (schema/0006_writer_lease.sql): two PgStores for one
// node against a real, throwaway PostgreSQL 15. The second cannot take a
// live lease and is told who holds it; it takes over once the lease lapses;
// a commit under a lost lease changes nothing; a release hands the node
// over at once; renewals keep it; every lease statement waits for a node
// row locked by another session, then goes on; and all of it works through
// pgbouncer in transaction pooling mode.
#include "writer_lease.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <pqxx/pqxx>
#include <string>
#include <thread>
#include <vector>

#include "pg_bouncer.h"
#include "pg_database_test.h"
#include "pg_server.h"
#include "pg_store.h"

namespace boxmeter {
namespace {

using boxmeter::testing::PgDatabaseTest;
using boxmeter::testing::WaitUntil;
using std::chrono::milliseconds;

constexpr int64_t kStartMs = 1767320000000;  // an instance start
constexpr int64_t kObservedMs = 1767325506789;
constexpr const char* kNode = "edge-1";

// The lease of a store that keeps writing: long enough for any test.
constexpr milliseconds kLongTtl = std::chrono::hours(1);
// A lease meant to lapse during the test.
constexpr milliseconds kShortTtl = milliseconds(200);
// How long a test waits for a short lease to lapse, or for a session to
// block on a lock: far more than either takes, even on a loaded machine.
constexpr milliseconds kPatience = milliseconds(20000);

class WriterLeaseTest : public PgDatabaseTest {
 protected:
  WriterLeaseTest() : PgDatabaseTest("writer_lease_test") {}

  void SetUp() override {
    PgDatabaseTest::SetUp();
    if (HasFatalFailure()) return;
    first_ = std::make_unique<PgStore>(url(), kNode);
    second_ = std::make_unique<PgStore>(url(), kNode);
    Status migrated = first_->Migrate();
    ASSERT_TRUE(migrated.ok()) << migrated.message();
  }

  std::string Query(const std::string& sql) {
    return server().Query(database(), sql);
  }

  static LeaseState Take(PgStore& store, milliseconds ttl) {
    LeaseState lease;
    Status status = store.TakeLease(ttl, &lease);
    EXPECT_TRUE(status.ok()) << status.message();
    return lease;
  }

  // alice's traffic, `up` bytes, on top of `base`, as commit `seq` under
  // lease `token`.
  static CommitBatch Batch(int64_t seq, int64_t token, int64_t up,
                           int64_t base) {
    CommitBatch batch{
        seq,
        kObservedMs,
        {CommitRow{
            {CounterKind::kUser, "alice"}, {up, 0}, {base + up, 0}, kStartMs}}};
    batch.lease_token = token;
    batch.lease_ttl = kLongTtl;
    return batch;
  }

  // Everything a commit writes: totals, baselines, history, sequence.
  std::string Written() {
    return Query(
        "SELECT n.commit_seq, c.uplink, c.base_uplink, h.uplink FROM nodes n "
        "LEFT JOIN counters c ON c.node = n.name LEFT JOIN counter_hourly h "
        "ON h.counter_id = c.id");
  }

  // Awaits `store`'s lease lapsing: `other` then takes it.
  LeaseState AwaitTakeover(PgStore& other) {
    LeaseState lease;
    bool taken = WaitUntil(
        [&] {
          lease = Take(other, kLongTtl);
          return lease.held;
        },
        kPatience, milliseconds(20));
    EXPECT_TRUE(taken) << "the lease never lapsed; held by " << lease.holder;
    return lease;
  }

  std::unique_ptr<PgStore> first_, second_;
};

TEST_F(WriterLeaseTest, HolderNamesThisHostAndProcess) {
  std::string holder = first_->lease_holder();
  EXPECT_EQ(holder.rfind("host ", 0), 0u) << holder;
  EXPECT_NE(holder.find(" pid " + std::to_string(getpid()) + " "),
            std::string::npos)
      << holder;
  EXPECT_NE(holder, second_->lease_holder()) << "two stores, one holder";
}

TEST_F(WriterLeaseTest, SecondStoreCannotTakeALiveLeaseAndIsToldTheHolder) {
  LeaseState first = Take(*first_, kLongTtl);
  ASSERT_TRUE(first.held);
  EXPECT_EQ(first.token, 1);
  EXPECT_EQ(first.holder, first_->lease_holder());

  LeaseState second = Take(*second_, kLongTtl);
  EXPECT_FALSE(second.held);
  EXPECT_EQ(second.holder, first_->lease_holder());
  EXPECT_EQ(second.token, 1);
  EXPECT_GT(second.expires_in, kLongTtl - std::chrono::minutes(1));
  EXPECT_LE(second.expires_in, kLongTtl);
  std::string message = LeaseHeldElsewhere(kNode, second);
  EXPECT_NE(message.find(first_->lease_holder()), std::string::npos) << message;
  EXPECT_NE(message.find("edge-1"), std::string::npos) << message;

  EXPECT_EQ(Query("SELECT lease_holder, lease_token FROM nodes"),
            first_->lease_holder() + "|1");
  // Asking again does not move the token: still the first's tenure.
  EXPECT_TRUE(Take(*first_, kLongTtl).held);
  EXPECT_EQ(Query("SELECT lease_token FROM nodes"), "1");
}

TEST_F(WriterLeaseTest, TakesOverOnlyOnceTheLeaseLapses) {
  ASSERT_TRUE(Take(*first_, kLongTtl).held);
  ASSERT_FALSE(Take(*second_, kLongTtl).held);
  // The holder renews with a short lease, then stops renewing (a crash).
  ASSERT_TRUE(Take(*first_, kShortTtl).held);
  LeaseState second = AwaitTakeover(*second_);
  EXPECT_EQ(second.token, 2);
  EXPECT_EQ(second.holder, second_->lease_holder());
  // Now the first is the one kept out.
  LeaseState first = Take(*first_, kLongTtl);
  EXPECT_FALSE(first.held);
  EXPECT_EQ(first.holder, second_->lease_holder());
}

TEST_F(WriterLeaseTest, CommitUnderALostLeaseIsLeaseLostAndChangesNothing) {
  LeaseState first = Take(*first_, kLongTtl);
  ASSERT_TRUE(first.held);
  CommitResult applied = first_->Commit(Batch(0, first.token, 100, 0));
  ASSERT_EQ(applied.outcome, CommitOutcome::kApplied)
      << applied.status.message();
  ASSERT_TRUE(Take(*first_, kShortTtl).held);
  LeaseState second = AwaitTakeover(*second_);
  ASSERT_TRUE(second.held);
  std::string before = Written();
  EXPECT_EQ(before, "1|100|100|100");

  // The first resumes after its pause, with the right sequence and the old
  // token: refused, whoever's sequence it is.
  CommitResult stale = first_->Commit(Batch(1, first.token, 50, 100));
  EXPECT_EQ(stale.outcome, CommitOutcome::kLeaseLost) << stale.status.message();
  const std::string& message = stale.status.message();
  EXPECT_NE(message.find(second_->lease_holder()), std::string::npos)
      << message;
  EXPECT_NE(message.find("stops writing"), std::string::npos) << message;
  EXPECT_NE(message.find("edge-1"), std::string::npos) << message;
  EXPECT_EQ(Written(), before);

  // The new holder commits from the database's state.
  NodeState state;
  ASSERT_TRUE(second_->LoadNode(&state).ok());
  CommitResult next =
      second_->Commit(Batch(state.commit_seq, second.token, 7, 100));
  ASSERT_EQ(next.outcome, CommitOutcome::kApplied) << next.status.message();
  EXPECT_EQ(Written(), "2|107|107|107");
}

TEST_F(WriterLeaseTest, ReleaseLetsAnotherTakeAtOnce) {
  LeaseState first = Take(*first_, kLongTtl);
  ASSERT_TRUE(first.held);
  Status released = first_->ReleaseLease(first.token);
  ASSERT_TRUE(released.ok()) << released.message();
  EXPECT_EQ(Query("SELECT lease_holder IS NULL, lease_expires_at IS NULL, "
                  "lease_token FROM nodes"),
            "t|t|1");

  // Released and not yet taken: a commit under it is refused too.
  CommitResult after_release = first_->Commit(Batch(0, first.token, 1, 0));
  EXPECT_EQ(after_release.outcome, CommitOutcome::kLeaseLost);
  EXPECT_NE(after_release.status.message().find("nobody holds it"),
            std::string::npos)
      << after_release.status.message();

  LeaseState second = Take(*second_, kLongTtl);
  ASSERT_TRUE(second.held) << "held by " << second.holder;
  EXPECT_EQ(second.token, 2);
  // A late release of the old tenure leaves the new holder's lease alone.
  ASSERT_TRUE(first_->ReleaseLease(first.token).ok());
  EXPECT_EQ(Query("SELECT lease_holder, lease_token FROM nodes"),
            second_->lease_holder() + "|2");
  EXPECT_EQ(Written(), "0|||");
}

TEST_F(WriterLeaseTest, RenewalsKeepTheLease) {
  // Renewed every 50 ms for three lease times: never lost, never taken.
  constexpr milliseconds kTtl(1500);
  LeaseState first = Take(*first_, kTtl);
  ASSERT_TRUE(first.held);
  auto end = std::chrono::steady_clock::now() + 3 * kTtl;
  int renewals = 0;
  while (std::chrono::steady_clock::now() < end) {
    LeaseState renewed = Take(*first_, kTtl);
    ASSERT_TRUE(renewed.held) << "lost after " << renewals << " renewals";
    EXPECT_EQ(renewed.token, first.token);
    ASSERT_FALSE(Take(*second_, kTtl).held);
    ++renewals;
    std::this_thread::sleep_for(milliseconds(50));  // the idle poll's pace
  }
  EXPECT_GT(renewals, 10);

  // A commit renews it too, for the batch's lease_ttl...
  CommitResult applied = first_->Commit(Batch(0, first.token, 1, 0));
  ASSERT_EQ(applied.outcome, CommitOutcome::kApplied)
      << applied.status.message();
  LeaseState seen = Take(*second_, kTtl);
  EXPECT_FALSE(seen.held);
  EXPECT_GT(seen.expires_in, kLongTtl - std::chrono::minutes(1));
  // ...and never shortens it.
  CommitBatch no_renewal = Batch(1, first.token, 1, 1);
  no_renewal.lease_ttl = milliseconds(0);
  ASSERT_EQ(first_->Commit(no_renewal).outcome, CommitOutcome::kApplied);
  EXPECT_GT(Take(*second_, kTtl).expires_in,
            kLongTtl - std::chrono::minutes(1));
}

TEST_F(WriterLeaseTest, LeaseTakenWhileACommitWaitsIsLeaseLost) {
  LeaseState first = Take(*first_, kLongTtl);
  ASSERT_TRUE(first.held);
  std::string before = Written();

  // Another session holds the node's row while the commit starts, and hands
  // the lease to another holder before it lets go: the commit's guard then
  // judges the row as that session left it.
  pqxx::connection other(url());
  pqxx::work takeover(other);
  takeover.exec_params("SELECT 1 FROM nodes WHERE name = $1 FOR UPDATE",
                       std::string(kNode));
  auto commit = std::async(std::launch::async, [&] {
    return first_->Commit(Batch(0, first.token, 100, 0));
  });
  ASSERT_TRUE(AwaitLockWaiters(1, kPatience));
  takeover.exec_params(
      "UPDATE nodes SET lease_holder = 'host standby pid 4242 beef', "
      "lease_token = lease_token + 1, lease_expires_at = clock_timestamp() + "
      "interval '1 hour' WHERE name = $1",
      std::string(kNode));
  takeover.commit();

  CommitResult result = commit.get();
  EXPECT_EQ(result.outcome, CommitOutcome::kLeaseLost)
      << result.status.message();
  EXPECT_NE(result.status.message().find("host standby pid 4242"),
            std::string::npos)
      << result.status.message();
  EXPECT_EQ(Written(), before);
}

TEST_F(WriterLeaseTest, EveryLeaseStatementWaitsForALockedRowThenGoesOn) {
  LeaseState first = Take(*first_, kLongTtl);
  ASSERT_TRUE(first.held);
  // Each statement of the lease in turn meets the node's row locked by
  // another session (an operator's transaction, a backup tool): it waits,
  // and completes as soon as the lock goes.
  struct Step {
    const char* name;
    std::function<bool()> run;  // true when it did what it should
  };
  std::vector<Step> steps = {
      {"TakeLease (a renewal)", [&] { return Take(*first_, kLongTtl).held; }},
      {"Commit",
       [&] {
         return first_->Commit(Batch(0, first.token, 5, 0)).outcome ==
                CommitOutcome::kApplied;
       }},
      {"ReleaseLease", [&] { return first_->ReleaseLease(first.token).ok(); }},
      {"TakeLease (by the other store)",
       [&] { return Take(*second_, kLongTtl).held; }},
  };
  for (Step& step : steps) {
    SCOPED_TRACE(step.name);
    pqxx::connection other(url());
    pqxx::work locker(other);
    locker.exec_params("SELECT 1 FROM nodes WHERE name = $1 FOR UPDATE",
                       std::string(kNode));
    std::atomic<bool> done = false;
    auto running = std::async(std::launch::async, [&] {
      bool ok = step.run();
      done = true;
      return ok;
    });
    ASSERT_TRUE(AwaitLockWaiters(1, kPatience));
    EXPECT_FALSE(done) << "went through a locked row";
    locker.commit();
    EXPECT_TRUE(running.get());
  }
  EXPECT_EQ(Query("SELECT lease_holder, lease_token, commit_seq FROM nodes"),
            second_->lease_holder() + "|2|1");
}

TEST_F(WriterLeaseTest, TakeLeaseRegistersANewNode) {
  LeaseState lease = Take(*first_, kLongTtl);
  EXPECT_TRUE(lease.held);
  EXPECT_EQ(Query("SELECT name, commit_seq, lease_token FROM nodes"),
            "edge-1|0|1");
  Status refused = first_->TakeLease(milliseconds(0), &lease);
  EXPECT_EQ(refused.code(), Status::Code::kInvalid) << refused.message();
}

// Through a transaction-pooling pooler, two collectors' stores share one
// server session: the lease, the commit and every read must hold no session
// state (no session lock, no SET, no prepared statement) between
// transactions.
TEST_F(WriterLeaseTest, WorksThroughPgBouncerInTransactionPoolingMode) {
  if (testing::PgBouncer::Binary().empty()) {
    GTEST_SKIP() << "pgbouncer is not installed (apt-get install pgbouncer, "
                    "as scripts/install-deps.sh test does): the lease is "
                    "not checked through a transaction-pooling pooler";
  }
  testing::PgBouncer bouncer(server().port(), /*server_connections=*/1);
  PgStore first(bouncer.Url(database()), kNode);
  PgStore second(bouncer.Url(database()), kNode);

  LeaseState lease = Take(first, kLongTtl);
  ASSERT_TRUE(lease.held) << bouncer.Log();
  NodeState state;
  Status loaded = first.LoadNode(&state);
  ASSERT_TRUE(loaded.ok()) << loaded.message();
  for (int64_t seq = 0; seq < 3; ++seq) {
    CommitBatch batch = Batch(seq, lease.token, 10, 10 * seq);
    batch.read_users_fingerprint = true;
    CommitResult result = first.Commit(batch);
    ASSERT_EQ(result.outcome, CommitOutcome::kApplied)
        << result.status.message();
    EXPECT_FALSE(result.users_fingerprint.empty());
    // The other store's statements land between them, on the same session.
    LeaseState refused = Take(second, kLongTtl);
    EXPECT_FALSE(refused.held);
    EXPECT_EQ(refused.holder, first.lease_holder());
  }
  int64_t seq = 0;
  ASSERT_TRUE(second.ReadCommitSeq(&seq).ok());
  EXPECT_EQ(seq, 3);
  std::string fingerprint;
  ASSERT_TRUE(second.ReadUsersFingerprint(&fingerprint).ok());

  ASSERT_TRUE(first.ReleaseLease(lease.token).ok());
  LeaseState taken = Take(second, kLongTtl);
  ASSERT_TRUE(taken.held) << "held by " << taken.holder;
  EXPECT_EQ(taken.token, lease.token + 1);
  CommitResult stale = first.Commit(Batch(3, lease.token, 10, 30));
  EXPECT_EQ(stale.outcome, CommitOutcome::kLeaseLost) << stale.status.message();
  ASSERT_TRUE(second.LoadNode(&state).ok());
  CommitResult next =
      second.Commit(Batch(state.commit_seq, taken.token, 5, 30));
  ASSERT_EQ(next.outcome, CommitOutcome::kApplied) << next.status.message();
  EXPECT_EQ(Written(), "4|35|35|35");
}

// Migrations and the retention's pruning through the pooler too, with two
// server sessions for three stores: they lock only for a transaction. A
// session lock left on whichever server session took it (as before) would
// make a later migration wait for ever; lock_timeout turns that into an
// error.
TEST_F(WriterLeaseTest, MigrateAndPruneWorkThroughPgBouncer) {
  if (testing::PgBouncer::Binary().empty()) {
    GTEST_SKIP() << "pgbouncer is not installed (apt-get install pgbouncer, "
                    "as scripts/install-deps.sh test does)";
  }
  testing::PgBouncer bouncer(server().port(), /*server_connections=*/2);
  server().CreateDatabase("pooled");
  server().Query("postgres", "ALTER DATABASE pooled SET lock_timeout = '20s'");
  for (const std::string node : {"a", "b", "c"}) {
    PgStore store(bouncer.Url("pooled"), node);
    Status migrated = store.Migrate();
    ASSERT_TRUE(migrated.ok()) << node << ": " << migrated.message() << "\n"
                               << bouncer.Log();
    PruneResult pruned;
    Status status = store.PruneHistory(std::chrono::hours(24),
                                       std::chrono::seconds(10), &pruned);
    ASSERT_TRUE(status.ok()) << node << ": " << status.message();
  }
  EXPECT_EQ(
      server().Query("pooled", "SELECT count(*) > 7 FROM schema_migrations"),
      "t");
}

}  // namespace
}  // namespace boxmeter
