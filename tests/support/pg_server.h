// Test support: a throwaway PostgreSQL 15 server.
//
// initdb into a temporary directory and pg_ctl start on a free loopback port
// (as the postgres user when running as root, which PostgreSQL requires).
// Stopped and removed when destroyed.
#pragma once

#include <memory>
#include <string>

#include "process.h"

namespace boxmeter::testing {

class PgServer {
 public:
  PgServer();  // initdb + start; throws std::runtime_error with the log tail
  ~PgServer();

  // postgresql://postgres@127.0.0.1:PORT/DB (no password: trust auth).
  std::string Url(const std::string& database = "postgres") const;
  int port() const { return port_; }

  // Creates a fresh database and returns its URL.
  std::string CreateDatabase(const std::string& name);

  // Runs SQL through psql and returns its unaligned, tuples-only output
  // (fields separated by '|'); throws on error.
  std::string Query(const std::string& database, const std::string& sql);

  enum class StopMode { kFast, kImmediate };
  void Stop(StopMode mode = StopMode::kFast);
  void Start();  // after Stop: same data directory, same port
  bool running() const { return running_; }

 private:
  std::unique_ptr<TempDir> dir_;
  int port_ = 0;
  bool running_ = false;
};

}  // namespace boxmeter::testing
