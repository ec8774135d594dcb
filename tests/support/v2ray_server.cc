// V2RayServer: a v2ray-core config in a TempDir and `v2ray -config FILE` as
// a Process. The stats are read with our own stub of the StatsService (the
// proto the collector uses), so the ground truth does not depend on v2ctl's
// output format.
#include "v2ray_server.h"

#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "stats.grpc.pb.h"

namespace boxmeter::testing {
namespace {

namespace stats = v2ray::core::app::stats::command;

constexpr const char* kBinary = "/usr/bin/v2ray";
constexpr auto kReadyTimeout = std::chrono::seconds(15);
constexpr auto kStopTimeout = std::chrono::seconds(10);
constexpr auto kCallTimeout = std::chrono::seconds(3);
constexpr int kStartAttempts = 3;  // a "free" port can be taken meanwhile

// A fresh channel per call: after a restart of v2ray an old channel may sit
// in its reconnect backoff, and the tests want the server's answer now.
std::unique_ptr<stats::StatsService::Stub> NewStub(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);  // the API is on loopback
  args.SetMaxReceiveMessageSize(-1);
  return stats::StatsService::NewStub(grpc::CreateCustomChannel(
      address, grpc::InsecureChannelCredentials(), args));
}

void SetDeadline(grpc::ClientContext* context,
                 std::chrono::milliseconds timeout) {
  context->set_deadline(std::chrono::system_clock::now() + timeout);
  // Wait out a connection that is still being set up instead of failing
  // at once; the deadline bounds it.
  context->set_wait_for_ready(true);
}

}  // namespace

V2RayServer::V2RayServer(Options options)
    : options_(std::move(options)), dir_(std::make_unique<TempDir>()) {
  if (options_.inbounds.empty()) {
    throw std::invalid_argument("V2RayServer: give at least one socks inbound");
  }
  config_path_ = dir_->path() + "/config.json";
}

V2RayServer::~V2RayServer() { Kill(); }

void V2RayServer::Start() {
  if (running()) throw std::logic_error("V2RayServer::Start: already running");
  bool first = api_port_ == 0;
  for (int attempt = 1;; ++attempt) {
    if (first) {
      // Distinct ports, chosen once: Restart keeps them.
      std::set<int> taken;
      auto pick = [&taken] {
        int port;
        do port = FreePort();
        while (!taken.insert(port).second);
        return port;
      };
      api_port_ = pick();
      socks_ports_.clear();
      for (size_t i = 0; i < options_.inbounds.size(); ++i) {
        socks_ports_.push_back(pick());
      }
      WriteConfig();
    }
    Process::Options v2ray;
    v2ray.argv = {kBinary, "-config", config_path_};
    v2ray.stdout_path = v2ray.stderr_path = dir_->path() + "/v2ray.out";
    process_ = Process::Start(v2ray);
    if (WaitReady(kReadyTimeout)) return;
    process_->Kill();
    process_.reset();
    if (!first || attempt == kStartAttempts) {
      throw std::runtime_error(
          "V2RayServer: v2ray did not answer on " + ApiAddress() + " within " +
          std::to_string(kReadyTimeout.count()) + "s; its log:\n" + LogTail());
    }
  }
}

void V2RayServer::WriteConfig() {
  using nlohmann::json;
  const std::string& dir = dir_->path();
  json inbounds = json::array();
  inbounds.push_back({{"tag", "api-in"},
                      {"listen", "127.0.0.1"},
                      {"port", api_port_},
                      {"protocol", "dokodemo-door"},
                      {"settings", {{"address", "127.0.0.1"}}}});
  for (size_t i = 0; i < options_.inbounds.size(); ++i) {
    json accounts = json::array();
    for (const Account& account : options_.inbounds[i].accounts) {
      accounts.push_back({{"user", account.user}, {"pass", account.password}});
    }
    inbounds.push_back(
        {{"tag", options_.inbounds[i].tag},
         {"listen", "127.0.0.1"},
         {"port", socks_ports_[i]},
         {"protocol", "socks"},
         {"settings",
          {{"auth", "password"}, {"udp", false}, {"accounts", accounts}}}});
  }
  json config = {
      {"log",
       {{"loglevel", "warning"},
        {"access", dir + "/access.log"},
        {"error", dir + "/error.log"}}},
      {"stats", json::object()},
      {"api", {{"tag", "api"}, {"services", {"StatsService"}}}},
      {"policy",
       {{"levels",
         {{"0", {{"statsUserUplink", true}, {"statsUserDownlink", true}}}}},
        {"system",
         {{"statsInboundUplink", true},
          {"statsInboundDownlink", true},
          {"statsOutboundUplink", true},
          {"statsOutboundDownlink", true}}}}},
      {"inbounds", inbounds},
      {"outbounds",
       {{{"tag", "direct"},
         {"protocol", "freedom"},
         {"settings", json::object()}}}},
      {"routing",
       {{"rules",
         {{{"type", "field"},
           {"inboundTag", {"api-in"}},
           {"outboundTag", "api"}}}}}},
  };
  std::ofstream out(config_path_);
  out << config.dump(2) << "\n";
  if (!out.flush()) {
    throw std::runtime_error("V2RayServer: cannot write " + config_path_);
  }
}

void V2RayServer::Stop() {
  if (!process_) return;
  process_->Signal(SIGTERM);
  if (!process_->Wait(kStopTimeout)) process_->Kill();
  process_.reset();
}

void V2RayServer::Kill() {
  if (!process_) return;
  process_->Kill();
  process_.reset();
}

void V2RayServer::Restart() {
  Stop();
  Start();
}

void V2RayServer::Reload(Options options) {
  if (options.inbounds.size() != options_.inbounds.size()) {
    throw std::invalid_argument(
        "V2RayServer::Reload: " + std::to_string(options.inbounds.size()) +
        " inbounds instead of " + std::to_string(options_.inbounds.size()) +
        "; reload with as many (their ports are kept by index)");
  }
  Stop();
  options_ = std::move(options);
  WriteConfig();
  Start();
}

bool V2RayServer::running() { return process_ && process_->Running(); }

std::string V2RayServer::ApiAddress() const {
  return "127.0.0.1:" + std::to_string(api_port_);
}

int V2RayServer::SocksPort(size_t index) const {
  return socks_ports_.at(index);
}

bool V2RayServer::WaitReady(std::chrono::milliseconds timeout) {
  return WaitUntil(
      [this] {
        if (!running()) return false;
        auto stub = NewStub(ApiAddress());
        grpc::ClientContext context;
        SetDeadline(&context, std::chrono::milliseconds(500));
        stats::QueryStatsRequest request;
        stats::QueryStatsResponse response;
        return stub->QueryStats(&context, request, &response).ok();
      },
      timeout, std::chrono::milliseconds(100));
}

std::map<std::string, int64_t> V2RayServer::GroundTruth() {
  auto stub = NewStub(ApiAddress());
  grpc::ClientContext context;
  SetDeadline(&context, kCallTimeout);
  stats::QueryStatsRequest request;
  request.set_pattern("");
  request.set_reset(false);
  stats::QueryStatsResponse response;
  grpc::Status status = stub->QueryStats(&context, request, &response);
  if (!status.ok()) {
    throw std::runtime_error("V2RayServer: QueryStats at " + ApiAddress() +
                             " failed: " + status.error_message() +
                             "; v2ray's log:\n" + LogTail());
  }
  std::map<std::string, int64_t> counters;
  for (const stats::Stat& stat : response.stat()) {
    counters[stat.name()] = stat.value();
  }
  return counters;
}

uint32_t V2RayServer::Uptime() {
  auto stub = NewStub(ApiAddress());
  grpc::ClientContext context;
  SetDeadline(&context, kCallTimeout);
  stats::SysStatsRequest request;
  stats::SysStatsResponse response;
  grpc::Status status = stub->GetSysStats(&context, request, &response);
  if (!status.ok()) {
    throw std::runtime_error("V2RayServer: GetSysStats at " + ApiAddress() +
                             " failed: " + status.error_message());
  }
  return response.uptime();
}

std::string V2RayServer::LogTail() const {
  return "--- v2ray.out\n" + Tail(ReadFile(dir_->path() + "/v2ray.out"), 2000) +
         "\n--- error.log\n" +
         Tail(ReadFile(dir_->path() + "/error.log"), 2000);
}

}  // namespace boxmeter::testing
