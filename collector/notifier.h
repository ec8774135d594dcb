// Notifier: tells the supervisor how the collector is doing: systemd through
// sd_notify (every call a no-op when NOTIFY_SOCKET is not set), and a
// container's health check through a file touched after every good poll.
// The collector runs the same under systemd, in a container and in a
// terminal.
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
  // The last poll read the stats API and the database answered.
  virtual void Healthy() = 0;
  // How often to call Watchdog (half of WATCHDOG_USEC), if systemd asks.
  virtual std::optional<std::chrono::microseconds> WatchdogInterval() = 0;
};

class SystemdNotifier : public Notifier {
 public:
  // `health_file`: touched by Healthy() ($BOXMETER_HEALTH_FILE); empty: none.
  explicit SystemdNotifier(std::string health_file = "")
      : health_file_(std::move(health_file)) {}
  void Ready() override;
  void Status(const std::string& text) override;
  void Watchdog() override;
  void Stopping() override;
  void Healthy() override;
  std::optional<std::chrono::microseconds> WatchdogInterval() override;

 private:
  std::string health_file_;
  bool health_warned_ = false;
};

}  // namespace boxmeter
