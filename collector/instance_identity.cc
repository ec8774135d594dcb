#include "instance_identity.h"

#include <algorithm>

namespace boxmeter {

bool StartInterval::Overlaps(const StartInterval& other) const {
  // Open intervals: touching ones share no instant.
  return std::max(lo_ms, other.lo_ms) < std::min(hi_ms, other.hi_ms);
}

StartInterval StartInterval::Intersect(const StartInterval& other) const {
  return {std::max(lo_ms, other.lo_ms), std::min(hi_ms, other.hi_ms)};
}

StartInterval StartIntervalOf(const UptimeSample& sample, bool same_kernel) {
  int64_t uptime_ms = int64_t{sample.uptime_s} * 1000;
  // The answer's time is known to the millisecond below: the service read
  // its clock before received_ms + 1.
  StartInterval start{sample.sent_ms - uptime_ms - 1000,
                      sample.received_ms + 1 - uptime_ms};
  if (!same_kernel) {
    // Another machine's second may be ours +- kMaxDriftPpm: over u + 1 of
    // them the start moves by up to that many microseconds per second.
    int64_t drift_ms = (int64_t{sample.uptime_s} + 1) * kMaxDriftPpm / 1000 + 1;
    start.lo_ms -= drift_ms;
    start.hi_ms += drift_ms;
  }
  return start;
}

bool InstanceIdentity::ProvesNew(const InstanceSighting& seen) const {
  if (boot_id.empty() || seen.boot_id.empty()) return false;  // no evidence
  if (boot_id != seen.boot_id) {
    // The kernel the source runs on rebooted: so did the source. A remote
    // source's clock did not; only its counters can tell.
    return seen.same_kernel;
  }
  return !start.Overlaps(seen.start);
}

void InstanceIdentity::Continue(const InstanceSighting& seen) {
  if (!boot_id.empty() && boot_id == seen.boot_id) {
    start = start.Intersect(seen.start);
    return;
  }
  // Unknown so far, or measured on a clock that is gone: start again from
  // what this sighting tells, on the clock it was measured on.
  boot_id = seen.boot_id;
  start = seen.start;
}

void InstanceIdentity::Restart(const InstanceSighting& seen) {
  ++generation;
  boot_id = seen.boot_id;
  start = seen.start;
}

}  // namespace boxmeter
