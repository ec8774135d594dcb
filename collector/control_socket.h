// ControlSocket: the collector's local control socket (control.socket), so
// that whoever reloads sing-box can first have the running collector poll and
// commit (`boxmeter-collector --flush`). A reload starts sing-box's counters
// from zero; flushed right before it, it loses only the milliseconds between
// that poll and the reload.
//
// One request per connection, one line each way:
//   client:  "flush NODE\n"
//   server:  "ok NODE\n"             the flush is committed
//            "error MESSAGE\n"       it is not; MESSAGE says why
// The node name guards against a socket path shared by two configs. Who may
// connect is decided by the file's mode (0660) and its directory's owner and
// group; the socket is created with the process's group.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "status.h"

namespace boxmeter {

class ControlServer {
 public:
  // Called on the loop for every flush request; `done` exactly once.
  using FlushHandler = std::function<void(std::function<void(Status)> done)>;

  ControlServer(boost::asio::io_context& io, std::string path, std::string node,
                FlushHandler flush);
  // Closes the socket and removes its file.
  ~ControlServer();

  // Binds and listens. A stale socket file left by a collector that died is
  // replaced; a live one (another collector answers on it) or a file that is
  // not a socket is an error naming the path and what to do.
  Status Open();

 private:
  class Connection;
  void Accept();

  boost::asio::io_context& io_;
  std::string path_;
  std::string node_;
  FlushHandler flush_;
  boost::asio::local::stream_protocol::acceptor acceptor_;
  bool opened_ = false;
  // Handlers of connections still in flight check this is still alive.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// `boxmeter-collector --flush`: asks the collector listening at `path` to
// flush `node`, waiting at most `timeout`. Ok once the flush is committed;
// otherwise kUnavailable with what failed and what to do.
Status RequestFlush(const std::string& path, const std::string& node,
                    std::chrono::milliseconds timeout);

}  // namespace boxmeter
