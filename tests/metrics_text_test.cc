#include "metrics_text.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace boxmeter {
namespace {

TEST(EscapeLabelValueTest, EscapesBackslashQuoteAndLineFeedOnly) {
  EXPECT_EQ(EscapeLabelValue("alice"), "alice");
  EXPECT_EQ(EscapeLabelValue(R"(a\b)"), R"(a\\b)");
  EXPECT_EQ(EscapeLabelValue(R"(say "hi")"), R"(say \"hi\")");
  EXPECT_EQ(EscapeLabelValue("two\nlines"), R"(two\nlines)");
  // Everything else as it is: UTF-8, tabs, carriage returns, braces.
  EXPECT_EQ(EscapeLabelValue("ünï\tcode\r{}=,"), "ünï\tcode\r{}=,");
  // An escape at the end cannot swallow the closing quote.
  EXPECT_EQ(EscapeLabelValue("end\\"), "end\\\\");
}

TEST(FormatMetricValueTest, WholeNumbersSpecialValuesAndFractions) {
  EXPECT_EQ(FormatMetricValue(0), "0");
  EXPECT_EQ(FormatMetricValue(1e15), "1000000000000000");
  EXPECT_EQ(FormatMetricValue(-3), "-3");
  EXPECT_EQ(FormatMetricValue(0.005), "0.005");
  EXPECT_EQ(FormatMetricValue(1764237000.123), "1764237000.123");
  EXPECT_EQ(FormatMetricValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatMetricValue(-std::numeric_limits<double>::infinity()),
            "-Inf");
  EXPECT_EQ(FormatMetricValue(std::nan("")), "NaN");
}

TEST(MetricsWriterTest, FamilyThenSamplesInTheGivenOrder) {
  std::string out;
  MetricsWriter w(&out);
  w.Family("x_total", MetricsWriter::Type::kCounter, "Help with \\ and\nlf.");
  w.Sample("x_total", {{"a", "1"}, {"b", "q\""}}, int64_t{7});
  w.Sample("x_total", {}, int64_t{-1});
  w.Family("y", MetricsWriter::Type::kGauge, "Y.");
  w.Sample("y", {{"node", "n"}}, 0.5);
  EXPECT_EQ(out,
            "# HELP x_total Help with \\\\ and\\nlf.\n"
            "# TYPE x_total counter\n"
            "x_total{a=\"1\",b=\"q\\\"\"} 7\n"
            "x_total -1\n"
            "# HELP y Y.\n"
            "# TYPE y gauge\n"
            "y{node=\"n\"} 0.5\n");
}

TEST(HistogramTest, CumulativeBucketsSumAndCount) {
  static constexpr double kBounds[] = {0.25, 1};
  Histogram h(kBounds);
  h.Observe(0.125);
  h.Observe(0.25);  // le is "less or equal"
  h.Observe(0.5);
  h.Observe(7);
  std::string out;
  MetricsWriter w(&out);
  w.Family("d_seconds", MetricsWriter::Type::kHistogram, "D.");
  const MetricLabel labels[] = {{"node", "n"}};
  h.Write(w, "d_seconds", labels);
  EXPECT_EQ(out,
            "# HELP d_seconds D.\n"
            "# TYPE d_seconds histogram\n"
            "d_seconds_bucket{node=\"n\",le=\"0.25\"} 2\n"
            "d_seconds_bucket{node=\"n\",le=\"1\"} 3\n"
            "d_seconds_bucket{node=\"n\",le=\"+Inf\"} 4\n"
            "d_seconds_sum{node=\"n\"} 7.875\n"
            "d_seconds_count{node=\"n\"} 4\n");
}

}  // namespace
}  // namespace boxmeter
