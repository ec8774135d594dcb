// Notifier: tells systemd how the collector is doing (sd_notify). Every call
// is a no-op when NOTIFY_SOCKET is not set, so the collector runs the same
// under systemd, in a container and in a terminal.
#pragma once

#include <chrono>
#include <optional>
#include <string>

namespace boxmeter {

class Notifier {
 public:
  virtual ~Notifier() = default;
  virtual void Ready() = 0;
  virtual void Status(const std::string& text) = 0;
  virtual void Watchdog() = 0;
  virtual void Stopping() = 0;
  // How often to call Watchdog (half of WATCHDOG_USEC), if systemd asks.
  virtual std::optional<std::chrono::microseconds> WatchdogInterval() = 0;
};

class SystemdNotifier : public Notifier {
 public:
  void Ready() override;
  void Status(const std::string& text) override;
  void Watchdog() override;
  void Stopping() override;
  std::optional<std::chrono::microseconds> WatchdogInterval() override;
};

}  // namespace boxmeter
