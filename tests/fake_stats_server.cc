#include "fake_stats_server.h"

#include <fmt/core.h>
#include <grpcpp/grpcpp.h>

#include <climits>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <regex>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <vector>

#include "stats.grpc.pb.h"

namespace boxmeter::testing {

namespace api = v2ray::core::app::stats::command;

// Everything the controls and the handlers share, under one mutex.
struct FakeStatsServer::State {
  struct Counter {
    std::string name;
    int64_t value = 0;
  };

  mutable std::mutex mu;
  std::condition_variable stop_cv;  // wakes delayed replies on shutdown
  bool stopping = false;

  // Insertion order, so TouchFraction can spread over indices.
  std::vector<Counter> counters;
  std::unordered_map<std::string, size_t> index;

  std::chrono::steady_clock::time_point started =
      std::chrono::steady_clock::now();
  std::chrono::seconds uptime_offset{0};

  std::chrono::milliseconds delay{0};
  std::optional<Method> delay_only;
  grpc::StatusCode failure = grpc::StatusCode::OK;
  std::string failure_message;
  bool duplicate_everything = false;
  bool empty_patterns_match_all = false;
  size_t touch_cursor = 0;

  std::optional<api::QueryStatsRequest> last_query;
  int64_t calls[3] = {0, 0, 0};

  // Requires mu.
  Counter& Find(const std::string& name) {
    auto [it, inserted] = index.try_emplace(name, counters.size());
    if (inserted) counters.push_back(Counter{name, 0});
    return counters[it->second];
  }
};

// The gRPC service. Synchronous handlers: each call runs on one of the
// server's threads, so a delayed reply blocks only itself.
class FakeStatsServer::Service final : public api::StatsService::Service {
 public:
  explicit Service(std::shared_ptr<State> state) : state_(std::move(state)) {}

  grpc::Status GetStats(grpc::ServerContext*,
                        const api::GetStatsRequest* request,
                        api::GetStatsResponse* response) override {
    std::unique_lock lock(state_->mu);
    if (grpc::Status status = Enter(Method::kGetStats, lock); !status.ok()) {
      return status;
    }
    auto it = state_->index.find(request->name());
    if (it == state_->index.end()) {
      // sing-box returns a plain Go error, which gRPC sends as UNKNOWN.
      return grpc::Status(grpc::StatusCode::UNKNOWN,
                          request->name() + " not found.");
    }
    State::Counter& counter = state_->counters[it->second];
    response->mutable_stat()->set_name(counter.name);
    response->mutable_stat()->set_value(counter.value);
    if (request->reset()) counter.value = 0;
    return grpc::Status::OK;
  }

  grpc::Status QueryStats(grpc::ServerContext*,
                          const api::QueryStatsRequest* request,
                          api::QueryStatsResponse* response) override {
    std::unique_lock lock(state_->mu);
    state_->last_query = *request;
    if (grpc::Status status = Enter(Method::kQueryStats, lock); !status.ok()) {
      return status;
    }
    // sing-box reads `patterns` only; `pattern` is v2ray-core's.
    std::vector<std::regex> regexes;
    if (request->regexp()) {
      try {
        for (const std::string& pattern : request->patterns()) {
          regexes.emplace_back(pattern);
        }
      } catch (const std::regex_error& e) {
        return grpc::Status(grpc::StatusCode::UNKNOWN,
                            fmt::format("error parsing regexp: {}", e.what()));
      }
    }
    int copies = state_->duplicate_everything ? 2 : 1;
    for (State::Counter& counter : state_->counters) {
      int matches = 0;
      if (request->patterns().empty()) {
        matches = state_->empty_patterns_match_all ? 1 : 0;
      } else if (request->regexp()) {
        for (const std::regex& regex : regexes) {
          if (std::regex_search(counter.name, regex)) ++matches;
        }
      } else {
        for (const std::string& pattern : request->patterns()) {
          if (counter.name.find(pattern) != std::string::npos) ++matches;
        }
      }
      // One stat per matching pattern; each read swaps to 0 on reset.
      for (int i = 0; i < matches; ++i) {
        for (int copy = 0; copy < copies; ++copy) {
          api::Stat* stat = response->add_stat();
          stat->set_name(counter.name);
          stat->set_value(counter.value);
        }
        if (request->reset()) counter.value = 0;
      }
    }
    return grpc::Status::OK;
  }

  grpc::Status GetSysStats(grpc::ServerContext*, const api::SysStatsRequest*,
                           api::SysStatsResponse* response) override {
    std::unique_lock lock(state_->mu);
    if (grpc::Status status = Enter(Method::kGetSysStats, lock); !status.ok()) {
      return status;
    }
    auto elapsed = std::chrono::duration_cast<std::chrono::seconds>(
        std::chrono::steady_clock::now() - state_->started);
    response->set_uptime(
        static_cast<uint32_t>((elapsed + state_->uptime_offset).count()));
    return grpc::Status::OK;
  }

 private:
  // Counts the call, waits out the delay (the lock is released meanwhile,
  // and the reply reflects the counters after it) and applies the failure.
  grpc::Status Enter(Method method, std::unique_lock<std::mutex>& lock) {
    ++state_->calls[static_cast<int>(method)];
    if (!state_->delay_only || *state_->delay_only == method) {
      auto until = std::chrono::steady_clock::now() + state_->delay;
      state_->stop_cv.wait_until(lock, until,
                                 [this] { return state_->stopping; });
    }
    if (state_->stopping) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "the fake stats server is shutting down");
    }
    if (state_->failure != grpc::StatusCode::OK) {
      return grpc::Status(state_->failure, state_->failure_message);
    }
    return grpc::Status::OK;
  }

  std::shared_ptr<State> state_;
};

FakeStatsServer::FakeStatsServer(int port, std::string host)
    : state_(std::make_shared<State>()),
      service_(std::make_unique<Service>(state_)),
      host_(std::move(host)) {
  std::string listen = fmt::format("{}:{}", host_, port);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port_);
  builder.RegisterService(service_.get());
  // A million counters are tens of megabytes.
  builder.SetMaxSendMessageSize(INT_MAX);
  // Tests reuse a port on purpose; two servers on it would hide bugs.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    server_.reset();
    throw std::runtime_error(fmt::format(
        "the fake stats server cannot listen on {}: address in use or not "
        "local",
        listen));
  }
}

FakeStatsServer::~FakeStatsServer() { Shutdown(); }

void FakeStatsServer::Shutdown() {
  if (server_ == nullptr) return;
  {
    std::lock_guard lock(state_->mu);
    state_->stopping = true;
  }
  state_->stop_cv.notify_all();
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  server_->Wait();
  server_.reset();
}

std::string FakeStatsServer::address() const {
  return fmt::format("{}:{}", host_, port_);
}

void FakeStatsServer::Set(const std::string& name, int64_t value) {
  std::lock_guard lock(state_->mu);
  state_->Find(name).value = value;
}

void FakeStatsServer::Add(const std::string& name, int64_t delta) {
  std::lock_guard lock(state_->mu);
  state_->Find(name).value += delta;
}

std::optional<int64_t> FakeStatsServer::Get(const std::string& name) const {
  std::lock_guard lock(state_->mu);
  auto it = state_->index.find(name);
  if (it == state_->index.end()) return std::nullopt;
  return state_->counters[it->second].value;
}

size_t FakeStatsServer::size() const {
  std::lock_guard lock(state_->mu);
  return state_->counters.size();
}

std::vector<std::pair<std::string, int64_t>> FakeStatsServer::Counters() const {
  std::lock_guard lock(state_->mu);
  std::vector<std::pair<std::string, int64_t>> out;
  out.reserve(state_->counters.size());
  for (const auto& counter : state_->counters) {
    out.emplace_back(counter.name, counter.value);
  }
  return out;
}

void FakeStatsServer::Restart() {
  std::lock_guard lock(state_->mu);
  state_->counters.clear();
  state_->index.clear();
  state_->started = std::chrono::steady_clock::now();
  state_->uptime_offset = std::chrono::seconds(0);
  state_->touch_cursor = 0;
}

void FakeStatsServer::SetUptimeOffset(std::chrono::seconds offset) {
  std::lock_guard lock(state_->mu);
  state_->uptime_offset = offset;
}

void FakeStatsServer::SetDelay(std::chrono::milliseconds delay,
                               std::optional<Method> only) {
  std::lock_guard lock(state_->mu);
  state_->delay = delay;
  state_->delay_only = only;
}

void FakeStatsServer::SetFailure(grpc::StatusCode code, std::string message) {
  std::lock_guard lock(state_->mu);
  state_->failure = code;
  state_->failure_message = std::move(message);
}

void FakeStatsServer::SetDuplicateEverything(bool on) {
  std::lock_guard lock(state_->mu);
  state_->duplicate_everything = on;
}

void FakeStatsServer::SetEmptyPatternsMatchAll(bool on) {
  std::lock_guard lock(state_->mu);
  state_->empty_patterns_match_all = on;
}

std::string FakeStatsServer::SyntheticName(size_t index) {
  // Groups of four: a user's pair, then an inbound's or an outbound's pair.
  size_t group = index / 4;
  const char* direction = index % 2 == 0 ? "uplink" : "downlink";
  if (index % 4 < 2) {
    return fmt::format("user>>>u{:06}>>>traffic>>>{}", group, direction);
  }
  if (group % 2 == 0) {
    return fmt::format("inbound>>>in{:06}>>>traffic>>>{}", group / 2,
                       direction);
  }
  return fmt::format("outbound>>>out{:06}>>>traffic>>>{}", group / 2,
                     direction);
}

void FakeStatsServer::Populate(size_t count) {
  std::lock_guard lock(state_->mu);
  state_->counters.reserve(state_->counters.size() + count);
  state_->index.reserve(state_->index.size() + count);
  for (size_t i = 0; i < count; ++i) state_->Find(SyntheticName(i));
}

size_t FakeStatsServer::TouchFraction(double fraction, int64_t bytes) {
  std::lock_guard lock(state_->mu);
  size_t size = state_->counters.size();
  if (size == 0 || !(fraction > 0)) return 0;
  size_t count = fraction >= 1 ? size
                               : static_cast<size_t>(std::llround(
                                     fraction * static_cast<double>(size)));
  if (count == 0) return 0;
  double stride = static_cast<double>(size) / static_cast<double>(count);
  size_t start = state_->touch_cursor++ % size;
  for (size_t i = 0; i < count; ++i) {
    size_t at =
        (start + static_cast<size_t>(static_cast<double>(i) * stride)) % size;
    state_->counters[at].value += bytes;
  }
  return count;
}

std::optional<api::QueryStatsRequest> FakeStatsServer::last_query() const {
  std::lock_guard lock(state_->mu);
  return state_->last_query;
}

int64_t FakeStatsServer::calls(Method method) const {
  std::lock_guard lock(state_->mu);
  return state_->calls[static_cast<int>(method)];
}

}  // namespace boxmeter::testing
