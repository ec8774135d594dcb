// Test support: real traffic through a socks inbound of v2ray-core.
//
// HttpTarget is the far end: a tiny HTTP/1.1 server on 127.0.0.1 that
// answers any request for /bytes/N with N bytes and reads (and counts) any
// request body. PushTraffic runs curl through the socks inbound as one user,
// downloading and uploading the given amounts in one request, so that user's
// counters, the inbound's and the outbound's all move.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace boxmeter::testing {

class HttpTarget {
 public:
  // Listens on 127.0.0.1 at a port the kernel picks and serves each
  // connection on its own thread. Throws std::runtime_error on failure.
  HttpTarget();
  // Stops listening and joins every thread.
  ~HttpTarget();

  HttpTarget(const HttpTarget&) = delete;
  HttpTarget& operator=(const HttpTarget&) = delete;

  int port() const { return port_; }
  // http://127.0.0.1:PORT/bytes/N
  std::string Url(int64_t bytes) const;
  // Request body bytes received so far.
  int64_t bytes_received() const { return bytes_received_.load(); }

 private:
  void AcceptLoop();
  void Serve(int fd);

  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int64_t> bytes_received_{0};
  std::thread accept_thread_;
  std::mutex mutex_;
  std::vector<std::thread> connections_;  // guarded by mutex_
  std::vector<int> open_fds_;             // guarded by mutex_
};

// Downloads `bytes_down` and uploads `bytes_up` bytes (a POST body) from
// `target` through the socks5 inbound on 127.0.0.1:`socks_port` as
// user:password, with curl. Returns when curl has finished. Throws
// std::runtime_error with curl's output unless curl succeeded and moved
// exactly those amounts of payload.
void PushTraffic(const HttpTarget& target, int socks_port,
                 const std::string& user, const std::string& password,
                 int64_t bytes_down, int64_t bytes_up);

}  // namespace boxmeter::testing
