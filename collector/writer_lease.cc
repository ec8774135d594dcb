#include "writer_lease.h"

#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <random>

namespace boxmeter {

std::chrono::milliseconds WriterLeaseTtl(
    std::chrono::milliseconds poll_interval) {
  return std::max<std::chrono::milliseconds>(poll_interval * 3,
                                             std::chrono::seconds(3));
}

std::string NewLeaseHolder() {
  char host[HOST_NAME_MAX + 1] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') {
    host[0] = '?';
    host[1] = '\0';
  }
  std::random_device random;
  uint64_t nonce = (static_cast<uint64_t>(random()) << 32) ^ random();
  return fmt::format("host {} pid {} {:016x}", host,
                     static_cast<long>(getpid()), nonce);
}

std::string LeaseHeldElsewhere(std::string_view node, const LeaseState& lease) {
  if (lease.holder.empty()) {
    return fmt::format(
        "node '{}' has no writer right now, yet taking its lease failed "
        "(it was released meanwhile); trying again",
        node);
  }
  return fmt::format(
      "node '{}' is written by another collector ({}, lease token {}, "
      "lapses in {:.1f} s unless renewed): this one commits nothing and "
      "takes over only if that lease lapses. Two collectors with the same "
      "node: count nothing twice, but if the other one is not a standby, "
      "give this one its own node: name",
      node, lease.holder, lease.token, lease.expires_in.count() / 1000.0);
}

std::string LeaseLost(std::string_view node, std::string_view our_holder,
                      int64_t our_token, const LeaseState& now) {
  std::string who =
      now.holder.empty()
          ? std::string("nobody holds it now (it was released)")
          : fmt::format(
                "it is now held by {} (lease token {}, lapses in "
                "{:.1f} s unless renewed)",
                now.holder, now.token, now.expires_in.count() / 1000.0);
  return fmt::format(
      "this collector ({}) no longer holds the writer lease of node '{}' "
      "(its token {}); {}. Another collector took the node over after this "
      "one's lease lapsed (a pause or a lost database connection longer "
      "than the lease). This one stops writing and must take the lease and "
      "load the node again before it commits; if both collectors are meant "
      "to run, give each its own node: name",
      our_holder, node, our_token, who);
}

}  // namespace boxmeter
