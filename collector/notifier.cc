#include "notifier.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "log.h"
#include "safe_text.h"

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
  // Create it if needed and set its time to now; never through a symlink,
  // and only a regular file: O_NONBLOCK keeps a FIFO planted at the path
  // from blocking the event loop (an open for writing waits for a reader),
  // and the check below keeps it from being written to at all.
  int fd =
      open(health_file_.c_str(),
           O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC,
           0644);
  int error = fd < 0 ? errno : 0;
  struct stat st;
  if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
    error = EINVAL;  // reported below as "not a regular file"
  } else if (fd >= 0 && futimens(fd, nullptr) != 0) {
    error = errno;
  }
  if (fd >= 0) close(fd);
  if (error == 0) {
    health_warned_ = false;
    return;
  }
  if (!health_warned_) {
    // O_NONBLOCK on a FIFO with no reader fails with ENXIO; O_NOFOLLOW on a
    // link with ELOOP.
    std::string why = error == EINVAL || error == ENXIO
                          ? "it is not a regular file"
                      : error == ELOOP ? "it is a symbolic link"
                                       : std::strerror(error);
    LogWarn(
        "cannot touch the health file {} ($BOXMETER_HEALTH_FILE): {}; "
        "the container's health check will fail until it can (remove what "
        "is at that path, or point the variable at a path in a directory "
        "only the collector can write)",
        QuotedText(health_file_, kMaxShownName), why);
    health_warned_ = true;
  }
}

std::optional<std::chrono::microseconds> SystemdNotifier::WatchdogInterval() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return std::nullopt;
  return std::chrono::microseconds(usec / 2);
}

}  // namespace boxmeter
