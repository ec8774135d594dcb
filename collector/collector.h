// Collector: the poll loop. Joins a StatsSource, the DeltaEngine and a Store
// on one asio io_context:
//
//   timer ──► Fetch (gRPC, with a deadline) ──► MakeSnapshot ──► Observe
//                                                   │
//             database worker thread ◄── Commit ◄───┘ (if anything changed)
//
// Polls run on a drift-free timer. The fetch completes on a gRPC thread and
// is posted back to the loop. Store calls run on one worker thread so a slow
// database never delays a poll; polls that land while a commit is in flight
// keep adding to pending, and the next commit takes it all.
//
// Nothing here is fatal: an unreachable stats API or database is logged once
// when it goes away and once when it is back, and retried (the database with
// a capped backoff) while pending traffic accumulates.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "config.h"
#include "delta_engine.h"
#include "hook_runner.h"
#include "notifier.h"
#include "stats_source.h"
#include "store.h"

namespace boxmeter {

// Whether a peer is up, so that a failure is logged once when it starts and
// a recovery once when it ends, instead of a line every poll.
class PeerHealth {
 public:
  explicit PeerHealth(std::string what) : what_(std::move(what)) {}
  void Up(const std::string& detail);
  void Down(const std::string& error);
  bool down() const { return state_ == State::kDown; }

 private:
  enum class State { kUnknown, kUp, kDown };
  std::string what_;
  State state_ = State::kUnknown;
};

class Collector {
 public:
  // The source, store and notifier must outlive the collector.
  Collector(boost::asio::io_context& io, const Config& config,
            StatsSource& source, Store& store, Notifier& notifier);
  ~Collector();

  // Starts the daemon: prepares the database (retrying until it answers),
  // then polls every poll.interval until Stop.
  void Start();

  // SIGTERM/SIGINT: one last poll and commit, each bounded by
  // source.timeout, then the io_context is stopped.
  void Stop();

  // SIGHUP: applies what can change while running (poll interval, timeouts,
  // log level, hooks) and logs what needs a restart.
  void Reload(const Config& config);

  // --once: prepares the database, polls and commits once, then stops the
  // io_context. `succeeded()` then tells whether everything worked.
  void StartOnce();
  bool succeeded() const { return once_ok_; }

 private:
  enum class Mode { kDaemon, kOnce, kStopping, kStopped };

  void PrepareDatabase();
  void OnDatabasePrepared(Status status, NodeState state);
  void SchedulePoll();
  void Poll();
  void OnFetched(Status status, StatsReply reply);
  void MaybeCommit();
  void OnCommitted(CommitResult result, size_t rows);
  void ResolveUnknownCommit();
  // hooks.on_users_changed: on a poll without a commit, reads the users
  // fingerprint so an operator's change is noticed without traffic.
  void CheckUsers();
  // Retention: deletes hourly history older than history.retention, at most
  // once an hour, when the database thread is free. True when it started.
  bool MaybePrune();
  void OnResolved(Status status, int64_t seq);
  void AfterDatabaseFailure(const Status& status);
  void ScheduleWatchdog();
  void UpdateStatus();
  void ArmStopDeadline();
  // In kOnce and kStopping: finishes once the last fetch is done and nothing
  // is running on the database thread.
  void MaybeFinish();
  void Finish(bool ok);

  // Runs `work` on the database thread and `then` with its result on the
  // loop.
  template <typename Result>
  void OnDatabase(std::function<Result()> work,
                  std::function<void(Result)> then);

  boost::asio::io_context& io_;
  Config config_;
  StatsSource& source_;
  Store& store_;
  Notifier& notifier_;
  DeltaEngine engine_;
  HookRunner hooks_;
  bool users_checked_ = false;  // the fingerprint was read in this poll

  Mode mode_ = Mode::kDaemon;
  boost::asio::steady_timer poll_timer_;
  boost::asio::steady_timer retry_timer_;
  boost::asio::steady_timer watchdog_timer_;
  boost::asio::steady_timer stop_timer_;
  std::chrono::steady_clock::time_point next_poll_;
  std::chrono::steady_clock::time_point next_prune_{};  // {}: not yet set

  // The database worker: its own io_context on one thread.
  boost::asio::io_context db_io_;
  std::unique_ptr<
      boost::asio::executor_work_guard<boost::asio::io_context::executor_type>>
      db_work_;
  std::thread db_thread_;

  bool fetch_in_flight_ = false;
  bool database_busy_ = false;  // a Store call is running
  bool commit_unresolved_ = false;
  bool database_ready_ = false;  // migrated and node loaded
  std::chrono::milliseconds backoff_{0};
  std::chrono::steady_clock::time_point retry_after_{};
  bool ready_sent_ = false;
  bool once_ok_ = false;
  bool final_fetch_done_ = false;  // kOnce/kStopping: the last fetch is back
  bool final_commit_tried_ = false;
  bool last_fetch_ok_ = false;
  bool warned_malformed_ = false;

  PeerHealth source_health_;
  PeerHealth database_health_;
  std::string last_poll_result_ = "starting";
};

}  // namespace boxmeter
