// Test support: child processes that are always cleaned up.
//
// Integration tests start real servers (PostgreSQL, v2ray-core, the collector
// binary). A Process kills and reaps its child when destroyed, so a failing
// assertion never leaves a server running.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace boxmeter::testing {

class Process {
 public:
  struct Options {
    std::vector<std::string> argv;           // argv[0] is looked up in PATH
    std::map<std::string, std::string> env;  // added to (or replacing in)
                                             // the current environment
    std::string stdout_path;                 // empty: inherit
    std::string stderr_path;                 // empty: inherit
    std::string run_as;                      // user name; empty: as is
  };

  // Starts the child; throws std::runtime_error naming argv[0] on failure.
  static std::unique_ptr<Process> Start(const Options& options);

  ~Process();  // SIGKILL and reap, if still running

  pid_t pid() const { return pid_; }
  bool Running();
  void Signal(int signal);
  // Waits for exit up to `timeout`. Returns the exit code (128 + signal for a
  // child killed by a signal), or nullopt if it is still running.
  std::optional<int> Wait(std::chrono::milliseconds timeout);
  // SIGKILL and reap.
  void Kill();

 private:
  explicit Process(pid_t pid) : pid_(pid) {}
  pid_t pid_;
  std::optional<int> exit_code_;
};

// Runs a command to completion (bounded by `timeout`, then killed) and returns
// its exit code; its stdout and stderr are appended to `*output` if given.
int RunCommand(const Process::Options& options,
               std::chrono::milliseconds timeout,
               std::string* output = nullptr);

// A directory removed with everything in it when destroyed.
class TempDir {
 public:
  TempDir();  // mkdtemp under $TMPDIR or /tmp
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A TCP port on 127.0.0.1 that was free a moment ago.
int FreePort();

// Polls `condition` every `step` until it is true or `timeout` passes.
// Returns its last value. The way tests await a condition instead of sleeping.
template <typename Condition>
bool WaitUntil(Condition condition, std::chrono::milliseconds timeout,
               std::chrono::milliseconds step = std::chrono::milliseconds(50));

// The file's content, or "" if it cannot be read (for log assertions).
std::string ReadFile(const std::string& path);

// The last `max` bytes of `text` (a log), marked "..." when cut, for
// failure messages.
std::string Tail(const std::string& text, size_t max = 3000);

}  // namespace boxmeter::testing

#include "process_inl.h"  // WaitUntil
