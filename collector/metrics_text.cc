#include "metrics_text.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace boxmeter {
namespace {

std::string_view TypeName(MetricsWriter::Type type) {
  switch (type) {
    case MetricsWriter::Type::kCounter:
      return "counter";
    case MetricsWriter::Type::kGauge:
      return "gauge";
    case MetricsWriter::Type::kHistogram:
      return "histogram";
  }
  return "untyped";
}

// HELP text escapes only backslash and line feed (the format's rule).
std::string EscapeHelp(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void AppendEscapedLabelValue(std::string* out, std::string_view value) {
  if (value.find_first_of("\\\"\n") == std::string_view::npos) {
    *out += value;  // the usual case, at 200,000 series a scrape
    return;
  }
  for (char c : value) {
    switch (c) {
      case '\\':
        *out += "\\\\";
        break;
      case '"':
        *out += "\\\"";
        break;
      case '\n':
        *out += "\\n";
        break;
      default:
        *out += c;
    }
  }
}

void AppendLabels(std::string* out, std::span<const MetricLabel> labels) {
  if (labels.empty()) return;
  *out += '{';
  bool first = true;
  for (const MetricLabel& label : labels) {
    if (!first) *out += ',';
    first = false;
    *out += label.name;
    *out += "=\"";
    AppendEscapedLabelValue(out, label.value);
    *out += '"';
  }
  *out += '}';
}

// " VALUE\n"; the hot path of a large exposition.
void AppendValue(std::string* out, int64_t value) {
  fmt::format_int text(value);
  *out += ' ';
  out->append(text.data(), text.size());
  *out += '\n';
}

}  // namespace

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  AppendEscapedLabelValue(&out, value);
  return out;
}

std::string FormatMetricValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  // Whole numbers that a double holds exactly print without an exponent.
  if (value == std::trunc(value) && std::fabs(value) < 9.007199254740992e15) {
    return fmt::format("{}", static_cast<int64_t>(value));
  }
  return fmt::format("{}", value);  // shortest round-trip form
}

void MetricsWriter::Family(std::string_view name, Type type,
                           std::string_view help) {
  fmt::format_to(std::back_inserter(*out_), "# HELP {} {}\n# TYPE {} {}\n",
                 name, EscapeHelp(help), name, TypeName(type));
}

std::string JoinPieces(const MetricsPieces& pieces) {
  size_t size = 0;
  for (const auto& piece : pieces) size += piece->size();
  std::string text;
  text.reserve(size);
  for (const auto& piece : pieces) text += *piece;
  return text;
}

std::string RenderLabels(std::span<const MetricLabel> labels) {
  std::string out;
  AppendLabels(&out, labels);
  return out;
}

void MetricsWriter::Start(std::string_view name,
                          std::span<const MetricLabel> labels) {
  *out_ += name;
  AppendLabels(out_, labels);
}

void MetricsWriter::Sample(std::string_view name,
                           std::span<const MetricLabel> labels, int64_t value) {
  Start(name, labels);
  AppendValue(out_, value);
}

void MetricsWriter::Sample(std::string_view name,
                           std::string_view rendered_labels, int64_t value) {
  *out_ += name;
  *out_ += rendered_labels;
  AppendValue(out_, value);
}

void MetricsWriter::Sample(std::string_view name,
                           std::span<const MetricLabel> labels, double value) {
  Start(name, labels);
  *out_ += ' ';
  *out_ += FormatMetricValue(value);
  *out_ += '\n';
}

Histogram::Histogram(std::span<const double> bounds)
    : bounds_(bounds), counts_(bounds.size() + 1, 0) {}

void Histogram::Observe(double value) {
  // The first bucket whose bound is at least the value ("le": less or
  // equal); past the last bound, +Inf.
  size_t i =
      std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  ++counts_[i];
  sum_ += value;
  ++count_;
}

void Histogram::Write(MetricsWriter& writer, std::string_view name,
                      std::span<const MetricLabel> labels) const {
  std::vector<MetricLabel> with_le(labels.begin(), labels.end());
  with_le.push_back({"le", ""});
  std::string bucket = std::string(name) + "_bucket";
  int64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    std::string le =
        i < bounds_.size() ? FormatMetricValue(bounds_[i]) : "+Inf";
    with_le.back().value = le;
    writer.Sample(bucket, with_le, cumulative);
  }
  writer.Sample(std::string(name) + "_sum", labels, sum_);
  writer.Sample(std::string(name) + "_count", labels, count_);
}

}  // namespace boxmeter
