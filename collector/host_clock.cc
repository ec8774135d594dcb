#include "host_clock.h"

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>

#include "log.h"

namespace boxmeter {
namespace {

int64_t MonotonicMs() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1000 + now.tv_nsec / 1'000'000;
}

int64_t WallMs() {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  return int64_t{now.tv_sec} * 1000 + now.tv_nsec / 1'000'000;
}

}  // namespace

std::string ReadBootId(const std::string& path, std::string* error) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line) || line.empty()) {
    *error = "cannot read " + path + ": " +
             (errno != 0 ? std::string(std::strerror(errno)) : "empty");
    return "";
  }
  return line;
}

HostClock HostClock::System() {
  std::string error;
  std::string boot_id = ReadBootId(kBootIdPath, &error);
  if (boot_id.empty()) {
    LogWarn(
        "{}; without the boot id sing-box restarts are told only by falling "
        "counters, not by their uptime (is /proc mounted?)",
        error);
  }
  return {MonotonicMs, WallMs, std::move(boot_id)};
}

}  // namespace boxmeter
