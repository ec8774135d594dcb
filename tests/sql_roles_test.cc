// The group roles of schema/0004_roles.sql: the collector and the generator
// do their work connected as login roles granted them, and each role is
// refused what it should not do. Also: who can run the migrations.
#include <gtest/gtest.h>

#include "migrations.h"
#include "pg_inventory.h"
#include "sql_fixture.h"

namespace boxmeter {
namespace {

using testing::SqlError;
using testing::SqlTest;

constexpr const char* kPermissionDenied = "42501";

class SqlRolesTest : public SqlTest {
 protected:
  void SetUp() override {
    SqlTest::SetUp();
    if (HasFatalFailure()) return;
    // Roles belong to the cluster, which the tests of one process share.
    meter_ = "meter_" + database();
    gen_ = "gen_" + database();
    grafana_ = "grafana_" + database();
    operator_ = "operator_" + database();
    other_meter_ = "meter2_" + database();
    Query("CREATE ROLE " + meter_ + " LOGIN IN ROLE boxmeter_collector; " +
          "CREATE ROLE " + other_meter_ +
          " LOGIN IN ROLE boxmeter_collector; " + "CREATE ROLE " + operator_ +
          " LOGIN IN ROLE boxmeter_operator; " +
          "SELECT grant_node('edge-1', '" + meter_ + "'); " +
          "SELECT grant_node('edge-2', '" + other_meter_ + "'); " +
          "CREATE ROLE " + gen_ + " LOGIN IN ROLE boxmeter_generator; " +
          "CREATE ROLE " + grafana_ + " LOGIN IN ROLE boxmeter_readonly; " +
          "INSERT INTO inbounds (node, tag, type, listen_port) "
          "VALUES ('edge-1', 'vless-in', 'vless', 443); "
          "SELECT add_user('alice', password => 'alice-secret', "
          "                uuid => '11111111-2222-3333-4444-555555555555'); "
          "SELECT link_user('alice', 'edge-1', 'vless-in');");
  }

  // A user counter's row of a commit, from the node's first instance.
  static CommitRow Row(const std::string& name, int64_t delta, int64_t base) {
    return CommitRow{CounterKey{CounterKind::kUser, name},
                     CounterValues{delta, delta}, CounterValues{base, base}, 0};
  }

  // Expects `sql`, run as `role`, to be refused for lack of privilege.
  void ExpectRefused(const std::string& role, const std::string& sql) {
    SCOPED_TRACE(role + ": " + sql);
    SqlError error = Error(sql, role);
    EXPECT_EQ(error.sqlstate, kPermissionDenied) << error.message;
  }

  // Login roles of the four groups; meter_ is granted node edge-1,
  // other_meter_ edge-2.
  std::string meter_, other_meter_, gen_, grafana_, operator_;
};

TEST_F(SqlRolesTest, CollectorWorksAsALoginRoleOfBoxmeterCollector) {
  PgStore store(Url(meter_), "edge-1");
  Status migrated = store.Migrate();  // nothing pending: a no-op
  ASSERT_TRUE(migrated.ok()) << migrated.message();
  // Takes the writer lease of a node it registers, renews and releases it.
  LeaseState lease;
  Status taken = store.TakeLease(std::chrono::minutes(1), &lease);
  ASSERT_TRUE(taken.ok()) << taken.message();
  ASSERT_TRUE(lease.held);
  NodeState state;
  Status loaded = store.LoadNode(&state);
  ASSERT_TRUE(loaded.ok()) << loaded.message();
  CommitBatch batch{state.commit_seq, DayMs(0, 1), {Row("alice", 100, 100)}};
  batch.lease_token = lease.token;
  batch.lease_ttl = std::chrono::minutes(1);
  CommitResult first = store.Commit(batch);
  ASSERT_EQ(first.outcome, CommitOutcome::kApplied) << first.status.message();
  batch = {state.commit_seq + 1, DayMs(0, 1), {Row("alice", 50, 150)}};
  batch.lease_token = lease.token;
  CommitResult second = store.Commit(batch);
  ASSERT_EQ(second.outcome, CommitOutcome::kApplied) << second.status.message();
  Status renewed = store.TakeLease(std::chrono::minutes(1), &lease);
  ASSERT_TRUE(renewed.ok()) << renewed.message();
  Status released = store.ReleaseLease(lease.token);
  ASSERT_TRUE(released.ok()) << released.message();
  EXPECT_EQ(Query("SELECT lease_holder IS NULL, lease_token FROM nodes "
                  "WHERE name = 'edge-1'"),
            "t|1");
  int64_t seq = 0;
  ASSERT_TRUE(store.ReadCommitSeq(&seq).ok());
  EXPECT_EQ(seq, 2);
  ASSERT_TRUE(store.LoadNode(&state).ok());
  ASSERT_EQ(state.baselines.size(), 1u);
  EXPECT_EQ(state.baselines[0].values, (CounterValues{150, 150}));
  PruneResult pruned;
  Status prune = store.PruneHistory(std::chrono::hours(1), {}, &pruned);
  EXPECT_TRUE(prune.ok()) << prune.message();
  EXPECT_EQ(Query("SELECT total FROM user_traffic"), "300");
  // The users' fingerprint, without reading a credential.
  EXPECT_EQ(Query("SELECT users_fingerprint('edge-1')", meter_),
            Query("SELECT users_fingerprint('edge-1')"));
}

TEST_F(SqlRolesTest, CollectorCannotTouchUsersOrCredentials) {
  for (const char* sql : {
           "SELECT password FROM users",
           "SELECT uuid FROM users",
           "SELECT * FROM node_inbound_users",
           "SELECT * FROM eligible_users",
           "UPDATE users SET enabled = false",
           "INSERT INTO users (name) VALUES ('mallory')",
           "DELETE FROM users",
           "INSERT INTO inbound_users SELECT 1, 1",
           "UPDATE inbounds SET enabled = false",
           "SELECT add_user('mallory')",
           "SELECT set_quota('alice', 0)",
           "SELECT reset_usage('alice')",
           "DELETE FROM counters",
           "UPDATE counters SET name = 'x'",
           "UPDATE nodes SET name = 'x'",
           "DELETE FROM nodes",
           "CREATE TABLE mine (x int)",
       }) {
    ExpectRefused(meter_, sql);
  }
}

// Issue 12: one compromised node cannot zero the others' usage, nor delete
// history the retention keeps.
TEST_F(SqlRolesTest, ACollectorWritesOnlyItsGrantedNodeAndOldHistory) {
  meter("edge-2").Commit({{CounterKind::kUser, "alice", 100, 100}}, DayMs(0));
  Query(
      "INSERT INTO counter_hourly SELECT id, now() - interval '500 days', "
      "1, 1 FROM counters");
  // As edge-1's collector: nothing of edge-2's moves.
  EXPECT_EQ(Query("WITH c AS (UPDATE counters SET uplink = 0, downlink = 0 "
                  "WHERE node = 'edge-2' RETURNING 1) SELECT count(*) FROM c",
                  meter_),
            "0");
  EXPECT_EQ(Query("WITH c AS (UPDATE nodes SET commit_seq = 0 WHERE name = "
                  "'edge-2' RETURNING 1) SELECT count(*) FROM c",
                  meter_),
            "0");
  EXPECT_EQ(Query("WITH c AS (UPDATE counter_hourly SET uplink = 0 "
                  "RETURNING 1) SELECT count(*) FROM c",
                  meter_),
            "0");
  // History younger than history_retention.keep stays; older goes.
  EXPECT_EQ(Query("WITH c AS (DELETE FROM counter_hourly WHERE hour > now() "
                  "- interval '10 days' RETURNING 1) SELECT count(*) FROM c",
                  meter_),
            "0");
  EXPECT_EQ(Query("WITH c AS (DELETE FROM counter_hourly RETURNING 1) "
                  "SELECT count(*) FROM c",
                  meter_),
            "1");
  for (const char* sql : {
           "INSERT INTO counters (node, kind, name, instance_start) "
           "VALUES ('edge-2', 'user', 'x', now())",
           "INSERT INTO nodes (name) VALUES ('edge-9')",
           "UPDATE nodes SET retired_at = now()",
           "INSERT INTO counter_hourly SELECT id, now() - interval '1 hour', "
           "1, 1 FROM counters WHERE node = 'edge-2'",
           "SELECT grant_node('edge-2', current_user)",
           "INSERT INTO node_grants VALUES ('edge-2', current_user)",
           "UPDATE history_retention SET keep = '1 hour'",
           "SELECT retire_node('edge-2')",
       }) {
    ExpectRefused(meter_, sql);
  }
  EXPECT_EQ(Query("SELECT total, nodes FROM user_traffic"), "200|1");
  // A collector whose login was granted no node cannot register one.
  PgStore store(Url(meter_), "edge-3");
  NodeState state;
  Status loaded = store.LoadNode(&state);
  EXPECT_FALSE(loaded.ok());
  EXPECT_NE(loaded.message().find("row-level security"), std::string::npos)
      << loaded.message();
  EXPECT_NE(loaded.message().find("SELECT grant_node('edge-3', "),
            std::string::npos)
      << loaded.message();
  // Granted, it does.
  EXPECT_EQ(Query("SELECT grant_node('edge-3', '" + meter_ + "')"),
            "role '" + meter_ + "' may write node 'edge-3'");
  loaded = store.LoadNode(&state);
  EXPECT_TRUE(loaded.ok()) << loaded.message();
  SqlError no_role = Error("SELECT grant_node('edge-3', 'nobody_at_all')");
  EXPECT_EQ(no_role.sqlstate, "42704");
  EXPECT_NE(no_role.message.find("no role 'nobody_at_all'"), std::string::npos)
      << no_role.message;
  SqlError no_member = Error("SELECT grant_node('edge-3', '" + grafana_ + "')");
  EXPECT_EQ(no_member.sqlstate, "0LP01");
  EXPECT_NE(no_member.message.find("not a member of boxmeter_collector"),
            std::string::npos)
      << no_member.message;
}

// Users, inbounds, links and quotas, and reading traffic; nothing else.
TEST_F(SqlRolesTest, TheOperatorDoesTheDailyWorkAndNothingMore) {
  meter("edge-1").Commit({{CounterKind::kUser, "alice", 100, 100}}, DayMs(0));
  EXPECT_EQ(
      Query("SELECT name FROM add_user('bob', quota_bytes => 1000)", operator_),
      "bob");
  EXPECT_EQ(Query("SELECT link_user('bob', 'edge-1', 'vless-in')", operator_),
            "t");
  EXPECT_EQ(Query("SELECT state FROM set_quota('alice', 100)", operator_),
            "over_quota");
  EXPECT_EQ(Query("SELECT state FROM reset_usage('alice')", operator_),
            "active");
  EXPECT_EQ(Query("SELECT reset_all_usage()", operator_), "2");
  EXPECT_EQ(Query("SELECT name FROM rename_user('alice', 'alicia')", operator_),
            "alicia");
  Query(
      "INSERT INTO inbounds (node, tag, type) VALUES ('edge-1', 't', "
      "'trojan'); UPDATE users SET note = 'x'; "
      "INSERT INTO users (name) VALUES ('carol')",
      operator_);
  EXPECT_EQ(Query("SELECT name, total FROM user_traffic", operator_),
            "alicia|200");
  Query(
      "SELECT count(*) FROM counter_hourly; SELECT * FROM node_summary; "
      "SELECT * FROM top_users(now() - interval '1 day', now())",
      operator_);
  EXPECT_EQ(Query("SELECT delete_user('carol', false)", operator_),
            "deleted user 'carol' and their traffic history on 0 nodes");
  for (const char* sql : {
           "DELETE FROM counters",
           "UPDATE counters SET uplink = 0",
           "DELETE FROM counter_hourly",
           "UPDATE nodes SET commit_seq = 0",
           "DELETE FROM nodes",
           "INSERT INTO node_grants VALUES ('edge-1', current_user)",
           "SELECT grant_node('edge-1', current_user)",
           "SELECT retire_node('edge-1')",
           "DROP TABLE users",
           "ALTER TABLE users DISABLE TRIGGER users_rules",
           "CREATE TABLE mine (x int)",
       }) {
    ExpectRefused(operator_, sql);
  }
}

TEST_F(SqlRolesTest, GeneratorReadsItsInventoryAsALoginRole) {
  Inventory inventory;
  Status read = PgInventory(Url(gen_)).Read("edge-1", &inventory);
  ASSERT_TRUE(read.ok()) << read.message();
  ASSERT_EQ(inventory.inbounds.size(), 1u);
  ASSERT_EQ(inventory.users.size(), 1u);
  EXPECT_EQ(inventory.users[0].name, "alice");
  EXPECT_EQ(inventory.users[0].password, "alice-secret");
  EXPECT_EQ(inventory.users[0].uuid, "11111111-2222-3333-4444-555555555555");
  EXPECT_EQ(Query("SELECT name, state FROM user_quota_status", gen_),
            "alice|active");
  EXPECT_FALSE(Query("SELECT users_fingerprint('edge-1')", gen_).empty());
}

TEST_F(SqlRolesTest, GeneratorWritesNothing) {
  for (const char* sql : {
           "INSERT INTO users (name) VALUES ('mallory')",
           "UPDATE users SET quota_bytes = NULL",
           "DELETE FROM inbound_users",
           "UPDATE inbounds SET enabled = false",
           "INSERT INTO counters (node, kind, name, instance_start) "
           "VALUES ('edge-1', 'user', 'x', now())",
           "UPDATE counters SET uplink = 0",
           "DELETE FROM counter_hourly",
           "INSERT INTO nodes (name) VALUES ('edge-9')",
           "SELECT add_user('mallory')",
           "SELECT disable_user('alice')",
           "SELECT delete_user('alice', false)",
           "CREATE TABLE mine (x int)",
       }) {
    ExpectRefused(gen_, sql);
  }
}

TEST_F(SqlRolesTest, ReadonlySeesTheViewsAndNothingElse) {
  PgStore store(Url(), "edge-1");
  NodeState state;
  int64_t lease_token = 0;
  testing::MigrateAndLoad(store, &state, &lease_token);
  ASSERT_FALSE(HasFatalFailure());
  CommitBatch batch{0, DayMs(0), {Row("alice", 5, 5)}};
  batch.lease_token = lease_token;
  ASSERT_EQ(store.Commit(batch).outcome, CommitOutcome::kApplied);
  for (const char* view :
       {"user_traffic", "inbound_traffic", "outbound_traffic",
        "user_node_hourly", "user_hourly", "user_node_daily", "user_daily",
        "inbound_node_hourly", "user_quota_status", "node_summary",
        "unknown_counters"}) {
    SCOPED_TRACE(view);
    Query(std::string("SELECT * FROM ") + view, grafana_);
  }
  EXPECT_EQ(Query("SELECT name, total FROM top_users(now() - interval "
                  "'2 days', now() + interval '1 day')",
                  grafana_),
            "alice|10");
  for (const char* sql : {
           "SELECT password FROM users",
           "SELECT name FROM users",
           "SELECT * FROM eligible_users",
           "SELECT * FROM node_inbound_users",
           "SELECT * FROM counters",
           "SELECT * FROM counter_hourly",
           "SELECT * FROM inbounds",
           "SELECT users_fingerprint('edge-1')",
           "SELECT add_user('mallory')",
           "SELECT set_quota('alice', 0)",
           "SELECT delete_user('alice', false)",
           "UPDATE users SET enabled = false",
           "DELETE FROM counter_hourly",
           "INSERT INTO nodes (name) VALUES ('edge-9')",
           "CREATE TABLE mine (x int)",
       }) {
    ExpectRefused(grafana_, sql);
  }
}

TEST_F(SqlRolesTest, APendingMigrationTellsTheCollectorRoleToAskTheOwner) {
  // As if a newer boxmeter brought 0004 with it.
  std::string applied = Query("SELECT count(*) - 1 FROM schema_migrations");
  Query("DELETE FROM schema_migrations WHERE name = '0004_roles.sql'");
  Status status = PgStore(Url(meter_), "edge-1").Migrate();
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("applying migration 0004_roles.sql"),
            std::string::npos)
      << status.message();
  EXPECT_NE(status.message().find("--migrate` connected as the schema's owner"),
            std::string::npos)
      << status.message();
  EXPECT_EQ(Query("SELECT count(*) FROM schema_migrations WHERE name = "
                  "'0004_roles.sql'"),
            "0");
  EXPECT_EQ(Query("SELECT count(*) FROM schema_migrations"), applied)
      << "nothing else was applied or removed";
}

// On a server of its own: it drops the group roles.
TEST(SqlOwnerTest, TheDatabaseOwnerMigratesWithoutBeingSuperuser) {
  testing::PgServer server;
  server.Query("postgres",
               "CREATE ROLE owner1 LOGIN CREATEROLE; CREATE ROLE owner2 LOGIN");
  server.Query("postgres", "CREATE DATABASE owned1 OWNER owner1");
  server.Query("postgres", "CREATE DATABASE owned2 OWNER owner2");
  auto url = [&](const std::string& user, const std::string& db) {
    return "postgresql://" + user +
           "@127.0.0.1:" + std::to_string(server.port()) + "/" + db;
  };
  // An owner with CREATEROLE creates the roles.
  Status first = PgStore(url("owner1", "owned1"), "n").Migrate();
  ASSERT_TRUE(first.ok()) << first.message();

  // Without the roles, an owner without CREATEROLE is told what to do.
  server.Query("owned1",
               "DROP OWNED BY boxmeter_collector, boxmeter_generator, "
               "boxmeter_readonly");
  server.Query("postgres",
               "DROP ROLE boxmeter_collector, boxmeter_generator, "
               "boxmeter_readonly");
  Status refused = PgStore(url("owner2", "owned2"), "n").Migrate();
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.message().find("cannot create role boxmeter_collector: "
                                   "owner2 has no CREATEROLE"),
            std::string::npos)
      << refused.message();
  EXPECT_NE(refused.message().find("CREATE ROLE boxmeter_collector NOLOGIN"),
            std::string::npos)
      << refused.message();

  // Once an administrator has created them, the owner migrates.
  server.Query("postgres",
               "CREATE ROLE boxmeter_collector NOLOGIN; "
               "CREATE ROLE boxmeter_generator NOLOGIN; "
               "CREATE ROLE boxmeter_readonly NOLOGIN;");
  Status second = PgStore(url("owner2", "owned2"), "n").Migrate();
  ASSERT_TRUE(second.ok()) << second.message();
  EXPECT_EQ(server.Query("owned2",
                         "SELECT has_table_privilege('boxmeter_collector', "
                         "'counter_hourly', 'DELETE'), "
                         "has_table_privilege('boxmeter_readonly', "
                         "'users', 'SELECT'), "
                         "(SELECT tableowner FROM pg_tables "
                         " WHERE tablename = 'users')"),
            "t|f|owner2");

  // --migrate --grant-node ROLE: the owner lets a collector login write the
  // config's node; a login that is not a collector is refused by name.
  server.Query("postgres",
               "CREATE ROLE meter LOGIN IN ROLE boxmeter_collector; "
               "CREATE ROLE stranger LOGIN");
  Status granted =
      PgStore(url("owner2", "owned2"), "edge-9").GrantNode("meter");
  ASSERT_TRUE(granted.ok()) << granted.message();
  EXPECT_EQ(server.Query("owned2",
                         "SELECT node || ' ' || role_name FROM node_grants"),
            "edge-9 meter");
  Status stranger =
      PgStore(url("owner2", "owned2"), "edge-9").GrantNode("stranger");
  ASSERT_FALSE(stranger.ok());
  EXPECT_NE(stranger.message().find("granting node edge-9 to stranger"),
            std::string::npos)
      << stranger.message();
  EXPECT_NE(stranger.message().find("not a member of boxmeter_collector"),
            std::string::npos)
      << stranger.message();
}

}  // namespace
}  // namespace boxmeter
