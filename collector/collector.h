// Collector: the poll loop. Joins a StatsSource, the DeltaEngine and a Store
// on one asio io_context:
//
//   timer ──► Fetch (gRPC, with a deadline) ──► MakeSnapshot ──► Observe
//                                                   │
//             database worker thread ◄── Commit ◄───┘ (if anything changed)
//
// Its life is one state machine. Four enums hold its state, and one
// function, Advance(), is the only place that starts work:
//
//   phase_     kLoading ──► kRunning ──► kStopped
//                  ▲  │        │  ▲
//                  │  ▼        ▼  │        (lease taken by another writer,
//               kStandby ◄─────┘  │         or found taken at load)
//                  └──────────────┘        (the lease lapsed: take it, load)
//   db_        what the database thread is doing: nothing, loading,
//              committing, resolving an unknown commit, renewing the lease,
//              pruning, reading the users fingerprint, reading usage events
//              to deliver, marking one delivered, releasing the lease
//   ending_    none, --once, or stopping (SIGTERM/SIGINT)
//   commit_    clean, or a commit whose outcome is unknown until resolved
//
// plus the fetch in flight (by number), the flushes waiting for a commit, and
// whether a --once run already failed (it then finishes once nothing is in
// flight).
// Event handlers (a fetch came back, a database call returned, a timer
// fired, a signal, a flush request) only record what happened and call
// Advance(), which looks at the whole state and starts what is due. So no
// completion can be forgotten: whatever finishes, the next step is decided
// in one place from the state as it is.
//
// Guarantees (see docs/design.md for why they make every byte count once):
// - One writer per node: nothing is committed without the node's lease
//   (Store::TakeLease). A collector that finds the lease held by another says
//   who holds it and commits nothing until it lapses, polling meanwhile
//   (what it sees then is reconciled with the node's state when it takes
//   over); one that loses it stops writing, drops what it had not committed,
//   and never adopts the other's state without loading it afresh after a
//   takeover.
// - A flush (Flush(), the control socket, and before every hook run) is
//   answered only once a fetch that started after the request is committed.
// - A stop waits for a commit in flight, fetches once more, and commits until
//   nothing is pending or the stop budget is spent; ExitCode() then says
//   whether anything was left uncommitted.
//
// - Usage events (hooks.on_event): while this collector is its node's
//   writer, it reads undelivered events at most once a poll, after the
//   poll's commit, and runs the hook for each in id order, one at a time
//   and never in the way of polls and commits (event_delivery.h); each one
//   the hook took (exit 0) is marked delivered before the next starts.
//
// Nothing at run time is fatal: an unreachable stats API or database is
// logged once when it goes away and once when it is back, and retried (the
// database with a capped backoff) while pending traffic accumulates.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "collector_metrics.h"
#include "config.h"
#include "delta_engine.h"
#include "event_delivery.h"
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
  bool up() const { return state_ == State::kUp; }

 private:
  enum class State { kUnknown, kUp, kDown };
  std::string what_;
  State state_ = State::kUnknown;
};

class Collector {
 public:
  // The source, store, notifier and metrics must outlive the collector.
  // `metrics` (null: none) is kept up to date from the loop: the node's
  // committed totals as loaded and as each applied commit moves them, and
  // the collector's health.
  Collector(boost::asio::io_context& io, const Config& config,
            StatsSource& source, Store& store, Notifier& notifier,
            CollectorMetrics* metrics = nullptr);
  ~Collector();

  // Starts the daemon: prepares the database (retrying until it answers),
  // takes the node's lease, then polls every poll.interval until Stop.
  void Start();

  // SIGTERM/SIGINT: waits for a commit in flight, polls once more and
  // commits until nothing is pending, each step bounded by the stop budget
  // (3 x source.timeout + 10 s), then stops the io_context.
  void Stop();

  // SIGHUP: applies what can change while running (poll interval, timeouts,
  // log level, hooks) and logs what needs a restart.
  void Reload(const Config& config);

  // --once: prepares the database, polls and commits once, then stops the
  // io_context.
  void StartOnce();

  // Polls now and commits. `done` is called on the loop exactly once: Ok
  // once a fetch that started after this call is committed, else an error
  // saying what failed (the stats API, the database, no lease, stopping).
  using FlushDone = std::function<void(Status)>;
  void Flush(FlushDone done);

  // After the io_context stopped: the process's exit status. 0: everything
  // counted was committed (--once: and the poll worked); EX_UNAVAILABLE
  // (--once): the stats API or the database failed; EX_TEMPFAIL (stop):
  // bytes were left uncommitted (logged).
  int ExitCode() const { return exit_code_; }
  bool succeeded() const { return exit_code_ == 0; }

  // How long a stop may take with `config` (3 x source.timeout + 10 s): a
  // fetch is bounded by its deadline, a database call by libpq's connect
  // timeout and the server. `--flush` waits as long, plus a lease.
  static std::chrono::milliseconds StopBudget(const Config& config);

 private:
  enum class Phase { kLoading, kStandby, kRunning, kStopped };
  enum class DbWork {
    kIdle,
    kLoading,
    kCommitting,
    kResolving,
    kRenewing,
    kPruning,
    kCheckingUsers,
    kReadingEvents,
    kMarkingEvent,
    kReleasing,
  };
  enum class Ending { kNone, kOnce, kStop };
  enum class CommitState { kClean, kUnknown };

  // A flush waiting for its commit: satisfied once a fetch numbered above
  // `after_fetch` succeeded (then `fetch` is its number) and is committed.
  struct Waiter {
    int64_t after_fetch = 0;
    int64_t fetch = 0;  // 0: no successful fetch for it yet
    // A failed fetch is tried again for it only if the retry ends by then.
    std::chrono::steady_clock::time_point deadline;
    FlushDone done;
  };

  // The one place that starts work; called after every event.
  void Advance();
  void StartFetch();
  void StartDatabaseWork();
  void StartLoad();
  void StartCommit();
  void StartResolve();
  void StartRenew();
  bool StartPrune();
  bool StartCheckUsers();
  bool StartReadEvents();
  bool StartMarkEvent();
  void StartRelease();
  // Starts a requested hook run once a flush before it is committed.
  void AdvanceHooks();
  // Runs hooks.on_event for the next event read, if nothing else runs.
  void AdvanceEvents();
  void AnswerWaiters();
  void MaybeFinish();

  // Event handlers: record, then Advance().
  void OnTick();
  void OnFetched(int64_t fetch, Status status, StatsReply reply);
  void OnLoaded(Status status, LeaseState lease, NodeState state,
                std::chrono::steady_clock::time_point asked);
  // `batch`: the committed batch when metrics_ is set, else null.
  void OnCommitted(CommitResult result, size_t rows,
                   std::shared_ptr<const CommitBatch> batch, int64_t fetch);
  void OnResolved(Status status, int64_t seq);
  void OnRenewed(Status status, LeaseState lease);
  void OnEventRun(HookRunner::EventRun run);

  // Transitions of phase_.
  void EnterRunning(const LeaseState& lease, NodeState state);
  // `writer_alive`: the other writer is known to run (flushes fail at once).
  void EnterStandby(const std::string& why, bool writer_alive = true);
  void StandBy(const LeaseState& lease,
               std::chrono::steady_clock::time_point asked);
  void Finish(int exit_code);

  void AfterDatabaseFailure(const Status& status);
  // A read or mark of usage events failed: logged, tried on the next poll.
  void EventDatabaseFailure(const Status& status);
  void FailWaiters(const Status& status, bool all);
  // Schedules another try of a failed fetch when a stop, a flush or a hook
  // run waits for it and its tries and deadline allow; false: none.
  bool RetryWaitedFetch(int64_t fetch);
  // A new wait for a fetch (the stop's or --once's final poll, a flush, the
  // flush before a hook run): its own retries, and its deadline (now + the
  // stop budget).
  std::chrono::steady_clock::time_point BeginWait();
  void SchedulePoll();
  void ScheduleRetry();
  void ScheduleWatchdog();
  void UpdateStatus();
  // Durations and outcomes; the gauges follow in UpdateStatus.
  void RecordPoll(bool ok, int restarts);
  void RecordCommit(CommitOutcome outcome);
  void ArmStopDeadline();
  std::chrono::milliseconds LeaseTtl() const;
  static std::string_view DbWorkName(DbWork work);
  // The event delivery lease: one hook run and the calls around it.
  std::chrono::milliseconds EventLeaseTtl() const;

  // Runs `work` on the database thread and `then` with its result on the
  // loop; db_ is `what` meanwhile.
  template <typename Result>
  void OnDatabase(DbWork what, std::function<Result()> work,
                  std::function<void(Result)> then);

  boost::asio::io_context& io_;
  Config config_;
  StatsSource& source_;
  Store& store_;
  Notifier& notifier_;
  CollectorMetrics* metrics_;  // null: none
  DeltaEngine engine_;
  HookRunner hooks_;
  EventDelivery events_;
  std::string last_event_error_;  // logged once until it changes

  // The state machine.
  Phase phase_ = Phase::kLoading;
  DbWork db_ = DbWork::kIdle;
  Ending ending_ = Ending::kNone;
  CommitState commit_ = CommitState::kClean;

  // Fetches are numbered from 1. A fetch is wanted by a poll tick, a flush,
  // a hook run or the stop; one runs at a time.
  int64_t fetches_started_ = 0;
  int64_t fetch_in_flight_ = 0;  // 0: none
  int64_t fetch_wanted_ = 0;     // a fetch numbered at least this is wanted
  int64_t last_fetch_ok_ = 0;    // the newest fetch that succeeded
  int64_t last_fetch_done_ = 0;  // the newest fetch that came back
  // Every fetch up to this one is in the database.
  int64_t committed_fetch_ = 0;
  std::vector<Waiter> waiters_;
  int64_t stop_after_fetch_ = 0;  // ending_: the final fetch is above this
  // Retries of failed fetches that someone waits for, since the last fetch
  // that worked or the last new wait (BeginWait).
  int fetch_retries_ = 0;
  std::chrono::steady_clock::time_point stop_deadline_{};  // ending_: gives up
  int64_t hook_flush_after_ = -1;  // a hook run waits for this flush
  std::chrono::steady_clock::time_point hook_flush_deadline_;
  int64_t unresolved_fetch_ = 0;  // the fetch of a commit of unknown outcome
  // Its batch, kept for the metrics (only with metrics_): its deltas join
  // the exposed totals if it turns out to have applied.
  std::shared_ptr<const CommitBatch> unresolved_batch_;
  std::chrono::steady_clock::time_point fetch_started_{};
  std::chrono::steady_clock::time_point commit_started_{};

  LeaseState lease_;
  std::chrono::steady_clock::time_point lease_renewed_{};
  bool users_checked_ = false;  // the fingerprint was read in this poll

  // Completions posted from the database thread and the stats source check
  // that the collector is still alive (the loop may outlive it).
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

  boost::asio::steady_timer poll_timer_;
  boost::asio::steady_timer retry_timer_;
  boost::asio::steady_timer fetch_retry_timer_;
  boost::asio::steady_timer watchdog_timer_;
  boost::asio::steady_timer stop_timer_;
  boost::asio::steady_timer db_slow_timer_;  // a database call takes long
  std::chrono::steady_clock::time_point next_poll_;
  std::chrono::steady_clock::time_point next_prune_{};  // {}: not yet set
  std::chrono::milliseconds backoff_{0};
  std::chrono::steady_clock::time_point retry_after_{};

  // The database worker: its own io_context on one thread.
  boost::asio::io_context db_io_;
  std::unique_ptr<
      boost::asio::executor_work_guard<boost::asio::io_context::executor_type>>
      db_work_;
  std::thread db_thread_;

  bool ready_sent_ = false;
  bool warned_malformed_ = false;
  // While phase_ is kStandby: another writer holds the lease. Until it is
  // seen to renew its lease or hand it on, it may be a collector that
  // crashed (its lease lapses within LeaseTtl()), and a flush waits for the
  // takeover instead of failing: a sing-box reload right after a crash and
  // restart still gets its traffic committed first.
  struct Standby {
    std::string reason;  // logged once per standby
    std::string holder;
    std::chrono::steady_clock::time_point lapses{};  // as last seen
    bool writer_alive = false;
  };
  Standby standby_;
  int exit_code_ = 0;
  // --once: the database or the lease failed; finish once nothing is in
  // flight, starting nothing more.
  bool once_failed_ = false;

  PeerHealth source_health_;
  PeerHealth database_health_;
  std::string last_poll_result_ = "starting";
};

}  // namespace boxmeter
