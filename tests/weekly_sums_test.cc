// The weekly sums top_users reads (schema/0028_weekly_sums.sql) against a
// real PostgreSQL: top_users gives what the hourly rows sum, whatever the
// range and session time zone; every way an hourly row before the span
// changes reaches the sums; and a roll waits for a writer that saw the old
// span.
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <pqxx/pqxx>
#include <string>
#include <thread>
#include <vector>

#include "sql_fixture.h"

namespace boxmeter {
namespace {

using namespace std::chrono_literals;
using testing::SqlError;
using testing::SqlTest;

constexpr CounterKind kUser = CounterKind::kUser;

// top_users(from, to) as 0026 computed it, from counter_hourly alone: what
// the weekly sums must not change.
std::string HourlyTopUsers(const std::string& from, const std::string& to) {
  return "SELECT rank() OVER (ORDER BY t.total DESC), t.name, t.uplink, "
         "t.downlink, t.total FROM (SELECT c.user_name AS name, "
         "sum(h.uplink)::bigint AS uplink, sum(h.downlink)::bigint AS "
         "downlink, (sum(h.uplink) + sum(h.downlink))::bigint AS total "
         "FROM counter_hourly h JOIN boxmeter_user_counters c "
         "ON c.id = h.counter_id WHERE h.hour >= " +
         from + " AND h.hour < " + to +
         " GROUP BY c.user_name) t ORDER BY t.total DESC, t.name";
}

class WeeklySumsTest : public SqlTest {
 protected:
  // Six weeks of history for three users on two nodes: a commit every
  // third day at two hours, different traffic each time.
  void CommitHistory() {
    for (int day = -42; day <= 0; day += 3) {
      int64_t n = 43 + day;
      meter("edge-1").Commit(
          {{kUser, "alice", n, 2 * n}, {kUser, "bob", 3 * n, n}},
          DayMs(day, 5));
      meter("edge-2").Commit({{kUser, "alice", 7, 1}, {kUser, "carol", n, n}},
                             DayMs(day, 22));
    }
  }

  // Sums every day that has ended, as the collector's upkeep does.
  void RollAll() {
    Query(
        "DO $$ BEGIN WHILE roll_history_day() IS NOT NULL LOOP END LOOP; "
        "END $$");
  }

  // The (counter, week) pairs whose sums differ from the hourly rows
  // before the span's end, one per line: empty when they agree.
  std::string Drift() {
    return Query(
        "WITH s AS (SELECT through FROM counter_weekly_span), "
        "hours AS (SELECT h.counter_id, boxmeter_week_of(h.hour) AS week, "
        "sum(h.uplink) AS uplink, sum(h.downlink) AS downlink, "
        "count(*) AS hours FROM counter_hourly h, s WHERE h.hour < s.through "
        "GROUP BY 1, 2) "
        "SELECT concat_ws(' ', coalesce(w.counter_id, h.counter_id), "
        "coalesce(w.week, h.week), w.uplink, h.uplink, w.hours, h.hours) "
        "FROM counter_weekly w FULL JOIN hours h "
        "ON h.counter_id = w.counter_id AND h.week = w.week "
        "WHERE (w.uplink, w.downlink, w.hours) IS DISTINCT FROM "
        "(h.uplink, h.downlink, h.hours) ORDER BY 1");
  }
};

TEST_F(WeeklySumsTest, TopUsersGivesWhatTheHoursSum) {
  CommitHistory();
  // Traffic in the last hour the sums hold, which a range that ends an hour
  // before them leaves out.
  meter("edge-1").Commit({{kUser, "bob", 500, 500}}, DayMs(-1, 23));
  RollAll();
  EXPECT_EQ(Query("SELECT through = date_trunc('day', now(), 'UTC') "
                  "FROM counter_weekly_span"),
            "t");
  EXPECT_EQ(Query("SELECT count(DISTINCT week) >= 6 FROM counter_weekly"), "t");
  EXPECT_EQ(Drift(), "");
  const std::string monday = "boxmeter_week_of(now())";
  const std::vector<std::pair<std::string, std::string>> ranges = {
      {"now() - interval '30 days'", "now()"},
      {"now() - interval '60 days'", "now() + interval '1 day'"},
      {monday + " - interval '21 days'", monday},
      {monday + " - interval '21 days'", monday + " - interval '1 hour'"},
      {monday + " - interval '20 days 23 hours'", monday},
      {monday + " - interval '35 days 30 minutes'",
       monday + " - interval '6 days 30 minutes'"},
      {"current_date - 3", "now()"},
      // Up to the span's end, and an hour short of it: the week summed up
      // to `through` is read only when the range holds all it sums.
      {"now() - interval '30 days'", "date_trunc('day', now(), 'UTC')"},
      {"now() - interval '30 days'",
       "date_trunc('day', now(), 'UTC') - interval '1 hour'"},
      {"'-infinity'", "'infinity'"},
  };
  for (const char* zone : {"UTC", "America/Los_Angeles", "Asia/Kathmandu"}) {
    for (const auto& [from, to] : ranges) {
      SCOPED_TRACE(std::string(zone) + ": [" + from + ", " + to + ")");
      std::string set_zone = std::string("SET TIME ZONE '") + zone + "'; ";
      std::string expected = Query(set_zone + HourlyTopUsers(from, to));
      EXPECT_NE(expected, "");
      EXPECT_EQ(
          Query(set_zone + "SELECT * FROM top_users(" + from + ", " + to + ")"),
          expected);
    }
  }

  // It does read the sums: a week changed there shows in a range that
  // holds the whole week, and not in one that holds only part of it.
  Query("UPDATE counter_weekly SET uplink = uplink + 1000 WHERE week = " +
        monday +
        " - interval '14 days' AND counter_id = (SELECT id FROM "
        "counters WHERE node = 'edge-2' AND name = 'carol')");
  EXPECT_EQ(
      Query("SELECT total FROM top_users(" + monday +
            " - interval '14 days', " + monday + ") WHERE name = 'carol'"),
      Query("SELECT total + 1000 FROM (" +
            HourlyTopUsers(monday + " - interval '14 days'", monday) +
            ") t WHERE name = 'carol'"));
  EXPECT_EQ(
      Query("SELECT * FROM top_users(" + monday +
            " - interval '13 days 23 hours', " + monday + ")"),
      Query(HourlyTopUsers(monday + " - interval '13 days 23 hours'", monday)));
}

TEST_F(WeeklySumsTest, EveryChangeToSummedHoursReachesTheSums) {
  // Old days in partitions of their own (as in an installation older than
  // the legacy partition), so that retention drops some.
  Query(
      "DROP TABLE counter_hourly_legacy; "
      "UPDATE history_retention SET keep = '1000 days'");
  Query("SELECT add_user('alice'), add_user('bob'), add_user('carol')");
  CommitHistory();
  Query("SELECT ensure_history_partitions(7)");
  Query("UPDATE history_retention SET keep = '1 hour'");
  // The collector's login may roll; a reader may not.
  EXPECT_NE(Query("SELECT roll_history_day()", CollectorLogin("edge-1")), "");
  std::string grafana = "grafana_" + database();
  Query("CREATE ROLE " + grafana + " LOGIN IN ROLE boxmeter_readonly");
  EXPECT_EQ(Error("SELECT roll_history_day()", grafana).sqlstate, "42501");
  RollAll();
  ASSERT_EQ(Drift(), "");
  std::string before = Query("SELECT sum(uplink) FROM counter_weekly");

  // A commit for an hour already summed (a collector whose clock was
  // behind), twice: an insert, then an update of that row.
  meter("edge-1").Commit({{kUser, "alice", 100, 100}}, DayMs(-20, 7));
  meter("edge-1").Commit({{kUser, "alice", 10, 10}}, DayMs(-20, 7));
  EXPECT_EQ(Drift(), "");
  EXPECT_EQ(Query("SELECT sum(uplink) - " + before + " FROM counter_weekly"),
            "110");

  // A rename moves the rows to the new name's counters, if it has any;
  // deleting a user with their history deletes theirs.
  Query("SELECT rename_user('bob', 'robert')");
  EXPECT_EQ(Drift(), "");
  // Onto a name with counters of its own (traffic before the user
  // existed): the rows merge.
  meter("edge-1").Commit({{kUser, "dave", 1, 1}}, DayMs(-19, 3));
  meter("edge-1").Commit({{kUser, "dave", 1, 1}}, DayMs(-20, 7));
  Query("SELECT rename_user('alice', 'dave')");
  EXPECT_EQ(Drift(), "");
  Query("SELECT delete_user('carol', false)");
  EXPECT_EQ(Drift(), "");
  EXPECT_EQ(Query("SELECT count(*) FROM counter_weekly w JOIN counters c "
                  "ON c.id = w.counter_id WHERE c.name = 'carol'"),
            "0");

  // Retention: whole days dropped (prune_history takes them out of the
  // sums first), the straddling day's rows deleted in batches.
  PruneResult result;
  Status status = meter("edge-1").store().PruneHistory(
      std::chrono::hours(10 * 24 + 12), 10s, &result);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_GT(result.partitions_dropped, 0);
  EXPECT_TRUE(result.summed);
  EXPECT_EQ(Drift(), "");

  // A commit for a day without a partition (two days ago: no commit had
  // one) lands in the default one, and
  // ensure_history_partitions moves it out: the rows stay, so do the sums.
  meter("edge-1").Commit({{kUser, "bob", 5, 5}}, DayMs(-2, 4));
  EXPECT_EQ(Query("SELECT count(*) FROM counter_hourly_default"), "1");
  EXPECT_EQ(Drift(), "");
  Query("UPDATE history_retention SET keep = '400 days'");
  EXPECT_EQ(Query("SELECT ensure_history_partitions(7)"), "1");
  EXPECT_EQ(Query("SELECT count(*) FROM counter_hourly_default"), "0");
  EXPECT_EQ(Drift(), "");

  for (const char* from : {"now() - interval '30 days'", "'-infinity'"}) {
    EXPECT_EQ(
        Query(std::string("SELECT * FROM top_users(") + from + ", now())"),
        Query(HourlyTopUsers(from, "now()")));
  }
}

// The span never moves back: the sums already hold the hours before it. A
// database clock stepped back after a roll (here: a span a day ahead of
// today) leaves it where it is, and later rows before it still count.
TEST_F(WeeklySumsTest, TheSpanNeverMovesBackWhenTheClockDoes) {
  meter("edge-1").Commit({{kUser, "alice", 1, 1}}, DayMs(-3, 1));
  RollAll();
  Query(
      "UPDATE counter_weekly_span SET through = "
      "date_trunc('day', now(), 'UTC') + interval '1 day'");
  EXPECT_EQ(Query("SELECT roll_history_day()"), "");
  EXPECT_EQ(Query("SELECT through = date_trunc('day', now(), 'UTC') + "
                  "interval '1 day' FROM counter_weekly_span"),
            "t");
  meter("edge-1").Commit({{kUser, "alice", 5, 5}}, DayMs(0, 1));
  EXPECT_EQ(Drift(), "");
  EXPECT_EQ(Query("SELECT sum(uplink) FROM counter_weekly"), "6");
}

// A writer whose trigger saw the old span holds it FOR SHARE until it
// commits; a roll waits for it, then sums the writer's rows with the day.
TEST_F(WeeklySumsTest, ARollWaitsForAWriterThatSawTheOldSpan) {
  meter("edge-1").Commit({{kUser, "alice", 1, 1}}, DayMs(-3, 1));
  RollAll();
  // Yesterday is summed; take the span back one day, as if it were not.
  Query(
      "DELETE FROM counter_weekly; UPDATE counter_weekly_span SET through "
      "= date_trunc('day', now(), 'UTC') - interval '1 day'");
  Query(
      "INSERT INTO counter_weekly SELECT counter_id, "
      "boxmeter_week_of(hour), sum(uplink), sum(downlink), count(*) "
      "FROM counter_hourly WHERE hour < (SELECT through FROM "
      "counter_weekly_span) GROUP BY 1, 2");
  ASSERT_EQ(Drift(), "");

  pqxx::connection writer(Url());
  pqxx::work write(writer);
  write.exec(
      "INSERT INTO counter_hourly SELECT id, date_trunc('day', now(), 'UTC') "
      "- interval '20 hours', 40, 2 FROM counters WHERE name = 'alice'");
  auto rolled = std::async(std::launch::async, [this] {
    return Query(
        "SELECT roll_history_day() = date_trunc('day', now(), "
        "'UTC') - interval '1 day'");
  });
  // The roll waits on the span's row lock (a bounded wait for that state).
  std::string waiting;
  for (int i = 0; i < 500 && waiting != "1"; ++i) {
    waiting = Query(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
        "'Lock' AND query LIKE '%roll_history_day%' AND datname = "
        "current_database()");
    if (waiting != "1") std::this_thread::sleep_for(10ms);
  }
  ASSERT_EQ(waiting, "1");
  EXPECT_EQ(rolled.wait_for(0s), std::future_status::timeout);
  write.commit();
  EXPECT_EQ(rolled.get(), "t");
  EXPECT_EQ(Drift(), "");
  EXPECT_EQ(Query("SELECT sum(uplink) FROM counter_weekly"), "41");
}

}  // namespace
}  // namespace boxmeter
