// The boxmeter-collector binary's command-line contract: --help, --version,
// --check-config and the sysexits codes. No servers needed.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "process.h"

namespace boxmeter::testing {
namespace {

using namespace std::chrono_literals;

struct Outcome {
  int code;
  std::string output;
};

Outcome Collector(std::vector<std::string> args,
                  std::map<std::string, std::string> env = {}) {
  Process::Options options;
  options.argv = {BOXMETER_COLLECTOR_BIN};
  options.argv.insert(options.argv.end(), args.begin(), args.end());
  // Keep the caller's environment from choosing a config file.
  env.emplace("BOXMETER_CONFIG", "");
  env.emplace("BOXMETER_DATABASE_URL", "");
  options.env = env;
  Outcome run;
  run.code = RunCommand(options, 30s, &run.output);
  return run;
}

std::string WriteFile(const TempDir& dir, const std::string& name,
                      const std::string& text) {
  std::string path = dir.path() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(CollectorCliTest, HelpListsEveryFlagAndExitCode) {
  Outcome run = Collector({"--help"});
  EXPECT_EQ(run.code, 0);
  for (const char* text :
       {"--config FILE", "--once", "--check-config", "--migrate", "--version",
        "--help", "BOXMETER_CONFIG", "BOXMETER_DATABASE_URL", "64", "69",
        "78"}) {
    EXPECT_NE(run.output.find(text), std::string::npos) << text;
  }
}

TEST(CollectorCliTest, VersionPrintsTheVersion) {
  Outcome run = Collector({"--version"});
  EXPECT_EQ(run.code, 0);
  EXPECT_EQ(run.output.rfind("boxmeter-collector ", 0), 0u) << run.output;
}

TEST(CollectorCliTest, BadUsageExits64) {
  Outcome run = Collector({"--frobnicate"});
  EXPECT_EQ(run.code, 64);
  EXPECT_NE(run.output.find("unknown option \"--frobnicate\""),
            std::string::npos)
      << run.output;
}

TEST(CollectorCliTest, MissingConfigExits78AndSaysWhere) {
  TempDir dir;
  Outcome run =
      Collector({"--check-config", "--config", dir.path() + "/nope.yaml"});
  EXPECT_EQ(run.code, 78);
  EXPECT_NE(run.output.find(dir.path() + "/nope.yaml"), std::string::npos)
      << run.output;
}

TEST(CollectorCliTest, CheckConfigReportsEveryProblemWithoutSecrets) {
  TempDir dir;
  std::string path = WriteFile(dir, "bad.yaml",
                               "source:\n"
                               "  address: nowhere\n"
                               "poll:\n"
                               "  interval: 10\n"
                               "database:\n"
                               "  url: postgresql://u:hunter2@db/x\n"
                               "  colour: blue\n");
  Outcome run = Collector({"--check-config", "--config", path});
  EXPECT_EQ(run.code, 78);
  EXPECT_NE(run.output.find("source.address"), std::string::npos);
  EXPECT_NE(run.output.find("poll.interval"), std::string::npos);
  EXPECT_NE(run.output.find("colour"), std::string::npos);
  EXPECT_NE(run.output.find("3 problem(s)"), std::string::npos) << run.output;
  EXPECT_EQ(run.output.find("hunter2"), std::string::npos) << run.output;
}

TEST(CollectorCliTest, CheckConfigAcceptsAGoodFile) {
  TempDir dir;
  std::string path = WriteFile(dir, "good.yaml",
                               "source:\n"
                               "  address: 127.0.0.1:8080\n"
                               "database:\n"
                               "  url: postgresql://boxmeter@localhost/x\n");
  chmod(path.c_str(), 0600);
  Outcome run = Collector({"--check-config", "--config", path});
  EXPECT_EQ(run.code, 0) << run.output;
  EXPECT_NE(run.output.find(": ok"), std::string::npos) << run.output;
}

TEST(CollectorCliTest, OnceAgainstNothingExits69) {
  TempDir dir;
  // Nothing listens on port 1 of loopback, for either peer.
  std::string path = WriteFile(dir, "dead.yaml",
                               "source:\n"
                               "  address: 127.0.0.1:1\n"
                               "  timeout: 1s\n"
                               "database:\n"
                               "  url: postgresql://u:hunter2@127.0.0.1:1/x"
                               "?connect_timeout=2\n");
  chmod(path.c_str(), 0600);
  Outcome run = Collector({"--once", "--config", path});
  EXPECT_EQ(run.code, 69) << run.output;
  EXPECT_EQ(run.output.find("hunter2"), std::string::npos) << run.output;
}

}  // namespace
}  // namespace boxmeter::testing
