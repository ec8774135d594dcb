// FakeNotifier: records what the collector tells systemd. Called on the
// collector's loop thread only.
#pragma once

#include <string>
#include <vector>

#include "notifier.h"

namespace boxmeter::testing {

class FakeNotifier : public Notifier {
 public:
  void Ready() override { events.push_back("READY=1"); }
  void Status(const std::string& text) override {
    events.push_back("STATUS=" + text);
  }
  void Watchdog() override { events.push_back("WATCHDOG=1"); }
  void Stopping() override { events.push_back("STOPPING=1"); }
  void Healthy() override { events.push_back("HEALTHY"); }
  std::optional<std::chrono::microseconds> WatchdogInterval() override {
    return watchdog;
  }

  std::vector<std::string> events;
  std::optional<std::chrono::microseconds> watchdog;
};

}  // namespace boxmeter::testing
