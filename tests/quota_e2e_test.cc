// The quota loop end to end: a throwaway PostgreSQL, the real
// boxmeter-collector polling the fake-stats-server binary, and
// hooks.on_users_changed running the real boxmeter-gen. A user whose
// committed traffic crosses her quota disappears from the written sing-box
// config while the others stay; an operator disabling a user without any
// traffic is noticed the same way. With the real v2ray-core carrying the
// traffic: a socks inbound whose last user goes over quota is left out of
// the config, and nothing accepts connections there any more. And a quota
// period that ends a few seconds ahead brings an over-quota user back into
// the config within one poll of its boundary, with no job and no traffic.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <cstdio>
#include <ctime>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "fake_stats_process.h"
#include "pg_server.h"
#include "process.h"
#include "sing_box_translation.h"
#include "traffic.h"
#include "v2ray_server.h"

namespace boxmeter::testing {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;
using namespace std::chrono_literals;

constexpr auto kWait = 30s;

// How many lines of `text` contain `needle` (or are exactly it).
size_t CountLines(const std::string& text, const std::string& needle,
                  bool exactly = false) {
  std::istringstream in(text);
  size_t count = 0;
  for (std::string line; std::getline(in, line);) {
    if (exactly ? line == needle : line.find(needle) != std::string::npos) {
      ++count;
    }
  }
  return count;
}

// Milliseconds since the epoch of the first collector log line (which
// starts "YYYY-MM-DDTHH:MM:SS.mmmZ") that contains `needle`, or -1.
int64_t FirstLogLineMs(const std::string& log, const std::string& needle) {
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);) {
    if (line.find(needle) == std::string::npos) continue;
    std::tm tm{};
    int ms = 0;
    if (std::sscanf(line.c_str(), "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year,
                    &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
                    &tm.tm_sec, &ms) != 7) {
      continue;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return static_cast<int64_t>(timegm(&tm)) * 1000 + ms;
  }
  return -1;
}

// The hook's own output line: one per successful run.
size_t HookRuns(const std::string& log) {
  return CountLines(log, "HOOK-DONE", true);
}

class QuotaLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pg_ = std::make_unique<PgServer>();
    url_ = pg_->CreateDatabase("quota");
    fake_ = std::make_unique<FakeStatsProcess>(BOXMETER_FAKE_STATS_SERVER_BIN,
                                               /*answer_timeout=*/10s);
    output_ = dir_.path() + "/sing-box/config.json";
    mkdir((dir_.path() + "/sing-box").c_str(), 0755);
    log_ = dir_.path() + "/collector.log";
    std::ofstream(dir_.path() + "/base.json")
        << R"({"log": {"level": "warn"}, )"
           R"("outbounds": [{"type": "direct", "tag": "direct"}]})"
        << "\n";
    // The hook is the bare binary: the collector passes its config file in
    // BOXMETER_CONFIG. The path is single-quoted for the shell.
    std::ofstream(config_path())
        << "node: e2e\n"
        << "source:\n  address: \"" << fake_->address() << "\"\n"
        << "  timeout: 2s\n"
        << "database:\n  url: \"" << url_ << "\"\n"
        << "poll:\n  interval: 200ms\n"
        << "log:\n  level: debug\n"
        << "generator:\n  template: \"" << dir_.path() << "/base.json\"\n"
        << "  output: \"" << output_ << "\"\n"
        << "hooks:\n  on_users_changed: \"'" << BOXMETER_GEN_BIN
        << "' && echo HOOK-DONE >&2\"\n"
        << "  timeout: 30s\n";

    std::string log;
    ASSERT_EQ(RunCommand(Command({BOXMETER_COLLECTOR_BIN, "--config",
                                  config_path(), "--migrate"}),
                         60s, &log),
              0)
        << log;
    pg_->Query("quota", R"sql(
      INSERT INTO users (name, uuid, password, quota_bytes) VALUES
        ('alice', gen_random_uuid(), 'alice-pw', 1000),
        ('bob', gen_random_uuid(), 'bob-pw', NULL),
        ('carol', gen_random_uuid(), 'carol-pw', 1000000000);
      INSERT INTO inbounds (node, tag, type, listen_port) VALUES
        ('e2e', 'vless-in', 'vless', 443), ('e2e', 'trojan-in', 'trojan', 8443);
      INSERT INTO inbound_users SELECT i.id, u.id FROM inbounds i, users u;
    )sql");
  }

  std::string config_path() const { return dir_.path() + "/boxmeter.yaml"; }

  Process::Options Command(std::vector<std::string> argv) {
    Process::Options options;
    options.argv = std::move(argv);
    // Nothing from the environment may redirect the binaries.
    options.env = {{"BOXMETER_DATABASE_URL", ""},
                   {"BOXMETER_CONFIG", ""},
                   {"NOTIFY_SOCKET", ""}};
    return options;
  }

  void StartCollector() {
    Process::Options options =
        Command({BOXMETER_COLLECTOR_BIN, "--config", config_path()});
    options.stderr_path = log_;
    collector_ = Process::Start(options);
  }

  // The stats users of the written config, and each inbound's users.
  std::string ConfigUsers() {
    std::string text = ReadFile(output_);
    if (text.empty()) return "(no config)";
    Json config = Json::parse(text, nullptr, false);
    if (config.is_discarded()) return "(not JSON)";
    std::string out;
    for (const Json& name :
         config["experimental"]["v2ray_api"]["stats"]["users"]) {
      out += name.get<std::string>() + " ";
    }
    for (const Json& inbound : config["inbounds"]) {
      out += "| " + inbound["tag"].get<std::string>() + ":";
      for (const Json& user : inbound["users"]) {
        out += " " + user["name"].get<std::string>();
      }
    }
    return out;
  }

  ::testing::AssertionResult ConfigHasUsers(const std::string& expected) {
    std::string actual;
    if (WaitUntil([&] { return (actual = ConfigUsers()) == expected; }, kWait,
                  100ms)) {
      return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure()
           << "the config's users are \"" << actual << "\", expected \""
           << expected << "\"; collector log tail:\n"
           << Tail(ReadFile(log_));
  }

  // Awaits the hook's `runs`-th success (its output line comes after the
  // config it wrote), then checks there was no further run.
  ::testing::AssertionResult HookRan(size_t runs) {
    WaitUntil([&] { return HookRuns(ReadFile(log_)) >= runs; }, kWait);
    size_t actual = HookRuns(ReadFile(log_));
    if (actual == runs) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "the hook succeeded " << actual << " times, expected " << runs
           << "; collector log tail:\n"
           << Tail(ReadFile(log_));
  }

  static std::string Tail(const std::string& text) {
    return text.size() > 6000 ? text.substr(text.size() - 6000) : text;
  }

  TempDir dir_;
  std::unique_ptr<PgServer> pg_;
  std::string url_;
  std::unique_ptr<FakeStatsProcess> fake_;
  std::string output_;
  std::string log_;
  std::unique_ptr<Process> collector_;
};

TEST_F(QuotaLoopTest, UserOverQuotaLeavesTheConfigAndTheOthersStay) {
  StartCollector();
  // At start the hook writes the config once, with everyone in it.
  ASSERT_TRUE(
      ConfigHasUsers("alice bob carol | trojan-in: alice bob carol"
                     "| vless-in: alice bob carol"));
  struct stat st;
  ASSERT_EQ(stat(output_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_TRUE(HookRan(1));

  // Traffic under the quota changes nothing.
  ASSERT_EQ(fake_->Command("set user>>>alice>>>traffic>>>uplink 400"), "");
  ASSERT_EQ(fake_->Command("set user>>>bob>>>traffic>>>downlink 5000"), "");
  ASSERT_TRUE(WaitUntil(
      [&] {
        return pg_->Query("quota",
                          "SELECT total FROM user_traffic WHERE name = "
                          "'alice'") == "400";
      },
      kWait));
  EXPECT_TRUE(HookRan(1));

  // alice's committed total reaches 1000 + 100: she is over quota.
  ASSERT_EQ(fake_->Command("set user>>>alice>>>traffic>>>downlink 700"), "");
  ASSERT_TRUE(
      ConfigHasUsers("bob carol | trojan-in: bob carol"
                     "| vless-in: bob carol"));
  EXPECT_EQ(pg_->Query("quota",
                       "SELECT total FROM user_traffic WHERE name = 'alice'"),
            "1100");
  EXPECT_EQ(pg_->Query("quota", "SELECT name FROM eligible_users ORDER BY 1"),
            "bob\ncarol");
  EXPECT_TRUE(HookRan(2));
  EXPECT_GE(CountLines(ReadFile(log_), "the users of this node changed"), 1u);

  // An operator disables carol: no traffic, no commit, and still noticed.
  pg_->Query("quota", "UPDATE users SET enabled = false WHERE name = 'carol'");
  ASSERT_TRUE(ConfigHasUsers("bob | trojan-in: bob| vless-in: bob"));

  // Raising alice's quota brings her back.
  pg_->Query("quota",
             "UPDATE users SET quota_bytes = 1000000 WHERE name = 'alice'");
  EXPECT_TRUE(
      ConfigHasUsers("alice bob | trojan-in: alice bob"
                     "| vless-in: alice bob"));
  EXPECT_TRUE(HookRan(4));

  collector_->Signal(SIGTERM);
  EXPECT_EQ(collector_->Wait(20s), 0) << Tail(ReadFile(log_));
}

// The same loop with the real v2ray-core carrying and counting the traffic
// of two socks inbounds, one user each. v2ray-core cannot load sing-box's
// config, so the test translates what boxmeter-gen wrote (each socks
// inbound and its users) into v2ray-core's config and restarts v2ray-core
// with it, as a reload of sing-box would. When alice, the only user of
// socks-a, goes over quota, boxmeter-gen leaves socks-a out (it would
// otherwise be written with no users, and sing-box's socks inbound would
// then accept anyone without authentication): the translated config has no
// socks-a, so nothing accepts connections there any more, with or without
// credentials, while bob's socks-b still carries his traffic.
class QuotaLoopV2RayTest : public QuotaLoopTest {
 protected:
  void SetUp() override {
    pg_ = std::make_unique<PgServer>();
    url_ = pg_->CreateDatabase("quota");
    output_ = dir_.path() + "/config.json";
    log_ = dir_.path() + "/collector.log";
    target_ = std::make_unique<HttpTarget>();
    std::ofstream(dir_.path() + "/base.json")
        << R"({"outbounds": [{"type": "direct", "tag": "direct"}]})"
        << "\n";
    std::string log;
    WriteConfigFile("127.0.0.1:1");
    ASSERT_EQ(RunCommand(Command({BOXMETER_COLLECTOR_BIN, "--config",
                                  config_path(), "--migrate"}),
                         60s, &log),
              0)
        << log;
    pg_->Query("quota", R"sql(
      INSERT INTO users (name, password, quota_bytes) VALUES
        ('alice', 'alice-pw', 50000), ('bob', 'bob-pw', NULL);
      INSERT INTO inbounds (node, tag, type, listen, listen_port) VALUES
        ('e2e', 'socks-a', 'socks', '127.0.0.1', 1081),
        ('e2e', 'socks-b', 'socks', '127.0.0.1', 1082);
      INSERT INTO inbound_users SELECT i.id, u.id FROM inbounds i, users u
       WHERE (i.tag, u.name) IN (('socks-a', 'alice'), ('socks-b', 'bob'));
    )sql");
  }

  void WriteConfigFile(const std::string& stats_address) {
    std::ofstream(config_path(), std::ios::trunc)
        << "node: e2e\n"
        << "source:\n  address: \"" << stats_address << "\"\n"
        << "  timeout: 2s\n"
        << "database:\n  url: \"" << url_ << "\"\n"
        << "poll:\n  interval: 200ms\n"
        << "generator:\n  template: \"" << dir_.path() << "/base.json\"\n"
        << "  output: \"" << output_ << "\"\n"
        << "hooks:\n  on_users_changed: \"'" << BOXMETER_GEN_BIN
        << "' && echo HOOK-DONE >&2\"\n"
        << "  timeout: 30s\n";
  }

  // boxmeter-gen writes the config, before v2ray-core starts from it.
  void GenerateConfig() {
    std::string log;
    ASSERT_EQ(RunCommand(Command({BOXMETER_GEN_BIN, "--config", config_path()}),
                         60s, &log),
              0)
        << log;
  }

  // What v2ray-core runs of boxmeter-gen's config; fails the test on
  // anything but socks inbounds with users.
  static V2RayServer::Options Translate(const Json& config) {
    try {
      return V2RayOptionsFromSingBox(config.dump());
    } catch (const std::runtime_error& e) {
      ADD_FAILURE() << e.what();
      return {};
    }
  }

  std::vector<std::string> Tags() {
    std::vector<std::string> tags;
    Json config = Json::parse(ReadFile(output_), nullptr, false);
    if (config.is_discarded()) return {"(not JSON)"};
    for (const Json& inbound : config["inbounds"])
      tags.push_back(inbound["tag"]);
    return tags;
  }

  std::unique_ptr<HttpTarget> target_;
};

TEST_F(QuotaLoopV2RayTest,
       LastUserOverQuotaClosesTheInboundInsteadOfOpeningIt) {
  // The first config, written before v2ray-core starts, has both inbounds.
  ASSERT_NO_FATAL_FAILURE(GenerateConfig());
  ASSERT_EQ(Tags(), (std::vector<std::string>{"socks-a", "socks-b"}));
  auto v2ray =
      std::make_unique<V2RayServer>(Translate(Json::parse(ReadFile(output_))));
  v2ray->Start();
  const int port_a = v2ray->SocksPort(0);
  WriteConfigFile(v2ray->ApiAddress());
  StartCollector();

  // alice moves 100 kB through socks-a: twice her quota.
  PushTraffic(*target_, port_a, "alice", "alice-pw", 100000, 0);
  PushTraffic(*target_, v2ray->SocksPort(1), "bob", "bob-pw", 1000, 1000);
  ASSERT_TRUE(
      WaitUntil([&] { return Tags() == std::vector<std::string>{"socks-b"}; },
                kWait, 100ms))
      << ReadFile(output_) << "\ncollector log:\n"
      << Tail(ReadFile(log_));
  EXPECT_GE(
      std::stoll(pg_->Query(
          "quota", "SELECT total FROM user_traffic WHERE name = 'alice'")),
      100000);
  EXPECT_GE(CountLines(ReadFile(log_),
                       "inbound 'socks-a' (type socks) left out: none of its "
                       "users is eligible now"),
            1u)
      << Tail(ReadFile(log_));
  Json config = Json::parse(ReadFile(output_));
  EXPECT_EQ(config["experimental"]["v2ray_api"]["stats"]["inbounds"],
            Json::array({"socks-b"}));
  EXPECT_EQ(config["experimental"]["v2ray_api"]["stats"]["users"],
            Json::array({"bob"}));

  // "Reload": v2ray-core restarted from the new config.
  collector_->Signal(SIGTERM);
  EXPECT_EQ(collector_->Wait(20s), 0) << Tail(ReadFile(log_));
  v2ray->Stop();
  v2ray = std::make_unique<V2RayServer>(Translate(config));
  v2ray->Start();
  ASSERT_EQ(v2ray->options().inbounds.size(), 1u);
  EXPECT_NE(v2ray->SocksPort(0), port_a);
  EXPECT_THROW(PushTraffic(*target_, port_a, "alice", "alice-pw", 1000, 0),
               std::runtime_error)
      << "socks-a still carries alice's traffic";
  EXPECT_THROW(PushTraffic(*target_, port_a, "anyone", "guess", 1000, 0),
               std::runtime_error)
      << "socks-a lets a stranger through";
  EXPECT_THROW(
      PushTraffic(*target_, v2ray->SocksPort(0), "alice", "alice-pw", 1000, 0),
      std::runtime_error)
      << "alice gets in through bob's inbound";
  PushTraffic(*target_, v2ray->SocksPort(0), "bob", "bob-pw", 1000, 0);
}

// schema/0009_quota_periods.sql: alice goes over quota through v2ray-core,
// then her period (rolling, one day) is made to end 3 s ahead. Nothing
// commits after that (no traffic) and nothing is scheduled: the collector's
// poll reads the users fingerprint, which moves at the boundary, and the
// hook writes her back into the config within one poll.
TEST_F(QuotaLoopV2RayTest, PeriodBoundaryBringsAnOverQuotaUserBackInOnePoll) {
  ASSERT_NO_FATAL_FAILURE(GenerateConfig());
  V2RayServer v2ray(Translate(Json::parse(ReadFile(output_))));
  v2ray.Start();
  WriteConfigFile(v2ray.ApiAddress());
  StartCollector();
  PushTraffic(*target_, v2ray.SocksPort(0), "alice", "alice-pw", 100000, 0);
  ASSERT_TRUE(
      WaitUntil([&] { return Tags() == std::vector<std::string>{"socks-b"}; },
                kWait, 100ms))
      << Tail(ReadFile(log_));
  size_t changes_before =
      CountLines(ReadFile(log_), "the users of this node changed");

  std::string boundary_ms = pg_->Query(
      "quota",
      "SELECT floor(extract(epoch FROM next_reset) * 1000)::bigint FROM "
      "set_quota_reset('alice', 'rolling', every_days => 1, "
      "anchor => now() + interval '3 seconds' - interval '1 day') "
      "WHERE state = 'over_quota'");
  ASSERT_FALSE(boundary_ms.empty()) << "alice is not over quota";
  ASSERT_TRUE(WaitUntil(
      [&] {
        return Tags() == std::vector<std::string>{"socks-a", "socks-b"};
      },
      kWait, 50ms))
      << Tail(ReadFile(log_));
  // The first change the collector noticed after the boundary, from its
  // log: one poll interval (200 ms; 182 ms measured) plus the fingerprint's
  // query, with slack for a loaded machine or a sanitizer build; never
  // before the boundary.
  std::string after = ReadFile(log_);
  ASSERT_GT(CountLines(after, "the users of this node changed"),
            changes_before);
  size_t skip = 0;  // just past the last change noticed before
  for (size_t i = 0; i < changes_before; ++i) {
    skip = after.find("the users of this node changed", skip) + 1;
  }
  int64_t noticed_ms =
      FirstLogLineMs(after.substr(skip), "the users of this node changed");
  int64_t delay_ms = noticed_ms - std::stoll(boundary_ms);
  EXPECT_GE(delay_ms, 0);
  EXPECT_LT(delay_ms, 200 + 1300)
      << "noticed " << delay_ms << " ms after the boundary";
  EXPECT_EQ(pg_->Query("quota",
                       "SELECT state, used_bytes FROM user_quota_status "
                       "WHERE name = 'alice'"),
            "active|0");
  collector_->Signal(SIGTERM);
  EXPECT_EQ(collector_->Wait(20s), 0) << Tail(ReadFile(log_));
}

// schema/0010_online_on_hold.sql: an on-hold user's 30 days start at the
// first byte the collector commits for them through v2ray-core, not when
// they were put on hold.
TEST_F(QuotaLoopV2RayTest, OnHoldExpiryStartsAtTheFirstByte) {
  ASSERT_NO_FATAL_FAILURE(GenerateConfig());
  V2RayServer v2ray(Translate(Json::parse(ReadFile(output_))));
  v2ray.Start();
  WriteConfigFile(v2ray.ApiAddress());
  pg_->Query("quota", "SELECT set_on_hold('bob', interval '30 days')");
  StartCollector();
  const std::string status =
      "SELECT on_hold, expires_at IS NULL, first_seen IS NULL, state FROM "
      "user_quota_status WHERE name = 'bob'";
  EXPECT_EQ(pg_->Query("quota", status), "t|t|t|active");
  std::string held_until = pg_->Query("quota", "SELECT clock_timestamp()");
  PushTraffic(*target_, v2ray.SocksPort(1), "bob", "bob-pw", 1000, 1000);
  ASSERT_TRUE(
      WaitUntil([&] { return pg_->Query("quota", status) == "f|f|f|active"; },
                kWait, 100ms))
      << pg_->Query("quota", status) << "\n"
      << Tail(ReadFile(log_));
  EXPECT_EQ(pg_->Query("quota",
                       "SELECT expires_at = first_seen + interval '30 days', "
                       "first_seen >= '" +
                           held_until +
                           "'::timestamptz FROM user_quota_status WHERE name "
                           "= 'bob'"),
            "t|t");
  collector_->Signal(SIGTERM);
  EXPECT_EQ(collector_->Wait(20s), 0) << Tail(ReadFile(log_));
}

}  // namespace
}  // namespace boxmeter::testing
