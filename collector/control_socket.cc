#include "control_socket.h"

#include <fmt/core.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstring>

#include "log.h"

namespace boxmeter {
namespace {

using stream = boost::asio::local::stream_protocol;

// A request line is "flush " and a node name; anything longer is not ours.
constexpr size_t kMaxLine = 1024;
// A client that connects must say what it wants within this.
constexpr std::chrono::seconds kRequestTimeout{5};

// A blocking connect to a unix socket at `path`: the fd, or -1 with errno.
int ConnectUnix(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof(address.sun_path)) {
    errno = ENAMETOOLONG;
    return -1;
  }
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) !=
      0) {
    int error = errno;
    close(fd);
    errno = error;
    return -1;
  }
  return fd;
}

}  // namespace

// One client: reads its line, runs the flush, writes the answer, closes.
class ControlServer::Connection
    : public std::enable_shared_from_this<Connection> {
 public:
  Connection(ControlServer& server, stream::socket socket)
      : server_(server),
        alive_(server.alive_),
        socket_(std::move(socket)),
        timer_(socket_.get_executor()),
        buffer_(kMaxLine) {}

  void Start() {
    timer_.expires_after(kRequestTimeout);
    timer_.async_wait(
        [self = shared_from_this()](boost::system::error_code ec) {
          if (!ec) self->socket_.close();  // too slow: drop it
        });
    boost::asio::async_read_until(
        socket_, buffer_, '\n',
        [self = shared_from_this()](boost::system::error_code ec, size_t) {
          self->timer_.cancel();
          if (!self->alive_.lock()) return;
          if (ec) return;  // closed, too long or too slow: nothing to answer
          std::istream in(&self->buffer_);
          std::string line;
          std::getline(in, line);
          self->Handle(line);
        });
  }

 private:
  void Handle(const std::string& line) {
    constexpr std::string_view kFlush = "flush ";
    if (!line.starts_with(kFlush)) {
      return Answer(Status::Invalid(
          fmt::format("unknown request {:?}; this socket takes \"flush NODE\"",
                      line.substr(0, 40))));
    }
    std::string node = line.substr(kFlush.size());
    if (node != server_.node_) {
      return Answer(Status::Invalid(fmt::format(
          "this collector meters node {:?}, not {:?}: two configs share "
          "control.socket {}; give each collector its own",
          server_.node_, node, server_.path_)));
    }
    LogInfo("flush requested on {}", server_.path_);
    server_.flush_([self = shared_from_this()](Status status) {
      if (self->alive_.lock()) self->Answer(status);
    });
  }

  void Answer(const Status& status) {
    reply_ = status.ok() ? "ok " + server_.node_ + "\n"
                         : "error " + status.message() + "\n";
    for (char& c : reply_) {
      if (c == '\n' && &c != &reply_.back()) c = ' ';
    }
    boost::asio::async_write(
        socket_, boost::asio::buffer(reply_),
        [self = shared_from_this()](boost::system::error_code, size_t) {
          boost::system::error_code ignored;
          self->socket_.close(ignored);
        });
  }

  ControlServer& server_;
  std::weak_ptr<bool> alive_;
  stream::socket socket_;
  boost::asio::steady_timer timer_;
  boost::asio::streambuf buffer_;
  std::string reply_;
};

ControlServer::ControlServer(boost::asio::io_context& io, std::string path,
                             std::string node, FlushHandler flush)
    : io_(io),
      path_(std::move(path)),
      node_(std::move(node)),
      flush_(std::move(flush)),
      acceptor_(io) {}

ControlServer::~ControlServer() {
  alive_.reset();
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  if (opened_) unlink(path_.c_str());
}

Status ControlServer::Open() {
  auto failed = [this](const std::string& why, const std::string& what_to_do) {
    return Status::Error(
        fmt::format("control.socket {}: {}; {}", path_, why, what_to_do));
  };
  struct stat st {};
  if (lstat(path_.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return failed("exists and is not a socket",
                    "remove it or set control.socket to another path");
    }
    int fd = ConnectUnix(path_);
    if (fd >= 0) {
      close(fd);
      return failed("another running collector listens on it",
                    "give each collector its own control.socket");
    }
    unlink(path_.c_str());  // left by a collector that died
  }
  boost::system::error_code ec;
  acceptor_.open(stream(), ec);
  if (!ec) acceptor_.bind(stream::endpoint(path_), ec);
  if (ec) {
    return failed(ec.message(),
                  "create its directory, writable by this user (systemd: "
                  "RuntimeDirectory=boxmeter), or set control.socket");
  }
  opened_ = true;
  chmod(path_.c_str(), 0660);
  acceptor_.listen(16, ec);
  if (ec) return failed(ec.message(), "check the path and try again");
  Accept();
  return Status::Ok();
}

void ControlServer::Accept() {
  acceptor_.async_accept(
      [this, alive = std::weak_ptr(alive_)](boost::system::error_code ec,
                                            stream::socket socket) {
        if (!alive.lock()) return;
        if (ec == boost::asio::error::operation_aborted) return;
        if (!ec) {
          std::make_shared<Connection>(*this, std::move(socket))->Start();
        }
        Accept();
      });
}

Status RequestFlush(const std::string& path, const std::string& node,
                    std::chrono::milliseconds timeout) {
  auto unavailable = [&](const std::string& why) {
    return Status::Unavailable(
        fmt::format("flush of node {:?} through {}: {}", node, path, why));
  };
  int fd = ConnectUnix(path);
  if (fd < 0) {
    return unavailable(fmt::format(
        "cannot connect ({}); is boxmeter-collector running with this config, "
        "and may this user open its control.socket?",
        std::strerror(errno)));
  }
  std::string request = "flush " + node + "\n";
  if (write(fd, request.data(), request.size()) !=
      static_cast<ssize_t>(request.size())) {
    int error = errno;
    close(fd);
    return unavailable(
        fmt::format("cannot send the request ({})", std::strerror(error)));
  }
  std::string reply;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  char buffer[512];
  while (reply.find('\n') == std::string::npos && reply.size() < kMaxLine) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    int ready =
        left.count() > 0 ? poll(&p, 1, static_cast<int>(left.count())) : 0;
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) {
      close(fd);
      return unavailable(fmt::format(
          "no answer within {}ms; the collector may still commit it, see its "
          "log",
          timeout.count()));
    }
    ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    reply.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  if (size_t end = reply.find('\n'); end != std::string::npos) {
    reply.resize(end);
  }
  if (reply == "ok " + node) return Status::Ok();
  if (reply.starts_with("error ")) return unavailable(reply.substr(6));
  return unavailable(
      fmt::format("unexpected answer {:?}", reply.substr(0, 80)));
}

}  // namespace boxmeter
