// SqlTest: the fixture of boxmeter_sql_tests. A PgDatabaseTest (a throwaway
// PostgreSQL per test suite, a fresh database per test) whose database is
// migrated the way a collector does it (PgStore::Migrate, as the superuser
// postgres) and whose sessions run in UTC. Statements run through libpqxx as
// any role of that server, so tests can check what each role may and may not
// do.
//
// Meter writes traffic the way a collector does: through PgStore::Commit,
// with cumulative baselines and the node's commit sequence kept like the
// delta engine keeps them.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "counter_name.h"
#include "pg_database_test.h"
#include "pg_server.h"
#include "pg_store.h"

namespace boxmeter::testing {

// Traffic of one counter in one commit, in bytes.
struct Traffic {
  CounterKind kind;
  std::string name;
  int64_t uplink = 0;
  int64_t downlink = 0;
};

class Meter {
 public:
  Meter(const std::string& url, std::string node);

  // Commits `traffic` (added to each counter's cumulative value) as observed
  // at `observed_ms`, so it lands in that UTC hour. Traffic of a counter
  // listed twice is added up. Throws on failure.
  void Commit(const std::vector<Traffic>& traffic, int64_t observed_ms);

  PgStore& store() { return store_; }

 private:
  PgStore store_;
  std::string node_;
  int64_t seq_ = 0;
  InstanceIdentity instance_;  // kept as loaded: one instance throughout
  int64_t lease_token_ = 0;
  std::map<CounterKey, CounterValues> cumulative_;
};

// What a failed statement reported.
struct SqlError {
  std::string sqlstate;  // e.g. "P0002"; empty when the statement succeeded
  std::string message;   // the server's message with its HINT, on one line
};

class SqlTest : public PgDatabaseTest {
 protected:
  SqlTest() : PgDatabaseTest("sql_test") {}
  void SetUp() override;

  // The URL of this test's database for `user` (trust authentication).
  std::string Url(const std::string& user = "postgres") const;

  // Runs `sql` as `user` in one transaction; returns the rows like psql -At:
  // fields joined by '|', rows by '\n', NULL as "". Fails the test on error.
  std::string Query(const std::string& sql,
                    const std::string& user = "postgres");

  // The same on the database at `url` (another database of this server).
  std::string QueryAt(const std::string& url, const std::string& sql);

  // Runs `sql` as `user`, which must fail; what it reported.
  SqlError Error(const std::string& sql, const std::string& user = "postgres");

  // A collector of `node` on this database (created on first use).
  Meter& meter(const std::string& node);

  // A login role in boxmeter_collector, granted `node` (grant_node); named
  // after this test's database, as roles belong to the whole server, and
  // created on first use. Returns its name.
  std::string CollectorLogin(const std::string& node);

  // Milliseconds since the epoch of today's UTC midnight plus `days` days
  // and `hours` hours.
  static int64_t DayMs(int days, int hours = 0);

 private:
  std::map<std::string, std::unique_ptr<Meter>> meters_;
};

}  // namespace boxmeter::testing
