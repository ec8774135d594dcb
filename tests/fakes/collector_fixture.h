// CollectorFixture: the GoogleTest fixture of tests that run a Collector
// against the fakes (FakeStatsSource, FakeStore, FakeNotifier) on the test's
// own io_context, one thread, no servers and no clock of its own: the test
// turns the loop with RunUntil until what it awaits has happened.
//
// The config needs nothing real: the fake source answers for the address,
// and the database URL is only ever logged. A derived fixture adjusts
// config_ and then calls Create(), in its constructor or in each test.
#pragma once

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <utility>

#include "collector.h"
#include "config.h"
#include "fake_notifier.h"
#include "fake_stats_source.h"
#include "fake_store.h"

namespace boxmeter::testing {

class CollectorFixture : public ::testing::Test {
 protected:
  // config_: node "test-node", source 127.0.0.1:1 with a 1 s timeout,
  // `database_url`, and polls every `poll_interval`. No collector yet.
  explicit CollectorFixture(
      std::chrono::milliseconds poll_interval,
      std::string database_url = "postgresql://boxmeter@db/boxmeter") {
    config_.node = "test-node";
    config_.source.address = "127.0.0.1:1";
    config_.database.url = std::move(database_url);
    config_.poll.interval = poll_interval;
    config_.source.timeout = std::chrono::seconds(1);
  }

  // (Re)creates collector_ from config_ and the fakes; it is not started.
  void Create() {
    collector_ =
        std::make_unique<Collector>(io_, config_, source_, store_, notifier_);
  }

  // Runs the loop until `done` holds; false after 10 s or if the loop
  // stopped first.
  template <typename Done>
  bool RunUntil(Done done) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!done()) {
      if (io_.stopped() || std::chrono::steady_clock::now() > deadline) {
        return done();
      }
      io_.run_for(std::chrono::milliseconds(5));
    }
    return true;
  }

  Config config_;
  FakeStatsSource source_;
  FakeStore store_;
  FakeNotifier notifier_;
  boost::asio::io_context io_;
  std::unique_ptr<Collector> collector_;  // destroyed first: it uses the rest
};

}  // namespace boxmeter::testing
