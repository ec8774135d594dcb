// Test support for the end-to-end tests: the boxmeter-collector binary as a
// child process with its own config file and log, and what it wrote to the
// database, in the stats API's terms.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pg_server.h"
#include "process.h"

namespace boxmeter::testing {

// Counter name ("user>>>alice>>>traffic>>>uplink") -> bytes.
using CounterMap = std::map<std::string, int64_t>;

class CollectorRunner {
 public:
  struct Settings {
    std::string node = "e2e";
    std::string source_address;  // host:port of the stats API
    std::string database_url;
    std::string poll_interval = "200ms";
    std::string source_timeout = "2s";
    std::string log_level = "debug";  // each poll is a line: tests count them
    // control.socket, for --flush; empty: collector.sock in the runner's own
    // directory (the collector's default, /run/boxmeter/collector.sock, is no
    // place for a test or the demo, and two runners must not share one).
    std::string control_socket = "";
    // metrics.listen and metrics.per_user; empty: no metrics endpoint.
    std::string metrics_listen = "";
    bool metrics_per_user = true;
    // Appended to the config file as it is: more sections (generator:,
    // hooks:, ...).
    std::string more_yaml = "";
  };

  // Writes the config file into a TempDir; starts nothing. `binary` is the
  // path of boxmeter-collector.
  CollectorRunner(std::string binary, Settings settings);
  ~CollectorRunner();  // kills a running collector

  // Starts the daemon, stderr appended to log_path(). Throws if running.
  void Start();
  // Runs `boxmeter-collector --once` to completion (bounded by `timeout`)
  // with the same config and log; returns its exit code.
  int RunOnce(std::chrono::milliseconds timeout);

  // Runs `boxmeter-collector --flush` with the same config (bounded by
  // `timeout`), its output appended to the log; returns its exit code: 0
  // once the running collector has committed, non-zero otherwise.
  int Flush(std::chrono::milliseconds timeout);

  // Added to the environment of every process started from now on, e.g.
  // libfaketime's (see FakeTimeEnvironment).
  void SetEnvironment(std::map<std::string, std::string> environment);

  bool Running();
  pid_t pid() const;  // of the daemon last started; 0 before
  void Signal(int signal);
  void Kill();  // SIGKILL: a crash, nothing is flushed
  // Waits for the daemon to exit; its code, or nullopt if still running.
  std::optional<int> Wait(std::chrono::milliseconds timeout);

  const std::string& config_path() const { return config_path_; }
  const std::string& log_path() const { return log_path_; }
  std::string Log() const;
  // The last `lines` lines of the log, for failure messages.
  std::string LogTail(size_t lines = 40) const;
  // How many lines of the log contain `text`.
  size_t CountLogLines(const std::string& text) const;
  // Awaits `count` successful polls that start after the call (the debug
  // line each successful fetch logs, kPollLogLine). Two suffice to know that
  // a poll saw everything the source counted before the call: the first may
  // have been in flight already. False after `timeout`.
  bool AwaitPolls(size_t count, std::chrono::milliseconds timeout);
  static constexpr const char* kPollLogLine = "last poll: ";

 private:
  Process::Options ProcessOptions(
      const std::vector<std::string>& extra_args) const;

  std::string binary_;
  std::unique_ptr<TempDir> dir_;
  std::string config_path_;
  std::string log_path_;
  std::map<std::string, std::string> environment_;
  std::unique_ptr<Process> process_;
};

// The environment that runs a process under Debian's libfaketime with its
// wall clock (CLOCK_REALTIME) `offset` away from the real one; monotonic
// clocks (CLOCK_MONOTONIC, CLOCK_BOOTTIME) are left alone. Throws
// std::runtime_error naming the library when it is not installed (package
// faketime, scripts/install-deps.sh test).
std::map<std::string, std::string> FakeTimeEnvironment(
    std::chrono::seconds offset);

// What the database holds for `node`, read through the contract's views
// (user_traffic, inbound_traffic, outbound_traffic) and named like the stats
// API's counters. Throws if PostgreSQL does not answer.
CounterMap TrafficInDatabase(PgServer& pg, const std::string& database,
                             const std::string& node);

// TrafficInDatabase for a database that may not answer yet: fills `*out`
// and returns "", or returns why it failed (and clears `*out`).
std::string TryTrafficInDatabase(PgServer& pg, const std::string& database,
                                 const std::string& node, CounterMap* out);

// `counters` without zero values: a counter that never moved may be missing
// from either side (the collector writes only counters that changed).
CounterMap WithoutZeros(CounterMap counters);

// `counters` (of a V2RayServer) without zeros and without the counters no
// test can predict: the api-in inbound and the api outbound count the stats
// calls themselves (every poll and every ground-truth read), so they are
// never equal on both sides at one moment. Users, the socks inbounds and the
// direct outbound carry only the traffic a test pushes.
CounterMap PredictableV2RayCounters(CounterMap counters);

// One line per counter where `expected` and `actual` differ, or "".
std::string DescribeDifference(const CounterMap& expected,
                               const CounterMap& actual);

}  // namespace boxmeter::testing
