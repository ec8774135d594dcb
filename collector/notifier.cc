#include "notifier.h"

#include <systemd/sd-daemon.h>

namespace boxmeter {

void SystemdNotifier::Ready() { sd_notify(0, "READY=1"); }

void SystemdNotifier::Status(const std::string& text) {
  std::string message = "STATUS=" + text;
  sd_notify(0, message.c_str());
}

void SystemdNotifier::Watchdog() { sd_notify(0, "WATCHDOG=1"); }

void SystemdNotifier::Stopping() { sd_notify(0, "STOPPING=1"); }

std::optional<std::chrono::microseconds> SystemdNotifier::WatchdogInterval() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return std::nullopt;
  return std::chrono::microseconds(usec / 2);
}

}  // namespace boxmeter
