// boxmeter-demo: boxmeter's whole loop for real, on a throwaway PostgreSQL
// and a real v2ray-core (the same StatsService as sing-box), with real
// traffic pushed through it by curl: users with a quota as rows,
// boxmeter-gen's config, the collector's totals, a user over quota left out
// by the collector's hook and refused after the reload, and the totals next
// to what v2ray-core counted over both of its lives, compared to the byte.
// Everything it starts is stopped and removed at the end (with --keep, at
// Ctrl-C, leaving PostgreSQL and v2ray-core to try boxmeter-gen against).
#include <fmt/core.h>
#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "collector_runner.h"
#include "pg_server.h"
#include "process.h"
#include "sing_box_translation.h"
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
      "after the collector stopped)");
  return 0;
}

// One query's rows, printed as a table with the header `columns`.
void PrintTable(PgServer& pg, const std::string& sql,
                const std::vector<std::string>& columns) {
  std::printf("--- %s ---\n", sql.c_str());
  for (const std::string& column : columns) {
    std::printf("%-10s", column.c_str());
  }
  std::printf("\n");
  std::istringstream rows(pg.Query("boxmeter", sql));
  for (std::string row; std::getline(rows, row);) {
    std::istringstream fields(row);
    for (std::string field; std::getline(fields, field, '|');) {
      std::printf("%-10s", field.c_str());
    }
    std::printf("\n");
  }
  std::printf("\n");
}

// The inbounds of the sing-box config at `path` and their users, one line
// each ("socks-a (socks): alice bob"), and the users the stats block counts.
std::string Abridged(const std::string& path) {
  nlohmann::json config = nlohmann::json::parse(ReadFile(path));
  std::string out;
  for (const nlohmann::json& inbound : config["inbounds"]) {
    out += fmt::format(
        "      {} ({}, port {}):", inbound["tag"].get<std::string>(),
        inbound["type"].get<std::string>(), inbound["listen_port"].get<int>());
    for (const nlohmann::json& user : inbound["users"]) {
      out += " " + user["username"].get<std::string>();
    }
    out += "\n";
  }
  out += "      experimental.v2ray_api.stats.users: " +
         config["experimental"]["v2ray_api"]["stats"]["users"].dump() + "\n";
  return out;
}

Process::Options Command(std::vector<std::string> argv) {
  Process::Options options;
  options.argv = std::move(argv);
  return options;
}

bool Refused(const HttpTarget& target, int port, const std::string& user,
             const std::string& password) {
  try {
    PushTraffic(target, port, user, password, 1000, 0);
    return false;
  } catch (const std::runtime_error&) {
    return true;
  }
}

int Fail(const std::string& what, CollectorRunner* collector) {
  std::fprintf(stderr, "boxmeter-demo: %s\n", what.c_str());
  if (collector) {
    std::fprintf(stderr, "collector log:\n%s\n", collector->LogTail().c_str());
  }
  return 1;
}

sigset_t StopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

// --keep: leaves PostgreSQL and v2ray-core running, with the commands to
// try against them, until Ctrl-C (or SIGTERM); then removes everything.
void KeepUntilInterrupted(PgServer& pg, const std::string& config_path,
                          const std::string& gen_config_path) {
  sigset_t stop = StopSignals();
  std::printf(
      "\n==> kept running (--keep): PostgreSQL and v2ray-core. Try, from the "
      "checkout, in another terminal:\n"
      "    psql '%s' -c 'SELECT * FROM user_quota_status'\n"
      "    psql '%s' -c \"SELECT set_quota('alice', NULL)\"\n"
      "    %s --config %s --stdout     # sing-box's config, now\n"
      "    %s --config %s --once       # one poll and commit\n"
      "Ctrl-C here stops them and removes everything.\n",
      pg.Url("boxmeter").c_str(), pg.Url("boxmeter").c_str(), BOXMETER_GEN_BIN,
      gen_config_path.c_str(), BOXMETER_COLLECTOR_BIN, config_path.c_str());
  std::fflush(stdout);
  int signal = 0;
  sigwait(&stop, &signal);
}

int Main(bool keep) {
  Say("starting a throwaway PostgreSQL 15");
  PgServer pg;
  std::string db_url = pg.CreateDatabase("boxmeter");
  TempDir dir;
  const std::string output = dir.path() + "/sing-box-config.json";
  std::ofstream(dir.path() + "/base.json")
      << R"({"outbounds": [{"type": "direct", "tag": "direct"}]})"
      << "\n";
  CollectorRunner::Settings settings;
  settings.node = "demo";
  settings.source_address = "127.0.0.1:1";  // until v2ray-core runs
  settings.database_url = db_url;
  settings.poll_interval = "1s";
  settings.log_level = "info";
  settings.more_yaml = fmt::format(
      "generator:\n  template: \"{0}/base.json\"\n  output: \"{1}\"\n"
      "hooks:\n  on_users_changed: \"'{2}'\"\n  timeout: 30s\n",
      dir.path(), output, BOXMETER_GEN_BIN);
  CollectorRunner setup(BOXMETER_COLLECTOR_BIN, settings);

  Say("boxmeter-collector --migrate; then users and inbounds, as SQL rows:");
  std::string log;
  if (RunCommand(Command({BOXMETER_COLLECTOR_BIN, "--config",
                          setup.config_path(), "--migrate"}),
                 60s, &log) != 0) {
    return Fail("--migrate failed:\n" + log, nullptr);
  }
  const char* kUsers = R"sql(
    SELECT add_user('alice', quota_bytes => 3000000, password => 'pw-a');
    SELECT add_user('bob', password => 'pw-b');
    SELECT add_user('carol', password => 'pw-c');
    INSERT INTO inbounds (node, tag, type, listen, listen_port) VALUES
      ('demo', 'socks-a', 'socks', '127.0.0.1', 1080),
      ('demo', 'socks-b', 'socks', '127.0.0.1', 1081);
    SELECT link_user('alice', 'demo', 'socks-a');
    SELECT link_user('bob', 'demo', 'socks-a');
    SELECT link_user('carol', 'demo', 'socks-b');)sql";
  std::printf("%s\n\n", kUsers);
  pg.Query("boxmeter", kUsers);

  Say("boxmeter-gen writes sing-box's config from them (abridged):");
  if (RunCommand(Command({BOXMETER_GEN_BIN, "--config", setup.config_path()}),
                 60s, &log) != 0) {
    return Fail("boxmeter-gen failed:\n" + log, nullptr);
  }
  std::printf("%s", Abridged(output).c_str());

  Say("v2ray-core cannot load sing-box's config: the demo runs its socks "
      "inbounds and users in v2ray-core (same stats API), on free ports");
  V2RayServer v2ray(V2RayOptionsFromSingBox(ReadFile(output)));
  v2ray.Start();
  HttpTarget target;

  Say("starting boxmeter-collector: poll.interval 1s, source " +
      v2ray.ApiAddress() +
      "; its hook runs boxmeter-gen when the set of "
      "eligible users changes");
  settings.source_address = v2ray.ApiAddress();
  CollectorRunner collector(BOXMETER_COLLECTOR_BIN, settings);
  collector.Start();

  Say("traffic through v2ray-core with curl: alice 2 MB (her quota is 3 MB), "
      "bob 1 MB, carol 0.5 MB each way");
  PushTraffic(target, v2ray.SocksPort(0), "alice", "pw-a", 2'000'000, 100'000);
  PushTraffic(target, v2ray.SocksPort(0), "bob", "pw-b", 1'000'000, 50'000);
  PushTraffic(target, v2ray.SocksPort(1), "carol", "pw-c", 500'000, 500'000);
  CounterMap banked;
  if (!WaitUntil([&] { return UsersMatch(v2ray, pg, "boxmeter", banked); }, 30s,
                 200ms)) {
    return Fail("the database did not catch up with v2ray-core", &collector);
  }
  PrintTable(pg,
             "SELECT name, used_bytes, quota_bytes, percent, state "
             "FROM user_quota_status ORDER BY name",
             {"name", "used", "quota", "percent", "state"});

  Say("alice moves 1.2 MB more: over her quota");
  PushTraffic(target, v2ray.SocksPort(0), "alice", "pw-a", 1'200'000, 0);
  auto alice_left_out = [&] {
    std::string config = ReadFile(output);
    return config.find("\"alice\"") == std::string::npos;
  };
  auto polled = std::chrono::steady_clock::now();
  if (!WaitUntil(alice_left_out, 30s, 100ms)) {
    return Fail("the hook did not leave alice out of the config", &collector);
  }
  Say(fmt::format(
      "{:.1f} s later the collector's hook had run boxmeter-gen; the config "
      "now reads:",
      std::chrono::duration<double>(std::chrono::steady_clock::now() - polled)
          .count()));
  std::printf("%s", Abridged(output).c_str());
  PrintTable(pg,
             "SELECT name, used_bytes, quota_bytes, percent, state "
             "FROM user_quota_status ORDER BY name",
             {"name", "used", "quota", "percent", "state"});

  Say("reloading: boxmeter-collector --flush commits what v2ray-core counted "
      "so far, then v2ray-core restarts with the new config (as sing-box "
      "reloads on SIGHUP; its counters start again at zero)");
  if (collector.Flush(30s) != 0) {
    return Fail("--flush failed", &collector);
  }
  for (const auto& [name, value] : v2ray.GroundTruth()) banked[name] += value;
  v2ray.Reload(V2RayOptionsFromSingBox(ReadFile(output)));

  bool alice_refused = Refused(target, v2ray.SocksPort(0), "alice", "pw-a");
  Say(std::string("alice's next request through socks-a: ") +
      (alice_refused ? "refused by v2ray-core" : "LET THROUGH"));
  PushTraffic(target, v2ray.SocksPort(0), "bob", "pw-b", 300'000, 10'000);
  PushTraffic(target, v2ray.SocksPort(1), "carol", "pw-c", 200'000, 20'000);
  Say("bob's and carol's still pass (0.3 MB and 0.2 MB more)");
  if (!alice_refused) return Fail("alice got through over quota", &collector);
  if (!WaitUntil([&] { return UsersMatch(v2ray, pg, "boxmeter", banked); }, 30s,
                 200ms)) {
    return Fail("the database did not catch up with v2ray-core", &collector);
  }
  collector.Signal(SIGTERM);
  std::optional<int> exit_code = collector.Wait(15s);

  std::printf("\n--- boxmeter-collector's log ---\n%s\n",
              collector.LogTail(12).c_str());
  PrintTable(pg,
             "SELECT name, uplink, downlink, total FROM user_traffic "
             "ORDER BY name",
             {"name", "uplink", "downlink", "total"});
  CounterMap counted = banked;
  for (const auto& [name, value] : v2ray.GroundTruth()) counted[name] += value;
  std::printf("--- what v2ray-core counted (both of its lives) ---\n");
  for (const auto& [user, traffic] : Users(counted)) {
    std::printf("%-10s%-10lld%-10lld%-10lld\n", user.c_str(),
                static_cast<long long>(traffic.first),
                static_cast<long long>(traffic.second),
                static_cast<long long>(traffic.first + traffic.second));
  }
  std::printf("\n");
  int verdict =
      Verdict(exit_code, counted, TrafficInDatabase(pg, "boxmeter", "demo"));
  if (keep) {
    KeepUntilInterrupted(pg, collector.config_path(), collector.config_path());
  }
  return verdict;
}

}  // namespace
}  // namespace boxmeter::testing

int main(int argc, char** argv) {
  std::string arg = argc > 1 ? argv[1] : "";
  if (argc > 2 || (argc == 2 && arg != "--keep")) {
    std::fprintf(stderr,
                 "usage: boxmeter-demo [--keep]\n"
                 "  --keep  leave PostgreSQL and v2ray-core running at the "
                 "end, with commands to try, until Ctrl-C\n");
    return 64;
  }
  bool keep = arg == "--keep";
  if (keep) {
    // Blocked before any thread starts, so that every thread leaves them to
    // the sigwait at the end (which then removes everything).
    sigset_t stop = boxmeter::testing::StopSignals();
    pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  }
  try {
    int status = boxmeter::testing::Main(keep);
    // Main's servers and directories are gone once it has returned.
    boxmeter::testing::Say(
        "everything the demo started is stopped and removed");
    return status;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "boxmeter-demo: %s\n", e.what());
    return 1;
  }
}
