// End to end through a connection pooler: two boxmeter-collector binaries,
// each polling its own fake-stats-server, commit into one throwaway
// PostgreSQL through a real pgbouncer in transaction pooling mode with ONE
// server connection for both, so every transaction of one collector may run
// on the session the other's last transaction used. The store-level tests
// (writer_lease_test.cc) show the statements hold no session state; this
// shows the whole collector does: start-up (migration, lease, loading the
// node), polls and commits, a clean restart and a crash restart (the lease
// of the killed collector lapses, its successor takes over), exactly.
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "collector_runner.h"
#include "fake_stats_process.h"
#include "pg_bouncer.h"
#include "pg_server.h"
#include "process.h"

namespace boxmeter::testing {
namespace {

using namespace std::chrono_literals;

constexpr const char* kDatabase = "pooled";
constexpr auto kMatchTimeout = 20s;

// One node: a fake StatsService and the collector that meters it.
struct Node {
  std::string name;
  std::unique_ptr<FakeStatsProcess> fake;
  std::unique_ptr<CollectorRunner> collector;
  CounterMap served;  // what the fake has counted, kept in step with it

  void Add(const std::string& counter, int64_t bytes) {
    ASSERT_EQ(fake->Command("add " + counter + " " + std::to_string(bytes)),
              "");
    served[counter] += bytes;
  }
};

class CollectorPgBouncerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (PgBouncer::Binary().empty()) {
      GTEST_SKIP() << "pgbouncer is not installed (apt-get install "
                      "pgbouncer, as scripts/install-deps.sh test does): the "
                      "collector is not checked through a pooler";
    }
    pg_ = std::make_unique<PgServer>();
    pg_->CreateDatabase(kDatabase);
    bouncer_ = std::make_unique<PgBouncer>(pg_->port(),
                                           /*server_connections=*/1);
    for (const char* name : {"edge-a", "edge-b"}) {
      Node node;
      node.name = name;
      node.fake =
          std::make_unique<FakeStatsProcess>(BOXMETER_FAKE_STATS_SERVER_BIN);
      node.collector = std::make_unique<CollectorRunner>(
          BOXMETER_COLLECTOR_BIN,
          CollectorRunner::Settings{.node = name,
                                    .source_address = node.fake->address(),
                                    .database_url = bouncer_->Url(kDatabase),
                                    .poll_interval = "200ms"});
      nodes_.push_back(std::move(node));
    }
  }

  // Some traffic on every counter of `node`, more for a larger `round`.
  void Traffic(Node& node, int64_t round) {
    node.Add("user>>>alice>>>traffic>>>uplink", 100 * round);
    node.Add("user>>>alice>>>traffic>>>downlink", 400 * round);
    node.Add("user>>>bob>>>traffic>>>downlink", 70 * round);
    node.Add("inbound>>>vless-in>>>traffic>>>uplink", 100 * round);
    node.Add("outbound>>>direct>>>traffic>>>downlink", 470 * round);
  }

  // What the views must show for `node`: its own inbound and outbound, and
  // the users (alice and bob use both nodes) summed over every node.
  CounterMap Expected(const Node& node) const {
    CounterMap expected;
    for (const Node& any : nodes_) {
      for (const auto& [name, bytes] : any.served) {
        bool user = name.starts_with("user>>>");
        if (user || &any == &node) expected[name] += bytes;
      }
    }
    return expected;
  }

  // Awaits (bounded) the database holding exactly what every node's fake
  // served, read from PostgreSQL directly (not through the pooler).
  ::testing::AssertionResult DatabaseHoldsEveryNode() {
    for (Node& node : nodes_) {
      CounterMap expected = Expected(node);
      CounterMap actual;
      std::string error;
      if (!WaitUntil(
              [&] {
                error =
                    TryTrafficInDatabase(*pg_, kDatabase, node.name, &actual);
                actual = WithoutZeros(std::move(actual));
                return error.empty() && actual == expected;
              },
              kMatchTimeout, 50ms)) {
        return ::testing::AssertionFailure()
               << node.name << ": the database differs from its fake:\n"
               << DescribeDifference(expected, actual) << error
               << "\ncollector log tail:\n"
               << node.collector->LogTail() << "\npgbouncer log:\n"
               << bouncer_->Log();
      }
    }
    return ::testing::AssertionSuccess();
  }

  std::unique_ptr<PgServer> pg_;
  std::unique_ptr<PgBouncer> bouncer_;
  std::vector<Node> nodes_;
};

TEST_F(CollectorPgBouncerTest, TwoCollectorsOnOneServerConnectionExactly) {
  Node& a = nodes_[0];
  Node& b = nodes_[1];
  Traffic(a, 1);
  Traffic(b, 2);
  a.collector->Start();
  b.collector->Start();
  ASSERT_TRUE(DatabaseHoldsEveryNode());

  // Polls and commits of both interleave on the one server session.
  for (int64_t round = 3; round < 6; ++round) {
    Traffic(a, round);
    Traffic(b, round + 1);
    ASSERT_TRUE(DatabaseHoldsEveryNode());
  }

  // A clean restart: SIGTERM commits what is pending and releases the
  // lease; traffic while it is down is counted by its successor.
  a.collector->Signal(SIGTERM);
  ASSERT_EQ(a.collector->Wait(30s), std::optional<int>(0))
      << a.collector->LogTail();
  Traffic(a, 7);
  a.collector->Start();
  ASSERT_TRUE(DatabaseHoldsEveryNode());

  // A crash: nothing is released; the successor waits for the lease to
  // lapse, then counts what the fake counted meanwhile, once.
  ASSERT_TRUE(b.collector->AwaitPolls(2, 10s)) << b.collector->LogTail();
  b.collector->Kill();
  ASSERT_TRUE(b.collector->Wait(10s).has_value());
  Traffic(b, 8);
  Traffic(a, 9);
  b.collector->Start();
  ASSERT_TRUE(DatabaseHoldsEveryNode());

  // The pooler really pooled: PostgreSQL never had more than the one server
  // connection for this database, and nothing the collectors did needed a
  // session of their own.
  EXPECT_EQ(pg_->Query(kDatabase,
                       "SELECT count(*) FROM pg_stat_activity WHERE datname "
                       "= current_database() AND pid <> pg_backend_pid()"),
            "1");
  for (Node& node : nodes_) {
    EXPECT_EQ(node.collector->CountLogLines(" error "), 0u)
        << node.name << ":\n"
        << node.collector->Log();
  }
  EXPECT_EQ(bouncer_->Log().find("prepared statement"), std::string::npos)
      << bouncer_->Log();
}

}  // namespace
}  // namespace boxmeter::testing
