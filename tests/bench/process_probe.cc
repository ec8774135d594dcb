#include "process_probe.h"

#include <malloc.h>

#include <fstream>
#include <string>

namespace boxmeter::testing {
namespace {

// A "Key:   1234 kB" line of /proc/self/status, in bytes.
int64_t StatusField(const std::string& key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(key + ":", 0) != 0) continue;
    return std::stoll(line.substr(key.size() + 1)) * 1024;
  }
  return 0;
}

}  // namespace

int64_t ResidentBytes() { return StatusField("VmRSS"); }
int64_t PeakResidentBytes() { return StatusField("VmHWM"); }

bool ResetPeakResident() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";  // 5: reset the peak RSS
  clear.flush();
  return clear.good();
}

int64_t HeapInUseBytes() {
  struct mallinfo2 info = mallinfo2();
  return static_cast<int64_t>(info.uordblks + info.hblkhd);
}

void TrimHeap() { malloc_trim(0); }

int64_t CpuNanos(pid_t pid) {
  std::ifstream schedstat("/proc/" + std::to_string(pid) + "/schedstat");
  int64_t nanos = -1;
  if (!(schedstat >> nanos)) return -1;
  return nanos;
}

}  // namespace boxmeter::testing
