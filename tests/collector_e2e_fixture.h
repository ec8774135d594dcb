// The world of the end-to-end tests against the real v2ray-core (Debian's
// v2ray 4.34, which serves sing-box's StatsService): a throwaway PostgreSQL,
// v2ray-core with alice and bob on socks inbound "socks-in" and carol on
// "socks-b", an HTTP target for curl traffic, and boxmeter-collector binaries
// between them.
//
// Every test ends the same way: the database's user_traffic, inbound_traffic
// and outbound_traffic equal v2ray-core's own counters byte for byte. Across
// a v2ray-core restart the counters start again at 0, so the test "banks"
// what the old instance had counted: it lets the collector see the last
// traffic first (the only traffic the design cannot recover is what an
// instance counts after the last poll before it dies), then adds v2ray's
// counters to its bank.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "collector_runner.h"
#include "pg_server.h"
#include "traffic.h"
#include "v2ray_server.h"

namespace boxmeter::testing {

class CollectorE2eTest : public ::testing::Test {
 protected:
  static constexpr const char* kNode = "e2e";
  static constexpr const char* kDatabase = "e2e";
  static constexpr std::chrono::seconds kMatchTimeout{20};
  static constexpr size_t kSocksIn = 0;  // alice and bob
  static constexpr size_t kSocksB = 1;   // carol
  static const V2RayServer::Account kAlice, kBob, kCarol;

  void SetUp() override;

  // A config for this test's v2ray and database; the caller may change it.
  CollectorRunner::Settings CollectorSettings(
      std::string poll_interval = "200ms") const;
  std::unique_ptr<CollectorRunner> NewCollector(
      CollectorRunner::Settings settings) const;
  std::unique_ptr<CollectorRunner> NewCollector(
      std::string poll_interval = "200ms") const;
  void StartCollector();  // collector_ = NewCollector(), started

  void Push(const V2RayServer::Account& account, size_t inbound, int64_t down,
            int64_t up);
  // Some traffic from every user on both inbounds; a larger `round` pushes
  // more on every counter.
  void PushFromEveryone(int64_t round);

  // What the database must hold: the banked counters of earlier v2ray
  // instances plus the running instance's (predictable counters only).
  CounterMap Expected();
  // The database's predictable counters now.
  CounterMap InDatabase();

  // Awaits (bounded) the database catching up with v2ray-core.
  ::testing::AssertionResult DatabaseMatchesV2Ray();
  // The database equals v2ray-core now, without waiting: for after the
  // collector has stopped.
  ::testing::AssertionResult DatabaseEqualsV2RayNow();
  // The database may lag behind v2ray-core but never counts more.
  ::testing::AssertionResult DatabaseNeverAhead();
  // Awaits (bounded) the first commit of `collector_`: the poll at start
  // commits api-in's counters (never 0: v2ray's readiness check crossed it).
  ::testing::AssertionResult AwaitFirstCommit();
  // Awaits `count` polls of `collector_` that start after the call.
  ::testing::AssertionResult AwaitPolls(size_t count);
  // SIGTERM to `collector`, then its exit within `timeout` with code 0.
  ::testing::AssertionResult StopsWithZero(
      CollectorRunner& collector,
      std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // Adds v2ray's counters now to the bank and stops it (SIGTERM): call only
  // when a poll has seen its last traffic.
  void BankAndStop();
  // Waits until the instance has run for `seconds`, lets the collector see
  // its last traffic, then BankAndStop. `database_up`: the collector's having
  // seen it shows in the database; otherwise only the polls in its log show
  // it (pending in the collector).
  void BankAndStopV2Ray(bool database_up, uint32_t min_uptime_seconds = 4);

  // The database holds what every user pushed, at least: a guard against a
  // comparison that passes because both sides are empty.
  void ExpectEveryUserCounted();

  // Destroyed in reverse: the collector first, the database last.
  std::unique_ptr<PgServer> pg_;
  std::string database_url_;
  std::unique_ptr<HttpTarget> target_;
  std::unique_ptr<V2RayServer> v2ray_;
  std::unique_ptr<CollectorRunner> collector_;
  CounterMap banked_;
};

// The counters one per line, for failure messages.
std::string Format(const CounterMap& counters);

}  // namespace boxmeter::testing
