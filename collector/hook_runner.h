// HookRunner: runs hooks.on_users_changed when the users of this node change,
// so that sing-box's config follows the database (the standard hook is
// `boxmeter-gen && systemctl reload sing-box`).
//
// The collector feeds it the node's users fingerprint (users_fingerprint() in
// the schema: a digest of everything boxmeter-gen reads for the node), read
// in every commit's transaction and on polls without a commit. A fingerprint
// that differs from the last one requests a run. The first one after start
// requests a run too: the collector cannot know whether the config on disk
// still matches the database after it was down (a user may have expired or
// been disabled meanwhile), and a stale config could keep a user connected
// indefinitely.
//
// A run is `/bin/sh -c COMMAND` exactly as configured: nothing is ever
// interpolated into it, so no user or tag name can reach a shell. It gets
// stdin from /dev/null, its stdout and stderr go to the collector's stderr
// (the log), it runs in its own process group, and BOXMETER_CONFIG is set to
// the collector's config file so that a bare `boxmeter-gen` reads the same
// config. At most one run at a time and at most one start per poll; a run
// longer than hooks.timeout is killed with every process it started, also
// those that left its process group (setsid) or lost their parent: the
// runner makes the process a child subreaper and kills the run's part of
// the process tree found in /proc (process_tree.h). Processes a run leaves
// behind when it succeeds are left alone, and reaped here when they exit;
// so the process must have no other children that something else waits
// for. A run
// that fails (non-zero exit, signal, timeout) is retried on the next poll,
// until one succeeds. A change that arrives while a run is in progress
// requests another run.
//
// It also runs hooks.on_event, once per usage event the collector hands it
// (RunEvent), the same way but with the event's JSON on stdin and
// BOXMETER_EVENT_ID set to its id. Runs of both hooks share the one child
// slot: one hook process at a time, so that a timeout's cleanup never
// touches the other hook's processes and every exit is reaped by the
// thread that waits for it.
//
// Runs on the collector's io_context thread; only the wait for the child's
// exit happens on a helper thread, whose result is posted back to the loop.
#pragma once

#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "config.h"
#include "store.h"

namespace boxmeter {

class HookRunner {
 public:
  // `config_path` is passed to the hook as BOXMETER_CONFIG ("" for none).
  HookRunner(boost::asio::io_context& io, Config::Hooks hooks,
             std::string config_path);
  // Kills a running hook with every process it started, and reaps it.
  ~HookRunner();

  HookRunner(const HookRunner&) = delete;
  HookRunner& operator=(const HookRunner&) = delete;

  // SIGHUP: a new command or timeout. A new non-empty command requests a
  // run, since the old one may not have done what the new one does.
  void Reload(const Config::Hooks& hooks);

  // Whether a command is configured (reading fingerprints is useless
  // otherwise).
  bool enabled() const { return !hooks_.on_users_changed.empty(); }
  // Whether hooks.on_event is configured.
  bool events_enabled() const { return !hooks_.on_event.empty(); }

  // How a run of hooks.on_event ended.
  struct EventRun {
    int64_t id = 0;
    bool ok = false;      // exited 0 within hooks.timeout
    std::string failure;  // else: how it failed ("exited with 3", ...)
    std::chrono::milliseconds took{0};
  };
  using EventDone = std::function<void(EventRun)>;
  // Called on the loop when a run of hooks.on_event ends (not when the
  // runner is destroyed first).
  void OnEventDone(EventDone done) { event_done_ = std::move(done); }
  // Runs hooks.on_event for `event`, its JSON on stdin. Only while nothing
  // runs (!running()) and events_enabled(); otherwise nothing happens.
  void RunEvent(const UsageEvent& event);

  // The node's users fingerprint as just read from the database. A change
  // requests a run; it starts when the collector calls StartNow.
  void UsersFingerprint(const std::string& fingerprint);

  // Call once at each poll: a run (or a retry of a failed one) starts at
  // most once per poll.
  void Tick();

  // Whether a run is requested and may start now: none is running and none
  // was started since the previous Tick. The collector flushes first (a run
  // reloads sing-box, whose counters then start from zero), then calls
  // StartNow.
  bool WantsToStart() const;
  void StartNow();

  // Whether a hook runs (either one).
  bool running() const { return child_ != nullptr; }
  // Whether hooks.on_users_changed runs (runs_started() counts it already).
  bool users_hook_running() const { return child_ && child_->event_id == 0; }
  bool run_requested() const { return requested_; }
  int64_t runs_started() const { return runs_started_; }
  int64_t runs_failed() const { return runs_failed_; }

 private:
  // The running child, shared with the thread that waits for it.
  struct Child {
    pid_t pid = 0;
    std::vector<pid_t> earlier;  // the collector's children before the run
    std::mutex mu;
    bool exited = false;  // waited for (still a zombie until reaped)
    bool timed_out = false;
    std::chrono::steady_clock::time_point started;
    std::thread waiter;
    int64_t event_id =
        0;  // a run of hooks.on_event for it; 0: on_users_changed
  };

  // Starts `command`; stdin is `input` (an open file descriptor, then
  // closed here) or /dev/null when it is -1. False when it could not start.
  bool Start(const std::string& command, int input, int64_t event_id);
  // How a run ended, in words; empty when it succeeded.
  std::string Failure(int wait_status, bool timed_out) const;
  void OnExit(int wait_status);
  // Kills the child's process group and every process it started, unless
  // it already exited.
  void KillChild();

  boost::asio::io_context& io_;
  Config::Hooks hooks_;
  std::string config_path_;
  boost::asio::steady_timer timeout_timer_;

  std::optional<std::string> fingerprint_;  // the last one seen
  bool requested_ = false;
  bool at_start_ = false;  // the requested run is the one at start
  int64_t poll_ = 0;
  int64_t started_in_poll_ = -1;
  int64_t runs_started_ = 0;
  int64_t runs_failed_ = 0;
  int64_t event_runs_started_ = 0;  // of hooks.on_event
  int64_t failures_in_a_row_ = 0;
  std::string last_failure_;

  EventDone event_done_;
  std::unique_ptr<Child> child_;
  // Handlers posted by the waiter check this is still alive.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace boxmeter
