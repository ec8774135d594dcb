// The partitioned hourly history (schema/0016_partitioned_history.sql)
// against a real PostgreSQL: the in-place migration of an installation with
// history, the daily partitions created ahead and the default partition as a
// safety net, retention by dropping whole partitions, what a collector's
// login may do, and queries by time range reading only their partitions.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "migrations.h"
#include "sql_fixture.h"

namespace boxmeter {
namespace {

using namespace std::chrono_literals;
using testing::SqlError;
using testing::SqlTest;

constexpr std::chrono::hours k400Days{400 * 24};
constexpr const char* kPermissionDenied = "42501";

// What must read the same before and after the migration: every row, the
// views and reports over the history, and who may do what with it.
const std::vector<std::string> kAnswers = {
    "SELECT count(*), md5(string_agg(concat_ws(',', counter_id, hour, "
    "uplink, downlink), ';' ORDER BY counter_id, hour)) FROM counter_hourly",
    "SELECT md5(string_agg(t::text, ';' ORDER BY t::text)) FROM user_hourly t",
    "SELECT md5(string_agg(t::text, ';' ORDER BY t::text)) FROM user_daily t",
    "SELECT md5(string_agg(t::text, ';' ORDER BY t::text)) "
    "FROM user_node_daily t",
    "SELECT md5(string_agg(t::text, ';' ORDER BY t::text)) "
    "FROM inbound_node_hourly t",
    "SELECT md5(string_agg(t::text, ';' ORDER BY t::text)) FROM "
    "top_users(date_trunc('day', now()) - interval '30 days', "
    "date_trunc('day', now()) + interval '1 day') t",
    "SELECT md5(string_agg(t::text, ';' ORDER BY t::text)) FROM "
    "user_daily_between(current_date - 40, current_date) t",
    "SELECT string_agg(concat_ws(':', policyname, cmd, roles::text, qual, "
    "with_check), ',' ORDER BY policyname) FROM pg_policies "
    "WHERE tablename = 'counter_hourly'",
    "SELECT string_agg(grantee || ':' || privilege_type, ',' ORDER BY "
    "grantee, privilege_type) FROM information_schema.role_table_grants "
    "WHERE table_name = 'counter_hourly' AND grantee <> 'postgres'",
    "SELECT string_agg(grantee || ':' || column_name || ':' || "
    "privilege_type, ',' ORDER BY grantee, column_name, privilege_type) "
    "FROM information_schema.column_privileges "
    "WHERE table_name = 'counter_hourly' AND grantee <> 'postgres'",
};

class HistoryPartitionsTest : public SqlTest {
 protected:
  void SetUp() override {
    SqlTest::SetUp();
    if (HasFatalFailure()) return;
    meter_role_ = CollectorLogin("edge-1");
  }

  // A database of this server migrated up to 0017 but without 0016,
  // sessions in UTC; returns its URL. That is an installation of the
  // release before the history was partitioned, which had 0017 already:
  // 0016 came later and applies after it.
  std::string DatabaseBeforePartitions() {
    std::string name = database() + "_old";
    std::string url = server().CreateDatabase(name);
    server().Query("postgres",
                   "ALTER DATABASE " + name + " SET timezone = 'UTC'");
    for (const Migration& migration : EmbeddedMigrations()) {
      if (migration.name >= "0018") break;
      if (migration.name.substr(0, 4) == "0016") continue;
      QueryAt(url, std::string(migration.sql));
    }
    return url;
  }

  // The partition that holds the rows of `where`, one name per line.
  std::string PartitionsOf(const std::string& where) {
    return Query(
        "SELECT DISTINCT tableoid::regclass::text FROM counter_hourly "
        "WHERE " +
        where + " ORDER BY 1");
  }

  // The name of the daily partition of today + `days` (UTC).
  std::string DayPartition(int days) {
    return Query("SELECT 'counter_hourly_' || to_char(current_date + " +
                 std::to_string(days) + ", 'YYYYMMDD')");
  }

  std::string meter_role_;
};

TEST_F(HistoryPartitionsTest, MigrationConvertsAnInstallationInPlace) {
  std::string url = DatabaseBeforePartitions();
  // Two nodes' users and inbounds with 40 days of history, every 7th hour,
  // and some rows past the retention.
  QueryAt(url,
          "INSERT INTO nodes (name) VALUES ('edge-1'), ('edge-2'); "
          "INSERT INTO counters (node, kind, name, instance_start) "
          "SELECT n, 'user', 'u' || i, now() FROM unnest(ARRAY['edge-1', "
          "'edge-2']) AS n, generate_series(1, 40) AS i "
          "UNION ALL SELECT n, 'inbound', 'vless-in', now() FROM "
          "unnest(ARRAY['edge-1', 'edge-2']) AS n; "
          "INSERT INTO counter_hourly SELECT c.id, date_trunc('hour', now()) - "
          "h * interval '1 hour', c.id * 10 + h, h FROM counters c, "
          "generate_series(0, 40 * 24, 7) AS h; "
          "INSERT INTO counter_hourly SELECT c.id, date_trunc('hour', now()) - "
          "interval '500 days', 1, 2 FROM counters c");
  std::vector<std::string> before;
  for (const std::string& sql : kAnswers) before.push_back(QueryAt(url, sql));
  // 82 counters, 138 hours each and one past the retention.
  const std::string rows = "11398";
  ASSERT_EQ(before[0].substr(0, before[0].find('|')), rows);

  PgStore store(url, "edge-1");
  Status migrated = store.Migrate();
  ASSERT_TRUE(migrated.ok()) << migrated.message();

  for (size_t i = 0; i < kAnswers.size(); ++i) {
    EXPECT_EQ(QueryAt(url, kAnswers[i]), before[i]) << kAnswers[i];
  }
  EXPECT_EQ(QueryAt(url,
                    "SELECT relkind FROM pg_class WHERE relname = "
                    "'counter_hourly'"),
            "p");
  // Every row stayed where it was: in the old table, now the legacy
  // partition, which no role but its owner may read or write directly.
  EXPECT_EQ(QueryAt(url,
                    "SELECT tableoid::regclass, count(*) FROM counter_hourly "
                    "GROUP BY 1"),
            "counter_hourly_legacy|" + rows);
  EXPECT_EQ(QueryAt(url,
                    "SELECT has_table_privilege('boxmeter_collector', "
                    "'counter_hourly_legacy', 'SELECT'), "
                    "has_table_privilege('boxmeter_collector', "
                    "'counter_hourly_legacy', 'DELETE'), "
                    "has_table_privilege('boxmeter_readonly', "
                    "'counter_hourly_legacy', 'SELECT'), "
                    "(SELECT count(*) FROM pg_policies WHERE tablename = "
                    "'counter_hourly_legacy')"),
            "f|f|f|0");
  // Daily partitions follow it for a week, and a default one.
  EXPECT_EQ(
      QueryAt(url,
              "SELECT count(*), min(from_hour) = date_trunc('day', now()) "
              "+ interval '1 day' FROM history_partitions WHERE partition "
              "<> 'counter_hourly_legacy'"),
      "7|t");
  EXPECT_EQ(
      QueryAt(url, "SELECT to_regclass('counter_hourly_default') IS NOT NULL"),
      "t");
  // The collector commits into it as before.
  NodeState state;
  Status loaded = store.LoadNode(&state);
  EXPECT_TRUE(loaded.ok()) << loaded.message();
}

TEST_F(HistoryPartitionsTest, MigrationUsesABoundPreparedAhead) {
  std::string url = DatabaseBeforePartitions();
  QueryAt(
      url,
      "DO $$ BEGIN EXECUTE format('ALTER TABLE counter_hourly ADD CONSTRAINT "
      "counter_hourly_legacy_bound CHECK (hour < %L) NOT VALID', "
      "date_trunc('day', now(), 'UTC') + interval '3 days'); END $$; "
      "ALTER TABLE counter_hourly VALIDATE CONSTRAINT "
      "counter_hourly_legacy_bound");
  Status migrated = PgStore(url, "edge-1").Migrate();
  ASSERT_TRUE(migrated.ok()) << migrated.message();
  EXPECT_EQ(
      QueryAt(url,
              "SELECT to_hour = date_trunc('day', now(), 'UTC') + "
              "interval '3 days' FROM history_partitions WHERE partition = "
              "'counter_hourly_legacy'"),
      "t");
  EXPECT_EQ(QueryAt(url,
                    "SELECT count(*) FROM pg_constraint WHERE conname = "
                    "'counter_hourly_legacy_bound'"),
            "0");
}

TEST_F(HistoryPartitionsTest, PartitionsAheadAndTheDefaultSafetyNet) {
  auto& edge = meter("edge-1");
  int created = -1;
  // The migration made a week ahead; ten days ahead needs three more.
  Status status = edge.store().EnsureHistoryPartitions(10, &created);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(created, 3);
  EXPECT_EQ(Query("SELECT max(to_hour) = date_trunc('day', now()) + "
                  "interval '11 days' FROM history_partitions"),
            "t");
  ASSERT_TRUE(edge.store().EnsureHistoryPartitions(10, &created).ok());
  EXPECT_EQ(created, 0);

  // A commit for a day no partition covers yet (a clock 20 days ahead)
  // lands in the default partition instead of failing...
  edge.Commit({{CounterKind::kUser, "alice", 5, 6},
               {CounterKind::kInbound, "vless-in", 5, 6}},
              DayMs(20, 3));
  edge.Commit({{CounterKind::kUser, "alice", 1, 1}}, DayMs(2, 1));
  EXPECT_EQ(PartitionsOf("true"), DayPartition(2) + "\ncounter_hourly_default");
  // ...and moves to its day's partition when that is created, through the
  // function, as the collector's login.
  EXPECT_EQ(Query("SELECT ensure_history_partitions(7)", meter_role_), "1");
  EXPECT_EQ(PartitionsOf("true"), DayPartition(2) + "\n" + DayPartition(20));
  EXPECT_EQ(Query("SELECT count(*) FROM counter_hourly_default"), "0");
  EXPECT_EQ(Query("SELECT sum(uplink), sum(downlink) FROM counter_hourly"),
            "11|13");
  // The day's commits go on into it.
  edge.Commit({{CounterKind::kUser, "alice", 1, 1}}, DayMs(20, 3));
  EXPECT_EQ(Query("SELECT uplink FROM user_node_hourly WHERE hour = "
                  "current_date + 20 + interval '3 hours'"),
            "6");
}

TEST_F(HistoryPartitionsTest, RetentionDropsOldPartitionsAndDeletesTheRest) {
  auto& edge = meter("edge-1");
  // An installation older than the retention: the legacy partition is
  // gone, and the old days have their own partitions. Rows committed for
  // them land in the default one; ensure_history_partitions moves the ones
  // within history_retention.keep into daily partitions.
  Query(
      "DROP TABLE counter_hourly_legacy; "
      "UPDATE history_retention SET keep = '1000 days'");
  for (int days : {-500, -450, -401, -400, -399, -1, 0}) {
    edge.Commit({{CounterKind::kUser, "alice", 1, 2},
                 {CounterKind::kInbound, "vless-in", 1, 2}},
                DayMs(days));
  }
  // Yesterday's and today's too: the legacy partition held them.
  EXPECT_EQ(Query("SELECT ensure_history_partitions(7)"), "7");
  Query("UPDATE history_retention SET keep = '400 days'");
  EXPECT_EQ(Query("SELECT count(*) FROM counter_hourly_default"), "0");
  // The straddling day's rows are past the cutoff whatever the time of
  // day: they are at its midnight.
  ASSERT_EQ(PartitionsOf("hour < now() - interval '400 days'"),
            DayPartition(-500) + "\n" + DayPartition(-450) + "\n" +
                DayPartition(-401) + "\n" + DayPartition(-400));

  PruneResult result;
  Status status = edge.store().PruneHistory(k400Days, 10s, &result);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(result.partitions_dropped, 3);
  EXPECT_EQ(result.deleted, 2);  // the straddling day's two rows
  EXPECT_TRUE(result.done);
  EXPECT_EQ(Query("SELECT DISTINCT current_date - hour::date FROM "
                  "counter_hourly ORDER BY 1 DESC"),
            "399\n1\n0");
  // The straddling day's partition stays, it may hold younger hours.
  EXPECT_EQ(Query("SELECT count(*) FROM history_partitions WHERE partition "
                  "IN ('" +
                  DayPartition(-450) + "', '" + DayPartition(-400) + "')"),
            "1");
  EXPECT_EQ(Query("SELECT total FROM user_traffic"), "21");
  ASSERT_TRUE(edge.store().PruneHistory(k400Days, 10s, &result).ok());
  EXPECT_EQ(result.partitions_dropped, 0);
  EXPECT_EQ(result.deleted, 0);
}

TEST_F(HistoryPartitionsTest,
       ACollectorChangesPartitionsOnlyThroughTheFunctions) {
  meter("edge-1").Commit({{CounterKind::kUser, "alice", 1, 2}}, DayMs(1));
  std::string tomorrow = DayPartition(1);
  for (const std::string& sql : std::vector<std::string>{
           "DROP TABLE " + tomorrow,
           "ALTER TABLE counter_hourly DETACH PARTITION " + tomorrow,
           "DELETE FROM " + tomorrow,
           "SELECT * FROM counter_hourly_legacy",
           "INSERT INTO counter_hourly_default SELECT id, now(), 1, 1 "
           "FROM counters",
           "CREATE TABLE counter_hourly_29991231 PARTITION OF counter_hourly "
           "FOR VALUES FROM ('2999-12-31') TO ('3000-01-01')",
           "TRUNCATE counter_hourly",
       }) {
    SCOPED_TRACE(sql);
    SqlError error = Error(sql, meter_role_);
    EXPECT_EQ(error.sqlstate, kPermissionDenied) << error.message;
  }
  // prune_history as the collector's login drops nothing younger than
  // history_retention.keep, whatever cutoff it asks for.
  EXPECT_EQ(
      Query("SELECT prune_history(now() + interval '30 days')", meter_role_),
      "0");
  EXPECT_EQ(Query("SELECT count(*) FROM counter_hourly"), "1");
  // Other roles may not call them at all.
  std::string grafana = "grafana_" + database();
  Query("CREATE ROLE " + grafana + " LOGIN IN ROLE boxmeter_readonly");
  for (const char* sql :
       {"SELECT ensure_history_partitions(7)", "SELECT prune_history(now())"}) {
    SqlError error = Error(sql, grafana);
    EXPECT_EQ(error.sqlstate, kPermissionDenied) << sql << error.message;
  }
  EXPECT_EQ(Query("SELECT count(*) > 0 FROM history_partitions", grafana), "t");
  SqlError bad = Error("SELECT ensure_history_partitions(-1)", meter_role_);
  EXPECT_EQ(bad.sqlstate, "22023") << bad.message;
}

// A query with a time range reads only the partitions of that range: at
// planning when the range is constants, at execution when it depends on
// now() or on a function's parameters.
TEST_F(HistoryPartitionsTest, TimeRangesReadOnlyTheirPartitions) {
  meter("edge-1").Commit({{CounterKind::kUser, "alice", 1, 2}}, DayMs(2));
  Query("ANALYZE");
  std::string day = Query("SELECT (current_date + 2)::text");
  std::string plan = Query(
      "EXPLAIN (COSTS OFF) SELECT * FROM user_node_hourly WHERE hour >= '" +
      day + "' AND hour < '" + day + "'::timestamptz + interval '1 day'");
  EXPECT_NE(plan.find(DayPartition(2)), std::string::npos) << plan;
  EXPECT_EQ(plan.find("counter_hourly_legacy"), std::string::npos) << plan;
  EXPECT_EQ(plan.find("counter_hourly_default"), std::string::npos) << plan;
  EXPECT_EQ(plan.find(DayPartition(3)), std::string::npos) << plan;

  plan = Query(
      "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) "
      "SELECT sum(uplink) FROM counter_hourly "
      "WHERE hour >= now() + interval '3 days'");
  EXPECT_NE(plan.find("Subplans Removed"), std::string::npos) << plan;
  EXPECT_EQ(plan.find("on counter_hourly_legacy"), std::string::npos) << plan;
}

}  // namespace
}  // namespace boxmeter
