// CollectorRunner and the database reader of the end-to-end tests.
#include "collector_runner.h"

#include <unistd.h>

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string_view>

namespace boxmeter::testing {
namespace {

// A YAML double-quoted scalar.
std::string Quoted(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::vector<std::string> Split(std::string_view text, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t end = text.find(separator, start);
    parts.emplace_back(text.substr(start, end - start));
    if (end == std::string_view::npos) return parts;
    start = end + 1;
  }
}

std::string SqlLiteral(std::string_view text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') out += '\'';
    out += c;
  }
  return out + "'";
}

}  // namespace

CollectorRunner::CollectorRunner(std::string binary, Settings settings)
    : binary_(std::move(binary)), dir_(std::make_unique<TempDir>()) {
  config_path_ = dir_->path() + "/boxmeter.yaml";
  log_path_ = dir_->path() + "/collector.log";
  std::ofstream out(config_path_);
  out << "node: " << Quoted(settings.node) << "\n"
      << "source:\n"
      << "  address: " << Quoted(settings.source_address) << "\n"
      << "  timeout: " << settings.source_timeout << "\n"
      << "database:\n"
      << "  url: " << Quoted(settings.database_url) << "\n"
      << "poll:\n"
      << "  interval: " << settings.poll_interval << "\n"
      << "log:\n"
      << "  level: " << settings.log_level << "\n";
  std::string control_socket = settings.control_socket.empty()
                                   ? dir_->path() + "/collector.sock"
                                   : settings.control_socket;
  out << "control:\n"
      << "  socket: " << Quoted(control_socket) << "\n";
  if (!settings.metrics_listen.empty()) {
    out << "metrics:\n"
        << "  listen: " << Quoted(settings.metrics_listen) << "\n"
        << "  per_user: " << (settings.metrics_per_user ? "true" : "false")
        << "\n";
  }
  out << settings.more_yaml;
  if (!out.flush()) {
    throw std::runtime_error("CollectorRunner: cannot write " + config_path_);
  }
}

CollectorRunner::~CollectorRunner() { Kill(); }

void CollectorRunner::Start() {
  if (process_ && process_->Running()) {
    throw std::logic_error("CollectorRunner::Start: already running");
  }
  process_ = Process::Start(ProcessOptions({}));
}

int CollectorRunner::RunOnce(std::chrono::milliseconds timeout) {
  return RunCommand(ProcessOptions({"--once"}), timeout);
}

int CollectorRunner::Flush(std::chrono::milliseconds timeout) {
  return RunCommand(ProcessOptions({"--flush"}), timeout);
}

void CollectorRunner::SetEnvironment(
    std::map<std::string, std::string> environment) {
  environment_ = std::move(environment);
}

Process::Options CollectorRunner::ProcessOptions(
    const std::vector<std::string>& extra_args) const {
  Process::Options options;
  options.argv = {binary_, "--config", config_path_};
  options.argv.insert(options.argv.end(), extra_args.begin(), extra_args.end());
  // The test's environment must not point the collector elsewhere (an
  // empty variable counts as unset).
  options.env = {{"BOXMETER_DATABASE_URL", ""},
                 {"BOXMETER_CONFIG", ""},
                 {"NOTIFY_SOCKET", ""}};
  options.env.insert(environment_.begin(), environment_.end());
  options.stdout_path = log_path_;
  options.stderr_path = log_path_;
  return options;
}

bool CollectorRunner::Running() { return process_ && process_->Running(); }

pid_t CollectorRunner::pid() const { return process_ ? process_->pid() : 0; }

void CollectorRunner::Signal(int signal) {
  if (process_) process_->Signal(signal);
}

void CollectorRunner::Kill() {
  if (process_) process_->Kill();
}

std::optional<int> CollectorRunner::Wait(std::chrono::milliseconds timeout) {
  if (!process_) throw std::logic_error("CollectorRunner::Wait: not started");
  return process_->Wait(timeout);
}

std::string CollectorRunner::Log() const { return ReadFile(log_path_); }

std::string CollectorRunner::LogTail(size_t lines) const {
  std::string log = Log();
  size_t pos = log.size();
  // Skip a final newline, then walk back `lines` newlines.
  if (pos > 0 && log[pos - 1] == '\n') --pos;
  for (size_t i = 0; i < lines && pos != std::string::npos && pos > 0; ++i) {
    pos = log.rfind('\n', pos - 1);
  }
  return pos == std::string::npos || pos == 0 ? log : log.substr(pos + 1);
}

size_t CollectorRunner::CountLogLines(const std::string& text) const {
  std::istringstream in(Log());
  size_t count = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.find(text) != std::string::npos) ++count;
  }
  return count;
}

bool CollectorRunner::AwaitPolls(size_t count,
                                 std::chrono::milliseconds timeout) {
  size_t before = CountLogLines(kPollLogLine);
  return WaitUntil(
      [&] { return CountLogLines(kPollLogLine) >= before + count; }, timeout,
      std::chrono::milliseconds(20));
}

std::map<std::string, std::string> FakeTimeEnvironment(
    std::chrono::seconds offset) {
  // Debian's multiarch path of the faketime package's preload library.
  const std::string library =
      "/usr/lib/" BOXMETER_MULTIARCH "/faketime/libfaketime.so.1";
  if (access(library.c_str(), R_OK) != 0) {
    throw std::runtime_error("FakeTimeEnvironment: " + library +
                             " is missing; install the faketime package "
                             "(scripts/install-deps.sh test)");
  }
  std::string sign = offset.count() >= 0 ? "+" : "";
  return {{"LD_PRELOAD", library},
          {"FAKETIME", sign + std::to_string(offset.count()) + "s"},
          {"FAKETIME_DONT_FAKE_MONOTONIC", "1"},
          // Read FAKETIME once, not from a cache file shared between runs.
          {"FAKETIME_NO_CACHE", "1"}};
}

CounterMap TrafficInDatabase(PgServer& pg, const std::string& database,
                             const std::string& node) {
  std::string output = pg.Query(
      database,
      "SELECT 'user', name, uplink, downlink FROM user_traffic "
      "UNION ALL SELECT 'inbound', tag, uplink, downlink FROM inbound_traffic "
      "WHERE node = " +
          SqlLiteral(node) +
          " UNION ALL SELECT 'outbound', tag, uplink, downlink "
          "FROM outbound_traffic WHERE node = " +
          SqlLiteral(node));
  CounterMap counters;
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    std::vector<std::string> fields = Split(line, '|');
    if (fields.size() != 4) {
      throw std::runtime_error("TrafficInDatabase: unexpected row \"" + line +
                               "\"");
    }
    std::string prefix = fields[0] + ">>>" + fields[1] + ">>>traffic>>>";
    counters[prefix + "uplink"] = std::stoll(fields[2]);
    counters[prefix + "downlink"] = std::stoll(fields[3]);
  }
  return counters;
}

std::string TryTrafficInDatabase(PgServer& pg, const std::string& database,
                                 const std::string& node, CounterMap* out) {
  out->clear();
  try {
    *out = TrafficInDatabase(pg, database, node);
    return "";
  } catch (const std::runtime_error& e) {
    return e.what();
  }
}

CounterMap WithoutZeros(CounterMap counters) {
  std::erase_if(counters, [](const auto& entry) { return entry.second == 0; });
  return counters;
}

CounterMap PredictableV2RayCounters(CounterMap counters) {
  std::erase_if(counters, [](const auto& entry) {
    return entry.first.starts_with("inbound>>>api-in>>>") ||
           entry.first.starts_with("outbound>>>api>>>");
  });
  return WithoutZeros(std::move(counters));
}

std::string DescribeDifference(const CounterMap& expected,
                               const CounterMap& actual) {
  std::ostringstream out;
  auto value = [](const CounterMap& map, const std::string& name) {
    auto it = map.find(name);
    return it == map.end() ? std::string("(none)") : std::to_string(it->second);
  };
  CounterMap names = expected;
  names.insert(actual.begin(), actual.end());
  for (const auto& [name, ignored] : names) {
    std::string want = value(expected, name), got = value(actual, name);
    if (want != got) {
      out << "  " << name << ": expected " << want << ", database has " << got
          << "\n";
    }
  }
  return out.str();
}

}  // namespace boxmeter::testing
