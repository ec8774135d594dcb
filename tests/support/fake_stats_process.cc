#include "fake_stats_process.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace boxmeter::testing {
namespace {

using namespace std::chrono_literals;

constexpr const char* kListening = "listening ";

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

}  // namespace

FakeStatsProcess::FakeStatsProcess(const std::string& binary,
                                   std::chrono::milliseconds answer_timeout)
    : answer_timeout_(answer_timeout) {
  std::string fifo = dir_.path() + "/commands";
  std::string err_path = dir_.path() + "/stderr";
  out_path_ = dir_.path() + "/stdout";
  if (mkfifo(fifo.c_str(), 0600) != 0) {
    throw std::runtime_error("mkfifo " + fifo + ": " + std::strerror(errno));
  }
  // Read-write, so that neither this open nor the child's blocks waiting for
  // the other end; close-on-exec, so only this object holds it.
  fd_ = open(fifo.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0) {
    throw std::runtime_error("open " + fifo + ": " + std::strerror(errno));
  }
  try {
    Process::Options server;
    server.argv = {"/bin/sh", "-c", "exec \"$0\" --listen 127.0.0.1:0 <\"$1\"",
                   binary, fifo};
    server.stdout_path = out_path_;
    server.stderr_path = err_path;
    process_ = Process::Start(server);
    bool listening = WaitUntil(
        [&] {
          std::vector<std::string> lines = Lines(ReadFile(out_path_));
          return !lines.empty() && lines[0].starts_with(kListening);
        },
        10s);
    if (!listening) {
      throw std::runtime_error("fake-stats-server did not start: " +
                               ReadFile(out_path_) + ReadFile(err_path));
    }
  } catch (...) {
    close(fd_);  // the destructor does not run for a failed constructor
    throw;
  }
  address_ = Lines(ReadFile(out_path_))[0].substr(std::strlen(kListening));
}

FakeStatsProcess::~FakeStatsProcess() { close(fd_); }

std::string FakeStatsProcess::Command(const std::string& command) {
  std::string line = command + "\n";
  if (write(fd_, line.data(), line.size()) !=
      static_cast<ssize_t>(line.size())) {
    return "cannot send \"" + command +
           "\" to fake-stats-server: " + std::strerror(errno);
  }
  ++sent_;
  std::vector<std::string> lines;
  bool answered = WaitUntil(
      [&] {
        lines = Lines(ReadFile(out_path_));
        return lines.size() > sent_;  // line 0 is "listening ..."
      },
      answer_timeout_, 10ms);
  if (!answered) {
    return "fake-stats-server did not answer \"" + command + "\" within " +
           std::to_string(answer_timeout_.count()) +
           " ms; its stderr: " + ReadFile(dir_.path() + "/stderr");
  }
  if (lines[sent_] != "ok") {
    return "fake-stats-server answered \"" + lines[sent_] + "\" to \"" +
           command + "\"";
  }
  return "";
}

}  // namespace boxmeter::testing
