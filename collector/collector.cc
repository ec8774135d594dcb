#include "collector.h"

#include <fmt/core.h>
#include <malloc.h>
#include <sysexits.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cstdio>
#include <cstdlib>

#include "log.h"
#include "safe_text.h"
#include "snapshot.h"

namespace boxmeter {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

constexpr milliseconds kMinBackoff{1000};
constexpr milliseconds kMaxBackoff{30000};

// A database call that takes this long is logged (once) while it lasts.
constexpr milliseconds kSlowDatabaseCall{10000};

// A lease whose expiry moved later by more than this between two looks was
// renewed: its holder is running. (Each renewal moves it by at least 1 s.)
constexpr milliseconds kLeaseRenewalSlack{500};

// A failed fetch that a stop, a flush or a hook run waits for is tried
// again after growing pauses (250, 500, 750 ms, then every second). A stats
// API that was just restarted refuses until it listens again, and gRPC fails
// calls at once until its reconnect backoff ends (at most 2 s plus jitter,
// grpc_stats_source.cc). A stop tries 3 more times (1.5 s: at shutdown
// sing-box may be gone for good, and a gone one refuses at once); a flush or
// a hook run, whose caller wants the commit before a reload, 6 times (4.5 s,
// past a whole backoff).
constexpr int kStopFetchRetries = 3;
constexpr int kFlushFetchRetries = 6;
constexpr milliseconds kFetchRetryPause{250};
constexpr milliseconds kMaxFetchRetryPause{1000};
// What a stop keeps of its budget after its last fetch: a commit and the
// lease's release. A retry of the final fetch that could not leave this much
// is not started.
constexpr milliseconds kStopCommitReserve{3000};

// Retention runs at most this often, and each run stops after the budget
// (leaving the rest for the next run), so that commits wait at most that
// long once an hour. At 10,000 rows a batch that is well over the rows
// 100,000 users add in an hour.
constexpr std::chrono::hours kPruneInterval{1};
constexpr milliseconds kPruneBudget{5000};

// The history's daily partitions are created this many days ahead, in the
// same hourly run: a collector (or all of a fleet's) may be down for a week
// before a commit lands in the default partition (where it is still safe,
// and moved out on the next run).
constexpr int kPartitionDaysAhead = 7;

// glibc keeps the memory a poll freed, much of it in the arenas of gRPC's
// threads that decoded the reply: at a million counters the collector sat
// at 565 MB between polls instead of 107 MB (BENCHMARKS.md, Memory). Called
// once the reply, the snapshot or a batch is gone; at most a few times a
// poll.
void ReturnFreedMemory() { malloc_trim(0); }

int64_t WallClockMs() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double SecondsSince(steady_clock::time_point start) {
  return std::chrono::duration<double>(steady_clock::now() - start).count();
}

}  // namespace

void PeerHealth::Up(const std::string& detail) {
  if (state_ == State::kDown) {
    LogInfo("{} is back: {}", what_, detail);
  } else if (state_ == State::kUnknown) {
    LogInfo("{} answered: {}", what_, detail);
  }
  state_ = State::kUp;
}

void PeerHealth::Down(const std::string& error) {
  if (state_ != State::kDown) {
    LogWarn("{}", error);
    LogWarn(
        "{} is unavailable; retrying (this is logged again only when it "
        "is back)",
        what_);
  } else {
    LogDebug("{}", error);
  }
  state_ = State::kDown;
}

Collector::Collector(boost::asio::io_context& io, const Config& config,
                     StatsSource& source, Store& store, Notifier& notifier,
                     CollectorMetrics* metrics)
    : io_(io),
      config_(config),
      source_(source),
      store_(store),
      notifier_(notifier),
      metrics_(metrics),
      hooks_(io, config.hooks, config.path),
      poll_timer_(io),
      retry_timer_(io),
      fetch_retry_timer_(io),
      watchdog_timer_(io),
      stop_timer_(io),
      db_slow_timer_(io),
      db_work_(
          std::make_unique<boost::asio::executor_work_guard<
              boost::asio::io_context::executor_type>>(db_io_.get_executor())),
      source_health_("the stats API at " + config.source.address),
      database_health_("the database " + RedactUrl(config.database.url)) {
  db_thread_ = std::thread([this] { db_io_.run(); });
  hooks_.OnEventDone(
      [this](HookRunner::EventRun run) { OnEventRun(std::move(run)); });
}

Collector::~Collector() {
  // Completions still queued on the loop (a fetch or a database call that
  // ended before this) do nothing now: the loop may outlive the collector.
  alive_.reset();
  db_work_.reset();
  db_io_.stop();
  if (db_thread_.joinable()) db_thread_.join();
}

template <typename Result>
void Collector::OnDatabase(DbWork what, std::function<Result()> work,
                           std::function<void(Result)> then) {
  db_ = what;
  // A call the database accepted but does not answer (a lock another
  // session holds, a server that stopped reading) has no deadline of its
  // own: say so while it lasts, so that the log shows where the collector
  // waits.
  steady_clock::time_point started = steady_clock::now();
  db_slow_timer_.expires_after(kSlowDatabaseCall);
  db_slow_timer_.async_wait([this, what,
                             started](boost::system::error_code ec) {
    if (ec || db_ != what) return;
    LogWarn(
        "the database {} has not answered {} for {}s; is a lock held by "
        "another session (pg_stat_activity shows who waits on whom)?",
        RedactUrl(config_.database.url), DbWorkName(what),
        std::chrono::duration_cast<std::chrono::seconds>(steady_clock::now() -
                                                         started)
            .count());
  });
  boost::asio::post(
      db_io_, [this, alive = std::weak_ptr(alive_), work = std::move(work),
               then = std::move(then)]() mutable {
        Result result = work();
        work = nullptr;  // frees what it holds (a batch) before `then` runs
        boost::asio::post(io_, [this, alive, result = std::move(result),
                                then = std::move(then)]() mutable {
          if (!alive.lock()) return;
          db_ = DbWork::kIdle;
          db_slow_timer_.cancel();
          then(std::move(result));
          ReturnFreedMemory();
        });
      });
}

// ---- Commands ---------------------------------------------------------------

void Collector::Start() {
  LogInfo("node {}: polling {} every {}ms into {}", config_.node,
          config_.source.address, config_.poll.interval.count(),
          RedactUrl(config_.database.url));
  next_poll_ = steady_clock::now();
  SchedulePoll();
  ScheduleWatchdog();
  fetch_wanted_ = fetches_started_ + 1;
  Advance();
}

void Collector::StartOnce() {
  ending_ = Ending::kOnce;
  stop_after_fetch_ = fetches_started_;
  fetch_wanted_ = fetches_started_ + 1;
  ArmStopDeadline();
  Advance();
}

void Collector::Stop() {
  if (ending_ == Ending::kStop || phase_ == Phase::kStopped) return;
  ending_ = Ending::kStop;
  LogInfo(
      "stopping: waiting for a commit in flight, then one last poll and "
      "commit");
  notifier_.Stopping();
  poll_timer_.cancel();
  stop_after_fetch_ = fetches_started_;
  fetch_wanted_ = std::max(fetch_wanted_, fetches_started_ + 1);
  ArmStopDeadline();
  // The backoff after a long outage may be half a minute, more than the
  // stop budget: from now on the database is tried again every second
  // (AfterDatabaseFailure keeps to that while stopping).
  if (retry_after_ > steady_clock::now() + kMinBackoff) {
    retry_after_ = steady_clock::now() + kMinBackoff;
    ScheduleRetry();
  }
  Advance();
}

void Collector::Flush(FlushDone done) {
  if (phase_ == Phase::kStopped || ending_ != Ending::kNone) {
    done(Status::Unavailable("node " + config_.node +
                             ": the collector is stopping; its stop "
                             "commits what it counted"));
    return;
  }
  if (phase_ == Phase::kStandby && standby_.writer_alive) {
    done(Status::Unavailable("node " + config_.node + ": " + standby_.reason));
    return;
  }
  waiters_.push_back(Waiter{fetches_started_, 0, BeginWait(), std::move(done)});
  fetch_wanted_ = std::max(fetch_wanted_, fetches_started_ + 1);
  Advance();
}

void Collector::Reload(const Config& config) {
  auto restart_needed = [](std::string_view key, const std::string& before,
                           const std::string& after) {
    if (before != after) {
      LogWarn(
          "{} changed from \"{}\" to \"{}\"; restart boxmeter-collector "
          "to apply it",
          key, before, after);
    }
  };
  restart_needed("node", config_.node, config.node);
  restart_needed("source.address", config_.source.address,
                 config.source.address);
  restart_needed("source.max_message_size",
                 std::to_string(config_.source.max_message_size),
                 std::to_string(config.source.max_message_size));
  restart_needed("database.url", RedactUrl(config_.database.url),
                 RedactUrl(config.database.url));
  restart_needed("control.socket", config_.control.socket,
                 config.control.socket);
  restart_needed("metrics.listen", config_.metrics.listen,
                 config.metrics.listen);
  restart_needed("metrics.per_user",
                 config_.metrics.per_user ? "true" : "false",
                 config.metrics.per_user ? "true" : "false");
  bool interval_changed = config.poll.interval != config_.poll.interval;
  config_.poll = config.poll;
  config_.source.timeout = config.source.timeout;
  config_.log = config.log;
  config_.hooks = config.hooks;
  hooks_.Reload(config.hooks);
  config_.history = config.history;
  config_.generator = config.generator;
  SetLogLevel(config.log.level);
  if (interval_changed && ending_ == Ending::kNone) {
    // Count the new interval from now, not from a tick of the old one that
    // may be an hour away.
    next_poll_ = steady_clock::now();
    SchedulePoll();
  }
  LogInfo("reloaded {}: poll.interval {}ms, source.timeout {}ms, log.level {}",
          config.path, config_.poll.interval.count(),
          config_.source.timeout.count(), LogLevelName(config_.log.level));
  Advance();
}

// ---- The state machine ------------------------------------------------------

void Collector::Advance() {
  if (phase_ == Phase::kStopped) return;
  if (once_failed_) return MaybeFinish();  // start nothing more
  AnswerWaiters();
  AdvanceHooks();
  AdvanceEvents();
  // In standby too: what it sees then is reconciled with the node's state
  // when it takes over (DeltaEngine::Load), so a sing-box restart while it
  // waits for a crashed predecessor's lease loses nothing seen.
  bool may_fetch = phase_ != Phase::kStopped;
  if (may_fetch && fetch_in_flight_ == 0 && fetches_started_ < fetch_wanted_) {
    StartFetch();
  }
  if (db_ == DbWork::kIdle) StartDatabaseWork();
  UpdateStatus();
  MaybeFinish();
}

void Collector::AnswerWaiters() {
  // Nothing left to commit: every fetch observed so far is in the database.
  if (phase_ == Phase::kRunning && commit_ == CommitState::kClean &&
      !engine_.in_flight() && !engine_.HasPending()) {
    committed_fetch_ = std::max(committed_fetch_, last_fetch_ok_);
  }
  std::erase_if(waiters_, [this](Waiter& waiter) {
    if (waiter.fetch == 0 || committed_fetch_ < waiter.fetch) return false;
    waiter.done(Status::Ok());
    return true;
  });
}

void Collector::FailWaiters(const Status& status, bool all) {
  std::erase_if(waiters_, [&](Waiter& waiter) {
    // Without `all`: only flushes whose fetch is done, i.e. whose commit
    // just failed.
    if (!all && waiter.fetch == 0) return false;
    waiter.done(status);
    return true;
  });
}

void Collector::AdvanceHooks() {
  if (phase_ != Phase::kRunning || ending_ != Ending::kNone ||
      !hooks_.WantsToStart()) {
    hook_flush_after_ = -1;
    return;
  }
  if (hook_flush_after_ < 0) {
    // A reload of sing-box starts its counters from zero: commit what it
    // counted up to now first, so the reload costs milliseconds of traffic
    // and not up to a poll interval.
    hook_flush_after_ = fetches_started_;
    hook_flush_deadline_ = BeginWait();
    fetch_wanted_ = std::max(fetch_wanted_, fetches_started_ + 1);
    return;
  }
  if (last_fetch_done_ <= hook_flush_after_) return;  // still fetching
  if (last_fetch_ok_ <= hook_flush_after_) {
    LogWarn(
        "could not poll the stats API right before {}; running it anyway "
        "(what sing-box counted since the last poll is lost at its reload)",
        "hooks.on_users_changed");
  } else if (committed_fetch_ <= hook_flush_after_) {
    return;  // still committing; a failed commit retries
  }
  hook_flush_after_ = -1;
  hooks_.StartNow();
}

void Collector::StartDatabaseWork() {
  if (steady_clock::now() < retry_after_) return;  // the retry timer is set
  switch (phase_) {
    case Phase::kLoading:
    case Phase::kStandby:
      StartLoad();
      return;
    case Phase::kRunning:
      break;
    case Phase::kStopped:
      return;
  }
  if (commit_ == CommitState::kUnknown) return StartResolve();
  if (ending_ == Ending::kNone && StartPrune()) return;
  if (engine_.HasPending()) return StartCommit();
  if (StartMarkEvent()) return;
  if (ending_ == Ending::kNone) {
    // Not while a fetch is in flight: if it brings traffic, its commit
    // reads the fingerprint anyway (and if not, the check follows it). The
    // fingerprint is most of a fleet's database work (BENCHMARKS.md).
    if (fetch_in_flight_ == 0 && StartCheckUsers()) return;
    if (StartReadEvents()) return;
    if (steady_clock::now() - lease_renewed_ >= LeaseTtl() / 3) StartRenew();
    return;
  }
  bool final_fetch_done = last_fetch_done_ > stop_after_fetch_;
  if (final_fetch_done && fetch_in_flight_ == 0 && lease_.held) {
    StartRelease();
  }
}

void Collector::MaybeFinish() {
  if (ending_ == Ending::kNone || phase_ == Phase::kStopped) return;
  // Not before the fetch and the database call in flight are back: their
  // completions are posted to the io_context, which must outlive them.
  if (fetch_in_flight_ != 0 || db_ != DbWork::kIdle) return;
  if (once_failed_) return Finish(EX_UNAVAILABLE);
  bool final_fetch_done = last_fetch_done_ > stop_after_fetch_;
  bool final_fetch_ok = last_fetch_ok_ > stop_after_fetch_;
  switch (phase_) {
    case Phase::kStandby:
      if (!standby_.writer_alive && ending_ == Ending::kStop &&
          engine_.size() > 0) {
        // The holder may be a collector that crashed: what this one saw
        // is committed by no one else. Wait (within the stop budget) for
        // its lease to lapse, take over and commit it.
        return;
      }
      // The node's writer runs and commits what sing-box counted; what
      // this collector saw is not its to commit.
      engine_ = DeltaEngine();
      return Finish(ending_ == Ending::kOnce ? EX_UNAVAILABLE : 0);
    case Phase::kLoading:
      // Nothing observed, nothing to lose; otherwise the database must come
      // back within the stop budget.
      if (ending_ == Ending::kStop && final_fetch_done && last_fetch_ok_ == 0) {
        Finish(0);
      }
      return;
    case Phase::kRunning:
      if (!final_fetch_done || commit_ != CommitState::kClean ||
          engine_.HasPending() || lease_.held) {
        return;
      }
      return Finish(ending_ == Ending::kOnce && !final_fetch_ok ? EX_UNAVAILABLE
                                                                : 0);
    case Phase::kStopped:
      return;
  }
}

void Collector::Finish(int exit_code) {
  if (phase_ == Phase::kStopped) return;
  phase_ = Phase::kStopped;
  poll_timer_.cancel();
  retry_timer_.cancel();
  fetch_retry_timer_.cancel();
  watchdog_timer_.cancel();
  stop_timer_.cancel();
  db_slow_timer_.cancel();
  FailWaiters(
      Status::Unavailable("node " + config_.node + ": the collector stopped"),
      true);
  int64_t pending = engine_.pending_bytes();
  if (pending > 0) {
    LogError(
        "{} bytes counted by sing-box are not committed; sing-box's "
        "counters still hold them, and the next start commits them from "
        "the stored baseline unless sing-box restarts first",
        pending);
    if (exit_code == 0) exit_code = EX_TEMPFAIL;
  }
  exit_code_ = exit_code;
  io_.stop();
}

// Another writer holds the lease, as a load found it (asked at `asked`). It
// is known to be running once it hands the lease on or is seen to renew it;
// until then it may be a collector that crashed, and flushes wait for the
// takeover.
void Collector::StandBy(const LeaseState& lease,
                        steady_clock::time_point asked) {
  // Never later than the real expiry: the database measured expires_in after
  // `asked`. Compared with the first sighting of this holder: one that
  // commits often moves its expiry by less than the slack each time, but past
  // it before that first expiry comes.
  steady_clock::time_point lapses = asked + lease.expires_in;
  bool same_holder =
      phase_ == Phase::kStandby && lease.holder == standby_.holder;
  if (!same_holder) {
    EnterStandby(
        fmt::format(
            "node {} is written by another collector ({}), whose lease lapses "
            "in {}ms unless it renews it (is a second collector configured "
            "with this node name?)",
            config_.node, lease.holder, lease.expires_in.count()),
        phase_ == Phase::kStandby);  // a new holder: it just took the lease
    standby_.holder = lease.holder;
    standby_.lapses = lapses;
  } else if (!standby_.writer_alive &&
             lapses > standby_.lapses + kLeaseRenewalSlack) {
    EnterStandby(
        standby_.reason + "; it has renewed its lease since, so it is running",
        true);
  } else {
    LogDebug("node {}: still held by {}, lapsing in {}ms unless renewed",
             config_.node, lease.holder, lease.expires_in.count());
  }
}

void Collector::EnterRunning(const LeaseState& lease, NodeState state) {
  if (phase_ == Phase::kStandby) {
    LogInfo(
        "took over node {}: its lease lapsed; counting on from the "
        "node's state in the database",
        config_.node);
    // The engine holds no loaded state here (it was never loaded, or was
    // dropped when the lease was lost): only what standby polls saw, which
    // Load reconciles with the node's baselines like a start's first polls.
  }
  database_health_.Up(fmt::format("node {} has {} counters, commit {}",
                                  config_.node, state.baselines.size(),
                                  state.commit_seq));
  engine_.Load(state.commit_seq, state.instance, state.baselines);
  // What the database holds now, whatever this collector showed before (a
  // takeover: another writer committed meanwhile).
  if (metrics_) metrics_->SetTotals(state.totals);
  lease_ = lease;
  lease_renewed_ = steady_clock::now();
  standby_ = {};
  phase_ = Phase::kRunning;
}

void Collector::EnterStandby(const std::string& why, bool writer_alive) {
  if (phase_ == Phase::kRunning) {
    LogError(
        "{}; this collector stopped writing for node {}: the {} bytes it "
        "had not committed are left to the writer that holds the lease",
        why, config_.node, engine_.pending_bytes());
    engine_ = DeltaEngine();
  } else if (why != standby_.reason) {
    LogWarn("{}; this collector commits nothing until that lease lapses", why);
  }
  if (writer_alive) {
    FailWaiters(Status::Unavailable("node " + config_.node + ": " + why), true);
  }
  events_.Drop();  // only the node's writer delivers events
  standby_.reason = why;
  standby_.writer_alive = writer_alive;
  phase_ = Phase::kStandby;
  lease_ = {};
  commit_ = CommitState::kClean;
}

// ---- Fetching ---------------------------------------------------------------

void Collector::OnTick() {
  if (ending_ == Ending::kNone) SchedulePoll();
  users_checked_ = false;
  hooks_.Tick();  // a failed hook is retried at most once a poll
  events_.Tick();
  if (fetch_in_flight_ != 0) {
    LogDebug("the previous fetch is still running; skipping this poll");
  } else {
    fetch_wanted_ = std::max(fetch_wanted_, fetches_started_ + 1);
  }
  Advance();
}

void Collector::StartFetch() {
  int64_t fetch = ++fetches_started_;
  fetch_in_flight_ = fetch;
  fetch_started_ = steady_clock::now();
  source_.Fetch(
      // The source may answer on its own thread after this collector is
      // gone: the callback touches nothing of it but the loop it posts to.
      config_.source.timeout, [this, &io = io_, alive = std::weak_ptr(alive_),
                               fetch](Status status, StatsReply reply) {
        boost::asio::post(io, [this, alive, fetch, status = std::move(status),
                               reply = std::move(reply)]() mutable {
          if (!alive.lock()) return;
          OnFetched(fetch, std::move(status), std::move(reply));
          ReturnFreedMemory();
        });
      });
}

void Collector::OnFetched(int64_t fetch, Status status, StatsReply reply) {
  fetch_in_flight_ = 0;
  last_fetch_done_ = fetch;
  Snapshot snapshot;
  if (status.ok()) status = MakeSnapshot(reply, &snapshot);
  if (!status.ok()) {
    source_health_.Down(status.message());
    last_poll_result_ = "stats API: " + status.message();
    RecordPoll(false, 0);
    if (!RetryWaitedFetch(fetch)) {
      std::erase_if(waiters_, [&](Waiter& waiter) {
        if (waiter.fetch != 0 || waiter.after_fetch >= fetch) return false;
        waiter.done(status);
        return true;
      });
    }
  } else {
    last_fetch_ok_ = fetch;
    fetch_retries_ = 0;
    source_health_.Up(fmt::format("{} counters", snapshot.counters.size()));
    if (snapshot.malformed > 0 && !warned_malformed_) {
      LogWarn(
          "skipped {} counters that are not traffic counters of a known "
          "kind, e.g. \"{}\" (logged once)",
          snapshot.malformed, snapshot.first_malformed);
      warned_malformed_ = true;
    }
    if (snapshot.negative > 0) {
      LogWarn("skipped {} counters with negative values", snapshot.negative);
    }
    ObserveResult observed = engine_.Observe(snapshot);
    if (observed.new_instance) {
      LogInfo(
          "sing-box restarted or reloaded its config: {} counters started "
          "again from zero; counting on from the new values",
          observed.restarted);
    } else if (observed.restarted > 0) {
      // Counters the new instance created only now (first traffic since the
      // restart): already announced with the restart.
      LogDebug("{} more counters seen for the first time since the restart",
               observed.restarted);
    }
    last_poll_result_ = fmt::format("last poll: {} counters, {} changed",
                                    snapshot.counters.size(), observed.changed);
    RecordPoll(true, observed.new_instance ? 1 : 0);
    LogDebug("{}", last_poll_result_);
    for (Waiter& waiter : waiters_) {
      if (waiter.fetch == 0 && waiter.after_fetch < fetch) waiter.fetch = fetch;
    }
    if (phase_ == Phase::kRunning && !database_health_.down()) {
      notifier_.Healthy();
    }
  }
  Advance();
}

bool Collector::RetryWaitedFetch(int64_t fetch) {
  // Who waits for this fetch: how many tries they allow, and until when.
  int tries = 0;
  steady_clock::time_point deadline{};
  auto waits = [&](int allowed, steady_clock::time_point until) {
    tries = std::max(tries, allowed);
    deadline = std::max(deadline, until);
  };
  bool hook_waits = hook_flush_after_ >= 0 && fetch > hook_flush_after_;
  if (ending_ == Ending::kStop) {
    if (fetch > stop_after_fetch_) waits(kStopFetchRetries, stop_deadline_);
  } else {
    for (const Waiter& waiter : waiters_) {
      if (waiter.fetch == 0 && waiter.after_fetch < fetch) {
        waits(kFlushFetchRetries, waiter.deadline);
      }
    }
    if (hook_waits) waits(kFlushFetchRetries, hook_flush_deadline_);
  }
  milliseconds pause =
      std::min(kFetchRetryPause * (fetch_retries_ + 1), kMaxFetchRetryPause);
  // A try that hangs costs a source.timeout; the tries stop while the
  // deadline still holds a commit (a stop's final poll that never answers
  // leaves nothing uncommitted: exit 0, as when the tries run out).
  if (fetch_retries_ >= tries || steady_clock::now() + pause +
                                         config_.source.timeout +
                                         kStopCommitReserve >
                                     deadline) {
    return false;
  }
  ++fetch_retries_;
  // The stop and a hook run now wait for the retry, not this fetch; a
  // flush waits for any fetch after its request that works.
  if (ending_ == Ending::kStop) stop_after_fetch_ = fetch;
  if (hook_waits) hook_flush_after_ = fetch;
  fetch_retry_timer_.expires_after(pause);
  fetch_retry_timer_.async_wait([this](boost::system::error_code ec) {
    if (ec || phase_ == Phase::kStopped) return;
    fetch_wanted_ = std::max(fetch_wanted_, fetches_started_ + 1);
    Advance();
  });
  return true;
}

void Collector::AdvanceEvents() {
  // A run of hooks.on_users_changed goes first (one hook at a time).
  if (phase_ != Phase::kRunning || ending_ != Ending::kNone ||
      !hooks_.events_enabled() || hooks_.running() || hooks_.WantsToStart()) {
    return;
  }
  const UsageEvent* next = events_.Next();
  if (next == nullptr) return;
  UsageEvent event = *next;
  events_.Started();
  hooks_.RunEvent(event);
}

void Collector::OnEventRun(HookRunner::EventRun run) {
  milliseconds backoff = events_.Finished(run.id, run.ok, steady_clock::now());
  if (run.ok) {
    LogInfo("hooks.on_event took usage event {} in {}ms", run.id,
            run.took.count());
  } else {
    LogWarn(
        "hooks.on_event {} for usage event {} after {}ms (command {}); the "
        "event stays undelivered and is handed over again on the first poll "
        "after {}ms",
        run.failure, run.id, run.took.count(),
        QuotedText(config_.hooks.on_event, kMaxShownMessage), backoff.count());
  }
  Advance();
}

// ---- Database work ----------------------------------------------------------

void Collector::StartLoad() {
  struct Loaded {
    Status status;
    LeaseState lease;
    NodeState state;
    steady_clock::time_point asked;
  };
  std::chrono::milliseconds ttl = LeaseTtl();
  OnDatabase<Loaded>(
      DbWork::kLoading,
      [this, ttl] {
        Loaded loaded;
        loaded.asked = steady_clock::now();
        loaded.status = store_.Connect();
        if (loaded.status.ok()) loaded.status = store_.Migrate();
        if (loaded.status.ok()) {
          loaded.status = store_.TakeLease(ttl, &loaded.lease);
        }
        if (loaded.status.ok() && loaded.lease.held) {
          loaded.status = store_.LoadNode(&loaded.state);
        }
        return loaded;
      },
      [this](Loaded loaded) {
        OnLoaded(loaded.status, loaded.lease, std::move(loaded.state),
                 loaded.asked);
      });
}

void Collector::OnLoaded(Status status, LeaseState lease, NodeState state,
                         steady_clock::time_point asked) {
  if (!status.ok()) {
    AfterDatabaseFailure(status);
    if (ending_ == Ending::kOnce) once_failed_ = true;
    return Advance();
  }
  if (!ready_sent_) {
    notifier_.Ready();
    ready_sent_ = true;
  }
  backoff_ = milliseconds(0);
  if (!lease.held) {
    database_health_.Up("the database answered");
    StandBy(lease, asked);
    if (ending_ == Ending::kOnce) once_failed_ = true;
    // Look again when it would lapse, at least once a poll interval.
    retry_after_ =
        steady_clock::now() +
        std::min<milliseconds>(
            std::max<milliseconds>(lease.expires_in, milliseconds(100)),
            config_.poll.interval);
    ScheduleRetry();
    return Advance();
  }
  retry_after_ = {};
  EnterRunning(lease, std::move(state));
  Advance();
}

void Collector::StartCommit() {
  auto batch = std::make_shared<CommitBatch>(engine_.Prepare());
  batch->read_users_fingerprint = ending_ == Ending::kNone && hooks_.enabled();
  batch->lease_token = lease_.token;
  batch->lease_ttl = LeaseTtl();
  int64_t fetch = last_fetch_ok_;
  commit_started_ = steady_clock::now();
  // The metrics add an applied batch's deltas; without them the batch is
  // freed before the result is handled (OnDatabase).
  std::shared_ptr<const CommitBatch> kept = metrics_ ? batch : nullptr;
  OnDatabase<CommitResult>(
      DbWork::kCommitting,
      [this, batch] {
        Status status = store_.Connect();
        if (!status.ok()) {
          return CommitResult{CommitOutcome::kNotApplied, status};
        }
        return store_.Commit(*batch);
      },
      [this, kept = std::move(kept), rows = batch->rows.size(),
       fetch](CommitResult result) mutable {
        OnCommitted(std::move(result), rows, std::move(kept), fetch);
      });
}

void Collector::OnCommitted(CommitResult result, size_t rows,
                            std::shared_ptr<const CommitBatch> batch,
                            int64_t fetch) {
  RecordCommit(result.outcome);
  switch (result.outcome) {
    case CommitOutcome::kApplied:
      if (metrics_) metrics_->AddCommitted(batch->rows);
      engine_.Committed();
      committed_fetch_ = std::max(committed_fetch_, fetch);
      lease_renewed_ = steady_clock::now();
      database_health_.Up(fmt::format("committed {} counters", rows));
      backoff_ = milliseconds(0);
      retry_after_ = {};
      // The exact duration, for scripts/fleet.sh's latency percentiles (the
      // metrics histogram only has buckets).
      LogDebug("committed {} counters (commit {}) in {:.3f} ms", rows,
               engine_.commit_seq(), SecondsSince(commit_started_) * 1000);
      if (ending_ == Ending::kNone && !result.users_fingerprint.empty()) {
        users_checked_ = true;
        hooks_.UsersFingerprint(result.users_fingerprint);
      }
      break;
    case CommitOutcome::kNotApplied:
      engine_.NotCommitted();
      if (result.status.code() == Status::Code::kInvalid) {
        // The commit sequence moved while this collector held the lease:
        // a writer that does not take leases. Load the node afresh.
        EnterStandby(result.status.message());
        break;
      }
      AfterDatabaseFailure(result.status);
      FailWaiters(result.status, false);
      if (ending_ == Ending::kOnce) once_failed_ = true;
      break;
    case CommitOutcome::kUnknown:
      LogWarn(
          "the outcome of a commit of {} counters is unknown ({}); "
          "asking the database before committing again",
          rows, result.status.message());
      commit_ = CommitState::kUnknown;
      unresolved_fetch_ = fetch;
      unresolved_batch_ = std::move(batch);
      AfterDatabaseFailure(result.status);
      break;
    case CommitOutcome::kLeaseLost:
      engine_.NotCommitted();
      EnterStandby(result.status.message());
      break;
  }
  Advance();
}

void Collector::StartResolve() {
  using Read = std::pair<Status, int64_t>;
  OnDatabase<Read>(
      DbWork::kResolving,
      [this] {
        int64_t seq = 0;
        Status status = store_.Connect();
        if (status.ok()) status = store_.ReadCommitSeq(&seq);
        return Read{status, seq};
      },
      [this](Read read) { OnResolved(read.first, read.second); });
}

void Collector::OnResolved(Status status, int64_t seq) {
  if (!status.ok()) {
    AfterDatabaseFailure(status);
    if (ending_ == Ending::kOnce) once_failed_ = true;
    return Advance();
  }
  commit_ = CommitState::kClean;
  std::shared_ptr<const CommitBatch> batch = std::move(unresolved_batch_);
  int64_t before = engine_.commit_seq();
  if (!engine_.Resolve(seq)) {
    EnterStandby(fmt::format(
        "node {}: the database's commit sequence is {}, but this collector "
        "expected {} or {}; another writer committed for this node",
        config_.node, seq, before, before + 1));
    return Advance();
  }
  bool applied = seq == before + 1;
  if (applied) committed_fetch_ = std::max(committed_fetch_, unresolved_fetch_);
  if (applied && metrics_) {
    metrics_->AddCommitted(batch->rows);
    metrics_->UnknownCommitApplied(WallClockMs());
  }
  LogInfo("the commit whose outcome was unknown {}",
          applied ? "did apply" : "did not apply; retrying it");
  database_health_.Up("commit sequence read");
  Advance();
}

void Collector::StartRenew() {
  using Renewed = std::pair<Status, LeaseState>;
  std::chrono::milliseconds ttl = LeaseTtl();
  OnDatabase<Renewed>(
      DbWork::kRenewing,
      [this, ttl] {
        LeaseState lease;
        Status status = store_.Connect();
        if (status.ok()) status = store_.TakeLease(ttl, &lease);
        return Renewed{status, lease};
      },
      [this](Renewed renewed) { OnRenewed(renewed.first, renewed.second); });
}

void Collector::OnRenewed(Status status, LeaseState lease) {
  if (!status.ok()) {
    AfterDatabaseFailure(status);
  } else if (!lease.held) {
    EnterStandby(fmt::format("node {}'s lease was taken by {}", config_.node,
                             lease.holder));
  } else {
    lease_ = lease;
    lease_renewed_ = steady_clock::now();
  }
  Advance();
}

void Collector::StartRelease() {
  int64_t token = lease_.token;
  OnDatabase<Status>(
      DbWork::kReleasing,
      [this, token] {
        Status status = store_.Connect();
        if (status.ok()) status = store_.ReleaseLease(token);
        return status;
      },
      [this](Status status) {
        if (!status.ok()) {
          LogDebug("could not release the lease ({}); it lapses by itself",
                   status.message());
        }
        lease_.held = false;
        Advance();
      });
}

bool Collector::StartPrune() {
  auto now = steady_clock::now();
  if (next_prune_ == steady_clock::time_point{}) next_prune_ = now;
  if (now < next_prune_) return false;
  // Commits go first; a node so busy that something is always pending
  // prunes anyway once it is an hour late.
  if (engine_.HasPending() && now < next_prune_ + kPruneInterval) {
    return false;
  }
  next_prune_ = now + kPruneInterval;
  struct Maintained {
    Status ensured;  // creating the partitions ahead
    int created = 0;
    Status pruned;
    PruneResult result;
  };
  std::chrono::hours retention = config_.history.retention;
  OnDatabase<Maintained>(
      DbWork::kPruning,
      [this, retention] {
        Maintained done;
        done.ensured = store_.Connect();
        if (done.ensured.ok()) {
          done.ensured = store_.EnsureHistoryPartitions(kPartitionDaysAhead,
                                                        &done.created);
        }
        // Retention does not depend on the partitions ahead.
        done.pruned =
            store_.PruneHistory(retention, kPruneBudget, &done.result);
        return done;
      },
      [this, retention](Maintained done) {
        for (const Status* status : {&done.ensured, &done.pruned}) {
          if (status->ok()) continue;
          // An unreachable database is reported by the commits already.
          if (status->code() == Status::Code::kUnavailable) {
            LogDebug("{}", status->message());
          } else {
            LogWarn("{}; trying again in an hour", status->message());
          }
        }
        if (done.created > 0) {
          LogInfo("created {} daily partitions of the hourly history",
                  done.created);
        }
        const PruneResult& result = done.result;
        if (done.pruned.ok() &&
            (result.deleted > 0 || result.partitions_dropped > 0)) {
          LogInfo(
              "dropped {} days and deleted {} rows of hourly history older "
              "than {}h{}",
              result.partitions_dropped, result.deleted, retention.count(),
              result.done ? "" : "; more are left for the next hour");
        }
        if (done.pruned.ok() && result.days_summed > 0) {
          LogInfo("summed {} days of hourly history into weekly sums{}",
                  result.days_summed,
                  result.summed ? "" : "; more are left for the next hour");
        }
        Advance();
      });
  return true;
}

bool Collector::StartCheckUsers() {
  if (users_checked_ || !hooks_.enabled()) return false;
  users_checked_ = true;
  using Read = std::pair<Status, std::string>;
  OnDatabase<Read>(
      DbWork::kCheckingUsers,
      [this] {
        std::string fingerprint;
        Status status = store_.Connect();
        if (status.ok()) status = store_.ReadUsersFingerprint(&fingerprint);
        return Read{status, fingerprint};
      },
      [this](Read read) {
        if (read.first.ok()) {
          database_health_.Up("read the users fingerprint");
          hooks_.UsersFingerprint(read.second);
        } else {
          database_health_.Down(read.first.message());
        }
        Advance();
      });
  return true;
}

bool Collector::StartReadEvents() {
  // After the poll's commit: the events it recorded are in the read.
  if (!hooks_.events_enabled() || fetch_in_flight_ != 0 ||
      engine_.HasPending() || !events_.WantsRead(steady_clock::now())) {
    return false;
  }
  events_.ReadStarted();
  using Read = std::pair<Status, std::vector<UsageEvent>>;
  milliseconds lease = EventLeaseTtl();
  OnDatabase<Read>(
      DbWork::kReadingEvents,
      [this, lease] {
        std::vector<UsageEvent> events;
        Status status = store_.Connect();
        if (status.ok()) {
          status = store_.ReadUndeliveredEvents(EventDelivery::kBatch, lease,
                                                &events);
        }
        return Read{status, std::move(events)};
      },
      [this](Read read) {
        if (!read.first.ok()) {
          EventDatabaseFailure(read.first);
        } else if (phase_ == Phase::kRunning) {
          last_event_error_.clear();
          if (!read.second.empty()) {
            LogDebug("{} usage events to deliver, from id {}",
                     read.second.size(), read.second.front().id);
          }
          events_.Read(std::move(read.second));
        }
        Advance();
      });
  return true;
}

bool Collector::StartMarkEvent() {
  std::optional<int64_t> id = events_.ToMark();
  if (!id) return false;
  milliseconds lease = EventLeaseTtl();
  OnDatabase<Status>(
      DbWork::kMarkingEvent,
      [this, id = *id, lease] {
        Status status = store_.Connect();
        if (status.ok()) status = store_.MarkEventDelivered(id, lease);
        return status;
      },
      [this, id = *id](Status status) {
        if (status.ok()) {
          events_.Marked();
          LogDebug("usage event {} is marked delivered", id);
        } else {
          events_.MarkFailed();
          EventDatabaseFailure(status);
        }
        Advance();
      });
  return true;
}

void Collector::EventDatabaseFailure(const Status& status) {
  // An unreachable database is reported by the commits already; anything
  // else (say, a schema without 0013) once until it changes.
  if (status.code() == Status::Code::kUnavailable ||
      status.message() == last_event_error_) {
    LogDebug("{}", status.message());
  } else {
    LogWarn("{}; usage events wait, tried again every poll", status.message());
  }
  last_event_error_ = status.message();
}

// ---- Timers -----------------------------------------------------------------

void Collector::AfterDatabaseFailure(const Status& status) {
  database_health_.Down(status.message());
  backoff_ = ending_ == Ending::kStop
                 ? kMinBackoff
                 : std::clamp(backoff_ * 2, kMinBackoff, kMaxBackoff);
  retry_after_ = steady_clock::now() + backoff_;
  ScheduleRetry();
}

void Collector::ScheduleRetry() {
  retry_timer_.expires_at(retry_after_);
  retry_timer_.async_wait([this](boost::system::error_code ec) {
    if (!ec) Advance();
  });
}

void Collector::SchedulePoll() {
  // Drift-free: the next tick is a whole number of intervals after the
  // first, whatever the fetches cost. Ticks missed while behind are skipped.
  auto now = steady_clock::now();
  next_poll_ += config_.poll.interval;
  if (next_poll_ <= now) {
    auto behind = now - next_poll_;
    next_poll_ += (behind / config_.poll.interval + 1) * config_.poll.interval;
  }
  poll_timer_.expires_at(next_poll_);
  poll_timer_.async_wait([this](boost::system::error_code ec) {
    if (!ec && ending_ == Ending::kNone) OnTick();
  });
}

std::chrono::milliseconds Collector::StopBudget(const Config& config) {
  return config.source.timeout * 3 + std::chrono::seconds(10);
}

steady_clock::time_point Collector::BeginWait() {
  fetch_retries_ = 0;
  return steady_clock::now() + StopBudget(config_);
}

void Collector::ArmStopDeadline() {
  stop_deadline_ = BeginWait();
  stop_timer_.expires_at(stop_deadline_);
  stop_timer_.async_wait([this](boost::system::error_code ec) {
    if (ec) return;
    std::string waiting =
        fetch_in_flight_ != 0 ? std::string("the stats API's final poll")
        : db_ != DbWork::kIdle
            ? fmt::format("the database ({})", DbWorkName(db_))
            : std::string("the database to come back");
    LogError(
        "gave up waiting for {} after {}ms (the stop budget, 3 x "
        "source.timeout + 10 s); exiting with {} bytes not committed",
        waiting, StopBudget(config_).count(), engine_.pending_bytes());
    std::fflush(stderr);
    // The database thread may be stuck in a blocking call that cannot be
    // interrupted; leave without running destructors that would join it.
    std::_Exit(ending_ == Ending::kOnce ? EX_UNAVAILABLE : EX_TEMPFAIL);
  });
}

std::string_view Collector::DbWorkName(DbWork work) {
  switch (work) {
    case DbWork::kIdle:
      return "nothing";
    case DbWork::kLoading:
      return "loading the node and taking its lease";
    case DbWork::kCommitting:
      return "a commit";
    case DbWork::kResolving:
      return "reading the commit sequence";
    case DbWork::kRenewing:
      return "renewing the lease";
    case DbWork::kPruning:
      return "pruning history";
    case DbWork::kCheckingUsers:
      return "reading the users fingerprint";
    case DbWork::kReadingEvents:
      return "reading usage events to deliver";
    case DbWork::kMarkingEvent:
      return "marking a usage event delivered";
    case DbWork::kReleasing:
      return "releasing the lease";
  }
  return "a call";
}

std::chrono::milliseconds Collector::LeaseTtl() const {
  return WriterLeaseTtl(config_.poll.interval);
}

std::chrono::milliseconds Collector::EventLeaseTtl() const {
  // Renewed by every read and mark; between two of them runs at most one
  // hook, bounded by hooks.timeout.
  return config_.hooks.timeout + LeaseTtl();
}

void Collector::ScheduleWatchdog() {
  std::optional<std::chrono::microseconds> interval =
      notifier_.WatchdogInterval();
  if (!interval) return;
  notifier_.Watchdog();
  watchdog_timer_.expires_after(*interval);
  watchdog_timer_.async_wait([this](boost::system::error_code ec) {
    if (!ec && phase_ != Phase::kStopped) ScheduleWatchdog();
  });
}

void Collector::RecordPoll(bool ok, int restarts) {
  if (metrics_) {
    metrics_->PollDone(SecondsSince(fetch_started_), ok, WallClockMs(),
                       restarts);
  }
}

void Collector::RecordCommit(CommitOutcome outcome) {
  if (metrics_) {
    metrics_->CommitDone(SecondsSince(commit_started_), outcome, WallClockMs());
  }
}

void Collector::UpdateStatus() {
  std::string database;
  switch (phase_) {
    case Phase::kLoading:
      database = "database unavailable";
      break;
    case Phase::kStandby:
      database = "standby: another collector holds this node";
      break;
    case Phase::kRunning:
    case Phase::kStopped:
      database =
          database_health_.down() ? "database unavailable" : "database ok";
      break;
  }
  int64_t pending = engine_.pending_bytes();
  notifier_.Status(fmt::format("{}; {} counters tracked, {} bytes pending; {}",
                               last_poll_result_, engine_.size(), pending,
                               database));
  if (metrics_) {
    int64_t started = hooks_.runs_started();
    int64_t failed = hooks_.runs_failed();
    metrics_->SetGauges({
        .pending_bytes = pending,
        .counters_tracked = static_cast<int64_t>(engine_.size()),
        .source_up = source_health_.up(),
        .database_up = database_health_.up(),
        .writer = phase_ == Phase::kRunning,
        .hook_runs_succeeded =
            started - failed - (hooks_.users_hook_running() ? 1 : 0),
        .hook_runs_failed = failed,
        .event_hook_runs_succeeded = events_.delivered(),
        .event_hook_runs_failed = events_.failed(),
    });
  }
}

}  // namespace boxmeter
