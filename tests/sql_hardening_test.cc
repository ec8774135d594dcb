// schema/0008_hardening.sql (issue 12): messages that quote what they echo,
// names and credentials checked whatever writes users, one expiry rule, the
// user and node life cycles that keep lifetime totals and quota usage right,
// per-day reports by range, and migrations that apply with plain psql.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "process.h"
#include "sql_fixture.h"

namespace boxmeter {
namespace {

using testing::SqlError;
using testing::SqlTest;

constexpr CounterKind kUser = CounterKind::kUser;

class SqlHardeningTest : public SqlTest {
 protected:
  void SetUp() override {
    SqlTest::SetUp();
    if (HasFatalFailure()) return;
    Query(
        "INSERT INTO inbounds (node, tag, type, listen_port) VALUES "
        "('edge-1', 'vless-in', 'vless', 443), "
        "('edge-2', 'vless-in', 'vless', 443)");
  }

  // Adds `name` with `quota` bytes (NULL: none), linked to edge-1's inbound.
  void AddLinked(const std::string& name, const std::string& quota = "NULL") {
    Query("SELECT add_user('" + name + "', quota_bytes => " + quota +
          "); SELECT link_user('" + name + "', 'edge-1', 'vless-in')");
  }

  std::string State(const std::string& name) {
    return Query(
        "SELECT state, used_bytes FROM user_quota_status WHERE name = '" +
        name + "'");
  }
};

void ExpectError(const SqlError& error, const std::string& sqlstate,
                 std::initializer_list<std::string> parts) {
  EXPECT_EQ(error.sqlstate, sqlstate) << error.message;
  for (const std::string& part : parts) {
    EXPECT_NE(error.message.find(part), std::string::npos)
        << "missing \"" << part << "\" in: " << error.message;
  }
}

TEST_F(SqlHardeningTest, MessagesAndHintsQuoteValuesAsLiterals) {
  // A legal, if unwise, name: the hints must not turn it into a statement.
  const std::string name = "'x''); DROP TABLE users; --'";
  const std::string quoted = "'x''); DROP TABLE users; --'";
  Query("SELECT add_user(" + name + ")");
  ExpectError(
      Error("SELECT set_quota(" + name + ", NULL)"), "22004",
      {"for user " + quoted + " is NULL", "clear_quota(" + quoted + ")"});
  ExpectError(Error("SELECT set_expiry(" + name + ", NULL)"), "22004",
              {"clear_expiry(" + quoted + ")"});
  ExpectError(Error("SELECT unlink_user(" + name + ", 'edge-1', 'x-in')"),
              "P0002",
              {"node 'edge-1' has no inbound tagged 'x-in'",
               "WHERE u.name = " + quoted});
  ExpectError(Error("SELECT add_user(" + name + ")"), "23505",
              {"user " + quoted + " already exists"});
  ExpectError(Error("SELECT reset_usage('no''body')"), "P0002",
              {"no user named 'no''body'"});
}

TEST_F(SqlHardeningTest, NamesAreNormalizedAndMustBePrintable) {
  for (const char* bad : {
           "E'\\u00a0alice'",      // leading no-break space
           "E'al\\u200bice'",      // zero-width space
           "E'ali\\nce'",          // embedded newline
           "E'alice\\u2028'",      // line separator
           "E'\\ufeffalice'",      // byte order mark
           "' alice'", "'alice '"  // surrounding spaces
       }) {
    SCOPED_TRACE(bad);
    ExpectError(Error(std::string("SELECT add_user(") + bad + ")"), "22023",
                {"add_user: user name"});
    // The same rule for a plain INSERT and for rename_user.
    ExpectError(
        Error(std::string("INSERT INTO users (name) VALUES (") + bad + ")"),
        "22023", {"INSERT on users: user name"});
  }
  ExpectError(Error("SELECT add_user(E'al\\u200bice')"), "22023",
              {"U+200B at position 3"});
  // Composed and decomposed café are one user, stored composed.
  Query("SELECT add_user(E'caf\\u00e9')");
  ExpectError(Error("SELECT add_user(E'cafe\\u0301')"), "23505",
              {"already exists"});
  ExpectError(Error("INSERT INTO users (name) VALUES (E'cafe\\u0301')"),
              "23505", {});
  EXPECT_EQ(Query("SELECT state FROM set_quota(E'cafe\\u0301', 5)"),
            "no_inbound");
  Query("INSERT INTO users (name) VALUES (E'zoe\\u0301')");
  EXPECT_EQ(Query("SELECT name = E'zo\\u00e9' FROM users WHERE id = "
                  "(SELECT max(id) FROM users)"),
            "t");
  Query("SELECT add_user('alice')");
  ExpectError(Error("SELECT rename_user('alice', E'bob\\u200d')"), "22023",
              {"rename_user: user name"});
}

TEST_F(SqlHardeningTest, PasswordsAndFlowsAreWhatSingBoxTakes) {
  ExpectError(Error("SELECT add_user('alice', password => '   ')"), "22023",
              {"password of user 'alice' starts or ends with a space"});
  ExpectError(Error("SELECT add_user('alice', password => E'pw\\t')"), "22023",
              {"password of user 'alice'", "U+0009"});
  ExpectError(Error("INSERT INTO users (name, password) VALUES ('a', ' x')"),
              "22023", {"password"});
  // The message never shows the password itself.
  SqlError secret =
      Error("SELECT add_user('alice', password => E's3cret\\u200b')");
  EXPECT_EQ(secret.message.find("s3cret"), std::string::npos) << secret.message;
  ExpectError(Error("SELECT add_user('alice', flow => 'not-a-flow')"), "22023",
              {"flow 'not-a-flow' of user 'alice' is not a flow sing-box "
               "knows",
               "xtls-rprx-vision"});
  Query("SELECT add_user('bob', flow => 'xtls-rprx-vision')");
  ExpectError(Error("UPDATE users SET flow = 'xtls-rprx' WHERE name = 'bob'"),
              "22023", {"not a flow sing-box knows"});
}

TEST_F(SqlHardeningTest, ExpiryIsAFiniteTimeOrNullEverywhere) {
  for (const char* value : {"'infinity'", "'-infinity'"}) {
    SCOPED_TRACE(value);
    ExpectError(Error(std::string("SELECT add_user('alice', expires_at => ") +
                      value + ")"),
                "22023", {"is not a time", "NULL means never"});
    ExpectError(Error(std::string("INSERT INTO users (name, expires_at) VALUES "
                                  "('alice', ") +
                      value + ")"),
                "22023", {"is not a time"});
  }
  Query("SELECT add_user('alice')");
  ExpectError(Error("UPDATE users SET expires_at = 'infinity'"), "22023",
              {"is not a time"});
  ExpectError(Error("SELECT set_expiry('alice', '-infinity')"), "22023",
              {"set_expiry", "is not a time", "clear_expiry('alice')"});
}

TEST_F(SqlHardeningTest, PlainInsertAfterDeleteStartsAtZeroLikeAddUser) {
  AddLinked("alice", "1000");
  meter("edge-1").Commit({{kUser, "alice", 499, 500}}, DayMs(0));
  Query("SELECT delete_user('alice', true)");
  Query(
      "INSERT INTO users (name, quota_bytes) VALUES ('alice', 1000); "
      "SELECT link_user('alice', 'edge-1', 'vless-in')");
  EXPECT_EQ(State("alice"), "active|0");
  EXPECT_EQ(Query("SELECT lifetime_bytes FROM user_quota_status"), "999");
  meter("edge-1").Commit({{kUser, "alice", 1, 0}}, DayMs(0));
  EXPECT_EQ(State("alice"), "active|1");
}

TEST_F(SqlHardeningTest, RenameLeavesNoZeroRowsAndOldNameTrafficCounts) {
  AddLinked("alice", "1000");
  meter("edge-1").Commit({{kUser, "alice", 100, 200}}, DayMs(0));
  meter("edge-2").Commit({{kUser, "alice", 10, 20}}, DayMs(0));
  Query("SELECT rename_user('alice', 'alicia')");
  EXPECT_EQ(Query("SELECT name, total, nodes FROM user_traffic"),
            "alicia|330|2");
  EXPECT_EQ(Query("SELECT count(*) FROM unknown_counters"), "0");
  // sing-box counts under the old name until it reloads: that is alicia's.
  meter("edge-1").Commit({{kUser, "alice", 300, 0}}, DayMs(0, 1));
  EXPECT_EQ(State("alicia"), "active|630");
  EXPECT_EQ(Query("SELECT name, total FROM user_traffic"), "alicia|630");
  EXPECT_EQ(Query("SELECT name, total FROM top_users(current_date, now() + "
                  "interval '1 day')"),
            "alicia|630");
  EXPECT_EQ(Query("SELECT count(*) FROM unknown_counters"), "0");
  meter("edge-1").Commit({{kUser, "alice", 400, 0}}, DayMs(0, 1));
  EXPECT_EQ(State("alicia"), "over_quota|1030");
  // reset_usage and reset_all_usage count the old name too.
  EXPECT_EQ(Query("SELECT used_bytes FROM reset_usage('alicia')"), "0");
  meter("edge-1").Commit({{kUser, "alice", 5, 0}}, DayMs(0, 1));
  EXPECT_EQ(State("alicia"), "active|5");
  Query("SELECT reset_all_usage()");
  EXPECT_EQ(State("alicia"), "active|0");
  // The old name is not free while it counts for alicia.
  ExpectError(Error("SELECT add_user('alice')"), "23505",
              {"'alice' was user 'alicia''s before a rename"});
  // Back to the old name: its traffic is already alicia's, not merged again.
  EXPECT_EQ(Query("SELECT name, used_bytes, lifetime_bytes FROM "
                  "rename_user('alicia', 'alice')"),
            "alice|0|1035");
  // Deleting without history removes the counters of every name.
  EXPECT_EQ(Query("SELECT delete_user('alice', false)"),
            "deleted user 'alice' and their traffic history on 2 nodes");
  EXPECT_EQ(Query("SELECT count(*) FROM counters"), "0");
}

// An operator's plain UPDATE of a name would leave the user's traffic
// under the old one: usage 0, a way around the quota. Only rename_user
// renames (0021).
TEST_F(SqlHardeningTest, NamesChangeOnlyThroughRenameUser) {
  AddLinked("alice", "1000");
  meter("edge-1").Commit({{kUser, "alice", 600, 0}}, DayMs(0));
  ExpectError(Error("UPDATE users SET name = 'bob' WHERE name = 'alice'"),
              "22023",
              {"user 'alice' cannot be renamed to 'bob' by an UPDATE",
               "SELECT rename_user('alice', 'bob')"});
  EXPECT_EQ(State("alice"), "active|600");
  // Other columns, and the same name, are still fine.
  Query("UPDATE users SET name = 'alice', note = 'n' WHERE name = 'alice'");
  EXPECT_EQ(Query("SELECT name FROM rename_user('alice', 'bob')"), "bob");
  EXPECT_EQ(State("bob"), "active|600");
}

TEST_F(SqlHardeningTest, UsersWithoutAnEnabledInboundAreNoInbound) {
  AddLinked("alice");
  Query(
      "SELECT add_user('bob'); SELECT link_user('bob', 'edge-2', 'vless-in')");
  Query("UPDATE inbounds SET enabled = false WHERE node = 'edge-2'");
  EXPECT_EQ(State("bob"), "no_inbound|0");
  EXPECT_EQ(Query("SELECT string_agg(name, ',') FROM eligible_users"), "alice");
  EXPECT_EQ(Query("SELECT name, state FROM user_quota_status "
                  "WHERE state <> 'active'"),
            "bob|no_inbound");
  Query("UPDATE inbounds SET enabled = true WHERE node = 'edge-2'");
  EXPECT_EQ(State("bob"), "active|0");
}

TEST_F(SqlHardeningTest, PercentReaches100OnlyAtTheQuota) {
  AddLinked("alice", "10000");
  meter("edge-1").Commit({{kUser, "alice", 9996, 0}}, DayMs(0));
  EXPECT_EQ(Query("SELECT percent, state FROM user_quota_status"),
            "99.9|active");
  meter("edge-1").Commit({{kUser, "alice", 4, 0}}, DayMs(0));
  EXPECT_EQ(Query("SELECT percent, state FROM user_quota_status"),
            "100.0|over_quota");
}

TEST_F(SqlHardeningTest, TopUsersTakesHoursStartingInTheRangeInAnyTimeZone) {
  meter("edge-1").Commit({{kUser, "early", 10, 0}}, DayMs(-1, 10));
  meter("edge-1").Commit({{kUser, "late", 20, 0}}, DayMs(-1, 11));
  // 10:30 UTC: the 10:00 hour starts before it. At +05:30 the local hour
  // starts at 10:30 UTC, which took the 10:00 UTC hour in before. The day is
  // yesterday in UTC, as DayMs counts it: from 18:30 UTC on, current_date in
  // Kolkata is already tomorrow's.
  for (const char* zone : {"UTC", "Asia/Kolkata"}) {
    SCOPED_TRACE(zone);
    EXPECT_EQ(Query(std::string("SET TIME ZONE '") + zone +
                    "'; SELECT string_agg(name, ',') FROM top_users("
                    "((now() AT TIME ZONE 'UTC')::date - 1)::timestamp "
                    "AT TIME ZONE 'UTC' + "
                    "interval '10 hours 30 minutes', now())"),
              "late");
  }
}

TEST_F(SqlHardeningTest, UserDailyBetweenReadsDaysByRange) {
  meter("edge-1").Commit({{kUser, "a", 1, 2}}, DayMs(-2, 5));
  meter("edge-1").Commit({{kUser, "a", 10, 20}}, DayMs(-1, 23));
  meter("edge-2").Commit({{kUser, "a", 100, 200}}, DayMs(0, 0));
  EXPECT_EQ(Query("SELECT name, day - current_date, uplink, downlink, total "
                  "FROM user_daily_between(current_date - 1, current_date) "
                  "ORDER BY day"),
            "a|-1|10|20|30\na|0|100|200|300");
  EXPECT_EQ(Query("SELECT total FROM user_daily_between(current_date, "
                  "current_date)"),
            "300");
  // The same as the view for the same days.
  EXPECT_EQ(Query("SELECT sum(total) FROM user_daily_between(current_date - "
                  "9, current_date)"),
            Query("SELECT sum(total) FROM user_daily"));
  ExpectError(Error("SELECT * FROM user_daily_between(current_date, "
                    "current_date - 1)"),
              "22023", {"is after last_day", "swap"});
  ExpectError(Error("SELECT * FROM user_daily_between(NULL, current_date)"),
              "22004", {"must not be NULL"});
}

TEST_F(SqlHardeningTest, RetireNodeKeepsTotalsAndQuotaUsage) {
  AddLinked("alice", "1000");
  Query("SELECT link_user('alice', 'edge-2', 'vless-in')");
  meter("edge-1").Commit({{kUser, "alice", 100, 0}}, DayMs(0));
  meter("edge-2").Commit({{kUser, "alice", 200, 0}}, DayMs(0));
  EXPECT_EQ(Query("SELECT retire_node('edge-2')"),
            "retired node 'edge-2': disabled 1 inbound; its traffic stays");
  EXPECT_EQ(State("alice"), "active|300");
  EXPECT_EQ(Query("SELECT total, nodes FROM user_traffic"), "300|2");
  EXPECT_EQ(Query("SELECT node FROM node_summary WHERE retired_at IS NOT NULL"),
            "edge-2");
  EXPECT_EQ(Query("SELECT count(*) FROM node_inbound_users WHERE node = "
                  "'edge-2'"),
            "0");
  ExpectError(Error("SELECT retire_node('edge-2')"), "55000",
              {"'edge-2' was already retired"});
  ExpectError(Error("SELECT retire_node('edge-9')"), "P0002",
              {"no node 'edge-9'"});
  ExpectError(Error("SELECT grant_node('edge-2', 'postgres')"), "55000",
              {"retired", "new name"});
}

// The speed targets' shapes (scripts/sql-bench.sh has the timings): one
// node's users are read from its links, not by checking every user first,
// and a range of days reads only their hours.
TEST_F(SqlHardeningTest, NodeReadsFollowItsLinksAndDaysTheirHours) {
  Query(
      "INSERT INTO users (name) SELECT 'u' || i FROM generate_series(1, 3000) "
      "AS i; "
      "INSERT INTO inbound_users SELECT i.id, u.id FROM inbounds i, users u "
      "WHERE i.node = 'edge-1' OR u.id <= 3; "
      "INSERT INTO nodes (name) VALUES ('edge-1'); "
      "INSERT INTO counters (node, kind, name, instance_start) "
      "SELECT 'edge-1', 'user', name, now() FROM users; "
      "INSERT INTO counter_hourly SELECT c.id, date_trunc('hour', now()) - "
      "h * interval '1 hour', 1, 1 FROM counters c, generate_series(0, 99) "
      "AS h; "
      "ANALYZE");
  // Each user's usage is summed once per user of the node: 3 times, not
  // 3000 (0002's view checked every user's eligibility first).
  std::string node = Query(
      "SET jit = off; EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) "
      "SELECT count(*) FROM node_inbound_users WHERE node = 'edge-2'");
  size_t usage = node.find("using counters_user_name on counters c ");
  ASSERT_NE(usage, std::string::npos) << node;
  EXPECT_EQ(node.substr(usage, node.find('\n', usage) - usage).find("loops=3)"),
            node.substr(usage, node.find('\n', usage) - usage).size() -
                std::string("loops=3)").size())
      << node;
  EXPECT_EQ(Query("SELECT count(*) FROM node_inbound_users WHERE node = "
                  "'edge-2'"),
            "3");
  std::string day = Query(
      "SET jit = off; EXPLAIN SELECT * FROM user_node_hourly WHERE hour >= "
      "current_date::timestamptz AND hour < (current_date + 1)::timestamptz");
  // The day's hours through the index on hour (today's rows are in the
  // legacy partition of a fresh installation), the other partitions pruned.
  EXPECT_NE(day.find("counter_hourly_legacy_hour"), std::string::npos) << day;
  EXPECT_NE(day.find("Subplans Removed"), std::string::npos) << day;
}

// Renamed users' old names are read once per query, not once per counter
// (schema/0019): an empty renamed_users that VACUUM has seen is estimated at
// one row, and NOT EXISTS then ran as a nested loop rescanning it for each
// counter, 130 of user_traffic's 340 ms at 75,000 counters.
TEST_F(SqlHardeningTest, UserTrafficReadsRenamedUsersOncePerQuery) {
  Query(
      "INSERT INTO users (name) SELECT 'u' || i FROM generate_series(1, 300) "
      "AS i; "
      "INSERT INTO nodes (name) VALUES ('edge-1'); "
      "INSERT INTO counters (node, kind, name, uplink, instance_start) "
      "SELECT 'edge-1', 'user', name, 1, now() FROM users");
  server().Query(database(), "VACUUM ANALYZE renamed_users");
  server().Query(database(), "ANALYZE counters");
  std::string plan = Query(
      "SET LOCAL jit = off; EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) "
      "SELECT * FROM user_traffic");
  // Every node that reads renamed_users runs once.
  size_t at = 0;
  int scans = 0;
  while ((at = plan.find(" on renamed_users ", at)) != std::string::npos) {
    std::string line = plan.substr(at, plan.find('\n', at) - at);
    EXPECT_NE(line.find("loops=1)"), std::string::npos) << plan;
    ++scans;
    ++at;
  }
  EXPECT_GE(scans, 1) << plan;
  EXPECT_EQ(Query("SELECT count(*), sum(uplink) FROM user_traffic"), "300|300");
}

// The reports over every user read the database-wide settings once per
// query, not once per user (schema/0017: at 50,000 users the per-user calls
// were most of user_quota_status's time), and JIT is off for the database.
TEST_F(SqlHardeningTest, ReportsReadTheSettingsOncePerQuery) {
  Query(
      "INSERT INTO users (name) SELECT 'u' || i FROM generate_series(1, 50) "
      "AS i; "
      "INSERT INTO nodes (name) VALUES ('edge-1'); "
      "INSERT INTO counters (node, kind, name, instance_start) "
      "SELECT 'edge-1', 'user', name, now() FROM users");
  std::string calls = Query(
      "SET LOCAL track_functions = 'all'; "
      "SELECT max(time_zone), bool_or(online) FROM user_quota_status; "
      "SELECT max(name) FROM online_users; "
      "SELECT string_agg(funcname || '=' || calls, ',' ORDER BY funcname) "
      "FROM pg_stat_xact_user_functions WHERE funcname IN "
      "('boxmeter_default_time_zone', 'boxmeter_online_window')");
  EXPECT_EQ(calls, "boxmeter_default_time_zone=1,boxmeter_online_window=2");
  EXPECT_EQ(Query("SELECT 'jit=off' = ANY (s.setconfig) FROM "
                  "pg_db_role_setting s JOIN pg_database d ON d.oid = "
                  "s.setdatabase WHERE d.datname = current_database() AND "
                  "s.setrole = 0"),
            "t");
}

// Every file of schema/ applies on its own with plain psql and records
// itself; the collector's runner then finds nothing to do.
TEST_F(SqlHardeningTest, MigrationsApplyWithPlainPsql) {
  server().Query("postgres", "CREATE DATABASE " + database() + "_psql");
  std::string url =
      "postgresql://postgres@127.0.0.1:" + std::to_string(server().port()) +
      "/" + database() + "_psql";
  std::vector<std::filesystem::path> files;
  for (const auto& entry :
       std::filesystem::directory_iterator(BOXMETER_SOURCE_DIR "/schema")) {
    if (entry.path().extension() == ".sql") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  ASSERT_GE(files.size(), 5u);
  const std::string debian = "/usr/lib/postgresql/15/bin/psql";
  for (const auto& file : files) {
    testing::Process::Options psql;
    psql.argv = {std::filesystem::exists(debian) ? debian : "psql",
                 "-X",
                 "-q",
                 "-1",
                 "-v",
                 "ON_ERROR_STOP=1",
                 "-f",
                 file.string(),
                 url};
    std::string output;
    ASSERT_EQ(testing::RunCommand(psql, std::chrono::seconds(60), &output), 0)
        << file << ":\n"
        << output;
  }
  std::string recorded = server().Query(
      database() + "_psql",
      "SELECT string_agg(name, ',' ORDER BY name) FROM schema_migrations");
  EXPECT_EQ(recorded, Query("SELECT string_agg(name, ',' ORDER BY name) FROM "
                            "schema_migrations"));
  EXPECT_EQ(std::count(recorded.begin(), recorded.end(), ',') + 1,
            static_cast<long>(files.size()));
  PgStore store(url, "edge-1");
  Status migrated = store.Migrate();
  EXPECT_TRUE(migrated.ok()) << migrated.message();
  NodeState state;
  Status loaded = store.LoadNode(&state);
  EXPECT_TRUE(loaded.ok()) << loaded.message();
}

}  // namespace
}  // namespace boxmeter
