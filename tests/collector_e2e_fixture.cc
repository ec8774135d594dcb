// CollectorE2eTest: see collector_e2e_fixture.h.
#include "collector_e2e_fixture.h"

#include <signal.h>

#include <optional>
#include <sstream>
#include <utility>

#include "process.h"

namespace boxmeter::testing {

using namespace std::chrono_literals;

const V2RayServer::Account CollectorE2eTest::kAlice{"alice", "alice-secret"};
const V2RayServer::Account CollectorE2eTest::kBob{"bob", "bob-secret"};
const V2RayServer::Account CollectorE2eTest::kCarol{"carol", "carol-secret"};

std::string Format(const CounterMap& counters) {
  std::ostringstream out;
  for (const auto& [name, value] : counters) {
    out << "  " << name << " = " << value << "\n";
  }
  return out.str();
}

void CollectorE2eTest::SetUp() {
  pg_ = std::make_unique<PgServer>();
  database_url_ = pg_->CreateDatabase(kDatabase);
  target_ = std::make_unique<HttpTarget>();
  v2ray_ = std::make_unique<V2RayServer>(V2RayServer::Options{
      .inbounds = {{"socks-in", {kAlice, kBob}}, {"socks-b", {kCarol}}}});
  v2ray_->Start();
}

CollectorRunner::Settings CollectorE2eTest::CollectorSettings(
    std::string poll_interval) const {
  return CollectorRunner::Settings{.node = kNode,
                                   .source_address = v2ray_->ApiAddress(),
                                   .database_url = database_url_,
                                   .poll_interval = std::move(poll_interval),
                                   .source_timeout = "2s"};
}

std::unique_ptr<CollectorRunner> CollectorE2eTest::NewCollector(
    CollectorRunner::Settings settings) const {
  return std::make_unique<CollectorRunner>(BOXMETER_COLLECTOR_BIN,
                                           std::move(settings));
}

std::unique_ptr<CollectorRunner> CollectorE2eTest::NewCollector(
    std::string poll_interval) const {
  return NewCollector(CollectorSettings(std::move(poll_interval)));
}

void CollectorE2eTest::StartCollector() {
  collector_ = NewCollector();
  collector_->Start();
}

void CollectorE2eTest::Push(const V2RayServer::Account& account, size_t inbound,
                            int64_t down, int64_t up) {
  PushTraffic(*target_, v2ray_->SocksPort(inbound), account.user,
              account.password, down, up);
}

void CollectorE2eTest::PushFromEveryone(int64_t round) {
  Push(kAlice, kSocksIn, 300'000 + round, 40'000 + 7 * round);
  Push(kBob, kSocksIn, 120'000 + 3 * round, 9'000 + round);
  Push(kCarol, kSocksB, 80'000 + round, 150'000 + round);
}

CounterMap CollectorE2eTest::Expected() {
  CounterMap expected = banked_;
  for (const auto& [name, value] : v2ray_->GroundTruth()) {
    expected[name] += value;
  }
  return PredictableV2RayCounters(std::move(expected));
}

CounterMap CollectorE2eTest::InDatabase() {
  return PredictableV2RayCounters(TrafficInDatabase(*pg_, kDatabase, kNode));
}

::testing::AssertionResult CollectorE2eTest::DatabaseMatchesV2Ray() {
  CounterMap expected, actual;
  std::string error;
  bool matched = WaitUntil(
      [&] {
        expected = Expected();
        // Until the collector has migrated the fresh database, or while
        // PostgreSQL starts again, a read may fail: not yet, then.
        error = TryTrafficInDatabase(*pg_, kDatabase, kNode, &actual);
        actual = PredictableV2RayCounters(std::move(actual));
        return error.empty() && expected == actual;
      },
      kMatchTimeout, 100ms);
  if (matched) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "after " << kMatchTimeout.count()
         << " s the database still differs from v2ray-core:\n"
         << DescribeDifference(expected, actual)
         << "v2ray-core (banked + current):\n"
         << Format(expected) << "database:\n"
         << Format(actual) << error << "\ncollector log ("
         << (collector_ ? collector_->log_path() : "none") << "), tail:\n"
         << (collector_ ? collector_->LogTail() : "");
}

::testing::AssertionResult CollectorE2eTest::DatabaseEqualsV2RayNow() {
  CounterMap actual = InDatabase();
  CounterMap expected = Expected();
  if (expected == actual) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "the database differs from v2ray-core:\n"
         << DescribeDifference(expected, actual) << "collector log ("
         << (collector_ ? collector_->log_path() : "none") << "), tail:\n"
         << (collector_ ? collector_->LogTail() : "");
}

::testing::AssertionResult CollectorE2eTest::DatabaseNeverAhead() {
  // The database first: v2ray's counters only grow meanwhile.
  CounterMap actual = InDatabase();
  CounterMap expected = Expected();
  std::ostringstream ahead;
  for (const auto& [name, value] : actual) {
    auto it = expected.find(name);
    int64_t limit = it == expected.end() ? 0 : it->second;
    if (value > limit) {
      ahead << "  " << name << ": database " << value << ", v2ray-core "
            << limit << " (" << value - limit << " bytes counted twice)\n";
    }
  }
  if (ahead.str().empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "the database counts more than v2ray-core:\n"
         << ahead.str() << "collector log tail:\n"
         << (collector_ ? collector_->LogTail() : "");
}

::testing::AssertionResult CollectorE2eTest::AwaitFirstCommit() {
  if (WaitUntil(
          [&] {
            CounterMap counters;
            return TryTrafficInDatabase(*pg_, kDatabase, kNode, &counters)
                       .empty() &&
                   !counters.empty();
          },
          kMatchTimeout, 100ms)) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "nothing committed within " << kMatchTimeout.count()
         << " s; collector log tail:\n"
         << collector_->LogTail();
}

::testing::AssertionResult CollectorE2eTest::AwaitPolls(size_t count) {
  if (collector_->AwaitPolls(count, 10s)) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "no " << count << " polls (log lines with \""
         << CollectorRunner::kPollLogLine << "\") within 10 s; log tail:\n"
         << collector_->LogTail();
}

::testing::AssertionResult CollectorE2eTest::StopsWithZero(
    CollectorRunner& collector, std::chrono::milliseconds timeout) {
  collector.Signal(SIGTERM);
  std::optional<int> code = collector.Wait(timeout);
  if (!code) {
    return ::testing::AssertionFailure()
           << "still running " << timeout.count() << " ms after SIGTERM:\n"
           << collector.LogTail();
  }
  if (*code != 0) {
    return ::testing::AssertionFailure()
           << "exit code " << *code << " after SIGTERM, expected 0:\n"
           << collector.LogTail();
  }
  return ::testing::AssertionSuccess();
}

void CollectorE2eTest::BankAndStop() {
  CounterMap last = v2ray_->GroundTruth();
  v2ray_->Stop();
  for (const auto& [name, value] : last) banked_[name] += value;
}

void CollectorE2eTest::BankAndStopV2Ray(bool database_up,
                                        uint32_t min_uptime_seconds) {
  ASSERT_TRUE(WaitUntil([&] { return v2ray_->Uptime() >= min_uptime_seconds; },
                        std::chrono::seconds(min_uptime_seconds + 5), 100ms));
  if (database_up) {
    ASSERT_TRUE(DatabaseMatchesV2Ray());
  } else {
    ASSERT_TRUE(AwaitPolls(2));
  }
  BankAndStop();
}

void CollectorE2eTest::ExpectEveryUserCounted() {
  CounterMap db = TrafficInDatabase(*pg_, kDatabase, kNode);
  for (const char* user : {"alice", "bob", "carol"}) {
    std::string name = std::string("user>>>") + user + ">>>traffic>>>";
    EXPECT_GT(db[name + "downlink"], 80'000) << user;
    EXPECT_GT(db[name + "uplink"], 9'000) << user;
  }
  EXPECT_GT(db["inbound>>>socks-in>>>traffic>>>downlink"], 0);
  EXPECT_GT(db["inbound>>>socks-b>>>traffic>>>uplink"], 0);
}

}  // namespace boxmeter::testing
