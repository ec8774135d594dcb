// TcpProxy: one accept thread, and one thread per connection that moves
// bytes both ways with poll(). Sockets are blocking with a short send timeout,
// so a thread never sleeps long without looking at the controls.
#include "tcp_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>

namespace boxmeter::testing {
namespace {

using namespace std::chrono_literals;

// Closes with RST instead of FIN: the peer sees "connection reset", as after
// a crash or a middlebox dropping the flow.
void Reset(int fd) {
  if (fd < 0) return;
  linger abort{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
  close(fd);
}

void SetSendTimeout(int fd, std::chrono::milliseconds timeout) {
  timeval tv{0, static_cast<suseconds_t>(timeout.count() * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

int ConnectTo(const std::string& host, int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &address.sin_addr) != 1 ||
      connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

struct TcpProxy::Connection {
  int client = -1;
  int server = -1;
  std::string window;  // the client's last bytes, for patterns split by reads
  std::atomic<bool> done{false};
};

TcpProxy::TcpProxy(std::string target_host, int target_port)
    : target_host_(std::move(target_host)), target_port_(target_port) {
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) {
    throw std::runtime_error(std::string("TcpProxy: socket: ") +
                             std::strerror(errno));
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&address), length) != 0 ||
      listen(listen_fd_, 64) != 0 ||
      getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&address), &length) !=
          0) {
    std::string error = std::strerror(errno);
    close(listen_fd_);
    throw std::runtime_error("TcpProxy: cannot listen on 127.0.0.1: " + error);
  }
  port_ = ntohs(address.sin_port);
  accept_thread_ = std::thread([this] { AcceptLoop(); });
}

TcpProxy::~TcpProxy() {
  stopping_ = true;
  if (accept_thread_.joinable()) accept_thread_.join();
  close(listen_fd_);
  std::vector<std::pair<std::thread, std::shared_ptr<Connection>>> threads;
  {
    std::lock_guard lock(mu_);
    threads.swap(threads_);
  }
  for (auto& [thread, connection] : threads) thread.join();
}

std::string TcpProxy::address() const {
  return "127.0.0.1:" + std::to_string(port_);
}

void TcpProxy::SetTarget(std::string host, int port) {
  std::lock_guard lock(mu_);
  target_host_ = std::move(host);
  target_port_ = port;
}

void TcpProxy::SetStalled(bool stalled) { stalled_ = stalled; }
void TcpProxy::SetRefusing(bool refusing) { refusing_ = refusing; }

void TcpProxy::SetAnswerDelay(std::chrono::milliseconds max, uint64_t seed) {
  std::lock_guard lock(mu_);
  max_answer_delay_ = max;
  delay_rng_.seed(seed);
}

std::chrono::milliseconds TcpProxy::NextAnswerDelay() {
  std::lock_guard lock(mu_);
  if (max_answer_delay_.count() <= 0) return std::chrono::milliseconds(0);
  return std::chrono::milliseconds(std::uniform_int_distribution<int64_t>(
      0, max_answer_delay_.count())(delay_rng_));
}
void TcpProxy::CutAll() { ++cut_generation_; }

void TcpProxy::CutOnClientBytes(std::string pattern, CutWhen when) {
  std::lock_guard lock(mu_);
  pattern_ = std::move(pattern);
  pattern_when_ = when;
}

bool TcpProxy::cut_armed() const {
  std::lock_guard lock(mu_);
  return !pattern_.empty();
}

std::string TcpProxy::PostgresCommitMessage() {
  return std::string(
      "Q\0\0\0\x0b"
      "COMMIT\0",
      12);
}

void TcpProxy::AcceptLoop() {
  while (!stopping_) {
    pollfd listening{listen_fd_, POLLIN, 0};
    if (poll(&listening, 1, 20) <= 0) continue;
    int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    if (refusing_) {
      ++refused_;
      Reset(client);
      continue;
    }
    ++connections_;
    auto connection = std::make_shared<Connection>();
    connection->client = client;
    std::lock_guard lock(mu_);
    // Join the threads of connections that are over (done is their last
    // act), so a long run does not pile them up.
    for (auto it = threads_.begin(); it != threads_.end();) {
      if (it->second->done) {
        it->first.join();
        it = threads_.erase(it);
      } else {
        ++it;
      }
    }
    threads_.emplace_back(
        std::thread([this, connection] { Serve(connection); }), connection);
  }
}

TcpProxy::Verdict TcpProxy::Inspect(Connection& connection, const char* data,
                                    size_t size) {
  std::lock_guard lock(mu_);
  if (pattern_.empty()) return Verdict::kForward;
  connection.window.append(data, size);
  if (connection.window.find(pattern_) != std::string::npos) {
    Verdict verdict = pattern_when_ == CutWhen::kBeforeForwarding
                          ? Verdict::kCutBefore
                          : Verdict::kCutAfter;
    pattern_.clear();
    connection.window.clear();
    ++pattern_cuts_;
    return verdict;
  }
  if (connection.window.size() >= pattern_.size()) {
    connection.window.erase(0,
                            connection.window.size() - (pattern_.size() - 1));
  }
  return Verdict::kForward;
}

void TcpProxy::Serve(std::shared_ptr<Connection> connection) {
  int64_t generation = cut_generation_.load();
  std::string host;
  int port;
  {
    std::lock_guard lock(mu_);
    host = target_host_;
    port = target_port_;
  }
  int client = connection->client;
  int server = ConnectTo(host, port);
  if (server < 0) {
    // The target is down: the client sees its connection reset.
    ++target_unreachable_;
    Reset(client);
    connection->done = true;
    return;
  }
  SetSendTimeout(client, 50ms);
  SetSendTimeout(server, 50ms);

  auto interrupted = [&] {
    return stopping_ || cut_generation_.load() != generation;
  };
  auto cut = [&] {
    if (!stopping_) ++cuts_;
    Reset(client);
    Reset(server);
    connection->done = true;
  };
  // Writes everything unless the connection is cut meanwhile.
  auto write_all = [&](int fd, const char* data, size_t size) {
    while (size > 0) {
      if (interrupted()) return false;
      ssize_t n = send(fd, data, size, MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        continue;
      if (n <= 0) return false;
      data += n;
      size -= static_cast<size_t>(n);
    }
    return true;
  };

  // Whether the client sent bytes since the server last answered: the next
  // bytes from the server are an answer, and may be delayed.
  bool awaiting_answer = false;
  char buffer[65536];
  while (true) {
    if (interrupted()) return cut();
    if (stalled_) {
      std::this_thread::sleep_for(5ms);
      continue;
    }
    pollfd fds[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
    int ready = poll(fds, 2, 20);
    if (ready < 0 && errno != EINTR) return cut();
    if (ready <= 0) continue;
    if (stalled_) continue;  // stalled while waiting: hold what arrived

    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = recv(client, buffer, sizeof buffer, 0);
      if (n <= 0) break;  // the client closed: close the server side too
      Verdict verdict = Inspect(*connection, buffer, static_cast<size_t>(n));
      if (verdict == Verdict::kCutBefore) return cut();
      if (!write_all(server, buffer, static_cast<size_t>(n))) return cut();
      awaiting_answer = true;
      if (verdict == Verdict::kCutAfter) {
        // The server has the bytes and acts on them; the client loses its
        // connection before any reply. Give the server a moment to finish,
        // discarding what it says, then close its side normally.
        ++cuts_;
        Reset(client);
        auto until = std::chrono::steady_clock::now() + 2s;
        while (!stopping_ && std::chrono::steady_clock::now() < until) {
          pollfd reply{server, POLLIN, 0};
          if (poll(&reply, 1, 20) <= 0) continue;
          if (recv(server, buffer, sizeof buffer, 0) <= 0) break;
        }
        close(server);
        connection->done = true;
        return;
      }
    }
    if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = recv(server, buffer, sizeof buffer, 0);
      if (n <= 0) break;  // the server closed: close the client side too
      if (awaiting_answer) {
        awaiting_answer = false;
        auto delay = NextAnswerDelay();
        if (delay.count() > 0) {
          ++delayed_answers_;
          auto until = std::chrono::steady_clock::now() + delay;
          while (std::chrono::steady_clock::now() < until) {
            if (interrupted()) return cut();
            std::this_thread::sleep_for(5ms);
          }
        }
      }
      if (!write_all(client, buffer, static_cast<size_t>(n))) return cut();
    }
  }
  close(client);
  close(server);
  connection->done = true;
}

}  // namespace boxmeter::testing
