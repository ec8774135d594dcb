// HostClock::System reads the clocks sing-box's uptime is compared with.
#include "host_clock.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <ctime>
#include <fstream>
#include <string>

namespace boxmeter {
namespace {

int64_t ReadMs(clockid_t clock) {
  timespec now{};
  clock_gettime(clock, &now);
  return int64_t{now.tv_sec} * 1000 + now.tv_nsec / 1'000'000;
}

TEST(HostClockTest, MonotonicIsClockMonotonicNotTheWallClock) {
  HostClock clock = HostClock::System();
  int64_t before = ReadMs(CLOCK_MONOTONIC);
  int64_t ms = clock.monotonic_ms();
  int64_t after = ReadMs(CLOCK_MONOTONIC);
  EXPECT_LE(before, ms);
  EXPECT_LE(ms, after);
  int64_t wall_before = ReadMs(CLOCK_REALTIME);
  int64_t wall = clock.wall_ms();
  EXPECT_LE(wall_before, wall);
  EXPECT_LE(wall, ReadMs(CLOCK_REALTIME));
}

TEST(HostClockTest, BootIdIsThisKernelsAndUnreadableIsEmpty) {
  HostClock clock = HostClock::System();
  std::string error;
  EXPECT_EQ(clock.boot_id, ReadBootId(kBootIdPath, &error));
  EXPECT_EQ(clock.boot_id.size(), 36u) << clock.boot_id;  // a UUID

  std::string path = ::testing::TempDir() + "boot_id_test";
  std::ofstream(path) << "0b5e7f1c-2f64-4e1a-9d6c-1f3a2b4c5d6e\n";
  EXPECT_EQ(ReadBootId(path, &error), "0b5e7f1c-2f64-4e1a-9d6c-1f3a2b4c5d6e");
  std::remove(path.c_str());
  EXPECT_EQ(ReadBootId(path, &error), "");
  EXPECT_NE(error.find(path), std::string::npos) << error;
}

}  // namespace
}  // namespace boxmeter
