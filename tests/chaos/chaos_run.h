// ChaosRun: a randomized fault run against the real thing, in the way storage
// engines are tested. Real v2ray-core (the stats API peer) with several users
// on two socks inbounds and random bursts of real traffic; real PostgreSQL;
// the real boxmeter-collector binary; a TcpProxy in front of PostgreSQL and
// one in front of the stats API. Random events, chosen by a seeded PRNG:
//
//   kill -9 of the collector (also while a commit is in flight: the database
//   path is stalled under a commit, then the collector is killed), SIGTERM
//   and restart, v2ray-core restarts (SIGTERM or kill -9), PostgreSQL fast
//   and immediate stops and restarts, and proxy faults: stalls, refused
//   connections, every connection cut mid-stream, and a cut right before or
//   right after the COMMIT of a transaction (the latter: applied, but the
//   reply is lost).
//
// The expected result is exact. Before each v2ray-core stop the run makes
// sure a poll saw that instance's last traffic (the database matches it, or,
// while the database is unreachable, two polls logged after the traffic),
// then banks its counters. At checkpoints the database may lag but never
// exceed v2ray's counters; whenever everything is healed it must match them
// exactly; and at the end every total in the database equals the ground
// truth: the banked counters plus the running instance's.
//
// With exactly_once_faults (issue 10), the menu also holds: reload storms
// (instances that live 1-2 s, each with traffic and polled after it),
// SIGTERM right after a v2ray-core restart, SIGTERM while another PostgreSQL
// session holds the node's row lock (released within the stop budget: exit
// 0), answers of the stats API delayed by a random 0-1.5 s, a wall-clock step
// of +-3 s or +-90 s between collector runs (libfaketime), a second
// collector for the node on a second core (it must never write), and
// `--flush` followed at once by a v2ray-core restart.
//
// One limit of the design is respected, not tested: once the collector holds
// traffic of a v2ray instance that is gone and has not committed it (the
// database was down at the restart), that traffic exists only in the
// collector's memory, so the run does not kill or stop the collector until
// the database has it. RELIABILITY.md states this boundary.
//
// The seed makes the sequence of decisions replayable (which event, which
// user, how many bytes, how long to wait); the timing of real processes
// around them varies from run to run.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <ostream>
#include <string>

namespace boxmeter::testing {

struct ChaosOptions {
  uint64_t seed = 0;
  // How long to inject events; the final heal and comparison come after.
  std::chrono::seconds duration{150};
  std::string collector_binary;
  std::ostream* out = nullptr;  // one line per event; required
  // The faults of issue 10 (see above). Off by default until the collector
  // that survives them (instance identity, lease, stop, --flush) is in main:
  // the old one fails them, and rejects the control.socket key they need.
  bool exactly_once_faults = false;
};

struct ChaosReport {
  bool ok = false;
  std::string failure;                // why not ok
  std::string context;                // not ok: the logs' tails at the failure
  std::map<std::string, int> events;  // survived, by kind
  int total_events = 0;
  int exact_matches = 0;  // times the database equalled the truth exactly
  int bound_checks = 0;   // times it was checked never to exceed the truth
  size_t counters_compared = 0;  // in the final comparison
  int64_t bytes_compared = 0;    // their sum, in bytes
  int64_t bytes_pushed = 0;      // payload pushed through v2ray by curl
  std::chrono::seconds elapsed{0};
};

ChaosReport RunChaos(const ChaosOptions& options);

}  // namespace boxmeter::testing
