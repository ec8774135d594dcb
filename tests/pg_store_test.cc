// PgStore against a real, throwaway PostgreSQL 15: migrations, the guarded
// commit, COPY of awkward names, the views, and surviving a server restart.
#include "pg_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <map>
#include <thread>

#include "migrations.h"
#include "pg_database_test.h"
#include "pg_server.h"

namespace boxmeter {
namespace {

using boxmeter::testing::PgDatabaseTest;
using boxmeter::testing::PgServer;
using boxmeter::testing::WaitUntil;
using std::chrono::milliseconds;

// 2026-01-02 03:45:06.789 UTC, and the start of its hour.
constexpr int64_t kObservedMs = 1767325506789;
constexpr const char* kObservedHour = "2026-01-02 03:00:00+00";
constexpr int64_t kGeneration = 7;  // the baselines' instance

CommitRow Row(CounterKind kind, std::string name, CounterValues delta,
              CounterValues baseline, int64_t generation = kGeneration) {
  return CommitRow{CounterKey{kind, std::move(name)}, delta, baseline,
                   generation};
}

// A batch under the lease that Ready took (a fresh node's first).
CommitBatch Batch(int64_t expected_seq, std::vector<CommitRow> rows,
                  int64_t observed_at_ms = kObservedMs) {
  CommitBatch batch{expected_seq, observed_at_ms, std::move(rows)};
  batch.lease_token = testing::kFirstLeaseToken;
  return batch;
}

std::map<CounterKey, Baseline> ByKey(const std::vector<Baseline>& baselines) {
  std::map<CounterKey, Baseline> out;
  for (const Baseline& b : baselines) out[b.key] = b;
  return out;
}

class PgStoreTest : public PgDatabaseTest {
 protected:
  PgStoreTest() : PgDatabaseTest("pg_store_test") {}

  std::string Query(const std::string& sql) {
    return server().Query(database(), sql);
  }

  // A store for `node` that has migrated and loaded, as the collector does.
  std::unique_ptr<PgStore> Ready(const std::string& node,
                                 NodeState* state = nullptr) {
    auto store = std::make_unique<PgStore>(url(), node);
    NodeState ignored;
    testing::MigrateAndLoad(*store, state ? state : &ignored);
    return store;
  }
};

// PgStore adds connect and keepalive limits to database.url
// (pg_connection_defaults.h); libpq refuses a parameter it does not know, so
// connecting proves each form of the string still means what it did.
TEST_F(PgStoreTest, ConnectsWithTheAddedLimitsInEveryFormOfUrl) {
  std::string port = std::to_string(server().port());
  for (const std::string& form :
       {url(), url() + "?application_name=boxmeter",
        url() + "?keepalives_idle=5",
        "host=127.0.0.1 port=" + port + " user=postgres dbname=" + database(),
        "host=127.0.0.1 port=" + port + " user=postgres dbname=" + database() +
            " connect_timeout=3"}) {
    PgStore store(form, "edge-1");
    Status status = store.Migrate();
    EXPECT_TRUE(status.ok()) << form << ": " << status.message();
  }
}

TEST_F(PgStoreTest, MigrateTwiceAppliesEachMigrationOnce) {
  ASSERT_FALSE(EmbeddedMigrations().empty());
  EXPECT_EQ(EmbeddedMigrations().front().name, "0001_init.sql");
  PgStore store(url(), "edge-1");
  Status first = store.Migrate();
  ASSERT_TRUE(first.ok()) << first.message();
  Status second = store.Migrate();
  ASSERT_TRUE(second.ok()) << second.message();

  std::string expected;
  for (const Migration& m : EmbeddedMigrations()) {
    if (!expected.empty()) expected += "\n";
    expected += std::string(m.name) + "|1";
  }
  EXPECT_EQ(Query("SELECT name, count(*) FROM schema_migrations "
                  "GROUP BY name ORDER BY name"),
            expected);
  EXPECT_EQ(Query("SELECT count(*) FROM information_schema.views WHERE "
                  "table_name IN ('user_traffic', 'inbound_traffic', "
                  "'outbound_traffic')"),
            "3");
}

TEST_F(PgStoreTest, ConcurrentMigrationsBothSucceed) {
  constexpr int kStores = 4;
  std::vector<Status> results(kStores);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStores; ++i) {
    threads.emplace_back([this, i, &results] {
      PgStore store(url(), "edge-" + std::to_string(i));
      results[i] = store.Migrate();
    });
  }
  for (std::thread& t : threads) t.join();
  for (const Status& status : results) {
    EXPECT_TRUE(status.ok()) << status.message();
  }
  EXPECT_EQ(Query("SELECT count(*), count(DISTINCT name) FROM "
                  "schema_migrations"),
            std::to_string(EmbeddedMigrations().size()) + "|" +
                std::to_string(EmbeddedMigrations().size()));
}

TEST_F(PgStoreTest, LoadNodeRegistersANewNodeAtSequenceZero) {
  NodeState state;
  state.commit_seq = 99;
  state.baselines.push_back({});
  auto store = Ready("edge-1", &state);
  EXPECT_EQ(state.commit_seq, 0);
  EXPECT_TRUE(state.baselines.empty());
  EXPECT_EQ(Query("SELECT name, commit_seq FROM nodes"), "edge-1|0");
  int64_t seq = -1;
  ASSERT_TRUE(store->ReadCommitSeq(&seq).ok());
  EXPECT_EQ(seq, 0);
}

TEST_F(PgStoreTest, CommitAppliesTotalsBaselinesHistoryAndSequence) {
  auto store = Ready("edge-1");
  CommitResult first = store->Commit(Batch(
      0, {Row(CounterKind::kUser, "alice", {100, 2000}, {150, 2500}),
          Row(CounterKind::kInbound, "socks-in", {300, 4000}, {300, 4000})}));
  ASSERT_EQ(first.outcome, CommitOutcome::kApplied) << first.status.message();

  EXPECT_EQ(Query("SELECT kind, name, uplink, downlink, base_uplink, "
                  "base_downlink, generation, instance_start IS NULL "
                  "FROM counters ORDER BY kind, name"),
            "inbound|socks-in|300|4000|300|4000|7|t\n"
            "user|alice|100|2000|150|2500|7|t");
  EXPECT_EQ(Query("SELECT commit_seq, last_commit_at IS NOT NULL FROM nodes"),
            "1|t");

  // Same hour: added to the hourly row. Next hour: a row of its own.
  CommitResult second = store->Commit(
      Batch(1, {Row(CounterKind::kUser, "alice", {1, 10}, {151, 2510})}));
  ASSERT_EQ(second.outcome, CommitOutcome::kApplied) << second.status.message();
  CommitResult third = store->Commit(
      Batch(2, {Row(CounterKind::kUser, "alice", {5, 50}, {156, 2560})},
            kObservedMs + 3'600'000));
  ASSERT_EQ(third.outcome, CommitOutcome::kApplied) << third.status.message();

  EXPECT_EQ(Query("SELECT uplink, downlink, base_uplink, base_downlink "
                  "FROM counters WHERE name = 'alice'"),
            "106|2060|156|2560");
  EXPECT_EQ(Query("SET TIME ZONE 'UTC'; SELECT c.name, h.hour, h.uplink, "
                  "h.downlink FROM counter_hourly h JOIN counters c ON "
                  "c.id = h.counter_id ORDER BY c.name, h.hour"),
            std::string("alice|") + kObservedHour +
                "|101|2010\n"
                "alice|2026-01-02 04:00:00+00|5|50\n"
                "socks-in|" +
                kObservedHour + "|300|4000");
  int64_t seq = -1;
  ASSERT_TRUE(store->ReadCommitSeq(&seq).ok());
  EXPECT_EQ(seq, 3);
}

TEST_F(PgStoreTest, ReplayedCommitChangesNothing) {
  auto store = Ready("edge-1");
  CommitBatch batch =
      Batch(0, {Row(CounterKind::kUser, "alice", {100, 200}, {100, 200})});
  ASSERT_EQ(store->Commit(batch).outcome, CommitOutcome::kApplied);
  std::string before = Query(
      "SELECT c.uplink, c.downlink, h.uplink, h.downlink, n.commit_seq "
      "FROM counters c JOIN counter_hourly h ON h.counter_id = c.id "
      "JOIN nodes n ON n.name = c.node");
  EXPECT_EQ(before, "100|200|100|200|1");

  CommitResult replay = store->Commit(batch);
  EXPECT_EQ(replay.outcome, CommitOutcome::kNotApplied);
  EXPECT_EQ(replay.status.code(), Status::Code::kInvalid);
  EXPECT_NE(replay.status.message().find("edge-1"), std::string::npos)
      << replay.status.message();
  EXPECT_NE(replay.status.message().find("expected commit sequence 0"),
            std::string::npos)
      << replay.status.message();
  EXPECT_NE(replay.status.message().find("has 1"), std::string::npos)
      << replay.status.message();
  EXPECT_EQ(Query("SELECT c.uplink, c.downlink, h.uplink, h.downlink, "
                  "n.commit_seq FROM counters c JOIN counter_hourly h ON "
                  "h.counter_id = c.id JOIN nodes n ON n.name = c.node"),
            before);
}

TEST_F(PgStoreTest, AwkwardNamesRoundTripThroughCopy) {
  const std::vector<std::string> names = {
      "it's \"quoted\"",
      "back\\slash\\",
      "\\N",
      "\\.",
      "tab\there",
      "new\nline",
      "carriage\rreturn",
      "\x01\x1f control",
      "ünïcødé 用户 🚀",
      "a>>>b>>>traffic>>>uplink",
      "comma,semi;colon|pipe",
      " leading and trailing ",
  };
  NodeState state;
  auto store = Ready("node 'with' \\ odd\tname", &state);
  std::vector<CommitRow> rows;
  int64_t i = 0;
  for (const std::string& name : names) {
    ++i;
    rows.push_back(Row(CounterKind::kUser, name, {i, 2 * i}, {10 * i, 20 * i},
                       kGeneration + i));
  }
  CommitResult result = store->Commit(Batch(0, rows));
  ASSERT_EQ(result.outcome, CommitOutcome::kApplied) << result.status.message();

  NodeState loaded;
  Status status = store->LoadNode(&loaded);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(loaded.commit_seq, 1);
  std::map<CounterKey, Baseline> got = ByKey(loaded.baselines);
  ASSERT_EQ(got.size(), names.size());
  i = 0;
  for (const std::string& name : names) {
    ++i;
    auto it = got.find(CounterKey{CounterKind::kUser, name});
    ASSERT_NE(it, got.end()) << "lost: " << name;
    EXPECT_EQ(it->second.values, (CounterValues{10 * i, 20 * i})) << name;
    EXPECT_EQ(it->second.generation, kGeneration + i) << name;
  }
  // And the database holds the very bytes, not an escaped form.
  EXPECT_EQ(Query("SELECT count(*) FROM counters WHERE name = "
                  "E'tab\\there' OR name = E'back\\\\slash\\\\' OR "
                  "name = 'ünïcødé 用户 🚀'"),
            "3");
}

TEST_F(PgStoreTest, AnUpgradeKnowsNoInstanceAndKeepsEveryBaseline) {
  // A database as 0004 left it, with a counter an older collector wrote.
  // Each file records itself in schema_migrations (they apply with plain
  // psql too).
  for (const Migration& migration : EmbeddedMigrations()) {
    if (migration.name >= "0005") break;
    Query(std::string(migration.sql));
  }
  Query(
      "INSERT INTO nodes (name, commit_seq) VALUES ('edge-1', 9); "
      "INSERT INTO counters (node, kind, name, uplink, downlink, base_uplink, "
      "base_downlink, instance_start) VALUES ('edge-1', 'user', 'alice', 10, "
      "20, 10, 20, now())");

  PgStore store(url(), "edge-1");
  ASSERT_TRUE(store.Migrate().ok());
  NodeState state;
  ASSERT_TRUE(store.LoadNode(&state).ok());
  EXPECT_EQ(state.commit_seq, 9);
  // No instance known: the first observation is taken as the same instance
  // unless a counter fell (DeltaEngine's rule).
  EXPECT_EQ(state.instance, InstanceIdentity{});
  ASSERT_EQ(state.baselines.size(), 1u);
  EXPECT_EQ(state.baselines[0].values, (CounterValues{10, 20}));
  EXPECT_EQ(state.baselines[0].generation, 0);
}

TEST_F(PgStoreTest, ViewsSumUsersOverNodes) {
  auto edge1 = Ready("edge-1");
  auto edge2 = Ready("edge-2");
  Query("INSERT INTO users (name, quota_bytes) VALUES ('alice', 1000)");
  ASSERT_EQ(
      edge1
          ->Commit(Batch(
              0,
              {Row(CounterKind::kUser, "alice", {100, 1000}, {100, 1000}),
               Row(CounterKind::kUser, "bob", {7, 70}, {7, 70}),
               Row(CounterKind::kInbound, "socks-in", {107, 1070}, {107, 1070}),
               Row(CounterKind::kOutbound, "direct", {107, 1070},
                   {107, 1070})}))
          .outcome,
      CommitOutcome::kApplied);
  ASSERT_EQ(edge2
                ->Commit(Batch(0, {Row(CounterKind::kUser, "alice", {200, 2000},
                                       {200, 2000}),
                                   Row(CounterKind::kInbound, "socks-in",
                                       {200, 2000}, {200, 2000})}))
                .outcome,
            CommitOutcome::kApplied);

  // bob is in no users row and still shows: nothing is dropped.
  EXPECT_EQ(Query("SELECT name, uplink, downlink, total, nodes, "
                  "last_seen IS NOT NULL FROM user_traffic ORDER BY name"),
            "alice|300|3000|3300|2|t\n"
            "bob|7|70|77|1|t");
  EXPECT_EQ(Query("SELECT node, tag, uplink, downlink, total FROM "
                  "inbound_traffic ORDER BY node"),
            "edge-1|socks-in|107|1070|1177\n"
            "edge-2|socks-in|200|2000|2200");
  EXPECT_EQ(Query("SELECT node, tag, uplink, downlink, total FROM "
                  "outbound_traffic"),
            "edge-1|direct|107|1070|1177");
  // The contract's column types.
  EXPECT_EQ(Query("SELECT string_agg(data_type, ',' ORDER BY "
                  "ordinal_position) FROM information_schema.columns WHERE "
                  "table_name = 'user_traffic' AND column_name IN "
                  "('uplink', 'downlink', 'total')"),
            "bigint,bigint,bigint");
  // The quota query operators will write.
  EXPECT_EQ(Query("SELECT u.name FROM users u JOIN user_traffic t USING "
                  "(name) WHERE t.total >= u.quota_bytes"),
            "alice");
}

TEST_F(PgStoreTest, LoadNodeReturnsWhatCommitWrote) {
  auto writer = Ready("edge-1");
  NodeState fresh;
  ASSERT_TRUE(writer->LoadNode(&fresh).ok());
  EXPECT_EQ(fresh.instance, InstanceIdentity{});  // nothing known yet

  CommitBatch batch =
      Batch(0, {Row(CounterKind::kUser, "alice", {5, 6}, {123456789, 987}, 3),
                Row(CounterKind::kOutbound, "direct", {1, 1}, {42, 43}, 2),
                Row(CounterKind::kInbound, "in", {1, 0}, {1, 0}, 0)});
  // CLOCK_MONOTONIC ms can be anything from a fresh boot's to a long one's.
  batch.instance = {
      "0b5e7f1c-2f64-4e1a-9d6c-1f3a2b4c5d6e", 3, {-1234, 9'000'000'000'001}};
  ASSERT_EQ(writer->Commit(batch).outcome, CommitOutcome::kApplied);

  PgStore reader(url(), "edge-1");  // a restarted collector
  NodeState state;
  Status status = reader.LoadNode(&state);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(state.commit_seq, 1);
  EXPECT_EQ(state.instance, batch.instance);
  std::map<CounterKey, Baseline> got = ByKey(state.baselines);
  ASSERT_EQ(got.size(), 3u);
  const Baseline& alice = got[{CounterKind::kUser, "alice"}];
  EXPECT_EQ(alice.values, (CounterValues{123456789, 987}));
  EXPECT_EQ(alice.generation, 3);
  const Baseline& direct = got[{CounterKind::kOutbound, "direct"}];
  EXPECT_EQ(direct.values, (CounterValues{42, 43}));
  EXPECT_EQ(direct.generation, 2);
  EXPECT_EQ(got[(CounterKey{CounterKind::kInbound, "in"})].generation, 0);
  // The totals, for the metrics endpoint: the deltas committed so far.
  std::map<CounterKey, CounterValues> totals;
  for (const CounterTotal& total : state.totals)
    totals[total.key] = total.total;
  EXPECT_EQ(totals, (std::map<CounterKey, CounterValues>{
                        {{CounterKind::kInbound, "in"}, {1, 0}},
                        {{CounterKind::kOutbound, "direct"}, {1, 1}},
                        {{CounterKind::kUser, "alice"}, {5, 6}}}));

  // A commit without rows still stores the instance (a restart seen while
  // no counter has traffic yet).
  CommitBatch empty = Batch(1, {});
  empty.instance = {"another-boot", 4, {10, 20}};
  ASSERT_EQ(writer->Commit(empty).outcome, CommitOutcome::kApplied);
  ASSERT_TRUE(reader.LoadNode(&state).ok());
  EXPECT_EQ(state.instance, empty.instance);

  // Another node's counters are not this node's baselines.
  NodeState other;
  ASSERT_TRUE(PgStore(url(), "edge-2").LoadNode(&other).ok());
  EXPECT_TRUE(other.baselines.empty());
  EXPECT_TRUE(other.totals.empty());
}

TEST_F(PgStoreTest, EmptyBatchOnlyMovesTheSequence) {
  auto store = Ready("edge-1");
  CommitResult result = store->Commit(Batch(0, {}));
  ASSERT_EQ(result.outcome, CommitOutcome::kApplied) << result.status.message();
  EXPECT_EQ(Query("SELECT commit_seq FROM nodes"), "1");
  EXPECT_EQ(Query("SELECT count(*) FROM counters"), "0");
}

TEST_F(PgStoreTest, DuplicateKeysAreRejectedBeforeAnythingIsSent) {
  auto store = Ready("edge-1");
  CommitResult result = store->Commit(
      Batch(0, {Row(CounterKind::kUser, "alice", {1, 1}, {1, 1}),
                Row(CounterKind::kInbound, "alice", {1, 1}, {1, 1}),
                Row(CounterKind::kUser, "alice", {2, 2}, {2, 2})}));
  EXPECT_EQ(result.outcome, CommitOutcome::kNotApplied);
  EXPECT_EQ(result.status.code(), Status::Code::kInvalid);
  EXPECT_NE(result.status.message().find("user 'alice' appears twice"),
            std::string::npos)
      << result.status.message();
  EXPECT_EQ(Query("SELECT commit_seq FROM nodes"), "0");
}

TEST_F(PgStoreTest, UnstorableNamesAreLeftOutAndTheRestApplies) {
  auto store = Ready("edge-1");
  CommitResult result = store->Commit(Batch(
      0, {Row(CounterKind::kUser, std::string("nul\0byte", 8), {1, 1}, {1, 1}),
          Row(CounterKind::kUser, "bad\xff utf8", {1, 1}, {1, 1}),
          Row(CounterKind::kUser, "alice", {3, 4}, {3, 4})}));
  ASSERT_EQ(result.outcome, CommitOutcome::kApplied) << result.status.message();
  EXPECT_EQ(Query("SELECT name, uplink, downlink FROM counters"), "alice|3|4");
}

TEST_F(PgStoreTest, TotalsSaturateInsteadOfFailingForever) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  auto store = Ready("edge-1");
  ASSERT_EQ(store
                ->Commit(Batch(0, {Row(CounterKind::kUser, "huge",
                                       {kMax - 10, kMax}, {kMax, kMax})}))
                .outcome,
            CommitOutcome::kApplied);
  CommitResult more = store->Commit(
      Batch(1, {Row(CounterKind::kUser, "huge", {100, 100}, {100, 100})}));
  ASSERT_EQ(more.outcome, CommitOutcome::kApplied) << more.status.message();
  std::string max = std::to_string(kMax);
  EXPECT_EQ(Query("SELECT uplink, downlink FROM counters"), max + "|" + max);
  EXPECT_EQ(Query("SELECT uplink, downlink FROM counter_hourly"),
            max + "|" + max);
  EXPECT_EQ(Query("SELECT total FROM user_traffic"), max);
  // And the node keeps committing.
  EXPECT_EQ(
      store
          ->Commit(Batch(2, {Row(CounterKind::kUser, "small", {1, 1}, {1, 1})}))
          .outcome,
      CommitOutcome::kApplied);
}

TEST_F(PgStoreTest, CommitWhileServerIsDownFailsCleanlyAndRecovers) {
  // Trust authentication ignores the password, which must never show.
  std::string with_password = url();
  with_password.replace(with_password.find("postgres@"), 9, "postgres:s3cret@");
  std::string redacted = with_password;
  redacted.replace(redacted.find("s3cret"), 6, "***");
  PgStore store(with_password, "edge-1");
  NodeState state;
  testing::MigrateAndLoad(store, &state);
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_EQ(
      store.Commit(Batch(0, {Row(CounterKind::kUser, "alice", {1, 2}, {1, 2})}))
          .outcome,
      CommitOutcome::kApplied);

  server().Stop(PgServer::StopMode::kFast);
  CommitBatch batch =
      Batch(1, {Row(CounterKind::kUser, "alice", {10, 20}, {11, 22})});
  for (int attempt = 0; attempt < 2; ++attempt) {  // broken, then refused
    CommitResult down = store.Commit(batch);
    EXPECT_EQ(down.outcome, CommitOutcome::kNotApplied);
    EXPECT_EQ(down.status.code(), Status::Code::kUnavailable);
    EXPECT_NE(down.status.message().find(redacted), std::string::npos)
        << down.status.message();
    EXPECT_EQ(down.status.message().find("s3cret"), std::string::npos)
        << down.status.message();
  }
  int64_t seq = 0;
  EXPECT_FALSE(store.ReadCommitSeq(&seq).ok());

  server().Start();
  CommitResult up = store.Commit(batch);
  ASSERT_EQ(up.outcome, CommitOutcome::kApplied) << up.status.message();
  EXPECT_EQ(Query("SELECT uplink, downlink, base_uplink, base_downlink FROM "
                  "counters"),
            "11|22|11|22");
  ASSERT_TRUE(store.ReadCommitSeq(&seq).ok());
  EXPECT_EQ(seq, 2);
}

TEST_F(PgStoreTest, ConnectionLostDuringCommitIsUnknown) {
  auto store = Ready("edge-1");
  // A deferred trigger holds the COMMIT open on the server, so the
  // connection can be cut exactly while the client waits for it.
  Query(R"sql(
    CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS
      $$ BEGIN PERFORM pg_sleep(60); RETURN NULL; END $$;
    CREATE CONSTRAINT TRIGGER hold_commit AFTER UPDATE ON nodes
      DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hold_commit();
  )sql");
  std::atomic<bool> terminated = false;
  std::thread cutter([&] {
    terminated = WaitUntil(
        [&] {
          return Query(
                     "SELECT pg_terminate_backend(pid) FROM "
                     "pg_stat_activity WHERE query = 'COMMIT' AND "
                     "state = 'active'") == "t";
        },
        milliseconds(20000));
  });
  CommitResult result = store->Commit(
      Batch(0, {Row(CounterKind::kUser, "alice", {1, 2}, {1, 2})}));
  cutter.join();
  ASSERT_TRUE(terminated);
  EXPECT_EQ(result.outcome, CommitOutcome::kUnknown) << result.status.message();
  EXPECT_NE(result.status.message().find("unknown"), std::string::npos)
      << result.status.message();

  // The sequence tells what happened: the commit was cut, so it is still 0.
  int64_t seq = -1;
  Status status = store->ReadCommitSeq(&seq);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(seq, 0);
}

}  // namespace
}  // namespace boxmeter
