// GrpcStatsSource against FakeStatsServer (sing-box's behaviour): what the
// request carries, raw duplicates, restarts, the errors an operator sees, a
// large reply, and reconnecting after the server comes back.
#include "grpc_stats_source.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "fake_stats_server.h"
#include "safe_text.h"
#include "snapshot.h"
#include "support/process.h"

namespace boxmeter {
namespace {

using namespace std::chrono_literals;
using testing::FakeStatsServer;
using ::testing::HasSubstr;

constexpr int64_t kLargeLimit = 256 << 20;

struct FetchResult {
  Status status;
  StatsReply reply;
};

// Starts a fetch and awaits its callback, failing the test if it does not
// come within `wait`.
FetchResult FetchNow(GrpcStatsSource& source,
                     std::chrono::milliseconds timeout = 5s,
                     std::chrono::milliseconds wait = 30s) {
  auto promise = std::make_shared<std::promise<FetchResult>>();
  std::future<FetchResult> future = promise->get_future();
  source.Fetch(timeout, [promise](Status status, StatsReply reply) {
    promise->set_value(FetchResult{std::move(status), std::move(reply)});
  });
  if (future.wait_for(wait) != std::future_status::ready) {
    ADD_FAILURE() << "the fetch did not call back within " << wait.count()
                  << "ms";
    return FetchResult{Status::Error("no callback"), {}};
  }
  return future.get();
}

int64_t ValueOf(const StatsReply& reply, const std::string& name) {
  for (const RawStat& stat : reply.stats) {
    if (stat.name == name) return stat.value;
  }
  ADD_FAILURE() << name << " is not in the reply";
  return -1;
}

bool WaitUntilQueried(const FakeStatsServer& server) {
  return testing::WaitUntil(
      [&server] {
        return server.calls(FakeStatsServer::Method::kQueryStats) > 0;
      },
      5s, 10ms);
}

const std::string kAliceUp = "user>>>alice>>>traffic>>>uplink";
const std::string kAliceDown = "user>>>alice>>>traffic>>>downlink";

TEST(GrpcStatsSourceTest, SendsBothPatternFieldsAndNeverResets) {
  FakeStatsServer server;
  server.Set(kAliceUp, 100);
  server.Set(kAliceDown, 2000);
  server.Set("inbound>>>vless-in>>>traffic>>>uplink", 7);
  GrpcStatsSource source(server.address(), kLargeLimit);

  FetchResult result = FetchNow(source);
  ASSERT_TRUE(result.status.ok()) << result.status.message();

  auto query = server.last_query();
  ASSERT_TRUE(query.has_value());
  EXPECT_EQ(query->pattern(), ">>>traffic>>>");
  ASSERT_EQ(query->patterns_size(), 1);
  EXPECT_EQ(query->patterns(0), ">>>traffic>>>");
  EXPECT_FALSE(query->reset());
  EXPECT_FALSE(query->regexp());
  EXPECT_EQ(server.calls(FakeStatsServer::Method::kGetSysStats), 2);
  EXPECT_EQ(server.calls(FakeStatsServer::Method::kQueryStats), 1);

  EXPECT_EQ(result.reply.stats.size(), 3u);
  EXPECT_EQ(ValueOf(result.reply, kAliceUp), 100);
  EXPECT_EQ(ValueOf(result.reply, kAliceDown), 2000);
  // Nothing was reset on the server.
  EXPECT_EQ(server.Get(kAliceUp), 100);
  EXPECT_EQ(server.Get(kAliceDown), 2000);
  EXPECT_LE(result.reply.before.sent_ms, result.reply.before.received_ms);
  EXPECT_LE(result.reply.before.received_ms, result.reply.after.sent_ms);
  EXPECT_LE(result.reply.after.sent_ms, result.reply.after.received_ms);
}

TEST(GrpcStatsSourceTest, BracketsUptimeSamplesWithTheInjectedClock) {
  FakeStatsServer server;
  server.SetUptimeOffset(3600s);
  std::atomic<int64_t> monotonic_ms = 1'000'000;
  HostClock clock{[&monotonic_ms] { return monotonic_ms += 10; },
                  [] { return int64_t{1'767'225'600'000}; }, "boot-x"};
  GrpcStatsSource source(server.address(), kLargeLimit, clock);

  FetchResult result = FetchNow(source);
  ASSERT_TRUE(result.status.ok()) << result.status.message();
  // Read before each request and after each answer, in that order.
  EXPECT_EQ(result.reply.before.sent_ms, 1'000'010);
  EXPECT_EQ(result.reply.before.received_ms, 1'000'020);
  EXPECT_EQ(result.reply.after.sent_ms, 1'000'030);
  EXPECT_EQ(result.reply.after.received_ms, 1'000'040);
  EXPECT_EQ(result.reply.answered_wall_ms, 1'767'225'600'000);
  EXPECT_EQ(result.reply.boot_id, "boot-x");
  EXPECT_TRUE(result.reply.same_kernel);  // the fake listens on loopback
  EXPECT_GE(result.reply.before.uptime_s, 3600u);
  EXPECT_LE(result.reply.before.uptime_s, result.reply.after.uptime_s);
}

TEST(GrpcStatsSourceTest, ReturnsDuplicatesRawAndMakeSnapshotMergesThem) {
  FakeStatsServer server;
  server.SetDuplicateEverything(true);
  server.Set(kAliceUp, 100);
  server.Set(kAliceDown, 2000);
  GrpcStatsSource source(server.address(), kLargeLimit);

  FetchResult result = FetchNow(source);
  ASSERT_TRUE(result.status.ok()) << result.status.message();
  EXPECT_EQ(result.reply.stats.size(), 4u);

  Snapshot snapshot;
  ASSERT_TRUE(MakeSnapshot(result.reply, &snapshot).ok());
  ASSERT_EQ(snapshot.counters.size(), 1u);
  const auto& [key, values] = *snapshot.counters.begin();
  EXPECT_EQ(key.kind, CounterKind::kUser);
  EXPECT_EQ(key.name, "alice");
  EXPECT_EQ(values, (CounterValues{.uplink = 100, .downlink = 2000}));
  EXPECT_EQ(snapshot.duplicates, 2u);
}

TEST(GrpcStatsSourceTest, RestartShowsLowerValuesAndSmallerUptime) {
  FakeStatsServer server;
  server.SetUptimeOffset(3600s);
  server.Set(kAliceUp, 5000);
  server.Set(kAliceDown, 9000);
  GrpcStatsSource source(server.address(), kLargeLimit);

  FetchResult first = FetchNow(source);
  ASSERT_TRUE(first.status.ok()) << first.status.message();
  EXPECT_GE(first.reply.after.uptime_s, 3600u);

  server.Restart();
  server.Add(kAliceUp, 10);  // alice's first connection after the reload
  FetchResult second = FetchNow(source);
  ASSERT_TRUE(second.status.ok()) << second.status.message();
  EXPECT_LT(second.reply.after.uptime_s, 60u);
  ASSERT_EQ(second.reply.stats.size(), 1u);
  EXPECT_EQ(ValueOf(second.reply, kAliceUp), 10);

  Snapshot before, after;
  ASSERT_TRUE(MakeSnapshot(first.reply, &before).ok());
  ASSERT_TRUE(MakeSnapshot(second.reply, &after).ok());
  // Both fetches on this kernel's CLOCK_MONOTONIC, the clock the fake's
  // uptime runs on (as Go's does in sing-box): the intervals tell.
  EXPECT_TRUE(before.instance.same_kernel);
  EXPECT_FALSE(before.instance.start.Overlaps(after.instance.start));
  InstanceIdentity identity;
  identity.Continue(before.instance);
  EXPECT_TRUE(identity.ProvesNew(after.instance));
}

TEST(GrpcStatsSourceTest, UnimplementedSaysHowToEnableTheApi) {
  FakeStatsServer server;
  server.SetFailure(grpc::StatusCode::UNIMPLEMENTED);
  GrpcStatsSource source(server.address(), kLargeLimit);

  FetchResult result = FetchNow(source);
  EXPECT_EQ(result.status.code(), Status::Code::kUnimplemented);
  EXPECT_THAT(result.status.message(), HasSubstr("with_v2ray_api"));
  EXPECT_THAT(result.status.message(),
              HasSubstr("experimental.v2ray_api.stats.enabled"));
  EXPECT_THAT(result.status.message(), HasSubstr(server.address()));
  EXPECT_TRUE(result.reply.stats.empty());
}

TEST(GrpcStatsSourceTest, OtherErrorsCarryTheirCode) {
  FakeStatsServer server;
  server.SetFailure(grpc::StatusCode::PERMISSION_DENIED);
  GrpcStatsSource source(server.address(), kLargeLimit);

  FetchResult result = FetchNow(source);
  EXPECT_EQ(result.status.code(), Status::Code::kError);
  EXPECT_THAT(result.status.message(), HasSubstr("PERMISSION_DENIED"));
  EXPECT_THAT(result.status.message(), HasSubstr(server.address()));
}

TEST(GrpcStatsSourceTest, SlowReplyGivesDeadlineWithinBoundedTime) {
  FakeStatsServer server;
  server.Set(kAliceUp, 1);
  GrpcStatsSource source(server.address(), kLargeLimit);
  // Connected first: on a loaded machine (or under TSan) connecting alone
  // can take longer than a short deadline, which then hits GetSysStats.
  ASSERT_TRUE(FetchNow(source).status.ok());
  server.SetDelay(10s, FakeStatsServer::Method::kQueryStats);

  auto start = std::chrono::steady_clock::now();
  FetchResult result = FetchNow(source, 1000ms, 10s);
  auto elapsed = std::chrono::steady_clock::now() - start;

  EXPECT_EQ(result.status.code(), Status::Code::kDeadline);
  EXPECT_THAT(result.status.message(), HasSubstr(server.address()));
  EXPECT_THAT(result.status.message(), HasSubstr("QueryStats"));
  EXPECT_THAT(result.status.message(), HasSubstr("1000ms"));
  EXPECT_THAT(result.status.message(), HasSubstr("source.timeout"));
  EXPECT_LT(elapsed, 5s);  // the deadline, not the 10 s reply
}

TEST(GrpcStatsSourceTest, TwoHundredThousandCountersArriveWhole) {
  constexpr size_t kCounters = 200'000;
  FakeStatsServer server;
  server.Populate(kCounters);
  EXPECT_EQ(server.TouchFraction(1.0, 42), kCounters);
  GrpcStatsSource source(server.address(), kLargeLimit);

  FetchResult result = FetchNow(source, 30s, 60s);
  ASSERT_TRUE(result.status.ok()) << result.status.message();
  ASSERT_EQ(result.reply.stats.size(), kCounters);
  EXPECT_EQ(result.reply.stats.front().name, FakeStatsServer::SyntheticName(0));
  EXPECT_EQ(result.reply.stats.back().name,
            FakeStatsServer::SyntheticName(kCounters - 1));

  Snapshot snapshot;
  ASSERT_TRUE(MakeSnapshot(result.reply, &snapshot).ok());
  EXPECT_EQ(snapshot.counters.size(), kCounters / 2);
  EXPECT_EQ(snapshot.malformed, 0u);
  EXPECT_EQ(snapshot.duplicates, 0u);
  for (const auto& [key, values] : snapshot.counters) {
    ASSERT_EQ(values, (CounterValues{.uplink = 42, .downlink = 42}))
        << key.name;
  }
}

TEST(GrpcStatsSourceTest, TooSmallMaxMessageSizeNamesTheKey) {
  FakeStatsServer server;
  server.Populate(1000);
  GrpcStatsSource source(server.address(), 4096);

  FetchResult result = FetchNow(source);
  EXPECT_FALSE(result.status.ok());
  EXPECT_THAT(result.status.message(), HasSubstr("source.max_message_size"));
  EXPECT_THAT(result.status.message(), HasSubstr("4096"));
  EXPECT_THAT(result.status.message(), HasSubstr(server.address()));
}

// A port that was just free, learnt from a server that has stopped.
int UnusedPort() {
  FakeStatsServer probe;
  return probe.port();
}

TEST(GrpcStatsSourceTest, UnreachableThenSeenOnceTheServerStarts) {
  int port = UnusedPort();
  std::string address = "127.0.0.1:" + std::to_string(port);
  GrpcStatsSource source(address, kLargeLimit);

  FetchResult down = FetchNow(source, 2s, 10s);
  EXPECT_EQ(down.status.code(), Status::Code::kUnavailable);
  EXPECT_THAT(down.status.message(), HasSubstr(address));
  EXPECT_THAT(down.status.message(),
              HasSubstr("experimental.v2ray_api.listen"));

  FakeStatsServer server(port);
  server.Set(kAliceUp, 5);
  // The channel's reconnect backoff is capped at 5s: a poll interval later
  // (10s by default) the server is seen. Retry as a collector would, faster.
  auto start = std::chrono::steady_clock::now();
  FetchResult up;
  while (std::chrono::steady_clock::now() - start < 15s) {
    up = FetchNow(source, 2s, 10s);
    if (up.status.ok()) break;
    EXPECT_EQ(up.status.code(), Status::Code::kUnavailable)
        << up.status.message();
    std::this_thread::sleep_for(250ms);  // poll pacing, not synchronisation
  }
  ASSERT_TRUE(up.status.ok()) << up.status.message();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 7s);
  EXPECT_EQ(ValueOf(up.reply, kAliceUp), 5);
}

TEST(GrpcStatsSourceTest, ReconnectsAfterTheServerRestarts) {
  auto server = std::make_unique<FakeStatsServer>();
  int port = server->port();
  server->Set(kAliceUp, 5);
  GrpcStatsSource source(server->address(), kLargeLimit);
  ASSERT_TRUE(FetchNow(source).status.ok());

  server.reset();
  FetchResult down = FetchNow(source, 2s, 10s);
  EXPECT_EQ(down.status.code(), Status::Code::kUnavailable)
      << down.status.message();

  server = std::make_unique<FakeStatsServer>(port);
  server->Set(kAliceUp, 1);
  auto start = std::chrono::steady_clock::now();
  FetchResult up;
  while (std::chrono::steady_clock::now() - start < 15s) {
    up = FetchNow(source, 2s, 10s);
    if (up.status.ok()) break;
    std::this_thread::sleep_for(250ms);  // poll pacing, not synchronisation
  }
  ASSERT_TRUE(up.status.ok()) << up.status.message();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 7s);
  EXPECT_EQ(ValueOf(up.reply, kAliceUp), 1);
}

TEST(GrpcStatsSourceTest, SecondFetchWhileOneIsInFlightFailsAtOnce) {
  FakeStatsServer server;
  server.SetDelay(500ms, FakeStatsServer::Method::kQueryStats);
  GrpcStatsSource source(server.address(), kLargeLimit);

  auto first = std::make_shared<std::promise<Status>>();
  std::future<Status> first_done = first->get_future();
  source.Fetch(5s, [first](Status status, StatsReply) {
    first->set_value(std::move(status));
  });
  FetchResult second = FetchNow(source, 5s, 1s);
  EXPECT_EQ(second.status.code(), Status::Code::kError);
  EXPECT_THAT(second.status.message(), HasSubstr("in progress"));

  ASSERT_EQ(first_done.wait_for(10s), std::future_status::ready);
  EXPECT_TRUE(first_done.get().ok());
  EXPECT_TRUE(FetchNow(source).status.ok());  // and the next one runs
}

TEST(GrpcStatsSourceTest, DestroyingTheSourceCancelsAndCallsBackFirst) {
  FakeStatsServer server;
  server.SetDelay(10s, FakeStatsServer::Method::kQueryStats);
  auto source =
      std::make_unique<GrpcStatsSource>(server.address(), kLargeLimit);
  auto promise = std::make_shared<std::promise<Status>>();
  std::future<Status> done = promise->get_future();
  source->Fetch(30s, [promise](Status status, StatsReply) {
    promise->set_value(std::move(status));
  });
  // Let the query reach the server, so the cancel hits a call in flight.
  ASSERT_TRUE(WaitUntilQueried(server));

  auto start = std::chrono::steady_clock::now();
  source.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  // The destructor returned only after done had run.
  ASSERT_EQ(done.wait_for(0s), std::future_status::ready);
  Status status = done.get();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("shutting down"));
}

TEST(GrpcStatsSourceTest, DoneMayStartTheNextFetch) {
  FakeStatsServer server;
  server.Set(kAliceUp, 1);
  GrpcStatsSource source(server.address(), kLargeLimit);

  auto second = std::make_shared<std::promise<FetchResult>>();
  std::future<FetchResult> second_done = second->get_future();
  source.Fetch(5s, [&source, second](Status status, StatsReply) {
    EXPECT_TRUE(status.ok()) << status.message();
    source.Fetch(5s, [second](Status status, StatsReply reply) {
      second->set_value(FetchResult{std::move(status), std::move(reply)});
    });
  });
  ASSERT_EQ(second_done.wait_for(10s), std::future_status::ready);
  FetchResult result = second_done.get();
  EXPECT_TRUE(result.status.ok()) << result.status.message();
  EXPECT_EQ(ValueOf(result.reply, kAliceUp), 1);
  EXPECT_EQ(server.calls(FakeStatsServer::Method::kQueryStats), 2);
}

TEST(GrpcStatsSourceTest, MayBeDestroyedFromInsideDone) {
  FakeStatsServer server;
  auto source =
      std::make_unique<GrpcStatsSource>(server.address(), kLargeLimit);
  auto promise = std::make_shared<std::promise<Status>>();
  std::future<Status> done = promise->get_future();
  source->Fetch(5s, [&source, promise](Status status, StatsReply) {
    source.reset();  // must neither deadlock nor crash
    promise->set_value(std::move(status));
  });
  ASSERT_EQ(done.wait_for(10s), std::future_status::ready);
  EXPECT_TRUE(done.get().ok());
  EXPECT_EQ(source, nullptr);
}

}  // namespace
}  // namespace boxmeter

namespace boxmeter {
namespace {

// True when no byte of `text` is a control character.
bool Inert(const std::string& text) {
  return std::none_of(text.begin(), text.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f;
  });
}

TEST(GrpcStatsSourceTest, APeersErrorMessageIsEscapedAndCut) {
  FakeStatsServer server;
  // gRPC carries any bytes in grpc-message (percent-encoded); a few KB fit
  // its default metadata limit.
  std::string hostile =
      "boom\r2026-01-01 info all is well\x1b[2J\x1b]0;pwned\x07\a" +
      std::string(4000, 'z');
  server.SetFailure(grpc::StatusCode::PERMISSION_DENIED, hostile);
  GrpcStatsSource source(server.address(), kLargeLimit);

  FetchResult result = FetchNow(source);
  const std::string& message = result.status.message();
  EXPECT_TRUE(Inert(message)) << message;
  EXPECT_THAT(message, HasSubstr("boom\\r2026-01-01 info all is well"
                                 "\\x1b[2J\\x1b]0;pwned\\x07\\x07"));
  EXPECT_THAT(message, HasSubstr("bytes)"));
  EXPECT_LT(message.size(), kMaxShownMessage + 300);
}

TEST(GrpcStatsSourceTest, AHostileCounterNameReachesTheLogInert) {
  FakeStatsServer server;
  // The query asks for names with ">>>traffic>>>"; the kind is unknown.
  std::string name = "evil\r\x1b[1A\x1b[2K\a" + std::string(2'000'000, 'n') +
                     ">>>traffic>>>uplink";
  server.Set(name, 1);
  GrpcStatsSource source(server.address(), kLargeLimit);

  FetchResult result = FetchNow(source);
  ASSERT_TRUE(result.status.ok()) << result.status.message();
  Snapshot snapshot;
  ASSERT_TRUE(MakeSnapshot(result.reply, &snapshot).ok());
  EXPECT_EQ(snapshot.malformed, 1u);
  // What the collector logs ("e.g. \"{first_malformed}\"").
  EXPECT_TRUE(
      snapshot.first_malformed.starts_with("evil\\r\\x1b[1A\\x1b[2K\\x07nnn"))
      << snapshot.first_malformed.substr(0, 100);
  EXPECT_TRUE(Inert(snapshot.first_malformed));
  EXPECT_LT(snapshot.first_malformed.size(), kMaxShownName + 40);
}

}  // namespace
}  // namespace boxmeter
