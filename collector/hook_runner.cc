#include "hook_runner.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstring>
#include <string_view>
#include <vector>

#include "log.h"
#include "process_tree.h"

extern char** environ;

namespace boxmeter {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

constexpr std::string_view kHook = "hooks.on_users_changed";
constexpr std::string_view kEventHook = "hooks.on_event";
constexpr std::string_view kConfigVariable = "BOXMETER_CONFIG=";
constexpr std::string_view kEventVariable = "BOXMETER_EVENT_ID=";

std::string_view HookName(int64_t event_id) {
  return event_id == 0 ? kHook : kEventHook;
}

// The collector's environment, with BOXMETER_CONFIG pointing at its config,
// and for a run of hooks.on_event, BOXMETER_EVENT_ID.
std::vector<std::string> HookEnvironment(const std::string& config_path,
                                         int64_t event_id) {
  std::vector<std::string> env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    std::string_view text = *entry;
    if (!text.starts_with(kConfigVariable) &&
        !text.starts_with(kEventVariable)) {
      env.emplace_back(text);
    }
  }
  if (!config_path.empty()) {
    env.push_back(std::string(kConfigVariable) + config_path);
  }
  if (event_id != 0) {
    env.push_back(std::string(kEventVariable) + std::to_string(event_id));
  }
  return env;
}

// A file in memory holding `text`, read from its start: a hook's stdin that
// never blocks the collector, whatever the hook reads. -1 on failure (errno).
int MemoryFile(const std::string& text) {
  int fd = memfd_create("boxmeter-event", MFD_CLOEXEC);
  if (fd < 0) return -1;
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int error = errno;
      close(fd);
      errno = error;
      return -1;
    }
    done += static_cast<size_t>(n);
  }
  if (lseek(fd, 0, SEEK_SET) != 0) {
    int error = errno;
    close(fd);
    errno = error;
    return -1;
  }
  return fd;
}

std::string DescribeStatus(int wait_status) {
  if (WIFEXITED(wait_status)) {
    return fmt::format("exited with {}", WEXITSTATUS(wait_status));
  }
  if (WIFSIGNALED(wait_status)) {
    int signal = WTERMSIG(wait_status);
    return fmt::format("was killed by signal {} ({})", signal,
                       strsignal(signal));
  }
  return fmt::format("ended with wait status {}", wait_status);
}

}  // namespace

HookRunner::HookRunner(boost::asio::io_context& io, Config::Hooks hooks,
                       std::string config_path)
    : io_(io),
      hooks_(std::move(hooks)),
      config_path_(std::move(config_path)),
      timeout_timer_(io) {
  // So that a hook's descendants stay the collector's descendants even
  // when their parent exits, and a timeout can find them (process_tree.h).
  if (!BecomeChildSubreaper()) {
    LogDebug(
        "cannot become a child subreaper ({}); a hook's orphaned "
        "children cannot be ended on timeout",
        std::strerror(errno));
  }
}

HookRunner::~HookRunner() {
  alive_.reset();  // handlers still queued on the loop do nothing now
  timeout_timer_.cancel();
  if (child_) {
    bool killed;
    {
      std::lock_guard lock(child_->mu);
      killed = !child_->exited;
    }
    KillChild();
    if (child_->waiter.joinable()) child_->waiter.join();
    if (killed) LogWarn("{} was still running at exit and was killed", kHook);
  }
}

void HookRunner::Reload(const Config::Hooks& hooks) {
  bool new_command = hooks.on_users_changed != hooks_.on_users_changed;
  hooks_ = hooks;
  if (new_command && enabled()) {
    LogInfo("{} changed; running it once now", kHook);
    requested_ = true;
  }
}

void HookRunner::UsersFingerprint(const std::string& fingerprint) {
  if (fingerprint_ == fingerprint) return;
  if (fingerprint_) {
    LogInfo(
        "the users of this node changed (a user crossed a quota or expiry, "
        "a quota period began, or an operator changed users or inbounds)");
  }
  // The first one after start only requests the run at start, unless a
  // run (of a hook configured by a reload) already happened.
  if (fingerprint_ || runs_started_ == 0) {
    at_start_ = !fingerprint_;
    requested_ = true;
  }
  fingerprint_ = fingerprint;
}

void HookRunner::Tick() {
  ++poll_;
  // Orphans adopted as subreaper are ours to reap.
  if (runs_started_ > 0 || event_runs_started_ > 0) {
    ReapChildrenExcept(child_ ? child_->pid : 0);
  }
}

bool HookRunner::WantsToStart() const {
  return requested_ && enabled() && !child_ && started_in_poll_ != poll_;
}

void HookRunner::StartNow() {
  if (!WantsToStart()) return;
  started_in_poll_ = poll_;
  requested_ = false;
  ++runs_started_;
  if (!Start(hooks_.on_users_changed, -1, 0)) {
    ++runs_failed_;
    requested_ = true;
    return;
  }
  if (at_start_) {
    LogInfo(
        "running {} (once at start: the users may have changed while the "
        "collector was not running)",
        kHook);
    at_start_ = false;
  } else {
    Log(failures_in_a_row_ > 0 ? LogLevel::kDebug : LogLevel::kInfo,
        "running {}", kHook);
  }
}

void HookRunner::RunEvent(const UsageEvent& event) {
  if (child_ || !events_enabled()) return;
  int input = MemoryFile(event.json);
  if (input < 0 || !Start(hooks_.on_event, input, event.id)) {
    std::string failure = input < 0
                              ? fmt::format("could not be given its input ({})",
                                            std::strerror(errno))
                              : "could not be started";
    // Reported like any failed run, from the loop: the caller is in the
    // middle of deciding what to do next.
    boost::asio::post(
        io_, [this, alive = std::weak_ptr(alive_), id = event.id, failure] {
          if (alive.lock() && event_done_) {
            event_done_(EventRun{id, false, failure, milliseconds(0)});
          }
        });
    return;
  }
  ++event_runs_started_;
  LogDebug("running {} for usage event {}", kEventHook, event.id);
}

bool HookRunner::Start(const std::string& command, int input,
                       int64_t event_id) {
  std::string_view name = HookName(event_id);
  // What runs below the collector already (a previous run's background
  // process) is not this run's to kill.
  std::vector<pid_t> earlier = Children(getpid());
  std::vector<std::string> env = HookEnvironment(config_path_, event_id);
  std::vector<char*> envp;
  for (std::string& entry : env) envp.push_back(entry.data());
  envp.push_back(nullptr);
  std::string shell = "/bin/sh", dash_c = "-c", run = command;
  char* argv[] = {shell.data(), dash_c.data(), run.data(), nullptr};

  // The child starts with default signal handling and an empty mask (the
  // collector's handlers and masks are not the hook's business), in its own
  // process group so a timeout kills everything it started.
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (input < 0) {
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null",
                                     O_RDONLY, 0);
  } else {
    posix_spawn_file_actions_adddup2(&actions, input, STDIN_FILENO);
  }
  posix_spawn_file_actions_adddup2(&actions, STDERR_FILENO, STDOUT_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP |
                                      POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&attr, 0);
  sigset_t signals;
  sigemptyset(&signals);
  posix_spawnattr_setsigmask(&attr, &signals);
  for (int signal :
       {SIGPIPE, SIGHUP, SIGINT, SIGTERM, SIGQUIT, SIGCHLD, SIGUSR1, SIGUSR2}) {
    sigaddset(&signals, signal);
  }
  posix_spawnattr_setsigdefault(&attr, &signals);

  pid_t pid = 0;
  int error =
      posix_spawn(&pid, shell.c_str(), &actions, &attr, argv, envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (input >= 0) close(input);
  if (error != 0) {
    LogError("cannot run {} with {}: {}; retrying on a later poll", name, shell,
             std::strerror(error));
    return false;
  }
  LogDebug("{} started (pid {}): {}", name, pid, command);

  child_ = std::make_unique<Child>();
  Child* child = child_.get();
  child->pid = pid;
  child->earlier = std::move(earlier);
  child->started = steady_clock::now();
  child->event_id = event_id;
  // Waits without reaping first, so that the pid (and process group) stays
  // ours until `exited` is set: a timeout can never signal a reused pid.
  child->waiter = std::thread([this, child, alive = std::weak_ptr(alive_)] {
    siginfo_t info{};
    int rc;
    do {
      rc = waitid(P_PID, child->pid, &info, WEXITED | WNOWAIT);
    } while (rc != 0 && errno == EINTR);
    {
      std::lock_guard lock(child->mu);
      child->exited = true;
    }
    int status = 0;
    pid_t reaped;
    do {
      reaped = waitpid(child->pid, &status, 0);
    } while (reaped < 0 && errno == EINTR);
    if (reaped < 0) status = -1;  // someone else reaped it (SIGCHLD ignored)
    boost::asio::post(io_, [this, alive, status] {
      if (alive.lock()) OnExit(status);
    });
  });

  timeout_timer_.expires_after(hooks_.timeout);
  timeout_timer_.async_wait([this](boost::system::error_code ec) {
    if (ec || !child_) return;
    {
      std::lock_guard lock(child_->mu);
      if (child_->exited) return;
      child_->timed_out = true;
    }
    KillChild();
  });
  return true;
}

void HookRunner::KillChild() {
  std::lock_guard lock(child_->mu);
  if (child_->exited) return;
  // The group first (one signal stops most of it from forking on), then
  // every process below the collector that this run started, wherever it
  // went: its own session (setsid), or adopted here when its parent died.
  kill(-child_->pid, SIGKILL);
  KillDescendants(getpid(), child_->earlier);
}

std::string HookRunner::Failure(int wait_status, bool timed_out) const {
  if (timed_out) {
    return fmt::format(
        "ran longer than hooks.timeout ({}ms) and was killed with every "
        "process it started",
        hooks_.timeout.count());
  }
  if (wait_status == -1) {
    return "ended, but its exit status is unknown (is SIGCHLD ignored?)";
  }
  if (WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0) return "";
  return DescribeStatus(wait_status);
}

void HookRunner::OnExit(int wait_status) {
  if (!child_) return;
  timeout_timer_.cancel();
  child_->waiter.join();
  auto took = std::chrono::duration_cast<milliseconds>(steady_clock::now() -
                                                       child_->started);
  bool timed_out = child_->timed_out;
  int64_t event_id = child_->event_id;
  child_.reset();
  ReapChildrenExcept(0);

  std::string failure = Failure(wait_status, timed_out);
  if (event_id != 0) {
    // The collector logs the outcome, with what it does next.
    if (event_done_) {
      event_done_(EventRun{event_id, failure.empty(), failure, took});
    }
    return;
  }
  if (failure.empty()) {
    if (failures_in_a_row_ > 0) {
      LogInfo("{} succeeded in {}ms, after {} failed run(s)", kHook,
              took.count(), failures_in_a_row_);
    } else {
      LogInfo("{} succeeded in {}ms", kHook, took.count());
    }
    failures_in_a_row_ = 0;
    last_failure_.clear();
    return;
  }

  ++runs_failed_;
  ++failures_in_a_row_;
  requested_ = true;  // retried on the next poll
  // A hook that keeps failing the same way is logged once as a warning,
  // then at debug level, until it succeeds or fails differently.
  LogLevel level =
      failure == last_failure_ ? LogLevel::kDebug : LogLevel::kWarn;
  Log(level, "{} {} after {}ms; retrying on every poll until it succeeds{}",
      kHook, failure, took.count(),
      level == LogLevel::kWarn ? " (repeats of this are logged at debug)" : "");
  last_failure_ = failure;
}

}  // namespace boxmeter
