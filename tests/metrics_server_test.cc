// MetricsServer over real loopback sockets: what Prometheus gets, and what
// hostile or broken clients get.
#include "metrics_server.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

namespace boxmeter {
namespace {

using namespace std::chrono_literals;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr const char* kBody = "# HELP x X.\n# TYPE x gauge\nx 1\n";

// A blocking client socket on 127.0.0.1:port; -1 on failure.
int Connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Reads until the peer closes (or resets) the connection, at most
// `timeout`; sets *closed when it did.
std::string ReadUntilClosed(int fd, std::chrono::milliseconds timeout,
                            bool* closed = nullptr) {
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  if (closed) *closed = false;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return out;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) return out;
    char buffer[65536];
    ssize_t n = recv(fd, buffer, sizeof buffer, 0);
    if (n <= 0) {
      if (closed) *closed = true;
      return out;
    }
    out.append(buffer, static_cast<size_t>(n));
  }
}

class MetricsServerTest : public ::testing::Test {
 protected:
  void Start(MetricsServer::Limits limits = {}) {
    server_ = std::make_unique<MetricsServer>(
        "127.0.0.1:0",
        [this] {
          ++renders_;
          // Two pieces: the body is sent as the pieces come.
          std::string_view body(kBody);
          return MetricsPieces{
              std::make_shared<const std::string>(body.substr(0, 10)),
              std::make_shared<const std::string>(body.substr(10))};
        },
        limits);
    Status status = server_->Start();
    ASSERT_TRUE(status.ok()) << status.message();
    ASSERT_GT(server_->port(), 0);
  }

  // Sends `request` on a new connection and returns everything the server
  // sent until it closed the connection.
  std::string Exchange(std::string_view request,
                       std::chrono::milliseconds timeout = 5s) {
    int fd = Connect(server_->port());
    EXPECT_GE(fd, 0);
    if (fd < 0) return "";
    SendAll(fd, request);
    bool closed = false;
    std::string response = ReadUntilClosed(fd, timeout, &closed);
    EXPECT_TRUE(closed) << "the server kept the connection open: " << response;
    close(fd);
    return response;
  }

  std::atomic<int> renders_{0};
  std::unique_ptr<MetricsServer> server_;
};

TEST_F(MetricsServerTest, GetMetricsAnswersTheRenderedText) {
  Start();
  std::string response =
      Exchange("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_THAT(
      response,
      AllOf(StartsWith("HTTP/1.1 200 OK\r\n"),
            HasSubstr("Content-Type: text/plain; version=0.0.4; "
                      "charset=utf-8\r\n"),
            HasSubstr("Content-Length: " + std::to_string(strlen(kBody))),
            ::testing::EndsWith(std::string("\r\n\r\n") + kBody)));
  // A query string (Prometheus' params) changes nothing; HTTP/1.0 works.
  EXPECT_THAT(
      Exchange("GET /metrics?format=x HTTP/1.0\r\n\r\n"),
      AllOf(StartsWith("HTTP/1.0 200 OK\r\n"), ::testing::EndsWith(kBody)));
  EXPECT_EQ(renders_.load(), 2);
}

TEST_F(MetricsServerTest, HeadAnswersTheLengthWithoutTheBody) {
  Start();
  std::string response = Exchange(
      "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_THAT(response, AllOf(StartsWith("HTTP/1.1 200 OK\r\n"),
                              HasSubstr("Content-Length: " +
                                        std::to_string(strlen(kBody))),
                              ::testing::EndsWith("\r\n\r\n")));
}

TEST_F(MetricsServerTest, KeepAliveServesSeveralScrapesOnOneConnection) {
  Start();
  std::string response = Exchange(
      "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  size_t answers = 0;
  for (size_t at = response.find("HTTP/1.1 200 OK"); at != std::string::npos;
       at = response.find("HTTP/1.1 200 OK", at + 1)) {
    ++answers;
  }
  EXPECT_EQ(answers, 3u) << response;
}

TEST_F(MetricsServerTest, OtherPathsAreNotFound) {
  Start();
  for (const char* path : {"/", "/metricsx", "/metrics/", "/debug/pprof",
                           "http://evil/metrics", "*"}) {
    EXPECT_THAT(Exchange(std::string("GET ") + path +
                         " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                StartsWith("HTTP/1.1 404 Not Found\r\n"))
        << path;
  }
  EXPECT_EQ(renders_.load(), 0);
}

TEST_F(MetricsServerTest, OtherMethodsAreNotAllowed) {
  Start();
  for (const char* method : {"POST", "PUT", "DELETE", "OPTIONS", "PATCH"}) {
    std::string response =
        Exchange(std::string(method) +
                 " /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                 "Connection: close\r\n\r\nhi");
    EXPECT_THAT(response, AllOf(StartsWith("HTTP/1.1 405 Method Not Allowed"),
                                HasSubstr("Allow: GET, HEAD\r\n")))
        << method;
  }
  EXPECT_EQ(renders_.load(), 0);
}

TEST_F(MetricsServerTest, HugeHeadersAreRefused) {
  Start();
  std::string request = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " +
                        std::string(1 << 20, 'a') + "\r\n\r\n";
  int fd = Connect(server_->port());
  ASSERT_GE(fd, 0);
  // The server answers and closes before the whole header is sent; the rest
  // of the send may fail with a reset, which is fine.
  std::thread sender([&] { SendAll(fd, request); });
  bool closed = false;
  std::string response = ReadUntilClosed(fd, 5s, &closed);
  shutdown(fd, SHUT_RDWR);
  sender.join();
  close(fd);
  EXPECT_THAT(response,
              StartsWith("HTTP/1.1 431 Request Header Fields Too Large"));
  EXPECT_TRUE(closed);
  EXPECT_EQ(renders_.load(), 0);
}

TEST_F(MetricsServerTest, BodiesAreRefusedWithoutReadingThem) {
  Start();
  // Announces 1 GB and sends none of it.
  std::string response = Exchange(
      "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n");
  EXPECT_THAT(response, StartsWith("HTTP/1.1 413 Payload Too Large"));
  EXPECT_EQ(renders_.load(), 0);
}

TEST_F(MetricsServerTest, GarbageIsABadRequest) {
  Start();
  EXPECT_THAT(Exchange("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
              StartsWith("HTTP/1.1 400 Bad Request"));
  EXPECT_THAT(Exchange("GET\r\n\r\n"), StartsWith("HTTP/1.1 400 Bad Request"));
}

TEST_F(MetricsServerTest, SlowClientsAreCutAfterTheReadTimeout) {
  MetricsServer::Limits limits;
  limits.read_timeout = 300ms;
  Start(limits);
  int fd = Connect(server_->port());
  ASSERT_GE(fd, 0);
  auto start = std::chrono::steady_clock::now();
  SendAll(fd, "GET /met");  // and nothing more
  bool closed = false;
  std::string response = ReadUntilClosed(fd, 5s, &closed);
  auto took = std::chrono::steady_clock::now() - start;
  close(fd);
  EXPECT_TRUE(closed);
  EXPECT_EQ(response, "");
  EXPECT_GE(took, 250ms);
  EXPECT_LT(took, 3s);
}

TEST_F(MetricsServerTest, ConnectionsBeyondTheLimitGetA503AndTheRestWork) {
  MetricsServer::Limits limits;
  limits.max_connections = 2;
  Start(limits);
  int hog1 = Connect(server_->port());
  int hog2 = Connect(server_->port());
  ASSERT_GE(hog1, 0);
  ASSERT_GE(hog2, 0);
  EXPECT_THAT(Exchange("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
              StartsWith("HTTP/1.1 503 Service Unavailable"));
  close(hog1);
  // Once the server saw the hog go, scrapes work again.
  bool served = false;
  for (int attempt = 0; attempt < 100 && !served; ++attempt) {
    int fd = Connect(server_->port());
    ASSERT_GE(fd, 0);
    SendAll(fd,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    served = ReadUntilClosed(fd, 2s).starts_with("HTTP/1.1 200 OK");
    close(fd);
    if (!served) std::this_thread::sleep_for(20ms);  // the server's turn
  }
  EXPECT_TRUE(served);
  close(hog2);
}

TEST_F(MetricsServerTest, AnAddressInUseIsAnErrorNamingIt) {
  Start();
  std::string listen = "127.0.0.1:" + std::to_string(server_->port());
  MetricsServer second(listen, [] { return MetricsPieces{}; });
  Status status = second.Start();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(),
              AllOf(HasSubstr("metrics.listen \"" + listen + "\""),
                    HasSubstr("another process listens there")));
}

TEST_F(MetricsServerTest, AnAddressThatIsNotAnIpIsAnError) {
  MetricsServer server("localhost:9464", [] { return MetricsPieces{}; });
  Status status = server.Start();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("\"localhost:9464\" is not IP:PORT"));
}

}  // namespace
}  // namespace boxmeter
