#include "collector_metrics.h"

#include "utf8.h"

namespace boxmeter {
namespace {

using Type = MetricsWriter::Type;

constexpr std::string_view kUplink = "v2ray_traffic_uplink_bytes_total";
constexpr std::string_view kDownlink = "v2ray_traffic_downlink_bytes_total";

// Totals saturate at the bigint maximum, as the database's do.
int64_t SaturatingAdd(int64_t a, int64_t b) {
  if (b > 0 && a > INT64_MAX - b) return INT64_MAX;
  return a + b;
}

double Seconds(int64_t ms) { return static_cast<double>(ms) / 1000.0; }

void AddSaturating(CounterValues& total, const CounterValues& delta) {
  total.uplink = SaturatingAdd(total.uplink, delta.uplink);
  total.downlink = SaturatingAdd(total.downlink, delta.downlink);
}

}  // namespace

CollectorMetrics::CollectorMetrics(Options options)
    : options_(std::move(options)) {}

bool CollectorMetrics::Exposed(const CounterKey& key) const {
  if (key.kind == CounterKind::kUser && !options_.per_user) return false;
  return IsUtf8WithoutNul(key.name);
}

void CollectorMetrics::SetTotals(std::span<const CounterTotal> totals) {
  Traffic traffic;
  for (const CounterTotal& total : totals) {
    if (Exposed(total.key)) traffic[total.key].totals = total.total;
  }
  std::lock_guard lock(mu_);
  loaded_ = std::move(traffic);
  added_.clear();  // already in what was loaded
}

void CollectorMetrics::AddCommitted(std::span<const CommitRow> rows) {
  std::lock_guard lock(mu_);
  for (const CommitRow& row : rows) {
    if (row.delta == CounterValues{} || !Exposed(row.key)) continue;
    AddSaturating(added_[row.key], row.delta);
  }
}

void CollectorMetrics::PollDone(double seconds, bool ok, int64_t now_ms,
                                int restarts) {
  std::lock_guard lock(mu_);
  poll_seconds_.Observe(seconds);
  if (ok) {
    ++polls_ok_;
    last_poll_ms_ = now_ms;
  } else {
    ++polls_failed_;
  }
  restarts_ += restarts;
}

void CollectorMetrics::CommitDone(double seconds, CommitOutcome outcome,
                                  int64_t now_ms) {
  std::lock_guard lock(mu_);
  commit_seconds_.Observe(seconds);
  switch (outcome) {
    case CommitOutcome::kApplied:
      ++commits_applied_;
      last_commit_ms_ = now_ms;
      break;
    case CommitOutcome::kNotApplied:
      ++commits_not_applied_;
      break;
    case CommitOutcome::kUnknown:
      ++commits_unknown_;
      break;
    case CommitOutcome::kLeaseLost:
      ++commits_lease_lost_;
      break;
  }
}

void CollectorMetrics::UnknownCommitApplied(int64_t now_ms) {
  std::lock_guard lock(mu_);
  last_commit_ms_ = now_ms;
}

void CollectorMetrics::SetGauges(const Gauges& gauges) {
  std::lock_guard lock(mu_);
  gauges_ = gauges;
}

MetricsPieces CollectorMetrics::RenderPieces() {
  std::lock_guard render_lock(render_mu_);
  auto health = std::make_shared<std::string>();
  std::string& out = *health;
  std::optional<Traffic> loaded;
  std::unordered_map<CounterKey, CounterValues, CounterKeyHash> added;
  {
    std::lock_guard lock(mu_);
    RenderHealth(&out);  // small: a few dozen lines
    loaded.swap(loaded_);
    added.swap(added_);
  }
  if (loaded) {
    traffic_ = std::move(*loaded);
    traffic_dirty_ = true;
  }
  for (const auto& [key, delta] : added) {
    AddSaturating(traffic_[key].totals, delta);
    traffic_dirty_ = true;
  }
  if (traffic_dirty_) RenderTraffic();
  return {std::move(health), traffic_text_};
}

void CollectorMetrics::RenderHealth(std::string* out) const {
  MetricsWriter w(out);
  const MetricLabel node{"node", options_.node};
  const MetricLabel only_node[] = {node};
  auto gauge = [&](std::string_view name, std::string_view help,
                   int64_t value) {
    w.Family(name, Type::kGauge, help);
    w.Sample(name, only_node, value);
  };
  // A histogram family, and a timestamp gauge shown once there is one.
  auto histogram = [&](std::string_view name, std::string_view help,
                       const Histogram& histogram) {
    w.Family(name, Type::kHistogram, help);
    histogram.Write(w, name, only_node);
  };
  auto timestamp = [&](std::string_view name, std::string_view help,
                       int64_t ms) {
    if (ms <= 0) return;
    w.Family(name, Type::kGauge, help);
    w.Sample(name, only_node, Seconds(ms));
  };
  auto by_outcome =
      [&](std::string_view name, std::string_view help,
          std::initializer_list<std::pair<std::string_view, int64_t>> counts) {
        w.Family(name, Type::kCounter, help);
        for (const auto& [outcome, count] : counts) {
          w.Sample(name, {node, {"outcome", outcome}}, count);
        }
      };

  w.Family("boxmeter_build_info", Type::kGauge,
           "Always 1; the labels say which boxmeter-collector this is.");
  w.Sample("boxmeter_build_info", {node, {"version", options_.version}},
           int64_t{1});
  gauge("boxmeter_source_up",
        "1 when the last call to sing-box's stats API answered, else 0.",
        gauges_.source_up ? 1 : 0);
  gauge("boxmeter_database_up",
        "1 when the last call to PostgreSQL answered, else 0.",
        gauges_.database_up ? 1 : 0);
  gauge("boxmeter_writer",
        "1 while this collector holds the node's writer lease and commits; "
        "0 while it waits (standby) or loads.",
        gauges_.writer ? 1 : 0);

  by_outcome("boxmeter_polls_total",
             "Fetches of sing-box's counters, by outcome.",
             {{"success", polls_ok_}, {"failure", polls_failed_}});
  histogram("boxmeter_poll_duration_seconds",
            "How long a fetch of sing-box's counters took, with the "
            "processing of its answer.",
            poll_seconds_);
  timestamp("boxmeter_last_successful_poll_timestamp_seconds",
            "When the last successful fetch of sing-box's counters ended, "
            "in seconds since the epoch.",
            last_poll_ms_);

  by_outcome("boxmeter_commits_total",
             "Commits to PostgreSQL, by outcome: applied, not_applied "
             "(retried), unknown (the connection failed during COMMIT; the "
             "commit sequence tells), lease_lost (another collector took the "
             "node).",
             {{"applied", commits_applied_},
              {"not_applied", commits_not_applied_},
              {"unknown", commits_unknown_},
              {"lease_lost", commits_lease_lost_}});
  histogram("boxmeter_commit_duration_seconds",
            "How long a commit to PostgreSQL took, whatever its outcome.",
            commit_seconds_);
  timestamp("boxmeter_last_successful_commit_timestamp_seconds",
            "When the last commit that applied ended, in seconds since "
            "the epoch.",
            last_commit_ms_);

  gauge("boxmeter_pending_bytes",
        "Traffic counted by sing-box and seen by the collector but not yet "
        "committed, uplink plus downlink.",
        gauges_.pending_bytes);
  gauge("boxmeter_counters_tracked",
        "Counters (users, inbounds, outbounds) the collector tracks.",
        gauges_.counters_tracked);
  w.Family("boxmeter_sing_box_restarts_total", Type::kCounter,
           "sing-box restarts and reloads the collector detected (its "
           "counters started again from zero).");
  w.Sample("boxmeter_sing_box_restarts_total", only_node, restarts_);
  by_outcome("boxmeter_hook_runs_total",
             "Runs of hooks.on_users_changed that ended, by outcome (a "
             "failure is a non-zero exit, a signal or the timeout).",
             {{"success", gauges_.hook_runs_succeeded},
              {"failure", gauges_.hook_runs_failed}});
  by_outcome("boxmeter_event_hook_runs_total",
             "Runs of hooks.on_event that ended, by outcome (a success "
             "delivers its usage event; a failure is a non-zero exit, a "
             "signal, the timeout or a hook that could not start, and the "
             "event is handed over again after a backoff).",
             {{"success", gauges_.event_hook_runs_succeeded},
              {"failure", gauges_.event_hook_runs_failed}});
}

void CollectorMetrics::RenderTraffic() {
  // In place when no scrape still sends the last text (render_mu_ is held,
  // so no new holder can appear meanwhile).
  if (traffic_text_.use_count() != 1) {
    auto fresh = std::make_shared<std::string>();
    fresh->reserve(traffic_text_->size());
    traffic_text_ = std::move(fresh);
  }
  std::string& text = *traffic_text_;
  text.clear();
  for (auto& [key, series] : traffic_) {
    if (series.labels.empty()) {
      const MetricLabel labels[] = {{"dimension", CounterKindName(key.kind)},
                                    {"target", key.name},
                                    {"node", options_.node}};
      series.labels = RenderLabels(labels);
    }
  }
  MetricsWriter w(&text);
  for (std::string_view name : {kUplink, kDownlink}) {
    bool up = name == kUplink;
    w.Family(name, Type::kCounter,
             up ? "Bytes sent by the client (uplink), committed to the "
                  "database; never decreases across sing-box restarts."
                : "Bytes received by the client (downlink), committed to "
                  "the database; never decreases across sing-box restarts.");
    for (const auto& [key, series] : traffic_) {
      w.Sample(name, series.labels,
               up ? series.totals.uplink : series.totals.downlink);
    }
  }
  traffic_dirty_ = false;
}

}  // namespace boxmeter
