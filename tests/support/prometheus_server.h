// Test support: a throwaway Prometheus (Debian's `prometheus`, 2.42) that
// scrapes the given targets every second, and promtool.
//
// Started as a child process with its own config and data directory in a
// TempDir, listening on a free loopback port; never the system service.
// Killed and removed when destroyed.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "process.h"

namespace boxmeter::testing {

class PrometheusServer {
 public:
  // Writes the config: one job, "boxmeter", scraping `targets` ("host:port")
  // at /metrics every second. Starts nothing.
  explicit PrometheusServer(std::vector<std::string> targets);
  ~PrometheusServer();

  PrometheusServer(const PrometheusServer&) = delete;
  PrometheusServer& operator=(const PrometheusServer&) = delete;

  // Starts prometheus and waits until it is ready. Throws
  // std::runtime_error with the log's tail if it is not.
  void Start();

  // An instant query through the HTTP API (/api/v1/query): each sample of
  // the resulting vector, keyed by the values of its labels `by` joined
  // with ">>>" ("" for a sample without them). Throws std::runtime_error
  // with the answer when the query fails or the result is not a vector.
  std::map<std::string, double> Query(const std::string& promql,
                                      const std::vector<std::string>& by = {});

  std::string LogTail() const;

 private:
  std::unique_ptr<TempDir> dir_;
  int port_ = 0;
  std::unique_ptr<Process> process_;
};

// GET `url` with curl (bounded by `timeout`): the body. Throws
// std::runtime_error with curl's output when it fails or the status is not
// 2xx.
std::string HttpGet(const std::string& url, std::chrono::milliseconds timeout);

// `promtool check metrics` on `exposition`: its exit code (0: valid and no
// lint problem); its output is appended to `*output`.
int PromtoolCheckMetrics(const std::string& exposition, std::string* output);

}  // namespace boxmeter::testing
