// Test support for end-to-end tests: the fake-stats-server binary (sing-box's
// StatsService semantics, see tests/fake_stats_server_main.cc) as a child
// process that a test drives through its stdin line protocol while other
// binaries poll it.
//
// Its stdin is a FIFO this object holds open (Process has no stdin pipe), so
// commands can be sent at any time and the server keeps running until the
// object goes; its answers are read back from its stdout file.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "process.h"

namespace boxmeter::testing {

class FakeStatsProcess {
 public:
  // Starts `binary` (the path of fake-stats-server) on 127.0.0.1 with a port
  // of its choosing and waits (up to 10 s) for its "listening" line. Throws
  // std::runtime_error with its output if it does not start. Command waits
  // up to `answer_timeout` for each answer.
  explicit FakeStatsProcess(
      const std::string& binary,
      std::chrono::milliseconds answer_timeout = std::chrono::seconds(30));
  ~FakeStatsProcess();  // closes the FIFO and kills the server

  FakeStatsProcess(const FakeStatsProcess&) = delete;
  FakeStatsProcess& operator=(const FakeStatsProcess&) = delete;

  // HOST:PORT where the StatsService listens.
  const std::string& address() const { return address_; }

  // Sends one command line ("set NAME VALUE", "restart", ...) and awaits its
  // answer. Returns "" when the server answered "ok", otherwise why not (it
  // could not be sent, no answer in time, or the answer itself).
  std::string Command(const std::string& command);

 private:
  TempDir dir_;
  std::string out_path_;
  std::chrono::milliseconds answer_timeout_;
  int fd_ = -1;  // the write end of the server's stdin
  std::unique_ptr<Process> process_;
  std::string address_;
  size_t sent_ = 0;  // commands sent, each answered by one line
};

}  // namespace boxmeter::testing
