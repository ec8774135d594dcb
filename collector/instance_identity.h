// InstanceIdentity: which sing-box instance a node's baselines came from,
// told by clocks that do not step.
//
// The stats service answers GetSysStats with its uptime: whole seconds since
// it was created, `uint32(time.Since(createdAt).Seconds())` in sing-box
// v1.13.2's experimental/v2rayapi/stats.go (and the same in v2ray-core's
// app/stats/command/command.go). time.Since reads Go's monotonic clock, which
// on Linux is CLOCK_MONOTONIC: it never steps, and it stops while the machine
// is suspended. The collector brackets every answer with the times, on the
// same CLOCK_MONOTONIC (not CLOCK_BOOTTIME: that one keeps running through a
// suspend, which sing-box's uptime does not see, so every suspend would shift
// the estimate by its length and make one instance look new), at which the
// request was sent (s, rounded down to the millisecond) and the answer
// received (r, rounded down). The service read its clock at some t in [s,
// r + 1) and truncated: t - start is in [u, u + 1) seconds. So the instance
// started strictly inside (s - (u + 1) * 1000, r + 1 - u * 1000): a start
// interval one second wide plus the round trip. A late answer widens it, it
// never shifts it; a wall-clock step changes nothing.
//
// A CLOCK_MONOTONIC reading means something only on the boot it was taken
// in, so an identity carries the kernel's boot id
// (/proc/sys/kernel/random/boot_id). A source that shares the collector's
// kernel (a loopback address: the sidecar case) measures its uptime on that
// very clock. A remote source measures it on another machine's clock, whose
// rate may differ from ours: its interval is widened by kMaxDriftPpm of the
// uptime on each side, and a change of the collector's boot id says nothing
// about it.
//
// Two observations are of different instances when
//   - their start intervals cannot overlap (same boot), or
//   - the boot id changed and the source shares this kernel (every process
//     of the old boot is gone), or
//   - any counter of the current instance fell (DeltaEngine's part).
// Otherwise they are taken as the same instance and the interval narrows to
// the intersection. That is the side to err on: two instances whose start
// intervals overlap started within about one second plus a round trip of
// each other, so the first lived that long at most, and what is lost is what
// it counted after the collector's last read of it: bounded by that second.
// Erring the other way would add a whole cumulative value again: unbounded.
//
// Pure: no clock, no I/O.
#pragma once

#include <cstdint>
#include <string>

#include "stats_reply.h"

namespace boxmeter {

// The largest rate difference assumed between this machine's
// CLOCK_MONOTONIC and a remote source's (Linux slews NTP corrections at
// 500 ppm at most; crystals are within 100 ppm).
inline constexpr int64_t kMaxDriftPpm = 500;

// When an instance started, in milliseconds of one boot's CLOCK_MONOTONIC:
// strictly after lo_ms and strictly before hi_ms.
struct StartInterval {
  int64_t lo_ms = 0;
  int64_t hi_ms = 0;

  bool operator==(const StartInterval&) const = default;
  // True when one instance could have started inside both.
  bool Overlaps(const StartInterval& other) const;
  // The part inside both. Precondition: Overlaps(other).
  StartInterval Intersect(const StartInterval& other) const;
};

// What one uptime answer tells. `same_kernel`: the source measured its
// uptime on this machine's CLOCK_MONOTONIC (else the interval is widened for
// clock drift).
StartInterval StartIntervalOf(const UptimeSample& sample, bool same_kernel);

// What a fetch tells about the instance that answered it.
struct InstanceSighting {
  std::string boot_id;       // the boot the interval's clock belongs to
  bool same_kernel = false;  // the source runs on this boot's kernel
  StartInterval start;
  // When the fetch was asked (its first request sent) and answered (its
  // last answer received), on the same clock as `start`: the instance read
  // its counters in between.
  int64_t asked_ms = 0;
  int64_t answered_ms = 0;

  bool operator==(const InstanceSighting&) const = default;
};

// A node's current instance, as stored with its baselines.
struct InstanceIdentity {
  // The boot of the collector's host `start` is measured on. Empty: nothing
  // is known yet (a new node, or a database from before this identity), and
  // the first sighting is taken as the same instance.
  std::string boot_id;
  // Counts the restarts seen on this node; each baseline records the
  // generation its values came from.
  int64_t generation = 0;
  StartInterval start;

  bool operator==(const InstanceIdentity&) const = default;

  // True when `seen` cannot be this instance by the clocks' evidence alone.
  bool ProvesNew(const InstanceSighting& seen) const;
  // `seen` is this instance: narrow the interval by the new evidence (or,
  // measured on another boot's clock, restate it on the current one).
  // Precondition: !ProvesNew(seen).
  void Continue(const InstanceSighting& seen);
  // `seen` is a new instance: the next generation, started inside `seen`.
  void Restart(const InstanceSighting& seen);
};

}  // namespace boxmeter
