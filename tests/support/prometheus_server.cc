// PrometheusServer: prometheus.yml in a TempDir and `prometheus` as a
// Process; queries and scrapes through curl.
#include "prometheus_server.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace boxmeter::testing {
namespace {

constexpr const char* kBinary = "/usr/bin/prometheus";
constexpr const char* kPromtool = "/usr/bin/promtool";
constexpr auto kReadyTimeout = std::chrono::seconds(30);
constexpr auto kCallTimeout = std::chrono::seconds(10);
constexpr int kStartAttempts = 3;  // a "free" port can be taken meanwhile

// Runs curl with `args`; the body, or throws with curl's output.
std::string Curl(const std::vector<std::string>& args,
                 std::chrono::milliseconds timeout) {
  TempDir dir;
  std::string body_path = dir.path() + "/body";
  Process::Options options;
  options.argv = {"curl",
                  "--silent",
                  "--show-error",
                  "--fail-with-body",
                  "--noproxy",
                  "*",
                  "--max-time",
                  std::to_string(std::max<int64_t>(1, timeout.count() / 1000)),
                  "--output",
                  body_path};
  options.argv.insert(options.argv.end(), args.begin(), args.end());
  std::string output;
  int code = RunCommand(options, timeout + std::chrono::seconds(5), &output);
  std::string body = ReadFile(body_path);
  if (code != 0) {
    throw std::runtime_error("curl " + args.back() + " failed (exit " +
                             std::to_string(code) + "): " + Tail(output) +
                             Tail(body));
  }
  return body;
}

}  // namespace

PrometheusServer::PrometheusServer(std::vector<std::string> targets)
    : dir_(std::make_unique<TempDir>()) {
  std::ofstream out(dir_->path() + "/prometheus.yml");
  out << "global:\n"
      << "  scrape_interval: 1s\n"
      << "  scrape_timeout: 1s\n"
      << "  evaluation_interval: 1s\n"
      << "scrape_configs:\n"
      << "  - job_name: boxmeter\n"
      << "    static_configs:\n"
      << "      - targets:\n";
  for (const std::string& target : targets) {
    out << "          - \"" << target << "\"\n";
  }
  if (!out.flush()) {
    throw std::runtime_error("PrometheusServer: cannot write its config in " +
                             dir_->path());
  }
}

PrometheusServer::~PrometheusServer() {
  if (process_) process_->Kill();
}

void PrometheusServer::Start() {
  for (int attempt = 1; attempt <= kStartAttempts; ++attempt) {
    port_ = FreePort();
    Process::Options options;
    options.argv = {kBinary,
                    "--config.file=" + dir_->path() + "/prometheus.yml",
                    "--storage.tsdb.path=" + dir_->path() + "/data",
                    "--web.listen-address=127.0.0.1:" + std::to_string(port_),
                    "--log.level=warn"};
    options.stdout_path = dir_->path() + "/prometheus.log";
    options.stderr_path = options.stdout_path;
    process_ = Process::Start(options);
    std::string url = "http://127.0.0.1:" + std::to_string(port_) + "/-/ready";
    bool exited = false;  // e.g. the port was taken meanwhile: try again
    bool ready = WaitUntil(
        [&] {
          exited = !process_->Running();
          if (exited) return true;
          try {
            Curl({url}, std::chrono::seconds(2));
            return true;
          } catch (const std::runtime_error&) {
            return false;
          }
        },
        kReadyTimeout, std::chrono::milliseconds(100));
    if (ready && !exited) return;
    process_->Kill();
    if (!exited) break;  // running but never ready: another try won't help
  }
  throw std::runtime_error(
      "PrometheusServer: prometheus did not become ready; "
      "its log:\n" +
      LogTail());
}

std::map<std::string, double> PrometheusServer::Query(
    const std::string& promql, const std::vector<std::string>& by) {
  std::string body =
      Curl({"--get", "--data-urlencode", "query=" + promql,
            "http://127.0.0.1:" + std::to_string(port_) + "/api/v1/query"},
           kCallTimeout);
  nlohmann::json answer = nlohmann::json::parse(body, nullptr, false);
  if (answer.is_discarded() || answer.value("status", "") != "success" ||
      answer["data"].value("resultType", "") != "vector") {
    throw std::runtime_error("PrometheusServer: query " + promql +
                             " answered " + Tail(body));
  }
  std::map<std::string, double> samples;
  for (const nlohmann::json& sample : answer["data"]["result"]) {
    std::string key;
    for (const std::string& label : by) {
      if (!key.empty()) key += ">>>";
      key += sample["metric"].value(label, "");
    }
    samples[key] = std::stod(sample["value"][1].get<std::string>());
  }
  return samples;
}

std::string PrometheusServer::LogTail() const {
  return Tail(ReadFile(dir_->path() + "/prometheus.log"));
}

std::string HttpGet(const std::string& url, std::chrono::milliseconds timeout) {
  return Curl({url}, timeout);
}

int PromtoolCheckMetrics(const std::string& exposition, std::string* output) {
  TempDir dir;
  std::string path = dir.path() + "/metrics.txt";
  {
    std::ofstream out(path, std::ios::binary);
    out << exposition;
  }
  Process::Options options;
  options.argv = {"/bin/sh", "-c",
                  std::string(kPromtool) + " check metrics < \"$0\"", path};
  return RunCommand(options, std::chrono::seconds(30), output);
}

}  // namespace boxmeter::testing
