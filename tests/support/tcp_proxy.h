// Test support: a loopback TCP proxy that misbehaves on command, put between
// the collector and PostgreSQL or the stats API to inject network faults.
//
// It listens on 127.0.0.1 at a port the kernel picks and forwards each
// connection to the target, one thread per connection. On command it:
//   - stalls: holds every byte in both directions (connections stay open, so
//     the peer sees a hang, not an error) until released;
//   - delays answers: holds the first bytes the server sends after each
//     request (bytes from the client) for a random time, so every answer of
//     a request/reply protocol arrives late while nothing is lost;
//   - refuses: closes new connections at once, as a dead port would;
//   - cuts: resets every open connection (RST), mid-stream;
//   - cuts around a pattern the client sends, once: either before the bytes
//     reach the server (the server never sees them) or right after (the
//     server acts on them, its reply is lost). With the pattern of
//     PostgreSQL's "COMMIT" query message this is the connection lost during
//     COMMIT whose outcome the client cannot know.
// Patterns are matched across read boundaries. Every control is thread-safe
// and affects existing connections within a few milliseconds.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace boxmeter::testing {

class TcpProxy {
 public:
  // Forwards to target_host:target_port. Throws std::runtime_error if it
  // cannot listen.
  TcpProxy(std::string target_host, int target_port);
  // Stops listening, resets every connection and joins every thread.
  ~TcpProxy();

  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  int port() const { return port_; }
  std::string address() const;  // "127.0.0.1:PORT"

  // A new target for connections accepted from now on.
  void SetTarget(std::string host, int port);

  void SetStalled(bool stalled);
  // Each answer waits a uniformly random time in [0, max] before it is
  // forwarded (0 turns it off). The random sequence comes from `seed`.
  void SetAnswerDelay(std::chrono::milliseconds max, uint64_t seed = 1);
  void SetRefusing(bool refusing);
  // Resets every open connection.
  void CutAll();

  enum class CutWhen {
    kBeforeForwarding,  // the server never receives the pattern
    kAfterForwarding,   // the server receives it; nothing more reaches the
                        // client, whose connection is reset
  };
  // Arms a one-shot cut on the next connection whose client sends `pattern`.
  void CutOnClientBytes(std::string pattern, CutWhen when);
  bool cut_armed() const;

  // PostgreSQL's simple-query message for COMMIT: 'Q', length 11, "COMMIT\0",
  // what libpq sends when a transaction commits.
  static std::string PostgresCommitMessage();

  // Counters, for tests and the chaos run's report.
  int64_t connections() const { return connections_.load(); }
  int64_t cuts() const { return cuts_.load(); }
  int64_t pattern_cuts() const { return pattern_cuts_.load(); }
  int64_t refused() const { return refused_.load(); }
  // Connections reset because the target did not accept one of its own.
  int64_t target_unreachable() const { return target_unreachable_.load(); }
  int64_t delayed_answers() const { return delayed_answers_.load(); }

 private:
  struct Connection;

  void AcceptLoop();
  void Serve(std::shared_ptr<Connection> connection);
  // Returns what to do with `data` just read from the client; see .cc.
  enum class Verdict { kForward, kCutBefore, kCutAfter };
  Verdict Inspect(Connection& connection, const char* data, size_t size);
  // The delay for the next answer; 0 when delays are off.
  std::chrono::milliseconds NextAnswerDelay();

  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> stalled_{false};
  std::atomic<bool> refusing_{false};
  std::atomic<int64_t> cut_generation_{0};  // CutAll bumps it

  mutable std::mutex mu_;
  std::string target_host_;  // guarded by mu_
  int target_port_ = 0;      // guarded by mu_
  std::string pattern_;      // guarded by mu_; empty: nothing armed
  CutWhen pattern_when_ = CutWhen::kBeforeForwarding;  // guarded by mu_
  // Each connection's thread, joined once its connection is done.
  std::vector<std::pair<std::thread, std::shared_ptr<Connection>>>
      threads_;  // guarded by mu_

  std::atomic<int64_t> connections_{0};
  std::atomic<int64_t> cuts_{0};
  std::atomic<int64_t> pattern_cuts_{0};
  std::atomic<int64_t> refused_{0};
  std::atomic<int64_t> target_unreachable_{0};
  std::atomic<int64_t> delayed_answers_{0};
  std::chrono::milliseconds max_answer_delay_{0};  // guarded by mu_
  std::mt19937_64 delay_rng_;                      // guarded by mu_
  std::thread accept_thread_;
};

}  // namespace boxmeter::testing
