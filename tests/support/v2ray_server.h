// Test support: a throwaway v2ray-core 4.34 (Debian's `v2ray`), the real peer
// of the end-to-end tests.
//
// It serves the same StatsService as sing-box's experimental.v2ray_api, and
// real traffic can be pushed through its socks inbounds (see traffic.h). The
// config written to a temporary directory enables:
//   - the stats service, reachable through a dokodemo-door inbound "api-in"
//     on 127.0.0.1:ApiPort() routed to the "api" outbound;
//   - per-user counters (policy level 0) and per-inbound/outbound counters;
//   - one socks inbound per entry of Options::inbounds, on 127.0.0.1, with
//     password auth: each account's `user` is its stats user name, so its
//     counters are "user>>>USER>>>traffic>>>uplink|downlink";
//   - a freedom outbound "direct".
// v2ray-core registers inbound and outbound counters when it starts (at 0)
// and user counters on a user's first connection. The api-in counters grow
// with every stats call, including the collector's own polls.
//
// The ports are chosen once, so Restart comes back on the same ones: what a
// sing-box restart looks like to the collector. The server is killed when
// destroyed; its logs stay in the temporary directory until then.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "process.h"

namespace boxmeter::testing {

class V2RayServer {
 public:
  struct Account {
    std::string user;
    std::string password;
  };
  struct Inbound {
    std::string tag;  // e.g. "socks-in"
    std::vector<Account> accounts;
  };
  struct Options {
    std::vector<Inbound> inbounds;  // socks inbounds, at least one
  };

  // Writes the config and picks free ports; does not start the server.
  explicit V2RayServer(Options options);
  ~V2RayServer();  // Kill()

  V2RayServer(const V2RayServer&) = delete;
  V2RayServer& operator=(const V2RayServer&) = delete;

  // Starts `v2ray -config FILE` and waits until the stats API answers.
  // Throws std::runtime_error with the log tail if it does not.
  void Start();
  // SIGTERM and wait for the exit (bounded; SIGKILL after that).
  void Stop();
  // SIGKILL.
  void Kill();
  // Stop, then Start on the same ports: every counter starts again at 0.
  void Restart();
  // Restart with `options` (a reload, as sing-box's SIGHUP is one): the same
  // API port, and each inbound the port of the inbound at its index.
  // Throws std::invalid_argument unless the number of inbounds is the same.
  void Reload(Options options);
  bool running();

  // "127.0.0.1:PORT" of the stats API, for source.address.
  std::string ApiAddress() const;
  // The port of socks inbound `index` (in Options::inbounds order).
  int SocksPort(size_t index) const;
  const Options& options() const { return options_; }

  // Waits until QueryStats answers, at most `timeout`. True when it did.
  bool WaitReady(std::chrono::milliseconds timeout);

  // Every counter as v2ray-core reports it now (QueryStats, pattern "",
  // never resetting), read with our own gRPC stub: name -> cumulative value.
  // Throws std::runtime_error when the API does not answer.
  std::map<std::string, int64_t> GroundTruth();
  // GetSysStats' Uptime: whole seconds since this instance's stats service
  // started. Throws std::runtime_error when the API does not answer.
  uint32_t Uptime();

  // The end of v2ray's stdout/stderr and error log, for failure messages.
  std::string LogTail() const;

 private:
  void WriteConfig();

  Options options_;
  std::unique_ptr<TempDir> dir_;
  std::string config_path_;
  int api_port_ = 0;
  std::vector<int> socks_ports_;
  std::unique_ptr<Process> process_;
};

}  // namespace boxmeter::testing
