// FakeStatsServer behaves like sing-box's stats API, as docs/design.md
// describes it: other tests rely on that, so it is checked here with a plain
// client.
#include "fake_stats_server.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "stats.grpc.pb.h"

namespace boxmeter::testing {
namespace {

using namespace std::chrono_literals;
namespace api = v2ray::core::app::stats::command;

class FakeStatsServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_.Set("user>>>alice>>>traffic>>>uplink", 10);
    server_.Set("user>>>alice>>>traffic>>>downlink", 20);
    server_.Set("inbound>>>vless-in>>>traffic>>>uplink", 30);
    server_.Set("outbound>>>direct>>>traffic>>>downlink", 40);
    stub_ = api::StatsService::NewStub(grpc::CreateChannel(
        server_.address(), grpc::InsecureChannelCredentials()));
  }

  // name -> every value returned for it, in order.
  std::map<std::string, std::vector<int64_t>> Query(
      const api::QueryStatsRequest& request, grpc::Status* status = nullptr) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 10s);
    api::QueryStatsResponse response;
    grpc::Status result = stub_->QueryStats(&context, request, &response);
    if (status != nullptr) *status = result;
    EXPECT_TRUE(status != nullptr || result.ok()) << result.error_message();
    std::map<std::string, std::vector<int64_t>> stats;
    for (const api::Stat& stat : response.stat()) {
      stats[stat.name()].push_back(stat.value());
    }
    return stats;
  }

  static api::QueryStatsRequest Patterns(std::vector<std::string> patterns,
                                         bool regexp = false) {
    api::QueryStatsRequest request;
    for (const std::string& pattern : patterns) request.add_patterns(pattern);
    request.set_regexp(regexp);
    return request;
  }

  uint32_t Uptime() {
    grpc::ClientContext context;
    api::SysStatsResponse response;
    grpc::Status status =
        stub_->GetSysStats(&context, api::SysStatsRequest(), &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.uptime();
  }

  FakeStatsServer server_;
  std::unique_ptr<api::StatsService::Stub> stub_;
};

TEST_F(FakeStatsServerTest, MatchesPatternsBySubstring) {
  auto stats = Query(Patterns({"user>>>"}));
  EXPECT_EQ(stats.size(), 2u);
  EXPECT_EQ(stats["user>>>alice>>>traffic>>>uplink"], std::vector<int64_t>{10});
  EXPECT_EQ(Query(Patterns({">>>traffic>>>"})).size(), 4u);
}

TEST_F(FakeStatsServerTest, MatchesPatternsByRegexpWhenAsked) {
  auto stats = Query(Patterns({"^(inbound|outbound)>>>"}, /*regexp=*/true));
  EXPECT_EQ(stats.size(), 2u);
  EXPECT_TRUE(stats.count("inbound>>>vless-in>>>traffic>>>uplink"));
  EXPECT_TRUE(Query(Patterns({"^(inbound|outbound)>>>"})).empty())
      << "without regexp the pattern is a plain substring";
}

TEST_F(FakeStatsServerTest, IgnoresThePatternField) {
  api::QueryStatsRequest request;
  request.set_pattern("user>>>");  // v2ray-core's field; sing-box ignores it
  EXPECT_TRUE(Query(request).empty());
  request.add_patterns("inbound>>>");
  auto stats = Query(request);
  EXPECT_EQ(stats.size(), 1u);
  EXPECT_TRUE(stats.count("inbound>>>vless-in>>>traffic>>>uplink"));
}

TEST_F(FakeStatsServerTest, EmptyPatternsMatchNothingOrEverything) {
  EXPECT_TRUE(Query(api::QueryStatsRequest()).empty());
  server_.SetEmptyPatternsMatchAll(true);
  EXPECT_EQ(Query(api::QueryStatsRequest()).size(), 4u);
}

TEST_F(FakeStatsServerTest, CounterMatchingTwoPatternsComesBackTwice) {
  auto stats = Query(Patterns({"alice", "uplink"}));
  EXPECT_EQ(stats["user>>>alice>>>traffic>>>uplink"],
            (std::vector<int64_t>{10, 10}));
  EXPECT_EQ(stats["user>>>alice>>>traffic>>>downlink"],
            std::vector<int64_t>{20});
  EXPECT_EQ(stats["inbound>>>vless-in>>>traffic>>>uplink"],
            std::vector<int64_t>{30});
}

TEST_F(FakeStatsServerTest, DuplicateEverythingSendsEachStatTwice) {
  server_.SetDuplicateEverything(true);
  auto stats = Query(Patterns({">>>traffic>>>"}));
  ASSERT_EQ(stats.size(), 4u);
  for (const auto& [name, values] : stats) EXPECT_EQ(values.size(), 2u) << name;
}

TEST_F(FakeStatsServerTest, ResetSwapsToZero) {
  api::QueryStatsRequest request = Patterns({"alice"});
  request.set_reset(true);
  auto stats = Query(request);
  EXPECT_EQ(stats["user>>>alice>>>traffic>>>uplink"], std::vector<int64_t>{10});
  EXPECT_EQ(server_.Get("user>>>alice>>>traffic>>>uplink"), 0);
  EXPECT_EQ(server_.Get("inbound>>>vless-in>>>traffic>>>uplink"), 30);
}

TEST_F(FakeStatsServerTest, RecordsTheLastQueryAndCountsCalls) {
  api::QueryStatsRequest request = Patterns({"x"});
  request.set_pattern("y");
  Query(request);
  Uptime();
  auto last = server_.last_query();
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->pattern(), "y");
  EXPECT_EQ(last->patterns(0), "x");
  EXPECT_EQ(server_.calls(FakeStatsServer::Method::kQueryStats), 1);
  EXPECT_EQ(server_.calls(FakeStatsServer::Method::kGetSysStats), 1);
  EXPECT_EQ(server_.calls(FakeStatsServer::Method::kGetStats), 0);
}

TEST_F(FakeStatsServerTest, RestartDropsCountersAndUptime) {
  server_.SetUptimeOffset(1000s);
  EXPECT_GE(Uptime(), 1000u);
  server_.Restart();
  EXPECT_LT(Uptime(), 1000u);
  EXPECT_EQ(server_.size(), 0u);
  EXPECT_TRUE(Query(Patterns({">>>traffic>>>"})).empty());
  server_.Add("user>>>alice>>>traffic>>>uplink", 3);  // lazily, from 0
  EXPECT_EQ(server_.Get("user>>>alice>>>traffic>>>uplink"), 3);
}

TEST_F(FakeStatsServerTest, FailsEveryCallWithTheInjectedCode) {
  server_.SetFailure(grpc::StatusCode::UNIMPLEMENTED);
  grpc::Status status;
  Query(Patterns({"alice"}), &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  server_.SetFailure(grpc::StatusCode::OK);
  Query(Patterns({"alice"}), &status);
  EXPECT_TRUE(status.ok());
}

TEST(FakeStatsServerNamesTest, PopulateMakesHalfUsersInPairs) {
  FakeStatsServer server;
  server.Populate(400);
  EXPECT_EQ(server.size(), 400u);
  server.Populate(400);  // idempotent
  EXPECT_EQ(server.size(), 400u);
  std::map<std::string, int> kinds;
  std::set<std::string> names;
  for (size_t i = 0; i < 400; ++i) {
    std::string name = FakeStatsServer::SyntheticName(i);
    names.insert(name);
    kinds[name.substr(0, name.find(">>>"))]++;
  }
  EXPECT_EQ(names.size(), 400u);
  EXPECT_EQ(kinds["user"], 200);
  EXPECT_EQ(kinds["inbound"], 100);
  EXPECT_EQ(kinds["outbound"], 100);
  EXPECT_EQ(FakeStatsServer::SyntheticName(0),
            "user>>>u000000>>>traffic>>>uplink");
  EXPECT_EQ(FakeStatsServer::SyntheticName(1),
            "user>>>u000000>>>traffic>>>downlink");
}

TEST(FakeStatsServerNamesTest, TouchFractionGrowsThatShareOnce) {
  FakeStatsServer server;
  server.Populate(1000);
  EXPECT_EQ(server.TouchFraction(0.1, 5), 100u);
  int64_t touched = 0, total = 0;
  for (size_t i = 0; i < 1000; ++i) {
    int64_t value = *server.Get(FakeStatsServer::SyntheticName(i));
    touched += value > 0;
    total += value;
  }
  EXPECT_EQ(touched, 100);
  EXPECT_EQ(total, 500);
}

TEST(FakeStatsServerNamesTest, CountersListsEveryValueInCreationOrder) {
  FakeStatsServer server;
  server.Set("user>>>bob>>>traffic>>>uplink", 7);
  server.Add("inbound>>>in>>>traffic>>>downlink", 3);
  server.Add("user>>>bob>>>traffic>>>uplink", 5);
  using Entry = std::pair<std::string, int64_t>;
  EXPECT_EQ(server.Counters(),
            (std::vector<Entry>{{"user>>>bob>>>traffic>>>uplink", 12},
                                {"inbound>>>in>>>traffic>>>downlink", 3}}));
  server.Restart();
  EXPECT_TRUE(server.Counters().empty());
}

TEST(FakeStatsServerNamesTest, RefusesAPortInUse) {
  FakeStatsServer first;
  EXPECT_THROW(FakeStatsServer second(first.port()), std::runtime_error);
}

}  // namespace
}  // namespace boxmeter::testing
