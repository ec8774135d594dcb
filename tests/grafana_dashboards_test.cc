// deploy/grafana/dashboards: every PromQL expression of the health
// dashboard parses (Debian's promtool, as recording rules), and every SQL
// panel of the traffic dashboard runs against the real schema with data, as
// a login of boxmeter_readonly, giving the columns its panel shows.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "process.h"
#include "sql_fixture.h"

namespace boxmeter::testing {
namespace {

const std::string kDashboards =
    std::string(BOXMETER_SOURCE_DIR) + "/deploy/grafana/dashboards/";

nlohmann::json LoadDashboard(const std::string& file) {
  std::ifstream in(kDashboards + file);
  return nlohmann::json::parse(in);
}

// Every target's query of `key` ("expr", "rawSql"), by panel title, and the
// template variables' queries under "variable NAME".
std::multimap<std::string, std::string> Queries(const nlohmann::json& board,
                                                const std::string& key) {
  std::multimap<std::string, std::string> queries;
  for (const auto& panel : board.at("panels")) {
    for (const auto& target : panel.at("targets")) {
      queries.emplace(panel.at("title").get<std::string>(),
                      target.at(key).get<std::string>());
    }
  }
  for (const auto& variable : board.at("templating").at("list")) {
    const auto& query = variable.at("query");
    queries.emplace("variable " + variable.at("name").get<std::string>(),
                    query.is_string() ? query.get<std::string>()
                                      : query.at("query").get<std::string>());
  }
  return queries;
}

std::string Replace(std::string text, const std::string& from,
                    const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos;
       at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
  return text;
}

TEST(GrafanaHealthDashboard, EveryPromqlExpressionParses) {
  nlohmann::json board = LoadDashboard("boxmeter-health.json");
  EXPECT_EQ(board.at("uid"), "boxmeter-health");
  std::multimap<std::string, std::string> queries = Queries(board, "expr");
  ASSERT_GE(queries.size(), 14u);
  // Grafana's variables as it would expand them; the node variable's
  // label_values() is Grafana's own function, not PromQL.
  TempDir dir;
  std::string rules = dir.path() + "/rules.yml";
  std::ofstream out(rules);
  out << "groups:\n  - name: dashboard\n    rules:\n";
  int n = 0;
  for (const auto& [title, query] : queries) {
    if (title == "variable node") {
      EXPECT_EQ(query, "label_values(boxmeter_build_info, node)");
      continue;
    }
    std::string expr = Replace(query, "$__rate_interval", "1m");
    expr = Replace(expr, "$__range", "1h");
    expr = Replace(expr, "$node", ".*");
    EXPECT_EQ(expr.find('$'), std::string::npos) << title << ": " << expr;
    // Each uses only the boxmeter series the collector exposes.
    std::smatch match;
    for (std::string rest = expr; std::regex_search(
             rest, match, std::regex(R"(\b(boxmeter_\w+|v2ray_\w+))"));
         rest = match.suffix()) {
      EXPECT_TRUE(match[1].str().starts_with("boxmeter_") ||
                  match[1].str().starts_with("v2ray_traffic_"))
          << title << ": " << match[1];
    }
    out << "      - record: dashboard:panel_" << n++ << "\n"
        << "        expr: " << nlohmann::json(expr).dump() << "\n";
  }
  out.close();
  std::string output;
  Process::Options promtool;
  promtool.argv = {"/usr/bin/promtool", "check", "rules", rules};
  int code = RunCommand(promtool, std::chrono::seconds(30), &output);
  EXPECT_EQ(code, 0) << output << ReadFile(rules);
  EXPECT_THAT(output, ::testing::HasSubstr("SUCCESS: " + std::to_string(n) +
                                           " rules found"));
}

class GrafanaTrafficDashboard : public SqlTest {
 protected:
  void SetUp() override {
    SqlTest::SetUp();
    if (HasFatalFailure()) return;
    grafana_ = "grafana_" + database();
    Query("CREATE ROLE " + grafana_ + " LOGIN IN ROLE boxmeter_readonly");
    Query(R"sql(
      INSERT INTO inbounds (node, tag, type, listen_port) VALUES
        ('edge-1', 'vless-in', 'vless', 443),
        ('edge-2', 'vless-in', 'vless', 443);
      SELECT add_user('alice', quota_bytes => 1000000),
             add_user('bob', expires_at => now() + interval '3 days'),
             add_user('carol');
      SELECT link_user('alice', 'edge-1', 'vless-in'),
             link_user('bob', 'edge-1', 'vless-in'),
             link_user('carol', 'edge-2', 'vless-in');
    )sql");
    // alice at 90% of her quota, today; bob and carol earlier.
    meter("edge-1").Commit(
        {{CounterKind::kUser, "alice", 100'000, 800'000},
         {CounterKind::kUser, "bob", 5'000, 50'000},
         {CounterKind::kInbound, "vless-in", 105'000, 850'000},
         {CounterKind::kOutbound, "direct", 105'000, 850'000}},
        DayMs(0));
    meter("edge-2").Commit({{CounterKind::kUser, "carol", 1'000, 2'000},
                            {CounterKind::kInbound, "vless-in", 1'000, 2'000}},
                           DayMs(-2, 5));
  }

  // `sql` as Grafana sends it over the last 7 days with nodes edge-1 and
  // edge-2 chosen, run as the readonly login: the column names, and the
  // number of rows in *rows.
  std::vector<std::string> Run(std::string sql, size_t* rows) {
    sql = Replace(sql, "$__timeFilter(hour)",
                  "hour BETWEEN now() - interval '7 days' AND now()");
    sql = Replace(sql, "$node", "'edge-1','edge-2'");
    EXPECT_EQ(sql.find('$'), std::string::npos) << sql;
    pqxx::connection connection(Url(grafana_));
    pqxx::read_transaction tx(connection);
    pqxx::result result = tx.exec(sql);
    std::vector<std::string> columns;
    for (pqxx::row::size_type i = 0; i < result.columns(); ++i) {
      columns.push_back(result.column_name(i));
    }
    *rows = result.size();
    return columns;
  }

  std::string grafana_;
};

TEST_F(GrafanaTrafficDashboard, EverySqlPanelRunsAsReadonlyWithItsColumns) {
  nlohmann::json board = LoadDashboard("boxmeter-traffic.json");
  EXPECT_EQ(board.at("uid"), "boxmeter-traffic");
  using Columns = std::vector<std::string>;
  const std::map<std::string, Columns> expected = {
      {"Top users in the range", {"name", "uplink", "downlink", "total"}},
      {"Traffic per node over time", {"time", "metric", "value"}},
      {"Inbounds (lifetime)", {"node", "tag", "uplink", "downlink", "total"}},
      {"Traffic per inbound over time", {"time", "metric", "value"}},
      {"Nodes",
       {"node", "last_commit_at", "counters", "user_counters", "today_total"}},
      {"Quota status",
       {"name", "state", "quota_bytes", "used_bytes", "remaining_bytes",
        "percent", "expires_at"}},
      {"Users near their quota (80% or more)",
       {"name", "percent", "used_bytes", "quota_bytes", "remaining_bytes"}},
      {"Expiring within 7 days", {"name", "expires_at", "state"}},
      {"variable node", {"node"}},
  };
  std::multimap<std::string, std::string> queries = Queries(board, "rawSql");
  std::set<std::string> seen;
  for (const auto& [title, sql] : queries) {
    SCOPED_TRACE(title);
    seen.insert(title);
    ASSERT_TRUE(expected.count(title)) << "a panel this test does not know";
    size_t rows = 0;
    EXPECT_EQ(Run(sql, &rows), expected.at(title)) << sql;
    // The data above gives every panel something to show.
    EXPECT_GT(rows, 0u) << sql;
  }
  EXPECT_EQ(seen.size(), expected.size());

  // What a panel says, spot-checked.
  EXPECT_EQ(Query("SELECT name FROM user_quota_status WHERE state = 'active' "
                  "AND percent >= 80",
                  grafana_),
            "alice");
}

}  // namespace
}  // namespace boxmeter::testing
