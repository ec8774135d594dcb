#include "notifier.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "log.h"

namespace boxmeter {

void SystemdNotifier::Ready() { sd_notify(0, "READY=1"); }

void SystemdNotifier::Status(const std::string& text) {
  std::string message = "STATUS=" + text;
  sd_notify(0, message.c_str());
}

void SystemdNotifier::Watchdog() { sd_notify(0, "WATCHDOG=1"); }

void SystemdNotifier::Stopping() { sd_notify(0, "STOPPING=1"); }

void SystemdNotifier::Healthy() {
  if (health_file_.empty()) return;
  // Create it if needed, never through a symlink, and set its time to now.
  int fd = open(health_file_.c_str(),
                O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0 || futimens(fd, nullptr) != 0) {
    if (!health_warned_) {
      LogWarn(
          "cannot touch the health file {} ($BOXMETER_HEALTH_FILE): {}; "
          "the container's health check will fail until it can",
          health_file_, std::strerror(errno));
      health_warned_ = true;
    }
  } else {
    health_warned_ = false;
  }
  if (fd >= 0) close(fd);
}

std::optional<std::chrono::microseconds> SystemdNotifier::WatchdogInterval() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return std::nullopt;
  return std::chrono::microseconds(usec / 2);
}

}  // namespace boxmeter
