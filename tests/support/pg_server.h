// Test support: a throwaway PostgreSQL 15 server.
//
// A data directory in a temporary directory, then pg_ctl start on a free
// loopback port (as the postgres user when running as root, which PostgreSQL
// requires). Stopped and removed when destroyed.
//
// The data directory is a copy of a template made by WriteTemplate when one
// is given (a copy takes a fraction of initdb's time; CTest's fixture
// pg_template, tests/CMakeLists.txt, makes one per test run and names it in
// $BOXMETER_PG_TEMPLATE), else initdb's. Either way each server has its own
// directory, port and socket: nothing is shared once it is running.
#pragma once

#include <memory>
#include <string>

#include "process.h"

namespace boxmeter::testing {

class PgServer {
 public:
  // The environment variable PgServer() reads the template's path from.
  static constexpr const char* kTemplateVariable = "BOXMETER_PG_TEMPLATE";

  // PgServer(getenv(kTemplateVariable), or "" if unset).
  PgServer();
  // A copy of `template_dir` (a WriteTemplate directory) + start; initdb
  // instead when `template_dir` is empty, or is not such a directory (then
  // says so on stderr). Throws std::runtime_error with the log tail.
  explicit PgServer(const std::string& template_dir);
  ~PgServer();

  // initdb's data directory, written to `path` (replacing whatever is there)
  // for PgServers to copy: owned by the user that runs the servers, never
  // started. Written beside `path` and renamed, so that `path` is either the
  // whole template or absent. Throws std::runtime_error naming the step.
  static void WriteTemplate(const std::string& path);

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
