// Test support: a throwaway pgbouncer in transaction pooling mode in front of
// a PgServer, to show that what goes through it needs no session state.
//
// Listens on a free 127.0.0.1 port (no Unix socket), trusts every client,
// and gives all its clients `server_connections` server connections in
// all, so that two clients' transactions share one server session whenever
// it is 1: any session state one of them left behind would show in the
// other's. Run as the postgres user when the tests run as root (pgbouncer
// refuses root). Killed and removed when destroyed.
#pragma once

#include <memory>
#include <string>

#include "process.h"

namespace boxmeter::testing {

class PgBouncer {
 public:
  // The pgbouncer binary, or "" when it is not installed.
  static std::string Binary();

  // Starts pgbouncer for the server on 127.0.0.1:`server_port` and waits
  // until it accepts connections; throws std::runtime_error with its log.
  PgBouncer(int server_port, int server_connections);
  ~PgBouncer();

  // postgresql://postgres@127.0.0.1:PORT/DB through the pooler.
  std::string Url(const std::string& database) const;
  int port() const { return port_; }
  // What pgbouncer logged so far (for failure messages).
  std::string Log() const;

 private:
  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<Process> process_;
  int port_ = 0;
};

}  // namespace boxmeter::testing
