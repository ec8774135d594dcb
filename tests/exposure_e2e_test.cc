// Secrets and exposure, through the real binaries: the database password
// never reaches their output (logs, errors, --help, --check-config), whether
// the database is unreachable, refuses, goes away or works; and the
// start-up warnings about a readable password and an off-loopback stats API
// are printed.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <string>

#include "collector_runner.h"
#include "pg_server.h"
#include "process.h"
#include "v2ray_server.h"

namespace boxmeter::testing {
namespace {

using namespace std::chrono_literals;

constexpr const char* kSecret = "pw-Exposure-7f3Q";

// Every way the password could show: as written, and URL-decoded pieces.
::testing::AssertionResult NoSecretIn(const std::string& what,
                                      const std::string& text) {
  if (text.find(kSecret) == std::string::npos &&
      text.find("Exposure-7f3Q") == std::string::npos) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << what << " shows the password:\n"
                                       << text;
}

// Runs `argv` to completion and returns its exit code and output (stdout
// and stderr together).
int RunBinary(std::vector<std::string> argv, std::string* output,
              std::map<std::string, std::string> env = {}) {
  Process::Options options;
  options.argv = std::move(argv);
  options.env = {{"BOXMETER_DATABASE_URL", ""},
                 {"BOXMETER_CONFIG", ""},
                 {"NOTIFY_SOCKET", ""}};
  for (auto& [key, value] : env) options.env[key] = value;
  return RunCommand(options, 60s, output);
}

// A config file in `dir` with this URL and address.
std::string WriteConfig(const TempDir& dir, const std::string& url,
                        const std::string& address = "127.0.0.1:1",
                        const std::string& extra = "") {
  std::string path = dir.path() + "/boxmeter.yaml";
  std::ofstream out(path, std::ios::trunc);
  out << "node: exposure\n"
      << "source:\n  address: \"" << address << "\"\n  timeout: 500ms\n"
      << "database:\n  url: \"" << url << "\"\n"
      << "poll:\n  interval: 200ms\n"
      << "log:\n  level: debug\n"
      << extra;
  return path;
}

TEST(ExposureTest, HelpAndVersionNeverNeedTheConfig) {
  std::string output;
  EXPECT_EQ(RunBinary({BOXMETER_COLLECTOR_BIN, "--help"}, &output,
                      {{"BOXMETER_DATABASE_URL",
                        std::string("postgresql://u:") + kSecret + "@h/db"}}),
            0);
  EXPECT_NE(output.find("Usage: boxmeter-collector"), std::string::npos);
  EXPECT_TRUE(NoSecretIn("--help", output));
}

TEST(ExposureTest, ConfigErrorsAndChecksNeverShowThePassword) {
  TempDir dir;
  const std::string url =
      std::string("postgresql://boxmeter:") + kSecret + "@127.0.0.1:1/db";
  // A password under a wrong key, a bad value next to it, and the URL
  // itself in a bad place: every message quotes values, none the password.
  std::string path = WriteConfig(dir, url, "127.0.0.1:1",
                                 std::string("databse:\n  url: \"") + url +
                                     "\"\nnode2: \"" + url + "\"\n");
  std::string output;
  EXPECT_EQ(
      RunBinary({BOXMETER_COLLECTOR_BIN, "--config", path, "--check-config"},
                &output),
      78)
      << output;
  EXPECT_NE(output.find("databse"), std::string::npos) << output;
  EXPECT_TRUE(NoSecretIn("config errors", output));

  path = WriteConfig(dir, url);
  output.clear();
  EXPECT_EQ(
      RunBinary({BOXMETER_COLLECTOR_BIN, "--config", path, "--check-config"},
                &output),
      0)
      << output;
  EXPECT_TRUE(NoSecretIn("--check-config", output));

  // The environment's URL, when it is not a URL at all.
  output.clear();
  EXPECT_EQ(
      RunBinary({BOXMETER_COLLECTOR_BIN, "--config", path, "--check-config"},
                &output,
                {{"BOXMETER_DATABASE_URL",
                  std::string("boxmeter:") + kSecret + "@nowhere"}}),
      78)
      << output;
  EXPECT_TRUE(NoSecretIn("a bad BOXMETER_DATABASE_URL", output));
}

TEST(ExposureTest, DeadDatabasePortNeverShowsThePassword) {
  TempDir dir;
  const std::string url = std::string("postgresql://boxmeter:") + kSecret +
                          "@127.0.0.1:" + std::to_string(FreePort()) +
                          "/boxmeter?connect_timeout=2";
  std::string path = WriteConfig(dir, url);
  std::string output;
  // --once fails (nothing answers) and says why.
  EXPECT_EQ(
      RunBinary({BOXMETER_COLLECTOR_BIN, "--config", path, "--once"}, &output),
      69)
      << output;
  EXPECT_NE(output.find("boxmeter:***@127.0.0.1"), std::string::npos) << output;
  EXPECT_TRUE(NoSecretIn("--once against a dead port", output));
  // --migrate too.
  output.clear();
  EXPECT_NE(RunBinary({BOXMETER_COLLECTOR_BIN, "--config", path, "--migrate"},
                      &output),
            0);
  EXPECT_TRUE(NoSecretIn("--migrate against a dead port", output));
}

TEST(ExposureTest, LiveDatabaseThatGoesAwayNeverShowsThePassword) {
  PgServer pg;
  std::string url = pg.CreateDatabase("exposure");
  // v2ray-core's api inbound counts every stats call, so each poll has
  // something to commit and the collector notices the database going away.
  V2RayServer v2ray(V2RayServer::Options{.inbounds = {{"socks-in", {}}}});
  v2ray.Start();
  // Trust authentication ignores the password, so the collector connects.
  url.replace(url.find("postgres@"), 9,
              std::string("postgres:") + kSecret + "@");
  CollectorRunner collector(
      BOXMETER_COLLECTOR_BIN,
      CollectorRunner::Settings{.node = "exposure",
                                .source_address = v2ray.ApiAddress(),
                                .database_url = url,
                                .poll_interval = "200ms",
                                .source_timeout = "500ms"});
  collector.Start();
  ASSERT_TRUE(
      WaitUntil([&] { return collector.CountLogLines("committed") > 0; }, 30s))
      << collector.LogTail();
  pg.Stop(PgServer::StopMode::kImmediate);
  ASSERT_TRUE(WaitUntil(
      [&] { return collector.CountLogLines("is unavailable") >= 1; }, 30s))
      << collector.LogTail();
  pg.Start();
  collector.Signal(SIGHUP);  // the reload logs the URL's redacted form
  ASSERT_TRUE(
      WaitUntil([&] { return collector.CountLogLines("reloaded") > 0; }, 30s))
      << collector.LogTail();
  collector.Signal(SIGTERM);
  EXPECT_TRUE(collector.Wait(60s).has_value());
  EXPECT_NE(collector.Log().find("postgres:***@127.0.0.1"), std::string::npos)
      << collector.LogTail();
  EXPECT_TRUE(NoSecretIn("the collector's log", collector.Log()));
}

TEST(ExposureTest, StartUpWarnsAboutAReadablePasswordAndAnExposedApi) {
  TempDir dir;
  ASSERT_EQ(chmod(dir.path().c_str(), 0755), 0);
  const std::string url =
      std::string("postgresql://boxmeter:") + kSecret + "@127.0.0.1:1/db";
  std::string path = WriteConfig(dir, url, "192.0.2.10:8080");
  ASSERT_EQ(chmod(path.c_str(), 0644), 0);
  std::string output;
  EXPECT_EQ(
      RunBinary({BOXMETER_COLLECTOR_BIN, "--config", path, "--check-config"},
                &output),
      0);
  EXPECT_NE(output.find("database.url holds a password and the file is "
                        "readable by others"),
            std::string::npos)
      << output;
  EXPECT_NE(output.find("source.address \"192.0.2.10:8080\" is not a "
                        "loopback address"),
            std::string::npos)
      << output;
  EXPECT_TRUE(NoSecretIn("the warnings", output));

  // Fixed: owner-only file, loopback address: no warning.
  path = WriteConfig(dir, url, "127.0.0.1:8080");
  ASSERT_EQ(chmod(path.c_str(), 0600), 0);
  output.clear();
  EXPECT_EQ(
      RunBinary({BOXMETER_COLLECTOR_BIN, "--config", path, "--check-config"},
                &output),
      0);
  EXPECT_EQ(output.find("WARN"), std::string::npos) << output;
  EXPECT_EQ(output.find("warn"), std::string::npos) << output;
}

}  // namespace
}  // namespace boxmeter::testing
