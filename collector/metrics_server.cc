#include "metrics_server.h"

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "log.h"

namespace boxmeter {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr std::string_view kPath = "/metrics";
constexpr std::string_view kContentType =
    "text/plain; version=0.0.4; charset=utf-8";

// Sent as is to a connection beyond Limits::max_connections, which is then
// closed without reading its request.
constexpr std::string_view kBusy =
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    "Content-Length: 40\r\nConnection: close\r\n\r\n"
    "too many connections to /metrics; retry\n";

// "IP:PORT" or "[IPv6]:PORT" as an endpoint; nullopt when it is not one.
std::optional<tcp::endpoint> ParseEndpoint(std::string_view listen) {
  std::string_view host, port;
  if (listen.starts_with('[')) {
    size_t close = listen.find("]:");
    if (close == std::string_view::npos) return std::nullopt;
    host = listen.substr(1, close - 1);
    port = listen.substr(close + 2);
  } else {
    size_t colon = listen.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = listen.substr(0, colon);
    port = listen.substr(colon + 1);
  }
  boost::system::error_code ec;
  asio::ip::address address = asio::ip::make_address(std::string(host), ec);
  if (ec || port.empty() || port.size() > 5) return std::nullopt;
  int number = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return std::nullopt;
    number = number * 10 + (c - '0');
  }
  if (number > 65535) return std::nullopt;
  return tcp::endpoint(address, static_cast<unsigned short>(number));
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, const MetricsServer::Render& render,
          const MetricsServer::Limits& limits,
          std::shared_ptr<std::atomic<size_t>> open)
      : stream_(std::move(socket)),
        buffer_(limits.max_header_bytes + limits.max_body_bytes + 1024),
        render_(render),
        limits_(limits),
        open_(std::move(open)) {
    ++*open_;
  }
  ~Session() { --*open_; }

  void Read() {
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(limits_.max_header_bytes));
    parser_->body_limit(limits_.max_body_bytes);
    stream_.expires_after(limits_.read_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->OnRead(ec);
                     });
  }

 private:
  void OnRead(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
        ec == asio::error::operation_aborted ||
        ec == asio::error::connection_reset || ec == asio::error::eof) {
      return Close();
    }
    if (ec == http::error::header_limit) {
      return Answer(http::status::request_header_fields_too_large,
                    "request headers too large\n", false);
    }
    if (ec == http::error::body_limit || ec == http::error::buffer_overflow) {
      return Answer(http::status::payload_too_large,
                    "a scrape has no request body\n", false);
    }
    if (ec) {
      return Answer(http::status::bad_request, "bad request\n", false);
    }
    const auto& request = parser_->get();
    bool keep_alive = request.keep_alive();
    std::string_view target(request.target().data(), request.target().size());
    std::string_view path = target.substr(0, target.find('?'));
    if (path != kPath) {
      return Answer(http::status::not_found,
                    "not found; the metrics are at /metrics\n", keep_alive);
    }
    bool head = request.method() == http::verb::head;
    if (request.method() != http::verb::get && !head) {
      return Answer(http::status::method_not_allowed,
                    "method not allowed; use GET\n", keep_alive);
    }
    MetricsPieces body;
    try {
      body = render_();
    } catch (const std::exception& e) {
      LogWarn("metrics: rendering /metrics failed: {}", e.what());
      return Answer(http::status::internal_server_error,
                    "rendering the metrics failed\n", false);
    }
    Send(http::status::ok, std::move(body), kContentType, keep_alive, head);
  }

  void Answer(http::status status, std::string_view text, bool keep_alive) {
    Send(status, {std::make_shared<const std::string>(text)},
         "text/plain; charset=utf-8", keep_alive, false);
  }

  // The header through Beast, then the body's pieces as they are: a large
  // exposition is sent without being copied into one string.
  void Send(http::status status, MetricsPieces body,
            std::string_view content_type, bool keep_alive, bool head) {
    struct Reply {
      http::response<http::empty_body> header;
      std::optional<http::response_serializer<http::empty_body>> serializer;
      MetricsPieces body;
    };
    auto reply = std::make_shared<Reply>();
    http::response<http::empty_body>& header = reply->header;
    header.result(status);
    header.version(parser_ ? parser_->get().version() : 11);
    header.set(http::field::server, "boxmeter-collector");
    header.set(http::field::content_type,
               beast::string_view(content_type.data(), content_type.size()));
    if (status == http::status::method_not_allowed) {
      header.set(http::field::allow, "GET, HEAD");
    }
    header.keep_alive(keep_alive);
    size_t length = 0;
    for (const auto& piece : body) length += piece->size();
    header.content_length(length);
    if (!head) reply->body = std::move(body);
    reply->serializer.emplace(header);
    stream_.expires_after(limits_.write_timeout);
    http::async_write_header(
        stream_, *reply->serializer,
        [self = shared_from_this(), reply, keep_alive](beast::error_code ec,
                                                       size_t) {
          if (ec) return self->Close();
          std::vector<asio::const_buffer> buffers;
          for (const auto& piece : reply->body) {
            buffers.push_back(asio::buffer(*piece));
          }
          asio::async_write(
              self->stream_, buffers,
              [self, reply, keep_alive](beast::error_code ec, size_t) {
                if (ec) return self->Close();
                if (!keep_alive) return self->Linger();
                self->Read();
              });
        });
  }

  // After the last response: closing a socket with unread input makes the
  // kernel send a reset, which can destroy the response before the client
  // read it (a request refused half-sent, say). So send FIN first and
  // discard what still comes, for at most the read timeout and
  // kMaxLingerBytes, then close.
  void Linger() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(limits_.read_timeout);
    Discard();
  }
  void Discard() {
    stream_.async_read_some(
        asio::buffer(discard_),
        [self = shared_from_this()](beast::error_code ec, size_t n) {
          self->discarded_ += n;
          if (ec || self->discarded_ > kMaxLingerBytes) return self->Close();
          self->Discard();
        });
  }

  void Close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

  static constexpr size_t kMaxLingerBytes = 4 << 20;
  char discard_[4096];
  size_t discarded_ = 0;

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  const MetricsServer::Render& render_;
  const MetricsServer::Limits& limits_;
  std::shared_ptr<std::atomic<size_t>> open_;
};

}  // namespace

class MetricsServer::Impl {
 public:
  Impl(Render render, Limits limits)
      : render_(std::move(render)), limits_(limits), acceptor_(io_) {}

  ~Impl() {
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }

  Status Open(const tcp::endpoint& endpoint, const std::string& listen,
              int* port) {
    boost::system::error_code ec;
    std::string step = "open";
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) {
      step = "set SO_REUSEADDR on";
      acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    }
    if (!ec) {
      step = "bind";
      acceptor_.bind(endpoint, ec);
    }
    if (!ec) {
      step = "listen on";
      acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    }
    if (ec) {
      std::string hint =
          ec == asio::error::address_in_use
              ? "another process listens there; pick another port"
          : ec == boost::system::errc::address_not_available
              ? "that address is not this machine's; use 127.0.0.1 or an "
                "address of one of its interfaces"
          : ec == asio::error::access_denied
              ? "ports below 1024 need privileges; pick a port above 1023"
              : "check metrics.listen";
      return Status::Error("metrics.listen \"" + listen + "\": cannot " + step +
                           " it: " + ec.message() + "; " + hint);
    }
    *port = acceptor_.local_endpoint().port();
    Accept();
    thread_ = std::thread([this] { io_.run(); });
    return Status::Ok();
  }

 private:
  void Accept() {
    acceptor_.async_accept([this](boost::system::error_code ec,
                                  tcp::socket socket) {
      if (ec == asio::error::operation_aborted) return;
      if (!ec) {
        if (open_->load() >= limits_.max_connections) {
          Refuse(std::move(socket));
        } else {
          std::make_shared<Session>(std::move(socket), render_, limits_, open_)
              ->Read();
        }
      }
      Accept();
    });
  }

  // Over the limit: a 503 that fits any fresh socket's send buffer, written
  // without waiting, then close.
  static void Refuse(tcp::socket socket) {
    boost::system::error_code ignored;
    socket.non_blocking(true, ignored);
    socket.write_some(asio::buffer(kBusy.data(), kBusy.size()), ignored);
    socket.shutdown(tcp::socket::shutdown_both, ignored);
    socket.close(ignored);
  }

  const Render render_;
  const Limits limits_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::shared_ptr<std::atomic<size_t>> open_ =
      std::make_shared<std::atomic<size_t>>(0);
  std::thread thread_;
};

MetricsServer::MetricsServer(std::string listen, Render render, Limits limits)
    : listen_(std::move(listen)),
      impl_(std::make_unique<Impl>(std::move(render), limits)) {}

MetricsServer::~MetricsServer() = default;

Status MetricsServer::Start() {
  std::optional<tcp::endpoint> endpoint = ParseEndpoint(listen_);
  if (!endpoint) {
    return Status::Invalid("metrics.listen \"" + listen_ +
                           "\" is not IP:PORT; write e.g. 127.0.0.1:9464 or "
                           "[::1]:9464");
  }
  return impl_->Open(*endpoint, listen_, &port_);
}

}  // namespace boxmeter
