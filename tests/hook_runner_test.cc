// HookRunner: when it runs hooks.on_users_changed (first fingerprint, each
// change, at most once per poll, retries after failures), how (sh -c, as
// configured, with BOXMETER_CONFIG) and that a hook past its timeout is
// killed with everything it started.
#include "hook_runner.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <chrono>
#include <fstream>
#include <functional>
#include <string>

#include "process.h"
#include "recording_hook.h"

namespace boxmeter {
namespace {

using boxmeter::testing::ReadFile;
using boxmeter::testing::RecordingHook;
using boxmeter::testing::TempDir;
using namespace std::chrono_literals;

class HookRunnerTest : public ::testing::Test {
 protected:
  HookRunnerTest() : guard_(boost::asio::make_work_guard(io_)) {}

  // A runner of `command` (hook_.Command(...) for one that records its runs).
  std::unique_ptr<HookRunner> Runner(const std::string& command,
                                     std::chrono::milliseconds timeout = 10s) {
    return std::make_unique<HookRunner>(
        io_,
        Config::Hooks{
            .on_users_changed = command, .on_event = "", .timeout = timeout},
        "/etc/boxmeter/test config.yaml");
  }

  // Runs the loop until `condition` holds or `timeout` passes.
  bool LoopUntil(const std::function<bool()>& condition,
                 std::chrono::milliseconds timeout = 10s) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!condition()) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      io_.run_for(10ms);
    }
    return true;
  }

  // Lets every started run finish.
  bool Settle(HookRunner& runner) {
    return LoopUntil([&] { return !runner.running(); });
  }

  TempDir dir_;
  RecordingHook hook_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type>
      guard_;
};

TEST_F(HookRunnerTest, FirstFingerprintRunsOnceThenOnlyChangesRun) {
  auto runner = Runner(hook_.Command());
  runner->Tick();
  runner->StartNow();
  EXPECT_EQ(runner->runs_started(), 0) << "nothing happens before a "
                                          "fingerprint is known";
  runner->UsersFingerprint("a");
  runner->StartNow();
  EXPECT_TRUE(runner->running());
  ASSERT_TRUE(Settle(*runner));
  EXPECT_EQ(hook_.Runs(), 1);

  for (int i = 0; i < 3; ++i) {
    runner->Tick();
    runner->StartNow();
    runner->UsersFingerprint("a");
    runner->StartNow();
  }
  ASSERT_TRUE(Settle(*runner));
  EXPECT_EQ(hook_.Runs(), 1) << "an unchanged fingerprint runs nothing";

  runner->Tick();
  runner->StartNow();
  runner->UsersFingerprint("b");
  runner->StartNow();
  ASSERT_TRUE(Settle(*runner));
  EXPECT_EQ(hook_.Runs(), 2);
  EXPECT_EQ(runner->runs_failed(), 0);
}

TEST_F(HookRunnerTest, AtMostOneStartPerPoll) {
  auto runner = Runner(hook_.Command());
  runner->UsersFingerprint("a");
  runner->StartNow();
  ASSERT_TRUE(Settle(*runner));
  runner->UsersFingerprint("b");  // same poll: waits for the next one
  runner->StartNow();
  EXPECT_FALSE(runner->running());
  EXPECT_TRUE(runner->run_requested());
  runner->UsersFingerprint("c");
  runner->StartNow();
  runner->Tick();
  runner->StartNow();
  EXPECT_TRUE(runner->running());
  ASSERT_TRUE(Settle(*runner));
  EXPECT_EQ(hook_.Runs(), 2) << "b and c were folded into one run";
  EXPECT_FALSE(runner->run_requested());
}

TEST_F(HookRunnerTest, ChangeDuringARunRunsAgainOnTheNextPoll) {
  std::string gate = dir_.path() + "/gate";
  // The first run waits for the gate file, so the change lands mid-run.
  auto runner = Runner(
      hook_.Command("; while [ ! -e '" + gate + "' ]; do sleep 0.01; done"));
  runner->UsersFingerprint("a");
  runner->StartNow();
  ASSERT_TRUE(runner->running());
  runner->Tick();
  runner->StartNow();
  runner->UsersFingerprint("b");
  runner->StartNow();
  EXPECT_EQ(runner->runs_started(), 1) << "one run at a time";
  std::ofstream(gate) << "open";
  ASSERT_TRUE(Settle(*runner));
  EXPECT_TRUE(runner->run_requested());
  runner->Tick();
  runner->StartNow();
  ASSERT_TRUE(Settle(*runner));
  EXPECT_EQ(runner->runs_started(), 2);
  EXPECT_EQ(hook_.Runs(), 2);
}

TEST_F(HookRunnerTest, FailingHookIsRetriedOnEveryPollUntilItSucceeds) {
  std::string fixed = dir_.path() + "/fixed";
  auto runner = Runner(hook_.Command("; [ -e '" + fixed + "' ] || exit 3"));
  runner->UsersFingerprint("a");
  runner->StartNow();
  ASSERT_TRUE(Settle(*runner));
  EXPECT_EQ(runner->runs_failed(), 1);
  EXPECT_TRUE(runner->run_requested());
  for (int poll = 0; poll < 3; ++poll) {
    runner->Tick();
    runner->StartNow();
    ASSERT_TRUE(Settle(*runner));
  }
  EXPECT_EQ(hook_.Runs(), 4);
  EXPECT_EQ(runner->runs_failed(), 4);
  std::ofstream(fixed) << "fixed";
  runner->Tick();
  runner->StartNow();
  ASSERT_TRUE(Settle(*runner));
  EXPECT_EQ(runner->runs_failed(), 4);
  EXPECT_FALSE(runner->run_requested());
  runner->Tick();
  runner->StartNow();
  ASSERT_TRUE(Settle(*runner));
  EXPECT_EQ(hook_.Runs(), 5) << "no more runs once it succeeded";
}

// Whether `pid` is gone (or a zombie awaiting its new parent).
bool Gone(pid_t pid) {
  std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  if (stat.empty()) return true;
  size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() &&
         stat[paren + 2] == 'Z';
}

TEST_F(HookRunnerTest, HookPastItsTimeoutIsKilledWithItsChildren) {
  std::string pid_file = dir_.path() + "/pid";
  auto runner = Runner("sleep 60 & echo $! > '" + pid_file + "'; wait", 300ms);
  auto start = std::chrono::steady_clock::now();
  runner->UsersFingerprint("a");
  runner->StartNow();
  ASSERT_TRUE(Settle(*runner));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  EXPECT_EQ(runner->runs_failed(), 1);
  EXPECT_TRUE(runner->run_requested()) << "a timeout is retried";
  std::string pid = ReadFile(pid_file);
  ASSERT_FALSE(pid.empty());
  EXPECT_TRUE(testing::WaitUntil([&] { return Gone(std::stoi(pid)); }, 5s))
      << "the hook's background child " << pid << " survived the timeout";
}

// A child that calls setsid() leaves the hook's process group, so killing
// the group missed it (issue 18).
TEST_F(HookRunnerTest, ATimeoutEndsAChildInItsOwnSession) {
  std::string pid_file = dir_.path() + "/pid";
  auto runner =
      Runner("setsid sleep 300 & echo $! > '" + pid_file + "'; wait", 300ms);
  runner->UsersFingerprint("a");
  runner->StartNow();
  ASSERT_TRUE(LoopUntil([&] { return !ReadFile(pid_file).empty(); }));
  pid_t pid = std::stoi(ReadFile(pid_file));
  // It really is in a session of its own.
  ASSERT_TRUE(testing::WaitUntil([&] { return getsid(pid) == pid; }, 5s));
  ASSERT_TRUE(Settle(*runner));
  EXPECT_EQ(runner->runs_failed(), 1);
  EXPECT_TRUE(testing::WaitUntil([&] { return Gone(pid); }, 5s))
      << "the hook's setsid child " << pid << " survived the timeout";
}

// Its parent gone too, it would be re-parented to init and out of reach;
// as subreaper the runner keeps it below the collector.
TEST_F(HookRunnerTest, ATimeoutEndsAnOrphanInItsOwnSession) {
  std::string pid_file = dir_.path() + "/pid";
  auto runner = Runner(
      "(setsid sleep 300 & echo $! > '" + pid_file + "'); exec sleep 300",
      300ms);
  runner->UsersFingerprint("a");
  runner->StartNow();
  ASSERT_TRUE(Settle(*runner));
  EXPECT_EQ(runner->runs_failed(), 1);
  std::string pid = ReadFile(pid_file);
  ASSERT_FALSE(pid.empty());
  EXPECT_TRUE(testing::WaitUntil([&] { return Gone(std::stoi(pid)); }, 5s))
      << "the hook's orphaned setsid child " << pid << " survived";
}

// What an earlier, successful run left running is not a later run's tree;
// when it exits, the runner reaps it.
TEST_F(HookRunnerTest, AnEarlierRunsBackgroundProcessIsSparedAndReaped) {
  std::string pid_file = dir_.path() + "/pid";
  auto runner =
      Runner("if [ ! -s '" + pid_file + "' ]; then (setsid sleep 300 &" +
                 " echo $! > '" + pid_file + "'); else exec sleep 300; fi",
             300ms);
  runner->UsersFingerprint("a");
  runner->StartNow();
  ASSERT_TRUE(Settle(*runner));
  ASSERT_EQ(runner->runs_failed(), 0);
  pid_t pid = std::stoi(ReadFile(pid_file));
  ASSERT_TRUE(testing::WaitUntil(
      [&] {
        std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
        size_t paren = stat.rfind(')');
        return paren != std::string::npos &&
               std::stoi(stat.substr(paren + 4)) == getpid();
      },
      5s))
      << "the orphan was not adopted by the runner's process";

  runner->Tick();
  runner->StartNow();
  runner->UsersFingerprint("b");  // the second run times out
  runner->StartNow();
  ASSERT_TRUE(runner->running());
  ASSERT_TRUE(Settle(*runner));
  EXPECT_EQ(runner->runs_failed(), 1);
  EXPECT_FALSE(Gone(pid)) << "an earlier run's process was killed";

  ASSERT_EQ(kill(pid, SIGKILL), 0);
  runner->Reload({.on_users_changed = "",
                  .on_event = "",
                  .timeout = 300ms});  // no more runs
  EXPECT_TRUE(LoopUntil([&] {
    runner->Tick();
    runner->StartNow();
    return ReadFile("/proc/" + std::to_string(pid) + "/stat").empty();
  })) << "the adopted process was not reaped";
}

TEST_F(HookRunnerTest, CommandRunsAsConfiguredWithTheConfigPathInItsEnv) {
  std::string out = dir_.path() + "/out";
  // Shell syntax in the command is the operator's own; the runner adds
  // nothing to it and passes no arguments.
  auto runner = Runner(
      "printf '%s|%s|%s' \"$BOXMETER_CONFIG\" \"$#\" "
      "\"$(cat)\" > '" +
      out + "'");
  runner->UsersFingerprint("a");
  runner->StartNow();
  ASSERT_TRUE(Settle(*runner));
  EXPECT_EQ(ReadFile(out), "/etc/boxmeter/test config.yaml|0|")
      << "BOXMETER_CONFIG is the config path, no arguments, empty stdin";
  EXPECT_EQ(runner->runs_failed(), 0);
}

TEST_F(HookRunnerTest, NoCommandRunsNothingUntilOneIsConfigured) {
  auto runner = Runner("");
  EXPECT_FALSE(runner->enabled());
  runner->UsersFingerprint("a");
  runner->StartNow();
  runner->Tick();
  runner->StartNow();
  EXPECT_FALSE(runner->running());
  EXPECT_EQ(runner->runs_started(), 0);

  runner->Reload(
      {.on_users_changed = hook_.Command(), .on_event = "", .timeout = 10s});
  EXPECT_TRUE(runner->enabled());
  runner->Tick();
  runner->StartNow();
  ASSERT_TRUE(Settle(*runner));
  EXPECT_EQ(hook_.Runs(), 1) << "a newly configured hook runs once";
}

TEST_F(HookRunnerTest, DestroyingTheRunnerKillsARunningHook) {
  std::string pid_file = dir_.path() + "/pid";
  auto runner = Runner("echo $$ > '" + pid_file + "'; sleep 60");
  runner->UsersFingerprint("a");
  runner->StartNow();
  ASSERT_TRUE(LoopUntil([&] { return !ReadFile(pid_file).empty(); }));
  pid_t pid = std::stoi(ReadFile(pid_file));
  auto start = std::chrono::steady_clock::now();
  runner.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  EXPECT_TRUE(Gone(pid));
  io_.run_for(50ms);  // the queued exit handler must do nothing now
}

}  // namespace
}  // namespace boxmeter
