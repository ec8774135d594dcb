// Quota periods, online and on-hold users and node multipliers
// (schema/0009_quota_periods.sql onwards) against a real PostgreSQL: the
// pure period function at fixed instants (a DST change, month ends, a
// half-hour time zone), the errors, and the rollover as a collector's
// login commits.
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <pqxx/pqxx>
#include <string>

#include "sql_fixture.h"

namespace boxmeter {
namespace {

using testing::SqlError;
using testing::SqlTest;
using testing::Traffic;

constexpr CounterKind kUser = CounterKind::kUser;

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

class SqlQuotaTest : public SqlTest {
 protected:
  // "start|end" of quota_period(args) at `at` (UTC session).
  std::string Period(const std::string& at, const std::string& args) {
    return Query("SELECT period_start, period_end FROM quota_period(" + args +
                 ", at => '" + at + "')");
  }
};

TEST_F(SqlQuotaTest, PeriodsFollowTheCalendarOfTheirTimeZone) {
  // Monthly on the 1st in Tehran (+03:30, no DST since 2022): 00:00 there.
  EXPECT_EQ(Period("2026-11-30 20:29:59+00",
                   "'monthly', day => 1, time_zone => 'Asia/Tehran'"),
            "2026-10-31 20:30:00+00|2026-11-30 20:30:00+00");
  EXPECT_EQ(Period("2026-11-30 20:30:00+00",
                   "'monthly', day => 1, time_zone => 'Asia/Tehran'"),
            "2026-11-30 20:30:00+00|2026-12-31 20:30:00+00");
  // The 31st is the month's last day: February (leap or not), April.
  EXPECT_EQ(Period("2027-02-15 00:00+00", "'monthly', day => 31"),
            "2027-01-31 00:00:00+00|2027-02-28 00:00:00+00");
  EXPECT_EQ(Period("2028-03-15 00:00+00", "'monthly', day => 31"),
            "2028-02-29 00:00:00+00|2028-03-31 00:00:00+00");
  EXPECT_EQ(Period("2027-04-30 12:00+00", "'monthly', day => 31"),
            "2027-04-30 00:00:00+00|2027-05-31 00:00:00+00");
  // Daily in Berlin across both DST changes of 2026: days of 23 and 25 h.
  EXPECT_EQ(
      Period("2026-03-29 12:00+00", "'daily', time_zone => 'Europe/Berlin'"),
      "2026-03-28 23:00:00+00|2026-03-29 22:00:00+00");
  EXPECT_EQ(
      Period("2026-10-25 12:00+00", "'daily', time_zone => 'Europe/Berlin'"),
      "2026-10-24 22:00:00+00|2026-10-25 23:00:00+00");
  // Weekly on Mondays (2026-11-27 is a Friday); yearly on 29 February.
  EXPECT_EQ(Period("2026-11-27 12:00+00", "'weekly', day => 1"),
            "2026-11-23 00:00:00+00|2026-11-30 00:00:00+00");
  EXPECT_EQ(Period("2027-03-01 00:00+00", "'yearly', day => 29, month => 2"),
            "2027-02-28 00:00:00+00|2028-02-29 00:00:00+00");
  // Rolling keeps the anchor's local time of day across a DST change: 10:00
  // in Berlin is 09:00 UTC in winter, 08:00 in summer.
  EXPECT_EQ(Period("2026-03-30 12:00+00",
                   "'rolling', every_days => 1, time_zone => 'Europe/Berlin', "
                   "anchor => '2026-03-01 10:00+01'"),
            "2026-03-30 08:00:00+00|2026-03-31 08:00:00+00");
  EXPECT_EQ(Period("2026-03-20 12:00+00",
                   "'rolling', every_days => 30, anchor => '2026-03-01 10:00'"),
            "2026-03-01 10:00:00+00|2026-03-31 10:00:00+00");
  // A boundary at 02:30, a time 29 March skips in Berlin: the instant is
  // still inside its period.
  EXPECT_EQ(Period("2026-03-29 01:15+00",
                   "'rolling', every_days => 1, time_zone => 'Europe/Berlin', "
                   "anchor => '2026-03-01 02:30+01'"),
            "2026-03-28 01:30:00+00|2026-03-29 01:30:00+00");
  // none has no period; the database-wide zone is the default.
  EXPECT_EQ(Period("2026-03-29 12:00+00", "'none'"), "|");
  Query("SELECT set_default_time_zone('America/New_York')");
  EXPECT_EQ(Period("2026-11-27 12:00+00", "'daily'"),
            "2026-11-27 05:00:00+00|2026-11-28 05:00:00+00");
}

TEST_F(SqlQuotaTest, BadResetSettingsAreRefusedNamingTheValue) {
  Query("SELECT add_user('alice')");
  ExpectError(Error("SELECT set_quota_reset('alice', 'montly')"), "22023",
              {"set_quota_reset (user 'alice')", "'montly'",
               "none, daily, weekly, monthly, yearly, rolling", "HINT"});
  ExpectError(Error("SELECT set_quota_reset('alice', 'weekly', day => 0)"),
              "22023", {"reset_day 1 (Monday) to 7 (Sunday), not 0"});
  ExpectError(Error("SELECT set_quota_reset('alice', 'monthly')"), "22023",
              {"monthly needs reset_day 1 to 31", "not NULL"});
  ExpectError(Error("SELECT set_quota_reset('alice', 'monthly', day => 32)"),
              "22023", {"not 32"});
  ExpectError(
      Error("SELECT set_quota_reset('alice', 'yearly', day => 31, month => 4)"),
      "22023", {"month 4 has (1 to 30), not 31"});
  ExpectError(Error("SELECT set_quota_reset('alice', 'rolling', "
                    "every_days => 30)"),
              "22023", {"rolling needs reset_anchor", "not NULL"});
  ExpectError(Error("SELECT set_quota_reset('alice', 'daily', day => 3)"),
              "22023", {"daily takes no reset_day (got 3)"});
  ExpectError(Error("SELECT set_quota_reset('alice', 'daily', "
                    "time_zone => 'Asia/Teheran')"),
              "22023",
              {"time zone 'Asia/Teheran' is not a time zone PostgreSQL knows",
               "pg_timezone_names"});
  // PostgreSQL would read 'UTC+3' as three hours west of UTC.
  ExpectError(Error("SELECT set_quota_reset('alice', 'daily', "
                    "time_zone => 'UTC+3')"),
              "22023", {"'UTC+3' is an offset or a POSIX rule"});
  ExpectError(Error("SELECT set_default_time_zone('+03:30')"), "22023",
              {"set_default_time_zone", "'+03:30'"});
  // Whatever writes the row: the trigger names the user.
  ExpectError(Error("UPDATE users SET reset_strategy = 'hourly'"), "22023",
              {"UPDATE on users (user 'alice')", "'hourly'"});
  ExpectError(Error("UPDATE users SET time_zone = 'Nowhere/City'"), "22023",
              {"'Nowhere/City'"});
  EXPECT_EQ(Query("SELECT reset_strategy, period_end FROM users"), "none|");
}

TEST_F(SqlQuotaTest, AnOverQuotaUserIsBackAtTheBoundaryWithoutAnyJob) {
  const std::string meter = "meter_" + database();
  const std::string operator_role = "operator_" + database();
  Query("CREATE ROLE " + meter + " LOGIN IN ROLE boxmeter_collector; " +
        "CREATE ROLE " + operator_role + " LOGIN IN ROLE boxmeter_operator; " +
        "SELECT grant_node('edge-1', '" + meter +
        "'); "
        "INSERT INTO inbounds (node, tag, type, listen_port) "
        "VALUES ('edge-1', 'vless-in', 'vless', 443); "
        "SELECT add_user('alice', 1000), add_user('bob'); "
        "SELECT link_user('alice', 'edge-1', 'vless-in'), "
        "       link_user('bob', 'edge-1', 'vless-in');");
  testing::Meter collector(Url(meter), "edge-1");
  collector.Commit({{kUser, "alice", 600, 600}}, DayMs(0));
  // The operator sets a daily reset in Tehran; the usage so far stays.
  EXPECT_EQ(Query("SELECT state, used_bytes, reset_strategy, time_zone, "
                  "next_reset = period_end, next_reset > now() "
                  "FROM set_quota_reset('alice', 'daily', "
                  "time_zone => 'Asia/Tehran')",
                  operator_role),
            "over_quota|1200|daily|Asia/Tehran|t|t");
  std::string before = Query("SELECT users_fingerprint('edge-1')");

  // The row as it is once today's boundary has passed: her period started
  // yesterday (or earlier) and ended at today's 00:00 Tehran. With no
  // commit and no job, alice is in a new period with nothing used, and the
  // fingerprint the collector polls moves.
  Query(
      "UPDATE users SET period_start = now() - interval '2 days', "
      "period_end = (SELECT period_start FROM quota_period('daily', now(), "
      "time_zone => 'Asia/Tehran')) WHERE name = 'alice'");
  // bob's weekly period (Sundays, UTC) ended too: the rollover computes
  // each rule's next period.
  Query(
      "SELECT set_quota_reset('bob', 'weekly', day => 7); "
      "UPDATE users SET period_start = now() - interval '8 days', "
      "period_end = (SELECT period_start FROM quota_period('weekly', now(), "
      "day => 7)) WHERE name = 'bob'");
  EXPECT_EQ(Query("SELECT state, used_bytes, period_start < now(), "
                  "period_end > now() FROM user_quota_status "
                  "WHERE name = 'alice'"),
            "active|0|t|t");
  // boxmeter-gen's login and a dashboard's see the same.
  const std::string gen = "gen_" + database();
  const std::string grafana = "grafana_" + database();
  Query("CREATE ROLE " + gen + " LOGIN IN ROLE boxmeter_generator; " +
        "CREATE ROLE " + grafana + " LOGIN IN ROLE boxmeter_readonly");
  EXPECT_EQ(Query("SELECT user_name FROM node_inbound_users ORDER BY 1", gen),
            "alice\nbob");
  EXPECT_EQ(Query("SELECT period_end > now(), time_zone FROM "
                  "user_quota_status WHERE name = 'bob'",
                  gen),
            "t|UTC");
  EXPECT_EQ(Query("SELECT state, used_bytes, time_zone, online FROM "
                  "user_quota_status WHERE name = 'alice'",
                  grafana),
            "active|0|Asia/Tehran|t");
  EXPECT_NE(Query("SELECT users_fingerprint('edge-1')"), before);

  // The collector's next commit (as its own login, which may read no user)
  // rolls her over before adding its traffic: the ended period keeps its
  // 1200 bytes, the new one has only this commit's.
  collector.Commit({{kUser, "alice", 50, 50}, {kUser, "bob", 7, 0}}, DayMs(0));
  EXPECT_EQ(Query("SELECT u.name, p.used_bytes, p.ended_by "
                  "FROM quota_periods p JOIN users u ON u.id = p.user_id "
                  "ORDER BY 1"),
            "alice|1200|rollover\nbob|0|rollover");
  EXPECT_EQ(Query("SELECT u.name, u.period_start = q.period_start, "
                  "u.period_end = q.period_end FROM users u, "
                  "quota_period(u.reset_strategy, now(), day => u.reset_day, "
                  "time_zone => u.time_zone) AS q ORDER BY 1"),
            "alice|t|t\nbob|t|t");
  EXPECT_EQ(Query("SELECT name, used_bytes, ended_by FROM user_quota_periods "
                  "ORDER BY name, period_start",
                  operator_role),
            "alice|1200|rollover\nalice|100|current\nbob|0|rollover\n"
            "bob|7|current");
  EXPECT_EQ(Query("SELECT state, used_bytes, lifetime_bytes, "
                  "period_start = (SELECT p.period_end FROM quota_periods p "
                  "WHERE p.user_id = s.id) "
                  "FROM user_quota_status s WHERE name = 'alice'"),
            "active|100|1300|t");
  EXPECT_EQ(Error("SELECT * FROM quota_periods", meter).sqlstate, "42501");

  // reset_usage ends the current period early and records it.
  Query("SELECT reset_usage('alice')", operator_role);
  EXPECT_EQ(Query("SELECT p.used_bytes, p.ended_by FROM quota_periods p "
                  "JOIN users u ON u.id = p.user_id WHERE u.name = 'alice' "
                  "ORDER BY p.period_start"),
            "1200|rollover\n100|reset");
  EXPECT_EQ(Query("SELECT used_bytes FROM user_quota_status "
                  "WHERE name = 'alice'"),
            "0");
}

TEST_F(SqlQuotaTest, FirstUseOnlineAndOnHold) {
  const std::string operator_role = "operator_" + database();
  const std::string grafana = "grafana_" + database();
  Query("CREATE ROLE " + operator_role + " LOGIN IN ROLE boxmeter_operator; " +
        "CREATE ROLE " + grafana + " LOGIN IN ROLE boxmeter_readonly; " +
        "SELECT add_user('alice'), add_user('bob'), add_user('carol'), "
        "add_user('dave', expires_at => now() + interval '1 day')");
  // alice: 30 days from her first byte, unless unused for a week. carol's
  // deadline has passed unused.
  EXPECT_EQ(Query("SELECT on_hold, expires_at = activate_by, first_seen "
                  "FROM set_on_hold('alice', interval '30 days', "
                  "activate_by => now() + interval '7 days')",
                  operator_role),
            "t|t|");
  Query(
      "SELECT set_on_hold('carol', interval '1 day', "
      "activate_by => now() - interval '1 second')");
  EXPECT_EQ(Query("SELECT name, state, on_hold, online FROM user_quota_status "
                  "ORDER BY name"),
            "alice|no_inbound|t|f\nbob|no_inbound|f|f\n"
            "carol|expired|t|f\ndave|no_inbound|f|f");

  meter("edge-1").Commit({{kUser, "alice", 10, 20}}, DayMs(0));
  meter("edge-2").Commit({{kUser, "alice", 1, 1}, {kUser, "bob", 5, 5}},
                         DayMs(0));
  EXPECT_EQ(Query("SELECT on_hold, first_seen <= last_seen, "
                  "expires_at = first_seen + interval '30 days', online "
                  "FROM user_quota_status WHERE name = 'alice'"),
            "f|t|t|t");
  EXPECT_EQ(Query("SELECT name, node FROM online_users ORDER BY 1, 2", grafana),
            "alice|edge-1\nalice|edge-2\nbob|edge-2");
  // The window is database-wide; bob's last traffic is older than 1 µs.
  Query("SELECT set_online_window(interval '1 microsecond')", operator_role);
  EXPECT_EQ(Query("SELECT count(*) FROM online_users"), "0");
  EXPECT_EQ(Query("SELECT online FROM user_quota_status WHERE name = 'bob'"),
            "f");

  // Off hold, alice keeps the expiry she has started as a fixed one.
  EXPECT_EQ(Query("SELECT on_hold, expires_at = first_seen + interval "
                  "'30 days', on_hold_for FROM clear_on_hold('alice')"),
            "f|t|");
  EXPECT_EQ(Query("SELECT expires_at IS NOT NULL FROM users "
                  "WHERE name = 'alice'"),
            "t");

  ExpectError(Error("SELECT set_on_hold('bob', interval '-1 day')"), "22023",
              {"set_on_hold", "'-1 days'", "user 'bob'", "positive"});
  ExpectError(Error("SELECT set_expiry('carol', now())"), "22023",
              {"user 'carol'", "on-hold", "clear_on_hold('carol')"});
  ExpectError(Error("UPDATE users SET activate_by = now() "
                    "WHERE name = 'dave'"),
              "22023", {"user 'dave'", "activate_by", "needs on_hold_for"});
  ExpectError(Error("SELECT set_online_window(interval '0')"), "22023",
              {"set_online_window", "'00:00:00'", "poll.interval"});

  // A new user under a name whose history was kept has not started.
  Query(
      "SELECT delete_user('bob', keep_history => true); "
      "SELECT add_user('bob'); "
      "SELECT set_on_hold('bob', interval '1 day')");
  EXPECT_EQ(Query("SELECT on_hold, first_seen, last_seen FROM "
                  "user_quota_status WHERE name = 'bob'"),
            "t||");
}

TEST_F(SqlQuotaTest, NodeMultipliersWeighQuotaUsageNeverTheTotals) {
  const std::string operator_role = "operator_" + database();
  Query("CREATE ROLE " + operator_role + " LOGIN IN ROLE boxmeter_operator; " +
        "SELECT add_user('alice', 10000)");
  meter("edge-1").Commit({{kUser, "alice", 500, 500}}, DayMs(0));
  meter("edge-2").Commit({{kUser, "alice", 500, 500}}, DayMs(0));
  // edge-2 counts double from now on: what alice used there so far does
  // not change.
  EXPECT_EQ(Query("SELECT set_node_multiplier('edge-2', 2)", operator_role),
            "node 'edge-2': quota usage counts its traffic x 2 from now on "
            "(was x 1); the usage so far of 1 user keeps its weight");
  auto usage = [&] {
    return Query(
        "SELECT used_bytes, lifetime_bytes, (SELECT total FROM user_traffic "
        "WHERE name = 'alice') FROM user_quota_status WHERE name = 'alice'");
  };
  EXPECT_EQ(usage(), "2000|2000|2000");
  meter("edge-2").Commit({{kUser, "alice", 100, 0}}, DayMs(0));
  meter("edge-1").Commit({{kUser, "alice", 100, 0}}, DayMs(0));
  EXPECT_EQ(usage(), "2300|2200|2200");
  // Half from now on; the doubled 100 bytes stay doubled.
  Query("SELECT set_node_multiplier('edge-2', 0.5)");
  meter("edge-2").Commit({{kUser, "alice", 100, 0}}, DayMs(0));
  EXPECT_EQ(usage(), "2350|2300|2300");
  // A new period starts from the weighted lifetime; the ended one keeps
  // its weighted usage.
  EXPECT_EQ(Query("SELECT used_bytes FROM reset_usage('alice')"), "0");
  meter("edge-1").Commit({{kUser, "alice", 100, 0}}, DayMs(0));
  meter("edge-2").Commit({{kUser, "alice", 100, 0}}, DayMs(0));
  EXPECT_EQ(usage(), "150|2500|2500");
  EXPECT_EQ(Query("SELECT used_bytes FROM quota_periods"), "2350");
  // Totals and history are never weighted.
  EXPECT_EQ(Query("SELECT sum(total) FROM user_node_hourly"), "2500");

  ExpectError(Error("SELECT set_node_multiplier('edge-2', -1)"), "22023",
              {"set_node_multiplier", "multiplier -1 for node 'edge-2'",
               "between 0 and 1000", "HINT"});
  ExpectError(Error("SELECT set_node_multiplier(' edge-2', 1)"), "22023",
              {"node name ' edge-2'"});
  EXPECT_EQ(
      Error("INSERT INTO node_multipliers VALUES ('edge-1', 9)", operator_role)
          .sqlstate,
      "42501");
}

// A user renamed onto a name whose history was kept takes that history
// into their lifetime only, exactly as a user added under the name does:
// neither its weighted bytes (edge-2 counts double) nor its first use
// count for them (0021).
TEST_F(SqlQuotaTest, RenameOntoKeptHistoryIsLikeAddingTheUser) {
  Query("SELECT set_node_multiplier('edge-2', 2); SELECT add_user('bob')");
  meter("edge-2").Commit({{kUser, "bob", 400, 600}}, DayMs(0));
  Query("SELECT delete_user('bob', keep_history => true)");
  auto bob = [&] {
    return Query(
        "SELECT used_bytes, lifetime_bytes, on_hold, first_seen IS NULL "
        "FROM user_quota_status WHERE name = 'bob'");
  };
  Query(
      "SELECT add_user('bob', 10000); "
      "SELECT set_on_hold('bob', interval '30 days')");
  EXPECT_EQ(bob(), "0|1000|t|t");
  Query("SELECT delete_user('bob', keep_history => true)");

  Query(
      "SELECT add_user('alice', 10000); "
      "SELECT set_on_hold('alice', interval '30 days')");
  Query("SELECT rename_user('alice', 'bob')");
  EXPECT_EQ(bob(), "0|1000|t|t");
  // Their own traffic counts, weighted, and starts their expiry.
  meter("edge-2").Commit({{kUser, "bob", 100, 0}}, DayMs(0, 1));
  EXPECT_EQ(bob(), "200|1100|f|f");
}

// Events are about users: a rename is no traffic, traffic still counted
// under an old name is the user's, and a quota of 0 never lets anyone back
// in (0023).
// sing-box counts a renamed user's old name until it reloads: that traffic
// is the user's, for first use (on hold) and online as for usage (0024).
TEST_F(SqlQuotaTest, OldNameTrafficIsTheUsersFirstAndLastTraffic) {
  Query(
      "SELECT add_user('carol', 1000); "
      "SELECT set_on_hold('carol', interval '30 days'); "
      "SELECT rename_user('carol', 'caroline')");
  meter("edge-1").Commit({{kUser, "carol", 100, 0}}, DayMs(0));
  EXPECT_EQ(Query("SELECT used_bytes, on_hold, online, first_seen = last_seen, "
                  "expires_at = first_seen + interval '30 days' "
                  "FROM user_quota_status WHERE name = 'caroline'"),
            "100|f|t|t|t");
}

// '1 month' on hold ends at one instant, whatever the reader's session
// time zone: on the calendar of the user's own zone (0024).
TEST_F(SqlQuotaTest, OnHoldExpiryIsOneInstantInEverySession) {
  Query(
      "SELECT set_default_time_zone('UTC'); SELECT add_user('dora'); "
      "SELECT set_on_hold('dora', interval '1 month'); "
      "UPDATE users SET created_at = '2026-10-01 00:00+00' "
      "WHERE name = 'dora'");
  meter("edge-1").Commit({{kUser, "dora", 10, 0}}, DayMs(0));
  Query(
      "UPDATE counters SET first_seen = '2026-10-30 22:00+00' "
      "WHERE name = 'dora'");
  auto expires = [&](const std::string& session_zone) {
    return Query("SET TIME ZONE '" + session_zone +
                 "'; SELECT (extract(epoch FROM expires_at) - extract(epoch "
                 "FROM timestamptz '2026-11-30 22:00+00'))::bigint "
                 "FROM user_quota_status WHERE name = 'dora'");
  };
  EXPECT_EQ(expires("UTC"), "0");
  EXPECT_EQ(expires("Asia/Tehran"), "0");
  // In Tehran her first byte came at 01:30 on 31 October: a month later
  // is 01:30 on 30 November there, 22:00 UTC on the 29th.
  Query("UPDATE users SET time_zone = 'Asia/Tehran' WHERE name = 'dora'");
  EXPECT_EQ(expires("America/New_York"), "-86400");
}

// What operators write to users directly: reset settings close an ended
// period first, as set_quota_reset does, and a time zone is a name, not an
// abbreviation (0025).
TEST_F(SqlQuotaTest, PeriodSettingsAsOperatorsWriteThem) {
  const std::string operator_role = "operator_" + database();
  Query("CREATE ROLE " + operator_role + " LOGIN IN ROLE boxmeter_operator; " +
        "SELECT add_user('alice', 1000); "
        "SELECT set_quota_reset('alice', 'daily')");
  meter("edge-1").Commit({{kUser, "alice", 300, 0}}, DayMs(0));
  // Her day ended and no commit has rolled it over yet.
  Query(
      "UPDATE users SET period_start = period_start - interval '1 day', "
      "period_end = now() - interval '1 hour' WHERE name = 'alice'");
  EXPECT_EQ(Query("SELECT used_bytes FROM user_quota_status"), "0");
  Query("UPDATE users SET time_zone = 'Europe/Berlin' WHERE name = 'alice'",
        operator_role);
  EXPECT_EQ(Query("SELECT used_bytes, period_end > now() "
                  "FROM user_quota_status"),
            "0|t");
  EXPECT_EQ(Query("SELECT used_bytes, ended_by FROM quota_periods"),
            "300|rollover");

  for (const std::string zone : {"PST", "PDT", "CEST", "MSK"}) {
    ExpectError(Error("SELECT set_quota_reset('alice', 'daily', time_zone => "
                      "'" +
                      zone + "')"),
                "22023",
                {"time zone '" + zone + "' is an abbreviation", "HINT"});
  }
  ExpectError(Error("SELECT set_default_time_zone('CEST')"), "22023",
              {"'CEST' is an abbreviation"});
  // The check gives the caller's time zone back.
  EXPECT_EQ(Query("SET TIME ZONE 'Asia/Tehran'; "
                  "SELECT boxmeter_time_zone_problem('Europe/Berlin') IS NULL, "
                  "current_setting('TimeZone')"),
            "t|Asia/Tehran");
}

// reset_all_usage records its instant only (0027): every user is in a new
// period at once, and each ended period is written, to the byte of what
// the call wrote before, by whatever closes that user's periods next: a
// commit for all of them, reset_usage or set_quota_reset for one, a plain
// UPDATE of the reset settings for one. A period that had ended by the
// calendar before the reset is closed first, as the call did.
TEST_F(SqlQuotaTest, ResetAllUsageEndsEveryPeriodAtItsInstant) {
  const std::string operator_role = "operator_" + database();
  Query("CREATE ROLE " + operator_role + " LOGIN IN ROLE boxmeter_operator; " +
        "INSERT INTO inbounds (node, tag, type, listen_port) "
        "VALUES ('edge-1', 'vless-in', 'vless', 443); "
        "SELECT add_user(n, 1000), link_user(n, 'edge-1', 'vless-in') "
        "  FROM unnest(ARRAY['alice', 'bob', 'carol', 'dave']) AS n; "
        "SELECT set_quota_reset('bob', 'daily')");
  meter("edge-1").Commit({{kUser, "alice", 600, 600},
                          {kUser, "bob", 300, 0},
                          {kUser, "carol", 70, 0},
                          {kUser, "dave", 5, 0}},
                         DayMs(0));
  EXPECT_EQ(Query("SELECT reset_all_usage()", operator_role), "4");
  const std::string at = "(SELECT reset_all_at FROM boxmeter_settings)";
  // bob's day had ended before the reset, and no commit had rolled it over
  // (the call rolls over the periods due, so this is set afterwards).
  Query(
      "UPDATE users SET period_start = now() - interval '2 days', "
      "period_end = " +
      at + " - interval '1 hour' WHERE name = 'bob'");

  // At once: nothing used, the period from the reset, alice eligible again.
  EXPECT_EQ(Query("SELECT string_agg(name || ':' || state || ':' || "
                  "used_bytes || ':' || (period_start = " +
                  at +
                  ") || ':' || lifetime_bytes, ' ' ORDER BY name) "
                  "FROM user_quota_status"),
            "alice:active:0:true:1200 bob:active:0:true:300 "
            "carol:active:0:true:70 dave:active:0:true:5");
  EXPECT_EQ(Query("SELECT count(*) FROM node_inbound_users"), "4");
  EXPECT_EQ(Query("SELECT count(*) FROM quota_periods"), "0");

  // One user's functions close that user's periods: bob's ended day first.
  Query("SELECT set_quota_reset('bob', 'daily')", operator_role);
  EXPECT_EQ(Query("SELECT p.used_bytes, p.ended_by, p.period_end = " + at +
                  " FROM quota_periods p ORDER BY p.period_start"),
            "300|rollover|f\n0|reset|t");
  // A plain UPDATE of carol's reset settings.
  Query(
      "UPDATE users SET reset_strategy = 'weekly', reset_day = 1 "
      "WHERE name = 'carol'",
      operator_role);
  EXPECT_EQ(Query("SELECT p.used_bytes, p.period_end = " + at +
                  " FROM quota_periods p JOIN users u ON u.id = p.user_id "
                  "WHERE u.name = 'carol'"),
            "70|t");
  EXPECT_EQ(Query("SELECT used_bytes FROM reset_usage('dave')", operator_role),
            "0");

  // The next commit writes the rest before it adds its traffic, which
  // counts in the new period.
  meter("edge-1").Commit({{kUser, "alice", 50, 0}}, DayMs(0));
  EXPECT_EQ(Query("SELECT string_agg(u.name || ':' || p.used_bytes || ':' || "
                  "p.ended_by || ':' || (p.period_end = " +
                  at +
                  "), ' ' ORDER BY u.name, p.period_start) "
                  "FROM quota_periods p JOIN users u ON u.id = p.user_id"),
            "alice:1200:reset:true bob:300:rollover:false bob:0:reset:true "
            "carol:70:reset:true dave:5:reset:true dave:0:reset:false");
  EXPECT_EQ(Query("SELECT used_bytes, period_start = " + at +
                  " FROM user_quota_status WHERE name = 'alice'"),
            "50|t");
  EXPECT_EQ(Query("SELECT count(*) FROM users WHERE period_start < " + at),
            "0");

  // A second call with the first one's periods still unwritten writes
  // them: each call ends a period of its own.
  Query("SELECT reset_all_usage()", operator_role);
  Query("SELECT reset_all_usage()", operator_role);
  EXPECT_EQ(Query("SELECT p.used_bytes FROM quota_periods p JOIN users u "
                  "ON u.id = p.user_id WHERE u.name = 'alice' "
                  "ORDER BY p.period_start"),
            "1200\n50");
  meter("edge-1").Commit({{kUser, "alice", 1, 0}}, DayMs(0));
  EXPECT_EQ(Query("SELECT string_agg(p.used_bytes::text, ',' "
                  "ORDER BY p.period_start) FROM quota_periods p "
                  "JOIN users u ON u.id = p.user_id WHERE u.name = 'alice'"),
            "1200,50,0");
  EXPECT_EQ(Query("SELECT used_bytes FROM user_quota_status "
                  "WHERE name = 'alice'"),
            "1");
}

// A period never starts before the one it follows ends. Switched back to
// the database's old time zone after a period of the new one had ended,
// the rollover started the next period at the old zone's midnight, the
// start of the ended period too; the period after it then found its
// quota_periods key taken and its bytes were in no row (RELIABILITY,
// "Found, not fixed", before 0027).
TEST_F(SqlQuotaTest, APeriodStartsNoEarlierThanTheLastOneEnded) {
  Query(
      "SELECT set_default_time_zone('Asia/Tokyo'); "
      "SELECT add_user('alice'); "
      "SELECT set_quota_reset('alice', 'daily')");
  meter("edge-1").Commit({{kUser, "alice", 300, 0}}, DayMs(0));
  // Her Tokyo day began at UTC midnight (she was last rolled over then,
  // before the zone moved) and ended a moment ago, with no commit since.
  Query(
      "UPDATE users SET period_start = date_trunc('day', now()), "
      "period_end = date_trunc('day', now()) "
      "+ (now() - date_trunc('day', now())) / 2 WHERE name = 'alice'");
  Query("SELECT set_default_time_zone('UTC')");
  meter("edge-1").Commit({{kUser, "alice", 50, 0}}, DayMs(0));
  // Her UTC day ends (as a commit finds it after midnight).
  Query("UPDATE users SET period_end = now() WHERE name = 'alice'");
  meter("edge-1").Commit({{kUser, "alice", 7, 0}}, DayMs(0));
  EXPECT_EQ(Query("SELECT string_agg(used_bytes::text, ',' "
                  "ORDER BY period_start) FROM quota_periods"),
            "300,50");
  EXPECT_EQ(Query("SELECT count(*) FROM quota_periods p JOIN quota_periods q "
                  "ON q.user_id = p.user_id AND q.period_start > "
                  "p.period_start AND q.period_start < p.period_end"),
            "0");
  EXPECT_EQ(Query("SELECT used_bytes, lifetime_bytes FROM user_quota_status"),
            "7|357");
}

// A commit whose transaction began before a reset_all_usage does not see
// it (its now() is earlier): its traffic counts in the period the reset
// ends, and the next commit writes that period with it.
TEST_F(SqlQuotaTest, ACommitBegunBeforeAResetCountsInTheEndedPeriod) {
  Query(
      "INSERT INTO nodes (name) VALUES ('edge-0'); "
      "SELECT add_user('alice', 1000)");
  meter("edge-1").Commit({{kUser, "alice", 100, 0}}, DayMs(0));
  // edge-0's commit, as PgStore writes one: its sequence first, then the
  // traffic.
  pqxx::connection late(Url());
  pqxx::work commit(late);
  commit.exec("SELECT now()");
  Query("SELECT reset_all_usage()");
  commit.exec(
      "UPDATE nodes SET commit_seq = commit_seq + 1 WHERE name = 'edge-0'; "
      "INSERT INTO counters (node, kind, name, uplink, instance_start) "
      "VALUES ('edge-0', 'user', 'alice', 20, now())");
  commit.commit();
  EXPECT_EQ(Query("SELECT used_bytes, lifetime_bytes FROM user_quota_status"),
            "0|120");
  EXPECT_EQ(Query("SELECT count(*) FROM quota_periods"), "0");
  meter("edge-1").Commit({{kUser, "alice", 3, 0}}, DayMs(0));
  EXPECT_EQ(Query("SELECT used_bytes, ended_by FROM quota_periods"),
            "120|reset");
  EXPECT_EQ(Query("SELECT used_bytes FROM user_quota_status"), "3");
}

TEST_F(SqlQuotaTest, UsageEventsFollowRenamesAndQuotaZero) {
  Query(
      "SELECT add_user('alice', 1000), add_user('bob', 1000), "
      "add_user('zed', 0); SELECT set_usage_events(true)");
  auto events = [&] {
    return Query(
        "SELECT user_name, kind, threshold, used_bytes FROM usage_events "
        "ORDER BY id");
  };
  // Renamed there and back at 600 of 1000: nothing crossed.
  meter("edge-1").Commit({{kUser, "alice", 600, 0}}, DayMs(0));
  Query(
      "SELECT rename_user('alice', 'alicia'); "
      "SELECT rename_user('alicia', 'alice')");
  EXPECT_EQ(events(), "alice|first_traffic|0|600");
  EXPECT_EQ(Query("SELECT used_bytes FROM user_quota_status "
                  "WHERE name = 'alice'"),
            "600");
  // bob is robert now, but sing-box still counts "bob" until it reloads.
  Query("SELECT rename_user('bob', 'robert')");
  meter("edge-1").Commit({{kUser, "bob", 900, 0}}, DayMs(0));
  EXPECT_EQ(Query("SELECT user_name, kind, threshold, used_bytes "
                  "FROM usage_events WHERE user_name = 'robert' ORDER BY kind"),
            "robert|first_traffic|0|900\nrobert|threshold|80|900");
  // zed's daily period ends: with a quota of 0 he is not back.
  Query(
      "SELECT set_quota_reset('zed', 'daily'); "
      "UPDATE users SET period_start = now() - interval '2 days', "
      "period_end = (SELECT period_start FROM quota_period('daily', "
      "now())) WHERE name = 'zed'");
  meter("edge-1").Commit({{kUser, "alice", 1, 0}}, DayMs(0));
  EXPECT_EQ(Query("SELECT count(*) FROM quota_periods p JOIN users u "
                  "ON u.id = p.user_id WHERE u.name = 'zed'"),
            "1");
  EXPECT_EQ(Query("SELECT count(*) FROM usage_events WHERE user_name = 'zed'"),
            "0");
}

TEST_F(SqlQuotaTest, UsageEventsAreRecordedOncePerPeriodInTheCommit) {
  const std::string meter = "meter_" + database();
  const std::string operator_role = "operator_" + database();
  Query("CREATE ROLE " + meter + " LOGIN IN ROLE boxmeter_collector; " +
        "CREATE ROLE " + operator_role + " LOGIN IN ROLE boxmeter_operator; " +
        "SELECT grant_node('edge-1', '" + meter +
        "'); "
        "SELECT add_user('alice', 1000), add_user('bob');");
  EXPECT_EQ(Query("SELECT set_usage_events(true)", operator_role),
            "usage events are recorded from the next commit on");
  testing::Meter collector(Url(meter), "edge-1");
  auto events = [&] {
    return Query(
        "SELECT user_name, kind, threshold, used_bytes FROM usage_events "
        "ORDER BY id");
  };
  collector.Commit({{kUser, "alice", 250, 250}}, DayMs(0));
  EXPECT_EQ(events(), "alice|first_traffic|0|500");
  // 850 of 1000 crosses 80%; 900 crosses nothing; 1100 reaches the quota.
  collector.Commit({{kUser, "alice", 350, 0}}, DayMs(0));
  collector.Commit({{kUser, "alice", 50, 0}}, DayMs(0));
  collector.Commit({{kUser, "alice", 200, 0}, {kUser, "bob", 1, 0}}, DayMs(0));
  EXPECT_EQ(events(),
            "alice|first_traffic|0|500\nalice|threshold|80|850\n"
            "alice|quota_reached|100|1100\nbob|first_traffic|0|1");
  EXPECT_EQ(Query("SELECT event->>'kind', event->>'user', event->>'threshold' "
                  "FROM usage_event_json WHERE id = 2",
                  operator_role),
            "threshold|alice|80");

  // Her period ends; the commit that rolls her over records that she is
  // back, and the thresholds count again in the new period.
  Query(
      "SELECT set_quota_reset('alice', 'daily'); "
      "UPDATE users SET period_start = now() - interval '2 days', "
      "period_end = (SELECT period_start FROM quota_period('daily', "
      "now())) WHERE name = 'alice'");
  collector.Commit({{kUser, "alice", 900, 0}}, DayMs(0));
  EXPECT_EQ(Query("SELECT kind, threshold, used_bytes FROM usage_events "
                  "WHERE id > 4 ORDER BY id"),
            "quota_reset|0|0\nthreshold|80|900");

  // Off: commits record nothing more.
  Query("SELECT set_usage_events(false)", operator_role);
  collector.Commit({{kUser, "alice", 200, 0}}, DayMs(0));
  EXPECT_EQ(Query("SELECT count(*) FROM usage_events"), "6");
  EXPECT_EQ(Error("SELECT * FROM usage_events", meter).sqlstate, "42501");
}

// The operator functions that change many users take them in id order, as
// a commit's rollover does (boxmeter_roll_periods locks the users due in id
// order). A period may end while such a call runs: the next commit then
// holds the first of those users and wants the others; a call that took
// users in any other order held some of them while waiting for the first,
// and PostgreSQL aborted one side ("deadlock detected"). Since 0027 a
// reset_all_usage not yet written is written the same way, by the next
// commit or the next call: `before` leaves one pending.
struct ManyUsersCall {
  const char* before;  // run and committed first; "" for nothing
  const char* call;
};

class OperatorLockOrderTest
    : public SqlTest,
      public ::testing::WithParamInterface<ManyUsersCall> {};

TEST_P(OperatorLockOrderTest, WaitsForACommitsRolloverWithoutDeadlock) {
  Query(
      "INSERT INTO users (name, quota_bytes) SELECT 'u' || i, 1000000 FROM "
      "generate_series(1, 200) AS i; "
      "INSERT INTO nodes (name) VALUES ('edge-1'); "
      "INSERT INTO counters (node, kind, name, uplink, instance_start) "
      "SELECT 'edge-1', 'user', name, 10, now() FROM users; "
      // Periods that follow the database's time zone; and the odd ids
      // (u1's among them) after the even ones on disk, so that a scan's
      // order is not the ids'.
      "UPDATE users SET reset_strategy = 'daily'; "
      "UPDATE users SET note = 'moved' WHERE id % 2 = 1; "
      "ANALYZE");
  if (*GetParam().before != '\0') Query(GetParam().before);
  pqxx::connection collector(Url());
  pqxx::work commit(collector);
  // The rollover's first user.
  commit.exec("SELECT 1 FROM users WHERE name = 'u1' FOR UPDATE");
  auto call = std::async(std::launch::async,
                         [&] { return QueryAt(Url(), GetParam().call); });
  if (!AwaitLockWaiters(1, std::chrono::seconds(30))) {
    commit.abort();  // lets the call end, so the future's end cannot hang
    FAIL() << GetParam().call << " never waited for the commit";
  }
  // The rollover's other users, in id order.
  EXPECT_NO_THROW(commit.exec(
      "SELECT 1 FROM users WHERE name <> 'u1' ORDER BY id FOR UPDATE"));
  commit.commit();
  EXPECT_NE(call.get(), "<error>");
}

void PrintTo(const ManyUsersCall& call, std::ostream* out) {
  *out << call.call;
}

INSTANTIATE_TEST_SUITE_P(
    ManyUsers, OperatorLockOrderTest,
    ::testing::Values(
        // A second call writes the first one's periods.
        ManyUsersCall{"SELECT reset_all_usage()", "SELECT reset_all_usage()"},
        // So does another collector's commit.
        ManyUsersCall{"SELECT reset_all_usage()",
                      "UPDATE nodes SET commit_seq = commit_seq + 1"},
        ManyUsersCall{"", "SELECT set_node_multiplier('edge-1', 2)"},
        ManyUsersCall{"", "SELECT set_default_time_zone('Asia/Tokyo')"}));

}  // namespace
}  // namespace boxmeter
