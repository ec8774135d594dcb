// The operator's functions and views of schema/0003_operations.sql against a
// real PostgreSQL, with traffic committed through PgStore: what each function
// does, and every error path (its SQLSTATE and a message that names the
// value).
#include <gtest/gtest.h>

#include "sql_fixture.h"

namespace boxmeter {
namespace {

using testing::SqlError;
using testing::SqlTest;
using testing::Traffic;

constexpr CounterKind kUser = CounterKind::kUser;
constexpr CounterKind kInbound = CounterKind::kInbound;

class SqlFunctionsTest : public SqlTest {
 protected:
  void SetUp() override {
    SqlTest::SetUp();
    if (HasFatalFailure()) return;
    Query(
        "INSERT INTO inbounds (node, tag, type, listen_port) VALUES "
        "('edge-1', 'vless-in', 'vless', 443), "
        "('edge-2', 'vless-in', 'vless', 443)");
  }

  // The user's state and period usage, "state|used_bytes".
  std::string State(const std::string& name) {
    return Query(
        "SELECT state, used_bytes FROM user_quota_status WHERE name = '" +
        name + "'");
  }
};

// Checks that `error` is `sqlstate` and that its message contains each of
// `parts`.
void ExpectError(const SqlError& error, const std::string& sqlstate,
                 std::initializer_list<std::string> parts) {
  EXPECT_EQ(error.sqlstate, sqlstate) << error.message;
  for (const std::string& part : parts) {
    EXPECT_NE(error.message.find(part), std::string::npos)
        << "missing '" << part << "' in: " << error.message;
  }
}

TEST_F(SqlFunctionsTest, AddUserGeneratesUuidAndPassword) {
  std::string added = Query(
      "SELECT length(uuid::text), length(password), "
      "length(decode(password, 'base64')), usage_offset, enabled "
      "FROM add_user('alice')");
  EXPECT_EQ(added, "36|44|32|0|t");
  Query("SELECT add_user('bob')");
  EXPECT_EQ(Query("SELECT count(DISTINCT uuid), count(DISTINCT password) "
                  "FROM users"),
            "2|2");
}

TEST_F(SqlFunctionsTest, AddUserKeepsWhatIsGiven) {
  EXPECT_EQ(Query("SELECT name, quota_bytes, expires_at, uuid, password, "
                  "flow, note FROM add_user('alice', 1000, "
                  "'2030-01-01 00:00+00', "
                  "'11111111-2222-3333-4444-555555555555', 'secret', "
                  "'xtls-rprx-vision', 'a note')"),
            "alice|1000|2030-01-01 00:00:00+00|"
            "11111111-2222-3333-4444-555555555555|secret|xtls-rprx-vision|"
            "a note");
}

TEST_F(SqlFunctionsTest, AddUserRejectsBadInput) {
  ExpectError(Error("SELECT add_user(NULL)"), "22004",
              {"add_user", "must not be NULL"});
  ExpectError(Error("SELECT add_user('')"), "22023", {"add_user", "''"});
  ExpectError(Error("SELECT add_user(' alice')"), "22023",
              {"' alice'", "starts or ends with a space", "HINT"});
  ExpectError(Error("SELECT add_user(repeat('x', 1001))"), "22023",
              {"'xxxxxxxxxxxxxxxxxxxx'... is 1001 bytes long"});
  ExpectError(Error("SELECT add_user('alice', quota_bytes => -5)"), "22023",
              {"quota_bytes -5", "'alice'", "pg_size_bytes"});
  ExpectError(Error("SELECT add_user('alice', password => '')"), "22023",
              {"password", "'alice'", "generated"});
  Query("SELECT add_user('alice')");
  ExpectError(Error("SELECT add_user('alice')"), "23505",
              {"user 'alice' already exists", "set_quota"});
}

TEST_F(SqlFunctionsTest, AddUserUnderADeletedUsersNameStartsAFreshPeriod) {
  Query("SELECT add_user('alice', quota_bytes => 1000)");
  meter("edge-1").Commit({{kUser, "alice", 300, 700}}, DayMs(0));
  EXPECT_EQ(State("alice"), "over_quota|1000");
  EXPECT_EQ(Query("SELECT delete_user('alice', true)"),
            "deleted user 'alice'; kept their traffic history on 1 node");
  Query("SELECT add_user('alice', quota_bytes => 1000)");
  Query("SELECT link_user('alice', 'edge-1', 'vless-in')");
  EXPECT_EQ(State("alice"), "active|0");
  EXPECT_EQ(Query("SELECT lifetime_bytes FROM user_quota_status"), "1000");
}

TEST_F(SqlFunctionsTest, LinkAndUnlink) {
  Query("SELECT add_user('alice')");
  EXPECT_EQ(Query("SELECT link_user('alice', 'edge-1', 'vless-in')"), "t");
  EXPECT_EQ(Query("SELECT link_user('alice', 'edge-1', 'vless-in')"), "f");
  EXPECT_EQ(Query("SELECT node, inbound_tag, user_name FROM "
                  "node_inbound_users"),
            "edge-1|vless-in|alice");
  EXPECT_EQ(Query("SELECT unlink_user('alice', 'edge-1', 'vless-in')"), "t");
  EXPECT_EQ(Query("SELECT unlink_user('alice', 'edge-1', 'vless-in')"), "f");
  EXPECT_EQ(Query("SELECT count(*) FROM inbound_users"), "0");
}

TEST_F(SqlFunctionsTest, LinkAndUnlinkRejectBadInput) {
  Query("SELECT add_user('alice')");
  for (std::string function : {"link_user", "unlink_user"}) {
    SCOPED_TRACE(function);
    ExpectError(Error("SELECT " + function + "('bob', 'edge-1', 'vless-in')"),
                "P0002", {function, "no user named 'bob'", "SELECT name"});
    ExpectError(
        Error("SELECT " + function + "('alice', 'edge-1', 'trojan-in')"),
        "P0002", {"node 'edge-1' has no inbound tagged 'trojan-in'"});
    ExpectError(Error("SELECT " + function + "('alice', 'edge-3', 'vless-in')"),
                "P0002", {"node 'edge-3'"});
    ExpectError(Error("SELECT " + function + "('alice', NULL, 'vless-in')"),
                "P0002", {"node NULL"});
    ExpectError(Error("SELECT " + function + "(NULL, 'edge-1', 'vless-in')"),
                "22004", {"must not be NULL"});
  }
}

TEST_F(SqlFunctionsTest, QuotaAndExpiry) {
  Query("SELECT add_user('alice')");
  Query("SELECT link_user('alice', 'edge-1', 'vless-in')");
  meter("edge-1").Commit({{kUser, "alice", 100, 400}}, DayMs(0));
  EXPECT_EQ(Query("SELECT quota_bytes, used_bytes, remaining_bytes, percent, "
                  "state FROM set_quota('alice', 2000)"),
            "2000|500|1500|25.0|active");
  EXPECT_EQ(Query("SELECT state FROM set_quota('alice', 500)"), "over_quota");
  EXPECT_EQ(Query("SELECT quota_bytes, remaining_bytes, percent, state "
                  "FROM clear_quota('alice')"),
            "|||active");
  EXPECT_EQ(Query("SELECT state FROM set_expiry('alice', now() - interval "
                  "'1 second')"),
            "expired");
  EXPECT_EQ(Query("SELECT expires_at, state FROM set_expiry('alice', "
                  "'2099-01-01 00:00+00')"),
            "2099-01-01 00:00:00+00|active");
  EXPECT_EQ(Query("SELECT expires_at, state FROM clear_expiry('alice')"),
            "|active");
}

TEST_F(SqlFunctionsTest, QuotaAndExpiryRejectBadInput) {
  Query("SELECT add_user('alice')");
  ExpectError(Error("SELECT set_quota('alice', NULL)"), "22004",
              {"quota_bytes for user 'alice' is NULL", "clear_quota('alice')"});
  ExpectError(Error("SELECT set_quota('alice', -1)"), "22023",
              {"quota_bytes -1 for user 'alice' is negative"});
  ExpectError(Error("SELECT set_expiry('alice', NULL)"), "22004",
              {"expires_at for user 'alice' is NULL", "clear_expiry('alice')"});
  ExpectError(
      Error("SELECT set_expiry('alice', 'infinity')"), "22023",
      {"expires_at 'infinity'", "is not a time", "clear_expiry('alice')"});
  for (std::string call :
       {"set_quota('bob', 1)", "clear_quota('bob')", "set_expiry('bob', now())",
        "clear_expiry('bob')", "enable_user('bob')", "disable_user('bob')",
        "reset_usage('bob')", "rename_user('bob', 'robert')",
        "delete_user('bob', true)"}) {
    std::string function = call.substr(0, call.find('('));
    ExpectError(Error("SELECT " + call), "P0002",
                {function + ": there is no user named 'bob'"});
    ExpectError(Error("SELECT " + function + "(NULL" +
                      call.substr(call.find(',') == std::string::npos
                                      ? call.size() - 1
                                      : call.find(','))),
                "22004", {function, "must not be NULL"});
  }
}

TEST_F(SqlFunctionsTest, StatesFollowTheirOrderOfPrecedence) {
  Query(
      "SELECT add_user('active'), add_user('zero', quota_bytes => 0), "
      "add_user('full', quota_bytes => 1000), "
      "add_user('expired', quota_bytes => 1000, "
      "         expires_at => now() - interval '1 day'), "
      "add_user('disabled', quota_bytes => 1000, "
      "         expires_at => now() - interval '1 day')");
  Query("SELECT disable_user('disabled')");
  // Linked, so that no user is no_inbound (see sql_hardening_test.cc).
  Query("SELECT link_user(name, 'edge-1', 'vless-in') FROM users");
  meter("edge-1").Commit({{kUser, "full", 400, 600},
                          {kUser, "expired", 400, 600},
                          {kUser, "disabled", 400, 600},
                          {kUser, "active", 1, 1}},
                         DayMs(0));
  EXPECT_EQ(Query("SELECT name, used_bytes, remaining_bytes, percent, state "
                  "FROM user_quota_status ORDER BY name"),
            "active|2|||active\n"
            "disabled|1000|0|100.0|disabled\n"
            "expired|1000|0|100.0|expired\n"
            "full|1000|0|100.0|over_quota\n"
            "zero|0|0|100.0|over_quota");
  // The generator's view follows the same rule.
  EXPECT_EQ(Query("SELECT string_agg(name, ',' ORDER BY name) "
                  "FROM eligible_users"),
            "active");
  EXPECT_EQ(Query("SELECT state FROM enable_user('disabled')"), "expired");
  EXPECT_EQ(Query("SELECT state FROM clear_expiry('disabled')"), "over_quota");
  EXPECT_EQ(Query("SELECT state FROM set_quota('disabled', 1001)"), "active");
}

TEST_F(SqlFunctionsTest, ResetUsageStartsANewPeriodAndKeepsLifetimeTotals) {
  Query("SELECT add_user('alice', quota_bytes => 1000), add_user('bob')");
  Query("SELECT link_user('alice', 'edge-1', 'vless-in')");
  meter("edge-1").Commit({{kUser, "alice", 500, 500}}, DayMs(-1, 5));
  meter("edge-2").Commit({{kUser, "alice", 100, 100}}, DayMs(0));
  EXPECT_EQ(State("alice"), "over_quota|1200");
  EXPECT_EQ(Query("SELECT count(*) FROM node_inbound_users"), "0");

  EXPECT_EQ(Query("SELECT used_bytes, lifetime_bytes, state, "
                  "period_start = now() FROM reset_usage('alice')"),
            "0|1200|active|t");
  EXPECT_EQ(Query("SELECT user_name FROM node_inbound_users"), "alice");
  // Lifetime totals and history stay.
  EXPECT_EQ(Query("SELECT total FROM user_traffic WHERE name = 'alice'"),
            "1200");
  EXPECT_EQ(Query("SELECT sum(total) FROM user_daily WHERE name = 'alice'"),
            "1200");
  // Traffic after the reset counts in the new period.
  meter("edge-1").Commit({{kUser, "alice", 300, 0}}, DayMs(0, 1));
  EXPECT_EQ(State("alice"), "active|300");
  EXPECT_EQ(Query("SELECT reset_all_usage()"), "2");
  EXPECT_EQ(Query("SELECT string_agg(state || ':' || used_bytes, ',' "
                  "ORDER BY name) FROM user_quota_status"),
            "active:0,no_inbound:0");
  EXPECT_EQ(Query("SELECT lifetime_bytes FROM user_quota_status "
                  "WHERE name = 'alice'"),
            "1500");
}

TEST_F(SqlFunctionsTest, RenameMovesTrafficAndKeepsTheOldBaselines) {
  Query("SELECT add_user('alice', quota_bytes => 10000)");
  Query("SELECT link_user('alice', 'edge-1', 'vless-in')");
  meter("edge-1").Commit({{kUser, "alice", 100, 200}}, DayMs(-2, 3));
  meter("edge-2").Commit({{kUser, "alice", 10, 20}}, DayMs(0));
  EXPECT_EQ(Query("SELECT name, used_bytes, lifetime_bytes, state "
                  "FROM rename_user('alice', 'alicia')"),
            "alicia|330|330|active");
  EXPECT_EQ(Query("SELECT node, name, uplink, downlink FROM counters "
                  "ORDER BY name, node"),
            "edge-1|alice|0|0\nedge-2|alice|0|0\n"
            "edge-1|alicia|100|200\nedge-2|alicia|10|20");
  EXPECT_EQ(Query("SELECT name, day - current_date, total FROM user_daily "
                  "ORDER BY day"),
            "alicia|-2|300\nalicia|0|30");
  // sing-box still counts under the old name until it reloads its config:
  // the running collector adds only the new traffic, to the old row, which
  // counts for alicia (renamed_users), and is no unknown counter.
  meter("edge-1").Commit({{kUser, "alice", 5, 5}}, DayMs(0, 1));
  EXPECT_EQ(Query("SELECT count(*) FROM unknown_counters"), "0");
  EXPECT_EQ(State("alicia"), "active|340");
  // A collector restarted meanwhile still has the old name's baseline, so it
  // does not count sing-box's whole cumulative value again.
  NodeState state;
  ASSERT_TRUE(PgStore(Url(), "edge-1").LoadNode(&state).ok());
  bool found = false;
  for (const Baseline& b : state.baselines) {
    if (b.key == CounterKey{kUser, "alice"}) {
      found = true;
      EXPECT_EQ(b.values, (CounterValues{105, 205}));
    }
  }
  EXPECT_TRUE(found);
  // After the reload sing-box counts the new name from zero.
  meter("edge-1").Commit({{kUser, "alicia", 1, 1}}, DayMs(0, 1));
  EXPECT_EQ(State("alicia"), "active|342");
}

TEST_F(SqlFunctionsTest, RenameOntoOldCountersMergesThemIntoTheLifetimeOnly) {
  Query("SELECT add_user('alice', quota_bytes => 10000), add_user('bob')");
  meter("edge-1").Commit({{kUser, "alice", 100, 0}, {kUser, "bob", 7, 0}},
                         DayMs(0));
  Query("SELECT delete_user('bob', true)");
  EXPECT_EQ(Query("SELECT used_bytes, lifetime_bytes FROM "
                  "rename_user('alice', 'bob')"),
            "100|107");
  EXPECT_EQ(Query("SELECT sum(total) FROM user_hourly WHERE name = 'bob'"),
            "107");
}

TEST_F(SqlFunctionsTest, RenameRejectsBadInput) {
  Query("SELECT add_user('alice'), add_user('bob')");
  ExpectError(Error("SELECT rename_user('alice', 'bob')"), "23505",
              {"cannot rename user 'alice' to 'bob'", "delete_user"});
  ExpectError(Error("SELECT rename_user('alice', 'alice')"), "22023",
              {"'alice' already has that name"});
  ExpectError(Error("SELECT rename_user('alice', NULL)"), "22004",
              {"rename_user", "must not be NULL"});
  ExpectError(Error("SELECT rename_user('alice', 'bob ')"), "22023",
              {"'bob '", "starts or ends with a space"});
  EXPECT_EQ(Query("SELECT string_agg(name, ',' ORDER BY name) FROM users"),
            "alice,bob");
}

TEST_F(SqlFunctionsTest, DeleteKeepsOrRemovesHistoryAsAsked) {
  Query("SELECT add_user('alice'), add_user('bob')");
  Query(
      "SELECT link_user('alice', 'edge-1', 'vless-in'), "
      "link_user('bob', 'edge-1', 'vless-in')");
  meter("edge-1").Commit({{kUser, "alice", 1, 2}, {kUser, "bob", 3, 4}},
                         DayMs(0));
  meter("edge-2").Commit({{kUser, "alice", 5, 6}}, DayMs(0));

  ExpectError(Error("SELECT delete_user('alice', NULL)"), "22004",
              {"keep_history for user 'alice' is NULL", "true keeps it"});
  ExpectError(Error("SELECT delete_user('alice')"), "42883", {"delete_user"});

  EXPECT_EQ(Query("SELECT delete_user('alice', false)"),
            "deleted user 'alice' and their traffic history on 2 nodes");
  EXPECT_EQ(Query("SELECT delete_user('bob', true)"),
            "deleted user 'bob'; kept their traffic history on 1 node");
  EXPECT_EQ(Query("SELECT count(*) FROM users"), "0");
  EXPECT_EQ(Query("SELECT count(*) FROM inbound_users"), "0");
  EXPECT_EQ(Query("SELECT name, total FROM user_traffic"), "bob|7");
  EXPECT_EQ(Query("SELECT name, total FROM user_daily"), "bob|7");
  EXPECT_EQ(Query("SELECT kind, name FROM unknown_counters"), "user|bob");
}

TEST_F(SqlFunctionsTest, TopUsersRanksARangeOfHours) {
  meter("edge-1").Commit({{kUser, "a", 10, 0}, {kUser, "b", 30, 0}},
                         DayMs(-3, 10));
  meter("edge-1").Commit({{kUser, "a", 50, 0}, {kUser, "c", 5, 0}},
                         DayMs(-1, 10));
  meter("edge-2").Commit({{kUser, "b", 30, 0}}, DayMs(-1, 11));
  // Ties share a rank and are listed by name.
  EXPECT_EQ(Query("SELECT rank, name, uplink, downlink, total FROM "
                  "top_users(current_date - 7, now())"),
            "1|a|60|0|60\n1|b|60|0|60\n3|c|5|0|5");
  // [from, to): the hour starting at `to` is out, the one at `from` in.
  std::string day1 = "(current_date - 1)::timestamptz";
  EXPECT_EQ(
      Query("SELECT name, total FROM top_users(" + day1 +
            " + interval '10 hours', " + day1 + " + interval '11 hours')"),
      "a|50\nc|5");
  // A `from` inside an hour leaves that hour out: it starts before `from`.
  EXPECT_EQ(Query("SELECT name FROM top_users(" + day1 +
                  " + interval '10 hours 30 minutes', now())"),
            "b");
  ExpectError(Error("SELECT * FROM top_users(NULL, now())"), "22004",
              {"from_time and to_time must not be NULL", "NULL and"});
  ExpectError(Error("SELECT * FROM top_users(now(), now() - interval '1 day')"),
              "22023", {"is not before to_time", "swap"});
}

// top_users sums in bigint (0026) and, where that overflows, again in
// numeric, clamped at the bigint maximum as before.
TEST_F(SqlFunctionsTest, TopUsersClampsSumsPastTheBigintMaximum) {
  const int64_t five_eb = 5'000'000'000'000'000'000;
  // a's uplink overflows when its two nodes are added up.
  meter("edge-1").Commit({{kUser, "a", five_eb, 0}, {kUser, "b", 1, 0}},
                         DayMs(-1, 10));
  meter("edge-2").Commit({{kUser, "a", five_eb, 0}}, DayMs(-1, 10));
  // c's uplink and downlink fit; their total does not.
  meter("edge-1").Commit({{kUser, "c", five_eb, five_eb}}, DayMs(-1, 12));
  std::string day1 = "(current_date - 1)::timestamptz";
  EXPECT_EQ(Query("SELECT rank, name, uplink, downlink, total FROM top_users(" +
                  day1 + " + interval '10 hours', " + day1 +
                  " + interval '11 hours')"),
            "1|a|9223372036854775807|0|9223372036854775807\n2|b|1|0|1");
  EXPECT_EQ(Query("SELECT rank, name, uplink, downlink, total FROM top_users(" +
                  day1 + " + interval '12 hours', " + day1 +
                  " + interval '13 hours')"),
            "1|c|5000000000000000000|5000000000000000000|9223372036854775807");
}

TEST_F(SqlFunctionsTest, DailyAndHourlyViewsSumOverNodes) {
  meter("edge-1").Commit({{kUser, "a", 1, 2}, {kInbound, "vless-in", 1, 2}},
                         DayMs(-1, 22));
  meter("edge-1").Commit({{kUser, "a", 10, 20}, {kInbound, "vless-in", 10, 20}},
                         DayMs(-1, 23));
  meter("edge-2").Commit({{kUser, "a", 100, 200}}, DayMs(-1, 23));
  meter("edge-2").Commit({{kUser, "a", 1000, 2000}}, DayMs(0, 0));
  EXPECT_EQ(Query("SELECT extract(hour FROM hour), uplink, downlink, total "
                  "FROM user_hourly ORDER BY hour"),
            "22|1|2|3\n23|110|220|330\n0|1000|2000|3000");
  EXPECT_EQ(Query("SELECT node, day - current_date, total FROM "
                  "user_node_daily ORDER BY day, node"),
            "edge-1|-1|33\nedge-2|-1|300\nedge-2|0|3000");
  EXPECT_EQ(Query("SELECT day - current_date, uplink, downlink, total "
                  "FROM user_daily ORDER BY day"),
            "-1|111|222|333\n0|1000|2000|3000");
  EXPECT_EQ(Query("SELECT count(*) FROM user_node_hourly"), "4");
  // Days are the session's: at UTC+1 (POSIX '-01:00') yesterday's 23:00 UTC
  // is today's 00:00. Count days from the UTC date the hours were made from:
  // the session's current_date is already tomorrow after 23:00 UTC.
  EXPECT_EQ(Query("SET TIME ZONE '-01:00'; SELECT day - "
                  "(now() AT TIME ZONE 'UTC')::date, total "
                  "FROM user_daily ORDER BY day"),
            "-1|3\n0|3330");
}

TEST_F(SqlFunctionsTest, NodeSummaryAndUnknownCounters) {
  Query("SELECT add_user('alice')");
  meter("edge-1").Commit({{kUser, "alice", 1, 2},
                          {kUser, "ghost", 3, 4},
                          {kInbound, "vless-in", 4, 6},
                          {kInbound, "old-in", 1, 1},
                          {CounterKind::kOutbound, "direct", 4, 6}},
                         DayMs(0));
  meter("edge-1").Commit({{kUser, "alice", 100, 100}}, DayMs(-1, 12));
  meter("edge-2");  // registered, nothing counted
  EXPECT_EQ(Query("SELECT node, last_commit_at > now() - interval '1 minute', "
                  "commits, counters, user_counters, today_uplink, "
                  "today_downlink, today_total "
                  "FROM node_summary ORDER BY node"),
            "edge-1|t|2|5|2|5|7|12\n"
            "edge-2||0|0|0|0|0|0");
  EXPECT_EQ(Query("SELECT node, kind, name, total FROM unknown_counters "
                  "ORDER BY kind, name"),
            "edge-1|inbound|old-in|2\nedge-1|user|ghost|7");
}

TEST_F(SqlFunctionsTest, FunctionsFindTheirTablesWhateverTheSearchPath) {
  Query(
      "CREATE SCHEMA other; SET search_path = other; "
      "SELECT public.add_user('alice', quota_bytes => 5)");
  EXPECT_EQ(Query("SET search_path = other; "
                  "SELECT state FROM public.set_quota('alice', 0)"),
            "over_quota");
}

}  // namespace
}  // namespace boxmeter
