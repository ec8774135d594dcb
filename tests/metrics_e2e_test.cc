// End to end: the collector's /metrics scraped by Debian's real Prometheus
// (tests/support/prometheus_server.h) while real v2ray-core restarts and the
// collector restarts: the traffic series equal the database and what was
// pushed, byte for byte, and never go down. Plus promtool's verdict on the
// exposition and hostile clients that must not stall the polls.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "collector_e2e_fixture.h"
#include "process.h"
#include "prometheus_server.h"

namespace boxmeter::testing {
namespace {

using namespace std::chrono_literals;

class MetricsE2eTest : public CollectorE2eTest {
 protected:
  // Starts collector_ with its endpoint on a free loopback port.
  void StartCollectorWithMetrics() {
    listen_ = "127.0.0.1:" + std::to_string(FreePort());
    CollectorRunner::Settings settings = CollectorSettings();
    settings.metrics_listen = listen_;
    collector_ = NewCollector(settings);
    collector_->Start();
  }

  std::string Scrape() { return HttpGet("http://" + listen_ + "/metrics", 5s); }

  // The traffic series' latest samples, named like the stats API's
  // counters, predictable ones only (as Expected()).
  static CounterMap InPrometheus(PrometheusServer& prometheus) {
    CounterMap counters;
    for (const char* direction : {"uplink", "downlink"}) {
      std::string series = std::string("v2ray_traffic_") + direction +
                           "_bytes_total{node=\"" + kNode + "\"}";
      for (const auto& [key, value] :
           prometheus.Query(series, {"dimension", "target"})) {
        counters[key + ">>>traffic>>>" + direction] =
            static_cast<int64_t>(value);
      }
    }
    return PredictableV2RayCounters(std::move(counters));
  }

  // Awaits (bounded) Prometheus' latest samples equal to v2ray-core's
  // counters (banked + current) and to the database.
  ::testing::AssertionResult PrometheusMatches(PrometheusServer& prometheus,
                                               CounterMap* seen = nullptr) {
    CounterMap expected, actual;
    bool matched = WaitUntil(
        [&] {
          expected = Expected();
          actual = InPrometheus(prometheus);
          return expected == actual && InDatabase() == actual;
        },
        kMatchTimeout, 250ms);
    if (seen) *seen = actual;
    if (matched) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "Prometheus differs from v2ray-core after "
           << kMatchTimeout.count() << " s:\n"
           << DescribeDifference(expected, actual) << "Prometheus log:\n"
           << prometheus.LogTail() << "\ncollector log tail:\n"
           << collector_->LogTail();
  }

  std::string listen_;
};

TEST_F(MetricsE2eTest, PrometheusSeesExactTotalsThatNeverDecrease) {
  StartCollectorWithMetrics();
  PrometheusServer prometheus({listen_});
  prometheus.Start();
  PushFromEveryone(1);
  ASSERT_TRUE(DatabaseMatchesV2Ray());
  CounterMap before;
  ASSERT_TRUE(PrometheusMatches(prometheus, &before));
  ExpectEveryUserCounted();

  // v2ray-core restarts: its counters start again from zero, the series
  // go on from the committed totals.
  ASSERT_NO_FATAL_FAILURE(BankAndStopV2Ray(/*database_up=*/true));
  v2ray_->Start();
  PushFromEveryone(2);
  CounterMap after;
  ASSERT_TRUE(PrometheusMatches(prometheus, &after));
  // The increase across the restart is exactly what the new instance
  // counted: the traffic pushed since.
  CounterMap pushed = PredictableV2RayCounters(v2ray_->GroundTruth());
  for (const auto& [name, value] : pushed) {
    EXPECT_EQ(after[name] - before[name], value) << name;
  }

  // The collector restarts: the new process starts from the database.
  ASSERT_TRUE(StopsWithZero(*collector_));
  collector_->Start();
  Push(kAlice, kSocksIn, 23'456, 1'234);
  ASSERT_TRUE(PrometheusMatches(prometheus));

  // Never lower in any sample Prometheus took, and it did scrape through all
  // of it (the restart counter of the first collector process moved).
  for (const char* traffic : {"v2ray_traffic_uplink_bytes_total",
                              "v2ray_traffic_downlink_bytes_total"}) {
    std::string series = std::string(traffic) + "[10m]";
    EXPECT_EQ(prometheus.Query("max(resets(" + series + "))"),
              (std::map<std::string, double>{{"", 0}}))
        << traffic;
    // Every series was scraped before and after the restart at least.
    EXPECT_GE(prometheus.Query("min(count_over_time(" + series + "))")[""], 2)
        << traffic;
  }
  EXPECT_GE(prometheus.Query("max(max_over_time("
                             "boxmeter_sing_box_restarts_total[10m]))")[""],
            1);

  // The exposition passes promtool's parser and linter, and shows health.
  std::string exposition = Scrape();
  std::string output;
  EXPECT_EQ(PromtoolCheckMetrics(exposition, &output), 0) << output;
  EXPECT_EQ(output, "");
  for (const char* series :
       {"boxmeter_source_up{node=\"e2e\"} 1\n",
        "boxmeter_database_up{node=\"e2e\"} 1\n",
        "boxmeter_writer{node=\"e2e\"} 1\n",
        "boxmeter_commits_total{node=\"e2e\",outcome=\"applied\"}",
        "boxmeter_last_successful_commit_timestamp_seconds{node=\"e2e\"} ",
        "boxmeter_build_info{node=\"e2e\",version=\""}) {
    EXPECT_NE(exposition.find(series), std::string::npos) << series;
  }
}

// A loopback TCP connection that sends `data` (maybe nothing) and then
// stays open; closed when destroyed.
class Client {
 public:
  Client(int port, const std::string& data) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) ==
            0 &&
        !data.empty()) {
      (void)send(fd_, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    }
  }
  ~Client() { close(fd_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

 private:
  int fd_ = -1;
};

TEST_F(MetricsE2eTest, HostileClientsDoNotStallPolling) {
  StartCollectorWithMetrics();
  ASSERT_TRUE(AwaitFirstCommit());
  int port = std::stoi(listen_.substr(listen_.rfind(':') + 1));
  // More idle connections than the server keeps, half-sent requests, a
  // header that never ends and a body that never comes.
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 40; ++i) {
    const char* data[] = {
        "", "GET /metr", "GET /metrics HTTP/1.1\r\nX-Slow: aaaa",
        "POST /metrics HTTP/1.1\r\nContent-Length: 99999\r\n\r\n"};
    clients.push_back(std::make_unique<Client>(port, data[i % 4]));
  }
  // The collector still polls and commits as usual meanwhile.
  PushFromEveryone(1);
  ASSERT_TRUE(AwaitPolls(3));
  ASSERT_TRUE(DatabaseMatchesV2Ray());
  EXPECT_TRUE(collector_->Running()) << collector_->LogTail();
  clients.clear();
  // Once they are gone, a scrape is served again.
  std::string exposition;
  EXPECT_TRUE(WaitUntil(
      [&] {
        try {
          exposition = Scrape();
          return true;
        } catch (const std::runtime_error&) {
          return false;
        }
      },
      10s, 100ms));
  EXPECT_NE(exposition.find("v2ray_traffic_downlink_bytes_total{dimension="
                            "\"user\",target=\"alice\",node=\"e2e\"}"),
            std::string::npos)
      << exposition;
}

}  // namespace
}  // namespace boxmeter::testing
