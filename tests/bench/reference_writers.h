// The writers boxmeter's commit is measured against, each on its own
// database of the same server with boxmeter's schema, fed the same batches:
//
//   NaiveWriter     one statement per counter inside one transaction, the
//                   way popular panels write traffic (an UPDATE of the
//                   totals; here it also upserts the hourly row in the same
//                   statement, so it does the same work as boxmeter's commit
//                   with one round trip per counter). Either as parameterized
//                   statements parsed and planned each time (what an ORM such
//                   as GORM sends by default) or as one prepared statement.
//   SetBasedWriter  the textbook set-based path of docs/design.md: COPY into a
//                   temporary table, one UPDATE ... FROM for known counters,
//                   one INSERT for new ones, one hourly upsert.
//   CopyFloor       PostgreSQL's floor: plain COPY of the same rows into an
//                   empty UNLOGGED table with no index, nothing else.
//   DeltaLogWriter  the moonshot, as a prototype: a commit only appends the
//                   rows to a WAL-logged table without indexes (guarded by
//                   the commit sequence, as PgStore's); a fold later moves
//                   the log into the totals and the hourly history in one
//                   transaction. Measured to see what the commit and the fold
//                   each cost; see BENCHMARKS.md for why it is not adopted.
//
// Benchmark code: errors throw (pqxx exceptions or std::runtime_error).
#pragma once

#include <cstddef>
#include <memory>
#include <pqxx/connection>
#include <string>

#include "delta_engine.h"

namespace boxmeter::testing {

// Applies boxmeter's migrations to `url` and registers `node`, so a
// reference writer starts from the same schema as PgStore.
void PrepareReferenceDatabase(const std::string& url, const std::string& node);

class SetBasedWriter {
 public:
  SetBasedWriter(const std::string& url, std::string node);
  ~SetBasedWriter();
  // One transaction; returns its wall time in seconds.
  double Commit(const CommitBatch& batch);
  int backend_pid() const { return connection_->backendpid(); }

 private:
  std::unique_ptr<pqxx::connection> connection_;
  std::string node_;
};

class NaiveWriter {
 public:
  NaiveWriter(const std::string& url, std::string node, bool prepared);
  ~NaiveWriter();
  // Writes the first `limit` rows of `batch` one statement each, in one
  // transaction; returns its wall time in seconds. The rows must exist (a
  // panel updates users it already has).
  double Commit(const CommitBatch& batch, size_t limit);
  int backend_pid() const { return connection_->backendpid(); }

 private:
  std::unique_ptr<pqxx::connection> connection_;
  std::string node_;
  bool prepared_;
};

class DeltaLogWriter {
 public:
  // Also creates the log table.
  DeltaLogWriter(const std::string& url, std::string node);
  ~DeltaLogWriter();
  // Seconds: one transaction that bumps the commit sequence and COPYs the
  // rows into the log.
  double Commit(const CommitBatch& batch);
  // Seconds: one transaction that adds everything in the log to counters and
  // counter_hourly and empties the log.
  double Fold();
  int backend_pid() const { return connection_->backendpid(); }

 private:
  std::unique_ptr<pqxx::connection> connection_;
  std::string node_;
  int64_t seq_ = 0;
};

class CopyFloor {
 public:
  explicit CopyFloor(const std::string& url);
  ~CopyFloor();
  // Empties the table (not timed), then COPYs the rows in one transaction;
  // returns the COPY transaction's wall time in seconds.
  double Copy(const CommitBatch& batch);
  int backend_pid() const { return connection_->backendpid(); }

 private:
  std::unique_ptr<pqxx::connection> connection_;
};

}  // namespace boxmeter::testing
