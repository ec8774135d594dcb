// boxmeter-demo: boxmeter for real, on a throwaway PostgreSQL and a real
// v2ray-core (the same StatsService as sing-box), with real traffic pushed
// through it by curl. Shows what boxmeter-collector recorded next to what
// v2ray-core counted. Everything it starts is stopped and removed at the end.
#include <fmt/core.h>

#include <csignal>
#include <cstdio>
#include <map>
#include <optional>
#include <sstream>
#include <string>

#include "collector_runner.h"
#include "pg_server.h"
#include "process.h"
#include "traffic.h"
#include "v2ray_server.h"

namespace boxmeter::testing {
namespace {

using namespace std::chrono_literals;

void Say(const std::string& line) {
  std::printf("==> %s\n", line.c_str());
  std::fflush(stdout);
}

// The user counters of `counters`, summed into name -> (uplink, downlink).
std::map<std::string, std::pair<int64_t, int64_t>> Users(
    const CounterMap& counters) {
  std::map<std::string, std::pair<int64_t, int64_t>> users;
  for (const auto& [name, value] : counters) {
    const std::string prefix = "user>>>";
    if (name.rfind(prefix, 0) != 0) continue;
    size_t end = name.rfind(">>>traffic>>>");
    std::string user = name.substr(prefix.size(), end - prefix.size());
    if (name.ends_with("uplink")) {
      users[user].first += value;
    } else {
      users[user].second += value;
    }
  }
  return users;
}

bool UsersMatch(V2RayServer& v2ray, PgServer& pg, const std::string& db,
                const CounterMap& banked) {
  CounterMap expected = banked;
  for (const auto& [name, value] : v2ray.GroundTruth()) expected[name] += value;
  CounterMap actual;
  if (!TryTrafficInDatabase(pg, db, "demo", &actual).empty()) return false;
  return Users(expected) == Users(actual);
}

// The demo's claim, checked after the collector has stopped (its final
// poll and commit are the last writes): every user, inbound and outbound
// counter in the database (but the API's own) equals v2ray-core's over
// both of its lives. Prints any difference; 0 only when there is none and
// the collector exited 0.
int Verdict(std::optional<int> exit_code, const CounterMap& counted,
            const CounterMap& in_database) {
  std::string difference = DescribeDifference(
      PredictableV2RayCounters(counted), PredictableV2RayCounters(in_database));
  bool exited_zero = exit_code.has_value() && *exit_code == 0;
  if (!exited_zero) {
    std::fprintf(stderr,
                 "boxmeter-demo: boxmeter-collector %s after SIGTERM; "
                 "see its log above\n",
                 exit_code ? fmt::format("exited {}", *exit_code).c_str()
                           : "was still running 15 s");
  }
  if (!difference.empty()) {
    std::fprintf(stderr,
                 "boxmeter-demo: the database differs from what v2ray-core "
                 "counted:\n%s",
                 difference.c_str());
  }
  if (!exited_zero || !difference.empty()) return 1;
  Say("byte for byte the same (users, inbounds and outbounds, compared "
      "after the collector stopped). Everything started here is now stopped "
      "and removed.");
  return 0;
}

int Main() {
  Say("starting a throwaway PostgreSQL 15");
  PgServer pg;
  std::string db_url = pg.CreateDatabase("boxmeter");

  Say("starting v2ray-core with users alice and bob on socks-in, carol on "
      "socks-b");
  V2RayServer v2ray({{{"socks-in", {{"alice", "pw-a"}, {"bob", "pw-b"}}},
                      {"socks-b", {{"carol", "pw-c"}}}}});
  v2ray.Start();
  HttpTarget target;

  Say("starting boxmeter-collector: poll.interval 1s, source " +
      v2ray.ApiAddress());
  CollectorRunner::Settings settings;
  settings.node = "demo";
  settings.source_address = v2ray.ApiAddress();
  settings.database_url = db_url;
  settings.poll_interval = "1s";
  settings.log_level = "info";
  CollectorRunner collector(BOXMETER_COLLECTOR_BIN, settings);
  collector.Start();

  Say("pushing traffic through v2ray with curl");
  PushTraffic(target, v2ray.SocksPort(0), "alice", "pw-a", 3'000'000, 200'000);
  PushTraffic(target, v2ray.SocksPort(0), "bob", "pw-b", 1'000'000, 50'000);
  PushTraffic(target, v2ray.SocksPort(1), "carol", "pw-c", 500'000, 500'000);
  CounterMap banked;
  if (!WaitUntil([&] { return UsersMatch(v2ray, pg, "boxmeter", banked); }, 30s,
                 200ms)) {
    std::fprintf(stderr, "the database did not catch up; collector log:\n%s\n",
                 collector.LogTail().c_str());
    return 1;
  }

  Say("restarting v2ray-core (its counters start again at zero), then more "
      "traffic for alice");
  for (const auto& [name, value] : v2ray.GroundTruth()) banked[name] += value;
  v2ray.Restart();
  PushTraffic(target, v2ray.SocksPort(0), "alice", "pw-a", 700'000, 10'000);
  if (!WaitUntil([&] { return UsersMatch(v2ray, pg, "boxmeter", banked); }, 30s,
                 200ms)) {
    std::fprintf(stderr, "the database did not catch up; collector log:\n%s\n",
                 collector.LogTail().c_str());
    return 1;
  }
  collector.Signal(SIGTERM);
  std::optional<int> exit_code = collector.Wait(15s);

  std::printf("\n--- boxmeter-collector's log ---\n%s\n",
              collector.LogTail(20).c_str());
  std::printf(
      "--- SELECT name, uplink, downlink, total FROM user_traffic ---\n");
  std::printf("%-8s %12s %12s %12s\n", "name", "uplink", "downlink", "total");
  std::istringstream rows(pg.Query(
      "boxmeter",
      "SELECT name, uplink, downlink, total FROM user_traffic ORDER BY name"));
  for (std::string row; std::getline(rows, row);) {
    std::istringstream fields(row);
    std::string name, up, down, total;
    std::getline(fields, name, '|');
    std::getline(fields, up, '|');
    std::getline(fields, down, '|');
    std::getline(fields, total, '|');
    std::printf("%-8s %12s %12s %12s\n", name.c_str(), up.c_str(), down.c_str(),
                total.c_str());
  }
  CounterMap counted = banked;
  for (const auto& [name, value] : v2ray.GroundTruth()) counted[name] += value;
  std::printf("\n--- what v2ray-core counted (both of its lives) ---\n");
  for (const auto& [user, traffic] : Users(counted)) {
    std::printf("%-8s %12lld %12lld\n", user.c_str(),
                static_cast<long long>(traffic.first),
                static_cast<long long>(traffic.second));
  }
  return Verdict(exit_code, counted, TrafficInDatabase(pg, "boxmeter", "demo"));
}

}  // namespace
}  // namespace boxmeter::testing

int main() {
  try {
    return boxmeter::testing::Main();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "boxmeter-demo: %s\n", e.what());
    return 1;
  }
}
