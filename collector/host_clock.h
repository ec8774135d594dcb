// HostClock: the clocks of the machine the collector runs on, with which a
// stats source stamps its answers.
//
// monotonic_ms is CLOCK_MONOTONIC, the clock sing-box measures its uptime on
// (Go's monotonic clock; see instance_identity.h): it never steps, so a
// wall-clock step between or during collector runs changes no instance's
// identity. Its readings mean something only within one boot, hence boot_id.
// wall_ms only files traffic under an hour of the history.
//
// Tests build one with fake functions and a made-up boot id.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace boxmeter {

struct HostClock {
  std::function<int64_t()> monotonic_ms;  // rounded down
  std::function<int64_t()> wall_ms;       // since the epoch
  std::string boot_id;                    // empty: unknown

  // The real clocks, and the boot id read from kBootIdPath (logs a warning
  // and leaves it empty when it cannot be read: then no instance identity
  // is compared across collector runs, only falling counters tell).
  static HostClock System();
};

inline constexpr char kBootIdPath[] = "/proc/sys/kernel/random/boot_id";

// The first line of `path` (a boot id file), or empty when it cannot be
// read; `error` then says why.
std::string ReadBootId(const std::string& path, std::string* error);

}  // namespace boxmeter
