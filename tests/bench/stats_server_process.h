// StatsServerProcess: the fake-stats-server binary as a child process that
// the benchmark drives through its stdin (see fake_stats_server_main.cc).
//
// The fake runs in its own process so the benchmark's memory readings are
// the collector's alone: a million synthetic counters and the reply built
// from them cost the server hundreds of megabytes, as they cost sing-box.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

namespace boxmeter::testing {

class StatsServerProcess {
 public:
  // Starts `binary` on 127.0.0.1 with `stats` synthetic counters (counter
  // names, i.e. two per user, inbound or outbound) and waits until it
  // listens. Throws std::runtime_error naming the binary on failure.
  StatsServerProcess(const std::string& binary, size_t stats);
  // Sends quit, then SIGKILL if it has not exited within a few seconds.
  ~StatsServerProcess();

  StatsServerProcess(const StatsServerProcess&) = delete;
  StatsServerProcess& operator=(const StatsServerProcess&) = delete;

  const std::string& address() const { return address_; }

  // Adds `bytes` to round(fraction * stats) counters spread over all of them
  // (FakeStatsServer::TouchFraction); returns when the server has done it.
  void Touch(double fraction, int64_t bytes);

 private:
  // Sends one command line and waits for "ok"; throws on anything else.
  void Command(const std::string& line);
  std::string ReadLine();

  pid_t pid_ = -1;
  FILE* to_child_ = nullptr;
  FILE* from_child_ = nullptr;
  std::string address_;
};

}  // namespace boxmeter::testing
