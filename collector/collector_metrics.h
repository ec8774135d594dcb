// CollectorMetrics: what the collector's /metrics endpoint shows, kept up to
// date by the collector and rendered in the Prometheus text format
// (metrics_text.h) on request.
//
// Traffic, named and labelled like v2ray-exporter's series so its dashboards
// work unchanged, plus a `node` label:
//   v2ray_traffic_uplink_bytes_total{dimension="user",target="alice",node="edge-1"}
//   v2ray_traffic_downlink_bytes_total{...}
// for the dimensions inbound, outbound and user. The values are the node's
// COMMITTED totals, the counters table's: set from the database when the
// collector loads the node (SetTotals) and advanced only by commits that
// applied (AddCommitted). So they never go down across sing-box reloads and
// restarts or collector restarts, and never show traffic that is only
// pending. With Options::per_user false, user series are left out (at 2
// series per user, a node with 100,000 users would have 200,000).
//
// Health: poll and commit durations (histograms), outcomes, the last
// successful poll and commit, pending bytes, whether sing-box's API and the
// database answer, sing-box restarts seen, runs of both hooks and build
// info; names and units follow Prometheus' conventions (see Render for the
// list).
//
// Thread-safe: the collector updates it from its loop while the metrics
// server renders it on its own thread, and the loop never waits for a
// render: an update only records what changed (a commit's deltas, merged by
// counter, or the totals loaded) under a short lock; Render takes that over
// and does the O(counters) work outside it. The traffic section is rendered
// again only after it changed, from label text rendered once per series
// (21 MB for 100,000 users; `boxmeter-bench metrics` prints how long it
// takes), and shared by every scrape until then: a scrape without changes
// copies nothing. Pure otherwise: times are passed in.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>

#include "counter_name.h"
#include "delta_engine.h"
#include "metrics_text.h"
#include "store.h"

namespace boxmeter {

class CollectorMetrics {
 public:
  struct Options {
    std::string node;
    bool per_user = true;
    std::string version;  // the build_info label
  };

  // What the collector's loop knows after every step.
  struct Gauges {
    int64_t pending_bytes = 0;
    int64_t counters_tracked = 0;
    bool source_up = false;
    bool database_up = false;
    bool writer = false;              // holds the node's writer lease
    int64_t hook_runs_succeeded = 0;  // of hooks.on_users_changed
    int64_t hook_runs_failed = 0;
    int64_t event_hook_runs_succeeded = 0;  // of hooks.on_event
    int64_t event_hook_runs_failed = 0;
  };

  explicit CollectorMetrics(Options options);

  // Replaces the traffic totals with the node's as loaded from the
  // database. Counters whose name is not UTF-8 (or holds NUL) are left out:
  // the database has none, and Prometheus would refuse the line.
  void SetTotals(std::span<const CounterTotal> totals);
  // Adds the deltas of a commit that applied.
  void AddCommitted(std::span<const CommitRow> rows);

  // A fetch of the stats API ended after `seconds`; `ok` when it gave a
  // snapshot (at wall-clock `now_ms`); `restarts`: sing-box restarts it
  // proved (0 or 1).
  void PollDone(double seconds, bool ok, int64_t now_ms, int restarts);
  // A commit ended after `seconds` with `outcome` (at wall-clock `now_ms`).
  void CommitDone(double seconds, CommitOutcome outcome, int64_t now_ms);
  // A commit of unknown outcome turned out to have applied.
  void UnknownCommitApplied(int64_t now_ms);
  void SetGauges(const Gauges& gauges);

  // The whole exposition, text format 0.0.4, in pieces: the health section,
  // then the traffic section (shared with earlier renders while no commit
  // changed it). One render at a time.
  MetricsPieces RenderPieces();
  // The same as one text.
  std::string Render() { return JoinPieces(RenderPieces()); }

  // Histogram bounds of both durations, in seconds.
  static constexpr double kDurationBounds[] = {
      0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

 private:
  // A series' totals and its labels as the text format writes them
  // (rendered at its first render, then reused).
  struct Series {
    CounterValues totals;
    std::string labels;
  };
  using Traffic = std::map<CounterKey, Series>;

  void RenderHealth(std::string* out) const;
  void RenderTraffic();
  bool Exposed(const CounterKey& key) const;

  const Options options_;

  // What the loop recorded since the last render; guarded by mu_ with the
  // health state below.
  mutable std::mutex mu_;
  std::optional<Traffic> loaded_;  // SetTotals: replaces everything
  std::unordered_map<CounterKey, CounterValues, CounterKeyHash> added_;

  // The render's own: guarded by render_mu_.
  std::mutex render_mu_;
  Traffic traffic_;
  // Shared with the scrapes that are still sending it; rendered into again
  // in place when none is.
  std::shared_ptr<std::string> traffic_text_ = std::make_shared<std::string>();
  bool traffic_dirty_ = true;

  Histogram poll_seconds_{kDurationBounds};
  Histogram commit_seconds_{kDurationBounds};
  int64_t polls_ok_ = 0;
  int64_t polls_failed_ = 0;
  int64_t restarts_ = 0;
  int64_t last_poll_ms_ = 0;    // 0: none yet
  int64_t last_commit_ms_ = 0;  // 0: none yet
  int64_t commits_applied_ = 0;
  int64_t commits_not_applied_ = 0;
  int64_t commits_unknown_ = 0;
  int64_t commits_lease_lost_ = 0;
  Gauges gauges_;
};

}  // namespace boxmeter
