#include "stats_server_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <stdexcept>
#include <thread>

namespace boxmeter::testing {
namespace {

constexpr auto kExitWait = std::chrono::seconds(5);

[[noreturn]] void Fail(const std::string& what) {
  throw std::runtime_error("fake-stats-server: " + what);
}

}  // namespace

StatsServerProcess::StatsServerProcess(const std::string& binary,
                                       size_t stats) {
  int in[2], out[2];  // in: we write, the child reads; out: the reverse
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
    Fail("cannot create pipes for " + binary);
  }
  std::string count = std::to_string(stats);
  pid_ = fork();
  if (pid_ < 0) Fail("cannot fork to start " + binary);
  if (pid_ == 0) {
    dup2(in[0], STDIN_FILENO);
    dup2(out[1], STDOUT_FILENO);
    execl(binary.c_str(), binary.c_str(), "--listen", "127.0.0.1:0",
          "--counters", count.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  to_child_ = fdopen(in[1], "w");
  from_child_ = fdopen(out[0], "r");
  // Populating a million counters takes a few seconds; the first line comes
  // after it, and a child that failed to start closes the pipe instead.
  std::string line = ReadLine();
  const std::string prefix = "listening ";
  if (line.rfind(prefix, 0) != 0) {
    Fail(binary + " did not start (first line: '" + line +
         "'); is it built? Run scripts/bench.sh, which builds it");
  }
  address_ = line.substr(prefix.size());
}

StatsServerProcess::~StatsServerProcess() {
  if (to_child_ != nullptr) {
    fputs("quit\n", to_child_);
    fclose(to_child_);
  }
  if (from_child_ != nullptr) fclose(from_child_);
  if (pid_ <= 0) return;
  auto deadline = std::chrono::steady_clock::now() + kExitWait;
  while (waitpid(pid_, nullptr, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() >= deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void StatsServerProcess::Touch(double fraction, int64_t bytes) {
  Command("touch " + std::to_string(fraction) + " " + std::to_string(bytes));
}

void StatsServerProcess::Command(const std::string& line) {
  if (fputs((line + "\n").c_str(), to_child_) < 0 || fflush(to_child_) != 0) {
    Fail("cannot send '" + line + "': the server has gone away");
  }
  std::string answer = ReadLine();
  if (answer != "ok") Fail("'" + line + "' answered '" + answer + "'");
}

std::string StatsServerProcess::ReadLine() {
  std::string line;
  int c;
  while ((c = fgetc(from_child_)) != EOF && c != '\n') line += char(c);
  if (c == EOF && line.empty()) line = "<end of output>";
  return line;
}

}  // namespace boxmeter::testing
