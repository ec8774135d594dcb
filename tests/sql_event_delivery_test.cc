// Delivering usage events (schema/0013_event_delivery.sql) through PgStore
// as a collector's login role: events in id order as usage_event_json has
// them, marking once and idempotently, one deliverer at a time by the lease,
// and the errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "sql_fixture.h"

namespace boxmeter {
namespace {

using namespace std::chrono_literals;
using testing::SqlTest;

constexpr CounterKind kUser = CounterKind::kUser;

class SqlEventDeliveryTest : public SqlTest {
 protected:
  void SetUp() override {
    SqlTest::SetUp();
    if (HasFatalFailure()) return;
    meter_ = "meter_" + database();
    other_meter_ = "meter2_" + database();
    Query("CREATE ROLE " + meter_ + " LOGIN IN ROLE boxmeter_collector; " +
          "CREATE ROLE " + other_meter_ +
          " LOGIN IN ROLE boxmeter_collector; " +
          "SELECT grant_node('edge-1', '" + meter_ +
          "'); SELECT grant_node('edge-2', '" + other_meter_ +
          "'); SELECT add_user('alice', 1000); SELECT set_usage_events(true);");
  }

  // The ids of `events`, in order.
  static std::vector<int64_t> Ids(const std::vector<UsageEvent>& events) {
    std::vector<int64_t> ids;
    for (const UsageEvent& event : events) ids.push_back(event.id);
    return ids;
  }

  std::string meter_, other_meter_;
};

TEST_F(SqlEventDeliveryTest, EventsComeInIdOrderAndAreMarkedOnce) {
  testing::Meter collector(Url(meter_), "edge-1");
  // First traffic, then 80% and 100% of her quota.
  collector.Commit({{kUser, "alice", 250, 250}}, DayMs(0));
  collector.Commit({{kUser, "alice", 600, 0}}, DayMs(0));
  PgStore& store = collector.store();
  std::vector<UsageEvent> events;
  Status read = store.ReadUndeliveredEvents(100, 10s, &events);
  ASSERT_TRUE(read.ok()) << read.message();
  ASSERT_EQ(Ids(events), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(events[1].json,
            Query("SELECT event::text FROM usage_event_json WHERE id = 2"));
  EXPECT_NE(events[1].json.find("\"kind\": \"threshold\""), std::string::npos)
      << events[1].json;
  // At most max_events, the oldest first.
  ASSERT_TRUE(store.ReadUndeliveredEvents(1, 10s, &events).ok());
  EXPECT_EQ(Ids(events), (std::vector<int64_t>{1}));

  ASSERT_TRUE(store.MarkEventDelivered(1, 10s).ok());
  std::string delivered_at =
      Query("SELECT delivered_at FROM usage_events WHERE id = 1");
  ASSERT_FALSE(delivered_at.empty());
  // Again (a redelivery after a crash): nothing changes.
  Status again = store.MarkEventDelivered(1, 10s);
  EXPECT_TRUE(again.ok()) << again.message();
  EXPECT_EQ(Query("SELECT delivered_at FROM usage_events WHERE id = 1"),
            delivered_at);
  ASSERT_TRUE(store.ReadUndeliveredEvents(100, 10s, &events).ok());
  EXPECT_EQ(Ids(events), (std::vector<int64_t>{2, 3}));

  Status unknown = store.MarkEventDelivered(99, 10s);
  EXPECT_FALSE(unknown.ok());
  EXPECT_NE(unknown.message().find(
                "mark_usage_event_delivered: no usage event has id 99"),
            std::string::npos)
      << unknown.message();
  EXPECT_NE(unknown.message().find("marking usage event 99 delivered"),
            std::string::npos)
      << unknown.message();
}

TEST_F(SqlEventDeliveryTest, OneNodeDeliversUntilItsLeaseLapses) {
  testing::Meter collector(Url(meter_), "edge-1");
  collector.Commit({{kUser, "alice", 100, 0}}, DayMs(0));
  PgStore other(Url(other_meter_), "edge-2");
  std::vector<UsageEvent> events;
  ASSERT_TRUE(collector.store().ReadUndeliveredEvents(10, 1s, &events).ok());
  EXPECT_EQ(Ids(events), (std::vector<int64_t>{1}));
  EXPECT_EQ(Query("SELECT holder FROM usage_event_delivery"), "edge-1");
  // edge-2 gets none while edge-1's lease is live, even for the event
  // edge-1 has not marked.
  ASSERT_TRUE(other.ReadUndeliveredEvents(10, 1s, &events).ok());
  EXPECT_TRUE(events.empty());
  // Once it lapses, edge-2 takes over and gets what is left.
  Query(
      "UPDATE usage_event_delivery SET lease_expires = now() - "
      "interval '1 second'");
  ASSERT_TRUE(other.ReadUndeliveredEvents(10, 1s, &events).ok());
  EXPECT_EQ(Ids(events), (std::vector<int64_t>{1}));
  EXPECT_EQ(Query("SELECT holder FROM usage_event_delivery"), "edge-2");
}

TEST_F(SqlEventDeliveryTest, TheCollectorRoleOnlyUsesTheFunctions) {
  for (const char* sql : {
           "SELECT * FROM usage_events",
           "UPDATE usage_events SET delivered_at = now()",
           "UPDATE usage_event_delivery SET holder = 'x'",
           "SELECT boxmeter_event_delivery_arguments('x', 'y', '1s')",
       }) {
    SCOPED_TRACE(sql);
    EXPECT_EQ(Error(sql, meter_).sqlstate, "42501");
  }
  // Another role may not claim or mark at all.
  Query("CREATE ROLE stranger_" + database() + " LOGIN");
  EXPECT_EQ(Error("SELECT * FROM claim_usage_events('x', 1, '1s')",
                  "stranger_" + database())
                .sqlstate,
            "42501");
}

// schema/0014_time_events.sql: the deliverer's claim records what time
// raised, once each, and nothing older than a day.
TEST_F(SqlEventDeliveryTest, TimeRaisesExpirySoonExpiredAndIdleOnceEach) {
  testing::Meter collector(Url(meter_), "edge-1");
  Query(
      "SELECT add_user('bob'), add_user('carol'), add_user('dave'), "
      "add_user('erin'); "
      "SELECT set_expiry('bob', now() + interval '2 days'); "
      "SELECT set_expiry('carol', now() - interval '1 hour'); "
      "SELECT set_expiry('dave', now() - interval '3 days')");
  collector.Commit({{kUser, "alice", 10, 0}, {kUser, "erin", 10, 0}}, DayMs(0));
  // alice's last traffic 25 hours ago, erin's 3 days ago.
  Query(
      "UPDATE counters SET last_seen = now() - interval '25 hours' "
      "WHERE name = 'alice'; "
      "UPDATE counters SET last_seen = now() - interval '3 days' "
      "WHERE name = 'erin'");
  auto timed = [&] {
    return Query(
        "SELECT user_name, kind, threshold FROM usage_events "
        "WHERE kind IN ('expiry_soon', 'expired', 'idle') ORDER BY id");
  };
  std::vector<UsageEvent> events;
  ASSERT_TRUE(collector.store().ReadUndeliveredEvents(100, 10s, &events).ok());
  EXPECT_EQ(timed(), "bob|expiry_soon|3\ncarol|expired|0\nalice|idle|24");
  std::string bob =
      Query("SELECT id FROM usage_events WHERE kind = 'expiry_soon'");
  EXPECT_NE(std::find(Ids(events).begin(), Ids(events).end(), std::stoll(bob)),
            Ids(events).end())
      << "recorded before the read";
  // Checked again (the minute passed): nothing twice.
  Query("UPDATE boxmeter_settings SET time_events_checked_at = NULL");
  ASSERT_TRUE(collector.store().ReadUndeliveredEvents(100, 10s, &events).ok());
  EXPECT_EQ(timed(), "bob|expiry_soon|3\ncarol|expired|0\nalice|idle|24");

  // Another node's collector does not check while edge-1 delivers, and
  // nothing is recorded while events are off.
  Query(
      "UPDATE boxmeter_settings SET time_events_checked_at = NULL; "
      "SELECT set_expiry('dave', now() + interval '1 day')");
  PgStore other(Url(other_meter_), "edge-2");
  ASSERT_TRUE(other.ReadUndeliveredEvents(100, 10s, &events).ok());
  EXPECT_TRUE(events.empty());
  Query("SELECT set_usage_events(false)");
  ASSERT_TRUE(collector.store().ReadUndeliveredEvents(100, 10s, &events).ok());
  EXPECT_EQ(Query("SELECT count(*) FROM usage_events WHERE user_name = "
                  "'dave'"),
            "0");
}

TEST_F(SqlEventDeliveryTest, BadArgumentsSayWhatIsExpected) {
  testing::SqlError no_holder =
      Error("SELECT * FROM claim_usage_events('', 1, '1s')", meter_);
  EXPECT_EQ(no_holder.sqlstate, "22023");
  EXPECT_NE(no_holder.message.find(
                "claim_usage_events: holder must name the deliverer"),
            std::string::npos)
      << no_holder.message;
  testing::SqlError no_lease =
      Error("SELECT mark_usage_event_delivered('edge-1', 1, '0s')", meter_);
  EXPECT_NE(
      no_lease.message.find("lease must be a positive interval, not 00:00:00"),
      std::string::npos)
      << no_lease.message;
  testing::SqlError too_many =
      Error("SELECT * FROM claim_usage_events('edge-1', 0, '1s')", meter_);
  EXPECT_NE(too_many.message.find("max_events must be 1 to 10000, not 0"),
            std::string::npos)
      << too_many.message;
}

// An operator switches events on while a collector commits. Every commit
// locks quota_periods (the rollover its guard's trigger runs) before
// counters; set_usage_events, which changes triggers on both, must take them
// in that order too, or each holds what the other waits for and PostgreSQL
// aborts one ("deadlock detected", as EventDeliveryE2eTest met it in CI).
TEST_F(SqlEventDeliveryTest, SwitchingEventsWaitsForACommitInFlight) {
  Query("SELECT set_usage_events(false)");
  pqxx::connection collector(Url());
  pqxx::work commit(collector);
  // A commit's first steps: the guard, then (by its trigger) the rollover.
  ASSERT_EQ(commit
                .exec("UPDATE nodes SET commit_seq = commit_seq + 1 "
                      "WHERE name = 'edge-1'")
                .affected_rows(),
            1u);
  auto switching = std::async(std::launch::async, [&] {
    return QueryAt(Url(), "SELECT set_usage_events(true)");
  });
  bool waited = AwaitLockWaiters(1, std::chrono::seconds(30));
  if (!waited) {
    // Lets a call still waiting go on, so the future's end does not hang.
    commit.abort();
    FAIL() << "set_usage_events never waited for the commit";
  }
  // The commit's next step; before 0018 this waited for set_usage_events,
  // which waited for the commit, until the deadlock check aborted one.
  EXPECT_NO_THROW(
      commit.exec("UPDATE counters SET last_seen = now() "
                  "WHERE node = 'edge-1'"));
  commit.commit();
  EXPECT_EQ(switching.get(),
            "usage events are recorded from the next commit on");
  EXPECT_EQ(Query("SELECT count(*) FROM pg_trigger WHERE tgname IN "
                  "('counters_updated_events', 'counters_inserted_events', "
                  "'quota_periods_events')"),
            "3");
}

}  // namespace
}  // namespace boxmeter
