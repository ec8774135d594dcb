// PgDatabaseTest: the GoogleTest fixture of tests against a throwaway
// PostgreSQL. One PgServer per test suite, since initdb and start take
// seconds; a fresh, empty database per test, so tests share no rows.
//
// A server that fails to start fails every test of the suite with its error
// (not the whole binary). A server that a test stopped and did not start
// again (a failed assertion in between) is started before the next test.
//
// Derived fixtures name their databases by passing a prefix. One that
// overrides SetUp calls PgDatabaseTest::SetUp first and returns if
// HasFatalFailure(). Header-only, so that boxmeter_test_support stays free of
// GoogleTest.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <exception>
#include <string>
#include <utility>

#include "pg_server.h"
#include "pg_store.h"

namespace boxmeter::testing {

// How long the leases that tests take for granted last: longer than any
// test, so that only the tests of the lease itself see one lapse.
inline constexpr std::chrono::milliseconds kTestLeaseTtl =
    std::chrono::hours(1);

// The token of a node's first lease: what TakeLease gives the first store to
// take a fresh node's lease (CommitBatch::lease_token).
inline constexpr int64_t kFirstLeaseToken = 1;

// Takes `store`'s writer lease for kTestLeaseTtl into `*token`; failing, or
// finding it held by another store, fails the test.
inline void TakeLease(Store& store, int64_t* token) {
  LeaseState lease;
  Status taken = store.TakeLease(kTestLeaseTtl, &lease);
  ASSERT_TRUE(taken.ok()) << taken.message();
  ASSERT_TRUE(lease.held) << "held by " << lease.holder;
  *token = lease.token;
}

// Migrates `store`, takes its node's writer lease (into `*lease_token` when
// given) and loads the node into `state`, as the collector's start does; any
// step failing fails the test (callers check HasFatalFailure()).
inline void MigrateAndLoad(PgStore& store, NodeState* state,
                           int64_t* lease_token = nullptr) {
  Status migrated = store.Migrate();
  ASSERT_TRUE(migrated.ok()) << migrated.message();
  int64_t token = 0;
  TakeLease(store, &token);
  if (::testing::Test::HasFatalFailure()) return;
  if (lease_token) *lease_token = token;
  Status loaded = store.LoadNode(state);
  ASSERT_TRUE(loaded.ok()) << loaded.message();
}

class PgDatabaseTest : public ::testing::Test {
 protected:
  // Databases are named `database_prefix` + "_" + a number unique within the
  // test binary.
  explicit PgDatabaseTest(std::string database_prefix)
      : database_prefix_(std::move(database_prefix)) {}

  static void SetUpTestSuite() {
    try {
      server_ = new PgServer();
    } catch (const std::exception& e) {
      server_error_ = new std::string(e.what());
    }
  }

  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    delete server_error_;
    server_error_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(server_, nullptr) << *server_error_;
    if (!server_->running()) server_->Start();
    static int databases = 0;
    database_ = database_prefix_ + "_" + std::to_string(++databases);
    url_ = server_->CreateDatabase(database_);
  }

  static PgServer& server() { return *server_; }
  // This test's database, and its URL for the superuser postgres.
  const std::string& database() const { return database_; }
  const std::string& url() const { return url_; }

  // Awaits `count` sessions of this test's database waiting for a lock (a
  // row's or a table's), for up to `patience`: the sign that a statement
  // started on another session has met the lock a test holds.
  bool AwaitLockWaiters(int count, std::chrono::milliseconds patience) {
    return WaitUntil(
        [&] {
          return server_->Query(database_,
                                "SELECT count(*) FROM pg_stat_activity WHERE "
                                "datname = current_database() AND "
                                "wait_event_type = 'Lock'") ==
                 std::to_string(count);
        },
        patience, std::chrono::milliseconds(10));
  }

 private:
  inline static PgServer* server_ = nullptr;
  inline static std::string* server_error_ = nullptr;
  std::string database_prefix_;
  std::string database_;
  std::string url_;
};

}  // namespace boxmeter::testing
