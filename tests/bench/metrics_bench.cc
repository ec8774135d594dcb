// boxmeter-metrics-bench: what a Prometheus scrape of the collector's
// /metrics costs at 10k and 100k users (issue 14's target: a few
// milliseconds at 100k counters, without the database). Prints figures, asserts
// nothing (BENCHMARKS.md, "The /metrics endpoint").
//
// For each size: CollectorMetrics loaded with that many users, served by the
// real MetricsServer on loopback, scraped over HTTP by a Beast client that
// reads the whole body. Measured: a scrape with nothing changed (the
// exposition is shared, not rendered), and the first scrape after a commit
// that changed 1% and 10% of the users (the traffic section is rendered
// again). Each figure is the median of --rounds scrapes.
#include <algorithm>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "collector_metrics.h"
#include "metrics_server.h"

namespace boxmeter::testing {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using boost::asio::ip::tcp;
using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// One GET /metrics on a kept-alive connection: the time until the whole body
// was read, and its size.
class Scraper {
 public:
  explicit Scraper(int port) : stream_(io_) {
    stream_.connect(tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"),
                                  static_cast<unsigned short>(port)));
  }
  // The time until the answer's header arrived (the server rendered and
  // started sending) and until the whole body was read.
  struct Times {
    double header_ms;
    double body_ms;
  };
  Times Scrape(size_t* bytes) {
    http::request<http::empty_body> request(http::verb::get, "/metrics", 11);
    request.set(http::field::host, "127.0.0.1");
    Clock::time_point start = Clock::now();
    http::write(stream_, request);
    http::response_parser<http::string_body> parser;
    parser.body_limit(1ull << 32);
    http::read_header(stream_, buffer_, parser);
    double header_ms = Ms(Clock::now() - start);
    http::read(stream_, buffer_, parser);
    Times times{header_ms, Ms(Clock::now() - start)};
    if (parser.get().result() != http::status::ok) {
      std::fprintf(stderr, "GET /metrics answered %u\n",
                   parser.get().result_int());
      std::exit(1);
    }
    *bytes = parser.get().body().size();
    return times;
  }

 private:
  boost::asio::io_context io_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
};

std::vector<CommitRow> Changed(const std::vector<CounterTotal>& users,
                               size_t every) {
  std::vector<CommitRow> rows;
  for (size_t i = 0; i < users.size(); i += every) {
    rows.push_back(CommitRow{users[i].key, {1000, 100000}, {}, 0});
  }
  return rows;
}

void Run(size_t users, int rounds) {
  CollectorMetrics metrics({"edge-1", true, "bench"});
  std::vector<CounterTotal> totals;
  for (size_t i = 0; i < users; ++i) {
    totals.push_back(CounterTotal{
        {CounterKind::kUser, "user" + std::to_string(i) + "@example.com"},
        {123456789, 9876543210}});
  }
  metrics.SetTotals(totals);
  MetricsServer server("127.0.0.1:0",
                       [&metrics] { return metrics.RenderPieces(); });
  Status started = server.Start();
  if (!started.ok()) {
    std::fprintf(stderr, "%s\n", started.message().c_str());
    std::exit(1);
  }
  Scraper scraper(server.port());
  size_t bytes = 0;
  Scraper::Times first = scraper.Scrape(&bytes);  // renders everything
  struct Column {
    std::vector<double> header, body;
    void Add(Scraper::Times t) {
      header.push_back(t.header_ms);
      body.push_back(t.body_ms);
    }
  } unchanged, one, ten;
  for (int i = 0; i < rounds; ++i) {
    unchanged.Add(scraper.Scrape(&bytes));
    metrics.AddCommitted(Changed(totals, 100));
    one.Add(scraper.Scrape(&bytes));
    metrics.AddCommitted(Changed(totals, 10));
    ten.Add(scraper.Scrape(&bytes));
  }
  std::printf(
      "| %zu | %zu | %.1f | %.1f / %.1f | %.1f / %.1f | %.1f / %.1f | "
      "%.1f / %.1f |\n",
      users, users * 2, bytes / 1e6, first.header_ms, first.body_ms,
      Median(unchanged.header), Median(unchanged.body), Median(one.header),
      Median(one.body), Median(ten.header), Median(ten.body));
}

}  // namespace
}  // namespace boxmeter::testing

int main(int argc, char** argv) {
  int rounds = 5;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--rounds" && i + 1 < argc) {
      rounds = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr,
                   "usage: boxmeter-metrics-bench [--rounds N]\n"
                   "Scrapes /metrics at 10k and 100k users; prints the "
                   "median of N scrapes (default 5).\n");
      return arg == "--help" ? 0 : 64;
    }
  }
  std::printf(
      "Milliseconds until the answer's header / until the whole body "
      "(median of %d scrapes).\n\n"
      "| users | traffic series | exposition MB | first scrape | "
      "unchanged | after 1%% changed | after 10%% changed |\n"
      "|---|---|---|---|---|---|---|\n",
      rounds);
  for (size_t users : {10000, 100000}) {
    boxmeter::testing::Run(users, rounds);
  }
  return 0;
}
