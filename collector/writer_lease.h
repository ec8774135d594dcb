// WriterLease: one writer per node. The types and words of the node's
// lease (schema/0006_writer_lease.sql), shared by every Store and by the
// collector, so that each place that reports a lease says the same thing.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace boxmeter {

// The node's lease as a Store found it in a TakeLease.
struct LeaseState {
  bool held = false;  // this store holds it now
  // The fencing token: the one to put in CommitBatch::lease_token when held;
  // the current holder's when not.
  int64_t token = 0;
  // Who holds it now ("host <hostname> pid <pid> <random>"): this store's
  // holder when held; another's, or empty when nobody holds it, when not.
  std::string holder;
  // Until the lease lapses unless renewed, by the database's clock at the
  // time of the answer. Never negative.
  std::chrono::milliseconds expires_in{0};
};

// How long a collector polling every `poll_interval` holds its lease
// unless it renews it: three poll intervals, at least 3 s. Renewed by every
// commit and, while idle, every third of it; long enough that a slow commit
// or a database hiccup does not hand the node over, and the longest a
// takeover after a crash waits.
std::chrono::milliseconds WriterLeaseTtl(
    std::chrono::milliseconds poll_interval);

// A holder name for this process: "host <hostname> pid <pid> <random hex>".
// Human-readable for the log of a collector that finds the node taken; the
// random part tells apart two processes with one pid (a restart in another
// container, a pid reused). Different at every call.
std::string NewLeaseHolder();

// One line for the log of a collector whose TakeLease did not get the
// lease: names the node, the holder, when the lease lapses, and what to do.
std::string LeaseHeldElsewhere(std::string_view node, const LeaseState& lease);

// Why a commit of `our_holder` with lease token `our_token` was refused:
// the lease is now `now` (another holder's, or nobody's). Says that this
// writer stops writing, and what to do.
std::string LeaseLost(std::string_view node, std::string_view our_holder,
                      int64_t our_token, const LeaseState& now);

}  // namespace boxmeter
