// Deploy, for a systemd host: what `cmake --install` puts where, the units it
// installs as systemd itself reads them (systemd-analyze verify and
// security), and the trigger contract between the collector's hook and the
// .path unit that starts boxmeter-gen.
//
// Each test installs this build tree into its own temporary prefix, exactly
// as a packager or an operator would.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <regex>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "config.h"
#include "process.h"
#include "unit_file.h"

namespace boxmeter::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

const std::string kSourceDir = BOXMETER_SOURCE_DIR;

// Everything the install promises, relative to the prefix, and nothing more.
const std::set<std::string> kPromisedFiles = {
    "bin/boxmeter-collector",
    "bin/boxmeter-gen",
    "libexec/boxmeter/on-event-webhook.sh",
    "share/boxmeter/boxmeter-collector.service",
    "share/boxmeter/boxmeter-gen.path",
    "share/boxmeter/boxmeter-gen.service",
    "share/boxmeter/boxmeter.example.yaml",
    "share/boxmeter/sing-box.base.json",
};
const std::vector<std::string> kUnits = {
    "boxmeter-collector.service",
    "boxmeter-gen.service",
    "boxmeter-gen.path",
};

// Runs `cmake --install` on this build tree into `prefix`, under `destdir`
// when given. Throws with cmake's output if it fails.
void Install(const std::string& prefix, const std::string& destdir = "") {
  Process::Options options;
  options.argv = {BOXMETER_CMAKE_COMMAND, "--install", BOXMETER_BINARY_DIR,
                  "--prefix", prefix};
  options.env["DESTDIR"] = destdir;  // empty: none, whatever the caller has
  std::string output;
  int code = RunCommand(options, 120s, &output);
  if (code != 0) {
    throw std::runtime_error(
        "cmake --install " + std::string(BOXMETER_BINARY_DIR) + " --prefix " +
        prefix + " exited with " + std::to_string(code) + ":\n" + output);
  }
}

// A prefix with this build installed into it, removed afterwards.
class Installed {
 public:
  Installed() : prefix_(dir_.path() + "/prefix") { Install(prefix_); }
  const std::string& prefix() const { return prefix_; }
  std::string Unit(const std::string& name) const {
    return prefix_ + "/share/boxmeter/" + name;
  }
  std::string Binary(const std::string& name) const {
    return prefix_ + "/bin/" + name;
  }

 private:
  TempDir dir_;
  std::string prefix_;
};

// Every file (and symbolic link) under `root`, relative to it.
std::set<std::string> FilesUnder(const std::string& root) {
  std::set<std::string> files;
  for (const fs::directory_entry& entry :
       fs::recursive_directory_iterator(root)) {
    if (!entry.is_directory()) {
      files.insert(fs::relative(entry.path(), root).string());
    }
  }
  return files;
}

std::string Lines(const std::set<std::string>& items) {
  std::string text;
  for (const std::string& item : items) text += "  " + item + "\n";
  return text;
}

struct CommandResult {
  int code;
  std::string output;
};

CommandResult RunProgram(std::vector<std::string> argv,
                         std::chrono::milliseconds timeout = 60s) {
  Process::Options options;
  options.argv = std::move(argv);
  CommandResult result;
  result.code = RunCommand(options, timeout, &result.output);
  return result;
}

// A systemd time span ("30s", "5min") in microseconds, as systemd reads it.
int64_t TimespanUsec(const std::string& span) {
  CommandResult result = RunProgram({"systemd-analyze", "timespan", span});
  std::smatch match;
  static const std::regex kUsec(R"(μs:\s*(\d+))");
  if (result.code != 0 || !std::regex_search(result.output, match, kUsec)) {
    throw std::runtime_error("systemd-analyze timespan " + span + ": " +
                             result.output);
  }
  return std::stoll(match[1]);
}

Config ExampleConfig() {
  Config config;
  std::vector<std::string> errors;
  std::string path = kSourceDir + "/deploy/boxmeter.example.yaml";
  if (!LoadConfig(path, {}, &config, &errors)) {
    throw std::runtime_error(path + " is invalid: " + errors.front());
  }
  return config;
}

bool Contains(const std::vector<std::string>& values, const std::string& v) {
  return std::find(values.begin(), values.end(), v) != values.end();
}

// --- The install tree --------------------------------------------------------

TEST(InstallTree, HasExactlyThePromisedFiles) {
  Installed installed;
  std::set<std::string> files = FilesUnder(installed.prefix());
  EXPECT_EQ(files, kPromisedFiles)
      << "installed:\n"
      << Lines(files) << "promised:\n"
      << Lines(kPromisedFiles)
      << "(tests, fakes, benchmarks and static libraries must not be "
         "installed; a new installed file must be promised here and in "
         "README.md, \"With systemd, step by step\")";
  for (std::string binary : {"bin/boxmeter-collector", "bin/boxmeter-gen",
                             "libexec/boxmeter/on-event-webhook.sh"}) {
    EXPECT_EQ(access((installed.prefix() + "/" + binary).c_str(), X_OK), 0)
        << binary << " is not executable";
  }
  for (const std::string& unit : kUnits) {
    struct stat st;
    ASSERT_EQ(stat(installed.Unit(unit).c_str(), &st), 0) << unit;
    EXPECT_EQ(st.st_mode & 07777, 0644u) << unit;
  }
}

TEST(InstallTree, InstalledBinariesRun) {
  Installed installed;
  for (std::string name : {"boxmeter-collector", "boxmeter-gen"}) {
    CommandResult result =
        RunProgram({installed.prefix() + "/bin/" + name, "--version"});
    EXPECT_EQ(result.code, 0) << result.output;
    EXPECT_EQ(result.output.rfind(name + " ", 0), 0u) << result.output;
  }
}

TEST(InstallTree, ExampleConfigAndTemplateAreCopiedAsTheyAre) {
  Installed installed;
  for (std::string name : {"boxmeter.example.yaml", "sing-box.base.json"}) {
    EXPECT_EQ(ReadFile(installed.prefix() + "/share/boxmeter/" + name),
              ReadFile(kSourceDir + "/deploy/" + name))
        << name;
  }
}

// The units differ from deploy/systemd/ only in where they find the binaries.
TEST(InstallTree, UnitsRunTheBinariesOfThisInstall) {
  Installed installed;
  std::string bindir = installed.prefix() + "/bin/";
  for (const std::string& unit : kUnits) {
    std::string source = ReadFile(kSourceDir + "/deploy/systemd/" + unit);
    std::string expected = std::regex_replace(
        source, std::regex("/usr/bin/boxmeter-"), bindir + "boxmeter-");
    EXPECT_EQ(ReadFile(installed.Unit(unit)), expected) << unit;
  }
  UnitFile collector = UnitFile::Read(installed.Unit(kUnits[0]));
  EXPECT_EQ(collector.Value("Service", "ExecStart").value_or(""),
            bindir + "boxmeter-collector --config " + kDefaultConfigPath);
  UnitFile gen = UnitFile::Read(installed.Unit(kUnits[1]));
  EXPECT_EQ(gen.Value("Service", "ExecStart").value_or(""),
            bindir + "boxmeter-gen");
  std::vector<std::string> conditions = gen.Values("Service", "ExecCondition");
  ASSERT_EQ(conditions.size(), 2u);
  EXPECT_NE(conditions[1].find(bindir + "boxmeter-gen --check"),
            std::string::npos)
      << conditions[1];
}

// A package is staged in DESTDIR but runs from the prefix: the units must
// name the prefix, not the staging directory.
TEST(InstallTree, DestdirStagesWithoutChangingThePathsInTheUnits) {
  TempDir stage;
  Install("/usr", stage.path());
  std::set<std::string> files = FilesUnder(stage.path() + "/usr");
  EXPECT_EQ(files, kPromisedFiles) << Lines(files);
  UnitFile collector = UnitFile::Read(
      stage.path() + "/usr/share/boxmeter/boxmeter-collector.service");
  EXPECT_EQ(collector.Value("Service", "ExecStart").value_or(""),
            "/usr/bin/boxmeter-collector --config /etc/boxmeter/boxmeter.yaml");
}

// --- The units, as systemd reads them
// ------------------------------------------

std::vector<std::string> VerifyCommand(const Installed& installed) {
  std::vector<std::string> argv = {"systemd-analyze", "verify", "--man=no"};
  for (const std::string& unit : kUnits) argv.push_back(installed.Unit(unit));
  return argv;
}

TEST(SystemdUnits, VerifyPasses) {
  Installed installed;
  CommandResult result = RunProgram(VerifyCommand(installed));
  EXPECT_EQ(result.code, 0) << result.output;
  // Unknown keys, bad values and unresolvable specifiers are only warnings
  // (exit 0): any output at all is a failure here.
  EXPECT_EQ(result.output, "");
}

// The check above can fail: a unit whose binary is missing does not verify.
TEST(SystemdUnits, VerifyCatchesAMissingBinary) {
  Installed installed;
  ASSERT_EQ(std::remove((installed.prefix() + "/bin/boxmeter-gen").c_str()), 0);
  CommandResult result = RunProgram(VerifyCommand(installed));
  EXPECT_NE(result.code, 0) << result.output;
  EXPECT_NE(result.output.find("boxmeter-gen"), std::string::npos)
      << result.output;
}

// README.md ("With systemd, step by step") states these numbers; aim: "OK"
// or better, with margin.
TEST(SystemdUnits, SecurityExposureIsLow) {
  Installed installed;
  for (std::string unit :
       {"boxmeter-collector.service", "boxmeter-gen.service"}) {
    CommandResult result =
        RunProgram({"systemd-analyze", "security", "--offline=true",
                    "--no-pager", "--threshold=20", installed.Unit(unit)});
    EXPECT_EQ(result.code, 0) << unit << " exposure is above 2.0:\n"
                              << result.output;
    std::smatch match;
    static const std::regex kOverall(
        R"(Overall exposure level for \S+: (\d+\.\d) (\w+))");
    ASSERT_TRUE(std::regex_search(result.output, match, kOverall))
        << result.output;
    double exposure = std::stod(match[1]);
    std::string label = match[2];
    EXPECT_LE(exposure, 1.5) << unit;
    EXPECT_TRUE(label == "OK" || label == "SAFE" || label == "PERFECT")
        << unit << ": " << label;
    std::printf("%s: exposure %s %s\n", unit.c_str(), match[1].str().c_str(),
                label.c_str());
  }
}

TEST(SystemdUnits, CollectorServiceKeepsItsPromises) {
  Installed installed;
  UnitFile unit = UnitFile::Read(installed.Unit("boxmeter-collector.service"));
  EXPECT_EQ(unit.errors(), std::vector<std::string>{});

  EXPECT_EQ(unit.Value("Service", "Type"), "notify");
  EXPECT_EQ(unit.Value("Service", "Restart"), "on-failure");
  // The collector pings every WatchdogSec/2; a few seconds at least, so a
  // busy host does not kill a healthy collector.
  ASSERT_TRUE(unit.Value("Service", "WatchdogSec"));
  EXPECT_GE(TimespanUsec(*unit.Value("Service", "WatchdogSec")), 10'000'000);
  // SIGTERM's last poll and commit take up to 3 x source.timeout + 10s.
  Config example = ExampleConfig();
  int64_t stop_bound_usec =
      (std::chrono::duration_cast<std::chrono::microseconds>(
           example.source.timeout * 3 + std::chrono::seconds(10)))
          .count();
  ASSERT_TRUE(unit.Value("Service", "TimeoutStopSec"));
  EXPECT_GT(TimespanUsec(*unit.Value("Service", "TimeoutStopSec")),
            stop_bound_usec);

  // Ordered after PostgreSQL and sing-box, but never requiring them: either
  // may run on another host.
  std::vector<std::string> after = unit.Words("Unit", "After");
  for (std::string peer :
       {"network-online.target", "postgresql.service", "sing-box.service"}) {
    EXPECT_TRUE(Contains(after, peer)) << peer;
  }
  EXPECT_TRUE(Contains(unit.Words("Unit", "Wants"), "network-online.target"));
  for (std::string strong : {"Requires", "Requisite", "BindsTo", "PartOf"}) {
    EXPECT_EQ(unit.Values("Unit", strong), std::vector<std::string>{})
        << strong;
  }

  // Hardening.
  EXPECT_EQ(unit.Value("Service", "DynamicUser"), "yes");
  EXPECT_EQ(unit.Value("Service", "ProtectSystem"), "strict");
  EXPECT_EQ(unit.Value("Service", "ProtectHome"), "yes");
  EXPECT_EQ(unit.Value("Service", "PrivateTmp"), "yes");
  EXPECT_EQ(unit.Value("Service", "NoNewPrivileges"), "yes");
  EXPECT_EQ(unit.Value("Service", "CapabilityBoundingSet"), "");
  EXPECT_EQ(unit.Words("Service", "RestrictAddressFamilies"),
            (std::vector<std::string>{"AF_INET", "AF_INET6", "AF_UNIX"}));
  EXPECT_EQ(unit.Values("Service", "SystemCallFilter").front(),
            "@system-service");
  EXPECT_EQ(unit.Value("Service", "RuntimeDirectory"), "boxmeter");
  EXPECT_EQ(unit.Value("Service", "RuntimeDirectoryMode"), "0700");
  // No core with the password in it; a ceiling above BENCHMARKS.md's peak.
  EXPECT_EQ(unit.Value("Service", "LimitCORE"), "0");
  EXPECT_EQ(unit.Value("Service", "MemoryMax"), "1G");

  EXPECT_TRUE(Contains(unit.Words("Install", "Also"), "boxmeter-gen.path"));
}

TEST(SystemdUnits, GeneratorIsAOneshotStartedOnlyByItsPathUnit) {
  Installed installed;
  UnitFile service = UnitFile::Read(installed.Unit("boxmeter-gen.service"));
  UnitFile path = UnitFile::Read(installed.Unit("boxmeter-gen.path"));
  EXPECT_EQ(service.errors(), std::vector<std::string>{});
  EXPECT_EQ(path.errors(), std::vector<std::string>{});

  EXPECT_EQ(service.Value("Service", "Type"), "oneshot");
  // Started by the .path unit only: not enabled at boot, no timer (the
  // install tree test shows there is no .timer).
  EXPECT_EQ(service.Values("Install", "WantedBy"), std::vector<std::string>{});
  EXPECT_EQ(path.Value("Path", "Unit"), "boxmeter-gen.service");
  // The flush and the reload of sing-box run with full privileges (+), the
  // flush right before the reload and not holding it back (-); the
  // generator itself as its own unprivileged user, with sing-box's group.
  EXPECT_EQ(service.Values("Service", "ExecStartPost"),
            (std::vector<std::string>{
                "-+" + installed.Binary("boxmeter-collector") +
                    " --flush --config /etc/boxmeter/boxmeter.yaml",
                "+/usr/bin/systemctl try-reload-or-restart sing-box.service"}));
  ASSERT_TRUE(service.Value("Service", "User"));
  EXPECT_NE(service.Value("Service", "User"), "root");
  EXPECT_NE(service.Value("Service", "User"), "sing-box");
  EXPECT_EQ(service.Value("Service", "DynamicUser"), "yes");
  EXPECT_EQ(service.Value("Service", "Group"), "sing-box");
  EXPECT_EQ(service.Value("Service", "LimitCORE"), "0");
  EXPECT_TRUE(service.Value("Service", "MemoryMax"));
  EXPECT_EQ(service.Value("Service", "ProtectSystem"), "strict");
  EXPECT_EQ(service.Value("Service", "CapabilityBoundingSet"), "");
  Config example = ExampleConfig();
  EXPECT_EQ(service.Value("Service", "ReadWritePaths"),
            fs::path(example.generator.output).parent_path().string())
      << "the generator may write exactly generator.output's directory";
}

// --- The trigger: collector hook -> file -> .path unit -> boxmeter-gen
// --------

TEST(TriggerContract, TheHookTouchesExactlyTheFileThePathUnitWatches) {
  Installed installed;
  UnitFile collector =
      UnitFile::Read(installed.Unit("boxmeter-collector.service"));
  UnitFile gen = UnitFile::Read(installed.Unit("boxmeter-gen.service"));
  UnitFile path = UnitFile::Read(installed.Unit("boxmeter-gen.path"));

  // The .path unit watches one file, with PathExists= (the service removes
  // it first, so a touch while it runs is not lost).
  for (std::string other :
       {"PathChanged", "PathModified", "PathExistsGlob", "DirectoryNotEmpty"}) {
    EXPECT_EQ(path.Values("Path", other), std::vector<std::string>{}) << other;
  }
  std::vector<std::string> watched_values = path.Values("Path", "PathExists");
  ASSERT_EQ(watched_values.size(), 1u);
  fs::path watched = watched_values[0];

  // That file is in the collector's runtime directory, the one place its
  // sandbox lets it write.
  std::string runtime_dir =
      "/run/" + collector.Value("Service", "RuntimeDirectory").value_or("?");
  EXPECT_EQ(watched.parent_path().string(), runtime_dir);

  // The service consumes exactly that file before anything else.
  std::vector<std::string> conditions = gen.Values("Service", "ExecCondition");
  ASSERT_FALSE(conditions.empty());
  EXPECT_EQ(conditions[0], "+/bin/rm -f " + watched.string());

  // The example config's hook touches it.
  std::string hook = ExampleConfig().hooks.on_users_changed;
  EXPECT_EQ(hook, "touch " + watched.string());

  // And running that hook, with the runtime directory moved to a temporary
  // one, creates exactly that file, then updates it.
  TempDir run;
  std::string moved_hook =
      std::regex_replace(hook, std::regex(runtime_dir + "/"), run.path() + "/");
  ASSERT_NE(moved_hook, hook);
  Process::Options options;
  options.argv = {"/bin/sh", "-c", moved_hook};
  std::string output;
  ASSERT_EQ(RunCommand(options, 10s, &output), 0) << output;
  std::string created = run.path() + "/" + watched.filename().string();
  EXPECT_EQ(FilesUnder(run.path()),
            std::set<std::string>{watched.filename().string()});

  struct timespec old_times[2] = {{1000, 0}, {1000, 0}};
  ASSERT_EQ(utimensat(AT_FDCWD, created.c_str(), old_times, 0), 0);
  ASSERT_EQ(RunCommand(options, 10s, &output), 0) << output;
  struct stat st;
  ASSERT_EQ(stat(created.c_str(), &st), 0);
  EXPECT_GT(st.st_mtim.tv_sec, 1000) << "a second touch must update the file";
}

}  // namespace
}  // namespace boxmeter::testing
