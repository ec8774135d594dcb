#include "collector_metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

namespace boxmeter {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

CollectorMetrics::Options Options(bool per_user = true) {
  return {"edge-1", per_user, "1.2.3"};
}

// The sample lines of `text` that start with `prefix`, in order.
std::vector<std::string> Lines(const std::string& text,
                               const std::string& prefix) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with(prefix)) out.push_back(line);
  }
  return out;
}

CommitRow Row(CounterKind kind, std::string name, int64_t up, int64_t down) {
  return {{kind, std::move(name)}, {up, down}, {}, 0};
}

// A scrape of a large exposition must not copy it: without a commit between
// them, two renders share the traffic text; a commit renders it again, and
// a scrape still sending the old text keeps it unchanged.
TEST(CollectorMetricsTest, TrafficTextIsSharedUntilACommitChangesIt) {
  CollectorMetrics metrics(Options());
  std::vector<CounterTotal> totals = {{{CounterKind::kUser, "alice"}, {1, 2}}};
  metrics.SetTotals(totals);
  MetricsPieces first = metrics.RenderPieces();
  MetricsPieces again = metrics.RenderPieces();
  ASSERT_EQ(first.size(), 2u);
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(first[1].get(), again[1].get()) << "rendered again unchanged";
  std::string sent = *first[1];
  metrics.AddCommitted(std::vector{Row(CounterKind::kUser, "alice", 10, 20)});
  MetricsPieces after = metrics.RenderPieces();
  EXPECT_EQ(*first[1], sent) << "a held text was rendered into";
  EXPECT_THAT(
      Lines(*after[1], "v2ray_traffic_uplink_bytes_total{"),
      ElementsAre(
          R"(v2ray_traffic_uplink_bytes_total{dimension="user",target="alice",node="edge-1"} 11)"));
  // Once nobody holds the text, the next render reuses its buffer.
  first.clear();
  again.clear();
  const std::string* reused = after[1].get();
  after.clear();
  metrics.AddCommitted(std::vector{Row(CounterKind::kUser, "alice", 1, 1)});
  MetricsPieces last = metrics.RenderPieces();
  EXPECT_EQ(last[1].get(), reused);
  EXPECT_THAT(metrics.Render(),
              HasSubstr(R"(target="alice",node="edge-1"} 12)"));
}

TEST(CollectorMetricsTest, TrafficIsTheLoadedTotalsSortedByDimensionAndTarget) {
  CollectorMetrics metrics(Options());
  std::vector<CounterTotal> totals = {
      {{CounterKind::kUser, "bob"}, {3, 4}},
      {{CounterKind::kOutbound, "direct"}, {5, 6}},
      {{CounterKind::kUser, "alice"}, {1, 2}},
      {{CounterKind::kInbound, "vless-in"}, {7, 8}},
  };
  metrics.SetTotals(totals);
  std::string text = metrics.Render();
  EXPECT_THAT(
      Lines(text, "v2ray_traffic_uplink_bytes_total"),
      ElementsAre(
          R"(v2ray_traffic_uplink_bytes_total{dimension="inbound",target="vless-in",node="edge-1"} 7)",
          R"(v2ray_traffic_uplink_bytes_total{dimension="outbound",target="direct",node="edge-1"} 5)",
          R"(v2ray_traffic_uplink_bytes_total{dimension="user",target="alice",node="edge-1"} 1)",
          R"(v2ray_traffic_uplink_bytes_total{dimension="user",target="bob",node="edge-1"} 3)"));
  EXPECT_THAT(
      Lines(text, "v2ray_traffic_downlink_bytes_total{dimension=\"user\""),
      ElementsAre(
          R"(v2ray_traffic_downlink_bytes_total{dimension="user",target="alice",node="edge-1"} 2)",
          R"(v2ray_traffic_downlink_bytes_total{dimension="user",target="bob",node="edge-1"} 4)"));
  EXPECT_THAT(text, HasSubstr("# TYPE v2ray_traffic_uplink_bytes_total "
                              "counter\n"));
}

TEST(CollectorMetricsTest, AppliedCommitsAddTheirDeltas) {
  CollectorMetrics metrics(Options());
  std::vector<CounterTotal> totals = {{{CounterKind::kUser, "alice"}, {1, 2}}};
  metrics.SetTotals(totals);
  std::vector<CommitRow> rows = {Row(CounterKind::kUser, "alice", 10, 20),
                                 Row(CounterKind::kUser, "carol", 0, 5)};
  metrics.AddCommitted(rows);
  metrics.AddCommitted(rows);
  std::string text = metrics.Render();
  EXPECT_THAT(Lines(text, "v2ray_traffic_downlink_bytes_total"),
              ElementsAre(HasSubstr(R"(target="alice",node="edge-1"} 42)"),
                          HasSubstr(R"(target="carol",node="edge-1"} 10)")));
  // A reload from the database replaces everything.
  metrics.SetTotals(totals);
  EXPECT_THAT(Lines(metrics.Render(), "v2ray_traffic_downlink_bytes_total"),
              ElementsAre(HasSubstr(R"(target="alice",node="edge-1"} 2)")));
}

TEST(CollectorMetricsTest, TotalsSaturateInsteadOfWrapping) {
  CollectorMetrics metrics(Options());
  std::vector<CommitRow> rows = {
      Row(CounterKind::kInbound, "in", INT64_MAX - 1, 0)};
  metrics.AddCommitted(rows);
  metrics.AddCommitted(rows);
  EXPECT_THAT(Lines(metrics.Render(), "v2ray_traffic_uplink_bytes_total"),
              ElementsAre(HasSubstr("} 9223372036854775807")));
}

TEST(CollectorMetricsTest, PerUserOffLeavesOutUserSeriesOnly) {
  CollectorMetrics metrics(Options(/*per_user=*/false));
  std::vector<CounterTotal> totals = {{{CounterKind::kUser, "alice"}, {1, 2}},
                                      {{CounterKind::kInbound, "in"}, {3, 4}}};
  metrics.SetTotals(totals);
  std::vector<CommitRow> rows = {Row(CounterKind::kUser, "bob", 1, 1)};
  metrics.AddCommitted(rows);
  std::string text = metrics.Render();
  EXPECT_THAT(text, Not(HasSubstr(R"(dimension="user")")));
  EXPECT_THAT(Lines(text, "v2ray_traffic_uplink_bytes_total"),
              ElementsAre(HasSubstr(R"(dimension="inbound",target="in")")));
}

TEST(CollectorMetricsTest, LabelValuesAreEscapedAndNonUtf8NamesLeftOut) {
  CollectorMetrics metrics(Options());
  std::vector<CounterTotal> totals = {
      {{CounterKind::kUser, "quote\"back\\slash\nlf"}, {1, 1}},
      {{CounterKind::kUser, std::string("bad\xff", 4)}, {1, 1}},
      {{CounterKind::kUser, std::string("nul\0x", 5)}, {1, 1}}};
  metrics.SetTotals(totals);
  EXPECT_THAT(
      Lines(metrics.Render(), "v2ray_traffic_uplink_bytes_total"),
      ElementsAre(
          R"(v2ray_traffic_uplink_bytes_total{dimension="user",target="quote\"back\\slash\nlf",node="edge-1"} 1)"));
}

TEST(CollectorMetricsTest, HealthFamiliesWithTheirValues) {
  CollectorMetrics metrics(Options());
  metrics.PollDone(0.003, true, 1'764'237'000'500, 0);
  metrics.PollDone(2.0, false, 1'764'237'001'000, 0);
  metrics.PollDone(0.02, true, 1'764'237'002'000, 1);
  metrics.CommitDone(0.04, CommitOutcome::kApplied, 1'764'237'003'000);
  metrics.CommitDone(0.04, CommitOutcome::kUnknown, 1'764'237'004'000);
  metrics.CommitDone(0.04, CommitOutcome::kNotApplied, 1'764'237'005'000);
  metrics.SetGauges({.pending_bytes = 1234,
                     .counters_tracked = 3,
                     .source_up = true,
                     .database_up = false,
                     .writer = true,
                     .hook_runs_succeeded = 2,
                     .hook_runs_failed = 1,
                     .event_hook_runs_succeeded = 5,
                     .event_hook_runs_failed = 4});
  std::string text = metrics.Render();
  for (
      const char* line : {
          R"(boxmeter_build_info{node="edge-1",version="1.2.3"} 1)",
          R"(boxmeter_source_up{node="edge-1"} 1)",
          R"(boxmeter_database_up{node="edge-1"} 0)",
          R"(boxmeter_writer{node="edge-1"} 1)",
          R"(boxmeter_polls_total{node="edge-1",outcome="success"} 2)",
          R"(boxmeter_polls_total{node="edge-1",outcome="failure"} 1)",
          R"(boxmeter_poll_duration_seconds_bucket{node="edge-1",le="0.005"} 1)",
          R"(boxmeter_poll_duration_seconds_bucket{node="edge-1",le="0.025"} 2)",
          R"(boxmeter_poll_duration_seconds_bucket{node="edge-1",le="+Inf"} 3)",
          R"(boxmeter_poll_duration_seconds_count{node="edge-1"} 3)",
          R"(boxmeter_last_successful_poll_timestamp_seconds{node="edge-1"} 1764237002)",
          R"(boxmeter_commits_total{node="edge-1",outcome="applied"} 1)",
          R"(boxmeter_commits_total{node="edge-1",outcome="not_applied"} 1)",
          R"(boxmeter_commits_total{node="edge-1",outcome="unknown"} 1)",
          R"(boxmeter_commits_total{node="edge-1",outcome="lease_lost"} 0)",
          R"(boxmeter_commit_duration_seconds_count{node="edge-1"} 3)",
          R"(boxmeter_last_successful_commit_timestamp_seconds{node="edge-1"} 1764237003)",
          R"(boxmeter_pending_bytes{node="edge-1"} 1234)",
          R"(boxmeter_counters_tracked{node="edge-1"} 3)",
          R"(boxmeter_sing_box_restarts_total{node="edge-1"} 1)",
          R"(boxmeter_hook_runs_total{node="edge-1",outcome="success"} 2)",
          R"(boxmeter_hook_runs_total{node="edge-1",outcome="failure"} 1)",
          R"(boxmeter_event_hook_runs_total{node="edge-1",outcome="success"} 5)",
          R"(boxmeter_event_hook_runs_total{node="edge-1",outcome="failure"} 4)",
      }) {
    EXPECT_THAT(text, HasSubstr(std::string(line) + "\n"));
  }
  // An unknown commit that turns out applied dates the last commit.
  metrics.UnknownCommitApplied(1'764'237'009'250);
  EXPECT_THAT(
      metrics.Render(),
      HasSubstr(
          R"(boxmeter_last_successful_commit_timestamp_seconds{node="edge-1"} 1764237009.25)"));
}

TEST(CollectorMetricsTest, NoTimestampBeforeTheFirstSuccess) {
  CollectorMetrics metrics(Options());
  metrics.PollDone(1, false, 1'764'237'000'000, 0);
  metrics.CommitDone(1, CommitOutcome::kNotApplied, 1'764'237'000'000);
  std::string text = metrics.Render();
  EXPECT_THAT(text, Not(HasSubstr("last_successful")));
}

// Every family's samples follow its HELP and TYPE lines, and no family
// appears twice: what the format requires (promtool checks it for real in
// the end-to-end test).
TEST(CollectorMetricsTest, EachFamilyIsOneBlock) {
  CollectorMetrics metrics(Options());
  std::vector<CounterTotal> totals = {{{CounterKind::kUser, "a"}, {1, 2}}};
  metrics.SetTotals(totals);
  metrics.PollDone(0.1, true, 1'000, 0);
  metrics.CommitDone(0.1, CommitOutcome::kApplied, 1'000);
  std::string text = metrics.Render();
  std::istringstream in(text);
  std::vector<std::string> families;
  std::string current;
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("# HELP ")) {
      current = line.substr(7, line.find(' ', 7) - 7);
      EXPECT_THAT(families, Not(::testing::Contains(current))) << current;
      families.push_back(current);
    } else if (!line.starts_with("#")) {
      ASSERT_FALSE(current.empty()) << line;
      EXPECT_TRUE(line.starts_with(current)) << current << ": " << line;
    }
  }
  EXPECT_GE(families.size(), 16u);
}

}  // namespace
}  // namespace boxmeter
