// HttpTarget and PushTraffic. The server speaks just enough HTTP/1.1 for
// curl: one request per connection, Content-Length bodies, and a
// Content-Length reply followed by closing the connection.
#include "traffic.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string_view>

#include "process.h"

namespace boxmeter::testing {
namespace {

constexpr size_t kMaxHeader = 64 * 1024;
constexpr size_t kChunk = 64 * 1024;
constexpr auto kCurlTimeout = std::chrono::seconds(60);

std::runtime_error Failure(const std::string& what) {
  return std::runtime_error("HttpTarget: " + what + ": " +
                            std::strerror(errno));
}

bool SendAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = send(fd, data, size, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

std::string Lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return out;
}

// The value of header `name` (lower case) in `head`, or "".
std::string_view Header(std::string_view head, std::string_view name) {
  size_t pos = 0;
  while ((pos = head.find("\r\n", pos)) != std::string_view::npos) {
    pos += 2;
    size_t end = head.find("\r\n", pos);
    std::string_view line = head.substr(pos, end - pos);
    size_t colon = line.find(':');
    if (colon != std::string_view::npos &&
        Lower(line.substr(0, colon)) == name) {
      std::string_view value = line.substr(colon + 1);
      while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      return value;
    }
  }
  return {};
}

bool ParseInt(std::string_view text, int64_t* out) {
  auto [ptr, ec] =
      std::from_chars(text.data(), text.data() + text.size(), *out);
  return ec == std::errc() && ptr == text.data() + text.size() && *out >= 0;
}

}  // namespace

HttpTarget::HttpTarget() {
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) throw Failure("socket");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) !=
          0 ||
      listen(listen_fd_, 64) != 0 ||
      getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&address), &length) !=
          0) {
    std::runtime_error error = Failure("cannot listen on 127.0.0.1");
    close(listen_fd_);
    throw error;
  }
  port_ = ntohs(address.sin_port);
  accept_thread_ = std::thread([this] { AcceptLoop(); });
}

HttpTarget::~HttpTarget() {
  stopping_ = true;
  // Wakes the blocking accept().
  shutdown(listen_fd_, SHUT_RDWR);
  accept_thread_.join();
  close(listen_fd_);
  std::vector<std::thread> connections;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (int fd : open_fds_) shutdown(fd, SHUT_RDWR);
    connections.swap(connections_);
  }
  for (std::thread& thread : connections) thread.join();
}

std::string HttpTarget::Url(int64_t bytes) const {
  return "http://127.0.0.1:" + std::to_string(port_) + "/bytes/" +
         std::to_string(bytes);
}

void HttpTarget::AcceptLoop() {
  while (!stopping_) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // shut down
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
      close(fd);
      return;
    }
    open_fds_.push_back(fd);
    connections_.emplace_back([this, fd] { Serve(fd); });
  }
}

void HttpTarget::Serve(int fd) {
  std::string request;
  char buffer[kChunk];
  size_t head_end = std::string::npos;
  while (head_end == std::string::npos && request.size() < kMaxHeader) {
    ssize_t n = recv(fd, buffer, sizeof buffer, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    request.append(buffer, static_cast<size_t>(n));
    head_end = request.find("\r\n\r\n");
  }
  std::string reply_head = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n";
  int64_t reply_bytes = 0;
  if (head_end != std::string::npos) {
    std::string_view head(request.data(), head_end);
    // The body: whatever came with the head, then the rest.
    int64_t body_length = 0;
    ParseInt(Header(head, "content-length"), &body_length);
    int64_t body_read = static_cast<int64_t>(request.size() - (head_end + 4));
    while (body_read < body_length) {
      ssize_t n = recv(fd, buffer, sizeof buffer, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      body_read += n;
    }
    bytes_received_ += body_read;
    // "GET /bytes/N HTTP/1.1"
    std::string_view line = head.substr(0, head.find("\r\n"));
    size_t path_start = line.find(' ');
    size_t path_end = line.rfind(' ');
    std::string_view path =
        path_start == std::string_view::npos || path_end <= path_start
            ? std::string_view()
            : line.substr(path_start + 1, path_end - path_start - 1);
    constexpr std::string_view kPrefix = "/bytes/";
    if (path.substr(0, kPrefix.size()) == kPrefix &&
        ParseInt(path.substr(kPrefix.size()), &reply_bytes)) {
      reply_head =
          "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream"
          "\r\nContent-Length: " +
          std::to_string(reply_bytes) + "\r\n";
    } else {
      reply_bytes = 0;
      reply_head = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n";
    }
  }
  reply_head += "Connection: close\r\n\r\n";
  bool ok = SendAll(fd, reply_head.data(), reply_head.size());
  std::memset(buffer, 'x', sizeof buffer);
  while (ok && reply_bytes > 0) {
    size_t n = static_cast<size_t>(
        std::min<int64_t>(reply_bytes, static_cast<int64_t>(sizeof buffer)));
    ok = SendAll(fd, buffer, n);
    reply_bytes -= static_cast<int64_t>(n);
  }
  shutdown(fd, SHUT_WR);
  std::lock_guard<std::mutex> lock(mutex_);
  open_fds_.erase(std::find(open_fds_.begin(), open_fds_.end(), fd));
  close(fd);
}

void PushTraffic(const HttpTarget& target, int socks_port,
                 const std::string& user, const std::string& password,
                 int64_t bytes_down, int64_t bytes_up) {
  TempDir dir;
  std::vector<std::string> argv = {
      "curl",
      "--silent",
      "--show-error",
      "--fail",
      "--max-time",
      std::to_string(kCurlTimeout.count()),
      "--socks5",
      user + ":" + password + "@127.0.0.1:" + std::to_string(socks_port),
      "--output",
      "/dev/null",
      "--write-out",
      "%{size_download} %{size_upload}"};
  if (bytes_up > 0) {
    std::string body = dir.path() + "/body";
    {
      std::ofstream out(body, std::ios::binary);
      std::string chunk(kChunk, 'u');
      for (int64_t left = bytes_up; left > 0;) {
        size_t n = static_cast<size_t>(
            std::min<int64_t>(left, static_cast<int64_t>(chunk.size())));
        out.write(chunk.data(), static_cast<std::streamsize>(n));
        left -= static_cast<int64_t>(n);
      }
      if (!out.flush()) throw std::runtime_error("cannot write " + body);
    }
    // No "Expect: 100-continue" round trip: the target never sends 100.
    argv.insert(argv.end(),
                {"--header", "Expect:", "--data-binary", "@" + body});
  }
  argv.push_back(target.Url(bytes_down));
  std::string stdout_path = dir.path() + "/stdout";
  std::string errors;
  Process::Options curl;
  curl.argv = argv;
  // An explicit --socks5 wins over proxy variables, but be sure.
  curl.env = {{"http_proxy", ""},
              {"https_proxy", ""},
              {"all_proxy", ""},
              {"ALL_PROXY", ""},
              {"HTTPS_PROXY", ""}};
  curl.stdout_path = stdout_path;
  int code = RunCommand(curl, kCurlTimeout + std::chrono::seconds(5), &errors);
  std::string written = ReadFile(stdout_path);
  std::string expected =
      std::to_string(bytes_down) + " " + std::to_string(bytes_up);
  if (code != 0 || written != expected) {
    throw std::runtime_error(
        "PushTraffic: curl as " + user + " through socks port " +
        std::to_string(socks_port) + " to " + target.Url(bytes_down) +
        " exited " + std::to_string(code) + ", moved \"" + written +
        "\" (download upload), expected \"" + expected + "\": " + errors);
  }
}

}  // namespace boxmeter::testing
