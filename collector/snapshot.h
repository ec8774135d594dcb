// Snapshot: the traffic counters of one sing-box instance at one moment.
//
// MakeSnapshot parses counter names, merges the uplink and downlink counters
// of a tag or user into one entry, drops duplicates (sing-box returns a
// counter once per pattern it matches) and works out which sing-box instance
// answered: the interval its start lies in (see InstanceIdentity).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>

#include "counter_name.h"
#include "instance_identity.h"
#include "stats_reply.h"
#include "status.h"

namespace boxmeter {

struct CounterValues {
  int64_t uplink = 0;
  int64_t downlink = 0;

  bool operator==(const CounterValues& other) const = default;
};

struct Snapshot {
  // Wall-clock ms when QueryStats answered: the hour of the history the
  // traffic is filed under, nothing else.
  int64_t taken_at_ms = 0;
  // The answering instance: the intersection of the start intervals of the
  // uptime answers before and after the query.
  InstanceSighting instance;
  std::unordered_map<CounterKey, CounterValues, CounterKeyHash> counters;

  // What was skipped, so the caller can say so.
  size_t duplicates = 0;  // the same name more than once
  size_t malformed = 0;   // not a traffic counter of a known kind
  size_t negative = 0;    // a value below zero
  // The first malformed name, for the log: escaped and cut by SafeText
  // (the peer may send anything, 2 MB of it or a terminal escape).
  std::string first_malformed;
};

// Fails (kUnavailable) when the uptimes before and after the query belong to
// different instances (their start intervals do not overlap): sing-box
// restarted during the fetch; poll again.
Status MakeSnapshot(const StatsReply& reply, Snapshot* out);

}  // namespace boxmeter
