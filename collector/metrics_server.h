// MetricsServer: the collector's `GET /metrics` over HTTP/1.1 (Boost.Beast),
// for Prometheus.
//
// It runs on its own thread with its own io_context, so that nothing a
// client does (a slow or stalled client, many connections, a scrape of a
// large exposition) can delay the collector's polls and commits; the
// collector's loop only updates CollectorMetrics, which a scrape renders
// under its lock. A scrape never touches the database.
//
// Answers:
//   GET or HEAD /metrics (any query string)   200, text format 0.0.4
//   another path                               404
//   another method on /metrics                 405 with Allow: GET, HEAD
//   headers over Limits::max_header_bytes      431, then close
//   a body over Limits::max_body_bytes         413, then close
//   anything else Beast cannot parse           400, then close
// Keep-alive is honoured. A connection is closed when a request does not
// arrive whole within Limits::read_timeout (slow clients), or a response
// cannot be written within Limits::write_timeout. Beyond
// Limits::max_connections open connections, new ones are closed at once.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "metrics_text.h"
#include "status.h"

namespace boxmeter {

class MetricsServer {
 public:
  // Renders the exposition; called on the server's thread.
  using Render = std::function<MetricsPieces()>;

  struct Limits {
    size_t max_connections = 16;
    size_t max_header_bytes = 8 * 1024;
    size_t max_body_bytes = 1024;
    std::chrono::milliseconds read_timeout{10000};
    std::chrono::milliseconds write_timeout{30000};
  };

  // `listen`: "IP:PORT" or "[IPv6]:PORT" (validated by the config; port 0
  // picks a free one, for tests).
  MetricsServer(std::string listen, Render render, Limits limits);
  MetricsServer(std::string listen, Render render)
      : MetricsServer(std::move(listen), std::move(render), Limits{}) {}
  // Stops the thread and closes every connection.
  ~MetricsServer();

  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Binds, listens and starts the thread. An error names the address and
  // what to do (address in use, not this machine's, no permission).
  Status Start();

  // The port it listens on, once started.
  int port() const { return port_; }

 private:
  class Impl;
  std::string listen_;
  int port_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace boxmeter
