// Retention of the hourly history: PgStore::PruneHistory against a real
// PostgreSQL (what goes, in batches, within a budget, one pruner at a time,
// through the index on hour), and the collector calling it at most once an
// hour (against the fakes).
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <pqxx/pqxx>

#include "collector.h"
#include "fakes/collector_fixture.h"
#include "sql_fixture.h"

namespace boxmeter {
namespace {

using namespace std::chrono_literals;
using testing::SqlTest;

constexpr std::chrono::hours k400Days{400 * 24};

class RetentionTest : public SqlTest {
 protected:
  // Adds `hours` hourly rows to each of the counters of `node`, the newest
  // `newest_hours_ago` hours before now.
  void AddHistory(const std::string& node, int hours, int newest_hours_ago) {
    Query(
        "INSERT INTO counter_hourly (counter_id, hour, uplink, downlink) "
        "SELECT c.id, date_trunc('hour', now()) - (" +
        std::to_string(newest_hours_ago) +
        " + i) * interval '1 hour', 1, 1 FROM counters c, "
        "generate_series(0, " +
        std::to_string(hours - 1) + ") AS i WHERE c.node = '" + node + "'");
  }

  int64_t Rows(const std::string& where = "true") {
    return std::stoll(
        Query("SELECT count(*) FROM counter_hourly WHERE " + where));
  }
};

TEST_F(RetentionTest, DeletesOnlyHistoryOlderThanTheRetention) {
  auto& edge = meter("edge-1");
  for (int days : {-500, -401, -399, -1, 0}) {
    edge.Commit({{CounterKind::kUser, "alice", 1, 2},
                 {CounterKind::kInbound, "vless-in", 1, 2}},
                DayMs(days));
  }
  PruneResult result;
  Status status = edge.store().PruneHistory(k400Days, 10s, &result);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(result.deleted, 4);
  EXPECT_TRUE(result.done);
  EXPECT_EQ(Query("SELECT DISTINCT current_date - hour::date FROM "
                  "counter_hourly ORDER BY 1 DESC"),
            "399\n1\n0");
  // The totals are not history: they stay.
  EXPECT_EQ(Query("SELECT total FROM user_traffic"), "15");
  // Nothing left to do is quick and deletes nothing.
  ASSERT_TRUE(edge.store().PruneHistory(k400Days, 10s, &result).ok());
  EXPECT_EQ(result.deleted, 0);
  EXPECT_TRUE(result.done);
}

// After pruning, the days that ended go into the weekly sums top_users
// reads (schema/0028_weekly_sums.sql): at least one per call, so that a
// retention backlog cannot hold them back, more while the budget lasts.
TEST_F(RetentionTest, SumsTheDaysThatEndedIntoWeeks) {
  auto& edge = meter("edge-1");
  for (int days : {-3, -2, 0}) {
    edge.Commit({{CounterKind::kUser, "alice", 1, 2}}, DayMs(days, 4));
  }
  PruneResult result;
  ASSERT_TRUE(edge.store().PruneHistory(k400Days, 0ms, &result).ok());
  EXPECT_EQ(result.days_summed, 1);
  EXPECT_FALSE(result.summed);
  ASSERT_TRUE(edge.store().PruneHistory(k400Days, 10s, &result).ok());
  EXPECT_EQ(result.days_summed, 1);  // yesterday has no row: skipped
  EXPECT_TRUE(result.summed);
  EXPECT_EQ(Query("SELECT through = date_trunc('day', now(), 'UTC') "
                  "FROM counter_weekly_span"),
            "t");
  EXPECT_EQ(Query("SELECT sum(uplink), sum(hours) FROM counter_weekly"), "2|2");
  ASSERT_TRUE(edge.store().PruneHistory(k400Days, 10s, &result).ok());
  EXPECT_EQ(result.days_summed, 0);
  EXPECT_TRUE(result.summed);
}

TEST_F(RetentionTest, DeletesInBatchesUntilTheBudgetRunsOut) {
  auto& edge = meter("edge-1");
  edge.Commit({{CounterKind::kUser, "a", 1, 1},
               {CounterKind::kUser, "b", 1, 1},
               {CounterKind::kUser, "c", 1, 1}},
              DayMs(0));
  AddHistory("edge-1", 9000, 10'000);  // 27,000 rows, all past 400 days
  AddHistory("edge-1", 100, 24);       // 300 recent rows
  ASSERT_EQ(Rows(), 27'303);
  PruneResult result;
  // No budget: one batch, then it stops and says more is left.
  ASSERT_TRUE(edge.store().PruneHistory(k400Days, 0ms, &result).ok());
  EXPECT_EQ(result.deleted, PgStore::kPruneBatchRows);
  EXPECT_FALSE(result.done);
  // The oldest went first: 3,333 whole hours of the 9,000 and one row of
  // the next.
  EXPECT_EQ(Query("SELECT count(*), count(DISTINCT hour) FROM counter_hourly "
                  "WHERE hour < now() - interval '400 days'"),
            "17000|5667");
  ASSERT_TRUE(edge.store().PruneHistory(k400Days, 60s, &result).ok());
  EXPECT_EQ(result.deleted, 17'000);
  EXPECT_TRUE(result.done);
  EXPECT_EQ(Rows(), 303);
}

TEST_F(RetentionTest, OneCollectorPrunesAtATime) {
  auto& edge = meter("edge-1");
  edge.Commit({{CounterKind::kUser, "a", 1, 1}}, DayMs(-500));
  pqxx::connection other(Url());
  pqxx::nontransaction lock(other);
  lock.exec("SELECT pg_advisory_lock(" +
            std::to_string(PgStore::kPruneLockKey) + ")");
  PruneResult result;
  ASSERT_TRUE(edge.store().PruneHistory(k400Days, 10s, &result).ok());
  EXPECT_EQ(result.deleted, 0);
  EXPECT_EQ(Rows(), 1);
  lock.exec("SELECT pg_advisory_unlock(" +
            std::to_string(PgStore::kPruneLockKey) + ")");
  ASSERT_TRUE(edge.store().PruneHistory(k400Days, 10s, &result).ok());
  EXPECT_EQ(result.deleted, 1);
}

// The layout claims of schema/COOKBOOK.md ("Retention and the size of the
// history"): the retention delete walks the index on hour instead of
// scanning the table, and a user's days come through counters_user_name and
// counter_hourly's primary key. The rows are those of an installation from
// before the history was partitioned: in its legacy partition, which holds
// every hour until the migration (0016).
TEST_F(RetentionTest, DeleteAndPerDayQueriesUseTheIndexes) {
  Query(
      "INSERT INTO nodes (name) VALUES ('edge-1'); "
      "INSERT INTO counters (node, kind, name, instance_start) "
      "SELECT 'edge-1', 'user', 'u' || i, now() "
      "FROM generate_series(1, 2000) AS i");
  AddHistory("edge-1", 60, 9700);  // 120,000 rows past 400 days
  AddHistory("edge-1", 60, 0);     // and as many recent ones
  Query("ANALYZE counters; ANALYZE counter_hourly");
  std::string plan = Query(
      "EXPLAIN SELECT day, total FROM user_daily "
      "WHERE name = 'u7' AND day > current_date - 30");
  EXPECT_NE(plan.find("counters_user_name"), std::string::npos) << plan;
  EXPECT_NE(plan.find("counter_hourly_legacy_pkey"), std::string::npos) << plan;
  // The partitions that hold rows; the empty daily ones ahead cost nothing.
  EXPECT_EQ(plan.find("Seq Scan on counter_hourly_legacy"), std::string::npos)
      << plan;

  auto scans = [&] {
    return Query(
        "SELECT pg_stat_clear_snapshot(); "
        "SELECT s.seq_scan, i.idx_scan FROM pg_stat_user_tables s, "
        "pg_stat_user_indexes i WHERE s.relname = 'counter_hourly_legacy' "
        "AND i.indexrelname = 'counter_hourly_legacy_hour'");
  };
  std::string before = scans();
  {
    PgStore store(Url(), "edge-1");
    PruneResult result;
    ASSERT_TRUE(store.PruneHistory(k400Days, 60s, &result).ok());
    EXPECT_EQ(result.deleted, 120'000);
  }  // disconnects, which flushes the server's statistics of that session
  std::string seq_before = before.substr(0, before.find('|'));
  ASSERT_TRUE(testing::WaitUntil([&] { return scans() != before; }, 10s))
      << "no scans recorded: " << before;
  std::string after = scans();
  EXPECT_EQ(after.substr(0, after.find('|')), seq_before)
      << "a sequential scan of counter_hourly_legacy: " << before << " -> "
      << after;
  EXPECT_EQ(Rows(), 120'000);
}

// The collector's side, against the fakes: retention runs on the database
// thread, with the configured retention, at most once an hour, after
// creating the history's partitions a week ahead.
class CollectorRetentionTest : public testing::CollectorFixture {
 protected:
  CollectorRetentionTest() : CollectorFixture(5ms) {
    config_.history.retention = std::chrono::hours(48);
    Create();
  }
};

TEST_F(CollectorRetentionTest, PrunesOnceAnHourWithTheConfiguredRetention) {
  source_.Add(CounterKind::kUser, "alice", 10, 20);
  collector_->Start();
  ASSERT_TRUE(RunUntil([&] { return store_.prunes() >= 1; }));
  source_.Add(CounterKind::kUser, "alice", 1, 1);
  ASSERT_TRUE(RunUntil([&] {
    return source_.fetches() >= 40 &&
           store_.Total({CounterKind::kUser, "alice"}) == CounterValues{11, 21};
  }));
  EXPECT_EQ(store_.prunes(), 1);
  EXPECT_EQ(store_.last_retention(), std::chrono::hours(48));
  EXPECT_GT(store_.last_budget(), 0ms);
  EXPECT_EQ(store_.partition_runs(), 1);
  EXPECT_EQ(store_.last_days_ahead(), 7);
}

TEST_F(CollectorRetentionTest, OnceDoesNotPrune) {
  source_.Add(CounterKind::kUser, "alice", 10, 20);
  collector_->StartOnce();
  io_.run();
  EXPECT_TRUE(collector_->succeeded());
  EXPECT_EQ(store_.prunes(), 0);
  EXPECT_EQ(store_.partition_runs(), 0);
}

}  // namespace
}  // namespace boxmeter
