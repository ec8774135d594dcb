// FakeStatsServer: an in-process gRPC server for
// v2ray.core.app.stats.command.StatsService that behaves like sing-box's
// experimental.v2ray_api (docs/design.md), for fault tests and benchmarks:
//
//   - QueryStats matches `patterns` (field 3) by substring, or by regexp when
//     `regexp` is set, and ignores `pattern` (field 1), which only v2ray-core
//     reads. A counter that matches two patterns is returned twice. Empty
//     `patterns` returns nothing (some releases; switchable).
//   - `reset` swaps a returned counter to 0.
//   - GetSysStats answers Uptime: whole seconds since the simulated instance
//     started, plus an offset tests can set, truncated and measured on
//     CLOCK_MONOTONIC (std::chrono::steady_clock), as sing-box v1.13.2's
//     experimental/v2rayapi/stats.go does with Go's monotonic clock: the
//     clock the collector brackets its requests with.
//   - Restart() is a sing-box restart or reload: every counter vanishes (they
//     come back lazily, from 0) and the uptime starts again.
//
// Faults on demand: slow replies, a fixed error code for every call, every
// counter twice. Every control is thread-safe and takes effect on the next
// call the server answers.
#pragma once

#include <grpcpp/support/status_code_enum.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "stats.pb.h"

namespace grpc {
class Server;
}

namespace boxmeter::testing {

class FakeStatsServer {
 public:
  enum class Method { kGetStats, kQueryStats, kGetSysStats };

  // Serves on host:port; port 0 lets the system choose one (see port()).
  // Throws std::runtime_error naming the address when it cannot be bound
  // (SO_REUSEPORT is off, so a port in use is refused).
  explicit FakeStatsServer(int port = 0, std::string host = "127.0.0.1");
  // Shutdown().
  ~FakeStatsServer();

  FakeStatsServer(const FakeStatsServer&) = delete;
  FakeStatsServer& operator=(const FakeStatsServer&) = delete;

  // Stops listening and ends every call: delayed replies are cut short and
  // fail with UNAVAILABLE. Idempotent. The port is free again afterwards.
  void Shutdown();

  int port() const { return port_; }
  std::string address() const;  // host:port, for GrpcStatsSource

  // Counters. Set and Add create the counter if it does not exist.
  void Set(const std::string& name, int64_t value);
  void Add(const std::string& name, int64_t delta);
  std::optional<int64_t> Get(const std::string& name) const;
  size_t size() const;
  // Every counter with its value, in the order they were created.
  std::vector<std::pair<std::string, int64_t>> Counters() const;

  // A sing-box restart or reload: no counters, uptime from 0, offset 0.
  void Restart();
  // Added to the uptime, to simulate an instance that has run for long.
  void SetUptimeOffset(std::chrono::seconds offset);

  // Every call (or only calls of `only`) waits `delay` before answering.
  void SetDelay(std::chrono::milliseconds delay,
                std::optional<Method> only = std::nullopt);
  // Every call fails with `code` and `message`; grpc::StatusCode::OK turns
  // this off.
  void SetFailure(
      grpc::StatusCode code,
      std::string message = "failure injected by the fake stats server");
  // Every stat of a QueryStats reply is sent twice, one right after the
  // other.
  void SetDuplicateEverything(bool on);
  // false (default): empty `patterns` matches nothing; true: everything.
  void SetEmptyPatternsMatchAll(bool on);

  // Ensures synthetic counters 0..count-1 exist (new ones at 0). Half are
  // users, a quarter inbounds, a quarter outbounds, in uplink/downlink
  // pairs; see SyntheticName.
  void Populate(size_t count);
  // The name of synthetic counter `index`, e.g.
  // "user>>>u000123>>>traffic>>>uplink", "inbound>>>in000004>>>traffic>>>…",
  // "outbound>>>out000004>>>traffic>>>…". Independent of how many exist.
  static std::string SyntheticName(size_t index);
  // Adds `bytes` to round(fraction * size()) counters spread evenly over all
  // of them, starting one further on each call. Returns how many it touched.
  size_t TouchFraction(double fraction, int64_t bytes);

  // The last QueryStats request received, as it arrived; nullopt before any.
  std::optional<v2ray::core::app::stats::command::QueryStatsRequest>
  last_query() const;
  // Calls received per method, including failed ones.
  int64_t calls(Method method) const;

 private:
  struct State;
  class Service;

  std::shared_ptr<State> state_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string host_;
  int port_ = 0;
};

}  // namespace boxmeter::testing
