// MetricsText: writing the Prometheus text exposition format, version 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/).
//
// Each metric family is written as "# HELP", "# TYPE" and then all of its
// samples, one per line, in the order the caller gives them: the format
// wants every sample of a family together, which the caller ensures by
// writing one family at a time. Label values are escaped (backslash, double
// quote and line feed); HELP text likewise (backslash and line feed). Metric
// and label names are the caller's constants, written as they are.
//
// Pure: appends to a string, no I/O.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace boxmeter {

// An exposition as pieces sent one after another. A piece may be shared by
// several scrapes (the traffic section, unchanged between commits), so a
// scrape of a large exposition copies nothing.
using MetricsPieces = std::vector<std::shared_ptr<const std::string>>;

// The pieces as one text (for tests and small expositions).
std::string JoinPieces(const MetricsPieces& pieces);

struct MetricLabel {
  std::string_view name;
  std::string_view value;
};

// A label value as the format writes it between double quotes:
// `\` -> `\\`, `"` -> `\"`, line feed -> `\n`; everything else as it is
// (the caller passes UTF-8).
std::string EscapeLabelValue(std::string_view value);

// A double as the format writes it: integers without a fraction, "+Inf",
// "-Inf", "NaN", otherwise the shortest text that reads back the same.
std::string FormatMetricValue(double value);

// `{NAME="VALUE",...}` with the values escaped; empty for no labels.
std::string RenderLabels(std::span<const MetricLabel> labels);

class MetricsWriter {
 public:
  enum class Type { kCounter, kGauge, kHistogram };

  explicit MetricsWriter(std::string* out) : out_(out) {}

  // Starts a family: its HELP and TYPE lines.
  void Family(std::string_view name, Type type, std::string_view help);

  // One sample line: NAME{LABELS} VALUE. `labels` may be empty.
  // `rendered_labels`: the labels as RenderLabels wrote them, for a
  // series written at every scrape.
  void Sample(std::string_view name, std::span<const MetricLabel> labels,
              int64_t value);
  void Sample(std::string_view name, std::span<const MetricLabel> labels,
              double value);
  void Sample(std::string_view name, std::string_view rendered_labels,
              int64_t value);
  void Sample(std::string_view name, std::initializer_list<MetricLabel> labels,
              int64_t value) {
    Sample(name, std::span<const MetricLabel>(labels.begin(), labels.size()),
           value);
  }
  void Sample(std::string_view name, std::initializer_list<MetricLabel> labels,
              double value) {
    Sample(name, std::span<const MetricLabel>(labels.begin(), labels.size()),
           value);
  }

 private:
  void Start(std::string_view name, std::span<const MetricLabel> labels);

  std::string* out_;
};

// A histogram with fixed upper bounds (seconds, for durations): the
// cumulative bucket counts, the sum and the count, as Prometheus keeps them.
class Histogram {
 public:
  // `bounds` ascending; the +Inf bucket is implied.
  explicit Histogram(std::span<const double> bounds);

  void Observe(double value);

  // Writes NAME_bucket{LABELS,le="..."} for every bound and +Inf, then
  // NAME_sum and NAME_count, after the family's HELP and TYPE (which the
  // caller writes with MetricsWriter::Family).
  void Write(MetricsWriter& writer, std::string_view name,
             std::span<const MetricLabel> labels) const;

 private:
  std::span<const double> bounds_;
  std::vector<int64_t> counts_;  // per bound, not cumulative; +Inf last
  double sum_ = 0;
  int64_t count_ = 0;
};

}  // namespace boxmeter
