// Hostile and huge replies from the stats API, through the real gRPC
// adapter: a reply of a million counters arrives whole under the default
// source.max_message_size, and a reply that never finishes is a deadline
// after source.timeout, after which the poll loop keeps going and counts
// everything once the API answers again.
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>

#include "collector.h"
#include "config.h"
#include "fake_stats_server.h"
#include "fakes/fake_notifier.h"
#include "fakes/fake_store.h"
#include "grpc_stats_source.h"
#include "snapshot.h"
#include "support/process.h"

namespace boxmeter {
namespace {

using namespace std::chrono_literals;
using testing::FakeNotifier;
using testing::FakeStatsServer;
using testing::FakeStore;

struct FetchResult {
  Status status;
  StatsReply reply;
  std::chrono::milliseconds took{0};
};

FetchResult FetchNow(GrpcStatsSource& source, std::chrono::milliseconds timeout,
                     std::chrono::milliseconds wait) {
  auto promise = std::make_shared<std::promise<FetchResult>>();
  std::future<FetchResult> future = promise->get_future();
  auto start = std::chrono::steady_clock::now();
  source.Fetch(timeout, [promise, start](Status status, StatsReply reply) {
    promise->set_value(
        FetchResult{std::move(status), std::move(reply),
                    std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - start)});
  });
  if (future.wait_for(wait) != std::future_status::ready) {
    ADD_FAILURE() << "the fetch did not call back within " << wait.count()
                  << "ms";
    return FetchResult{Status::Error("no callback"), {}};
  }
  return future.get();
}

TEST(HostileReplyTest, AMillionCountersArriveWithinTheDefaultLimit) {
  FakeStatsServer server;
  server.Populate(1'000'000);
  server.TouchFraction(1.0, 12345);
  GrpcStatsSource source(server.address(), Config{}.source.max_message_size);
  FetchResult result = FetchNow(source, 120s, 180s);
  ASSERT_TRUE(result.status.ok()) << result.status.message();
  ASSERT_EQ(result.reply.stats.size(), 1'000'000u);

  Snapshot snapshot;
  ASSERT_TRUE(MakeSnapshot(result.reply, &snapshot).ok());
  EXPECT_EQ(snapshot.counters.size(), 500'000u);  // uplink + downlink pairs
  EXPECT_EQ(snapshot.malformed, 0u);
  EXPECT_EQ(snapshot.duplicates, 0u);
  for (const auto& [key, values] : snapshot.counters) {
    ASSERT_EQ(values, (CounterValues{12345, 12345})) << key.name;
  }
}

TEST(HostileReplyTest, AReplyThatNeverFinishesIsADeadline) {
  FakeStatsServer server;
  server.Set("user>>>alice>>>traffic>>>uplink", 1);
  server.SetDelay(1h, FakeStatsServer::Method::kQueryStats);
  GrpcStatsSource source(server.address(), Config{}.source.max_message_size);
  FetchResult result = FetchNow(source, 300ms, 30s);
  EXPECT_EQ(result.status.code(), Status::Code::kDeadline)
      << result.status.message();
  EXPECT_TRUE(result.reply.stats.empty());
  // One call's deadline, not the server's hour; generous for a loaded
  // machine and sanitizers.
  EXPECT_LT(result.took, 10s);
}

TEST(HostileReplyTest, TheLoopOutlivesRepliesThatNeverFinish) {
  const CounterKey alice{CounterKind::kUser, "alice"};
  FakeStatsServer server;
  server.Set("user>>>alice>>>traffic>>>uplink", 10);
  server.Set("user>>>alice>>>traffic>>>downlink", 20);
  server.SetDelay(1h, FakeStatsServer::Method::kQueryStats);

  Config config;
  config.node = "hostile";
  config.source.address = server.address();
  config.database.url = "postgresql://boxmeter@db/boxmeter";
  config.poll.interval = 100ms;
  config.source.timeout = 200ms;
  GrpcStatsSource source(server.address(), config.source.max_message_size);
  FakeStore store;
  FakeNotifier notifier;
  boost::asio::io_context io;
  Collector collector(io, config, source, store, notifier);
  collector.Start();

  auto run_until = [&](auto done) {
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (!done() && !io.stopped() &&
           std::chrono::steady_clock::now() < deadline) {
      io.run_for(10ms);
    }
    return done();
  };
  // Several polls, each cut off by its deadline.
  ASSERT_TRUE(run_until(
      [&] { return server.calls(FakeStatsServer::Method::kQueryStats) >= 4; }));
  EXPECT_FALSE(io.stopped());
  EXPECT_EQ(store.applied(), 0);

  // The API answers again: everything it counted is committed, once.
  server.SetDelay(0ms);
  ASSERT_TRUE(run_until([&] {
    return store.Total(alice) == CounterValues{10, 20};
  }));
  server.Set("user>>>alice>>>traffic>>>uplink", 15);
  ASSERT_TRUE(run_until([&] {
    return store.Total(alice) == CounterValues{15, 20};
  }));

  collector.Stop();
  io.run_for(30s);
  EXPECT_TRUE(io.stopped());
  EXPECT_EQ(store.Total(alice), (CounterValues{15, 20}));
}

}  // namespace
}  // namespace boxmeter
