#include "collector.h"

#include <fmt/core.h>
#include <malloc.h>
#include <sysexits.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cstdio>
#include <cstdlib>

#include "log.h"
#include "snapshot.h"

namespace boxmeter {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

constexpr milliseconds kMinBackoff{1000};
constexpr milliseconds kMaxBackoff{30000};

// Retention runs at most this often, and each run stops after the budget
// (leaving the rest for the next run), so that commits wait at most that
// long once an hour. At 10,000 rows a batch that is well over the rows
// 100,000 users add in an hour.
constexpr std::chrono::hours kPruneInterval{1};
constexpr milliseconds kPruneBudget{5000};

// glibc keeps the memory a poll freed, much of it in the arenas of gRPC's
// threads that decoded the reply: at a million counters the collector sat
// at 565 MB between polls instead of 107 MB (BENCHMARKS.md, Memory). Called
// once the reply, the snapshot or a batch is gone; at most a few times a
// poll.
void ReturnFreedMemory() { malloc_trim(0); }

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
                     StatsSource& source, Store& store, Notifier& notifier)
    : io_(io),
      config_(config),
      source_(source),
      store_(store),
      notifier_(notifier),
      hooks_(io, config.hooks, config.path),
      poll_timer_(io),
      retry_timer_(io),
      watchdog_timer_(io),
      stop_timer_(io),
      db_work_(
          std::make_unique<boost::asio::executor_work_guard<
              boost::asio::io_context::executor_type>>(db_io_.get_executor())),
      source_health_("the stats API at " + config.source.address),
      database_health_("the database " + RedactUrl(config.database.url)) {
  db_thread_ = std::thread([this] { db_io_.run(); });
}

Collector::~Collector() {
  db_work_.reset();
  db_io_.stop();
  if (db_thread_.joinable()) db_thread_.join();
}

template <typename Result>
void Collector::OnDatabase(std::function<Result()> work,
                           std::function<void(Result)> then) {
  database_busy_ = true;
  boost::asio::post(
      db_io_, [this, work = std::move(work), then = std::move(then)]() mutable {
        Result result = work();
        work = nullptr;  // frees what it holds (a batch) before `then` runs
        boost::asio::post(io_, [this, result = std::move(result),
                                then = std::move(then)]() mutable {
          database_busy_ = false;
          then(std::move(result));
          ReturnFreedMemory();
        });
      });
}

void Collector::Start() {
  mode_ = Mode::kDaemon;
  LogInfo("node {}: polling {} every {}ms into {}", config_.node,
          config_.source.address, config_.poll.interval.count(),
          RedactUrl(config_.database.url));
  PrepareDatabase();
  next_poll_ = steady_clock::now();
  Poll();
  ScheduleWatchdog();
}

void Collector::StartOnce() {
  mode_ = Mode::kOnce;
  ArmStopDeadline();
  PrepareDatabase();
}

void Collector::Stop() {
  if (mode_ == Mode::kStopping || mode_ == Mode::kStopped) return;
  mode_ = Mode::kStopping;
  LogInfo("stopping: one last poll and commit");
  notifier_.Stopping();
  poll_timer_.cancel();
  retry_timer_.cancel();
  ArmStopDeadline();
  if (!fetch_in_flight_) Poll();
}

void Collector::ArmStopDeadline() {
  // A fetch is bounded by its deadline; a database call by libpq's connect
  // timeout and the server. Past this, give up rather than hang a shutdown.
  stop_timer_.expires_after(config_.source.timeout * 3 +
                            std::chrono::seconds(10));
  stop_timer_.async_wait([this](boost::system::error_code ec) {
    if (ec) return;
    bool once = mode_ == Mode::kOnce;
    LogError(
        "gave up waiting for the {} after {}ms; exiting with {} bytes "
        "not committed",
        fetch_in_flight_ ? "stats API" : "database",
        std::chrono::duration_cast<milliseconds>(config_.source.timeout * 3 +
                                                 std::chrono::seconds(10))
            .count(),
        engine_.pending_bytes());
    std::fflush(stderr);
    // The database thread may be stuck in a blocking call that cannot be
    // interrupted; leave without running destructors that would join it.
    std::_Exit(once ? EX_UNAVAILABLE : 0);
  });
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
  bool interval_changed = config.poll.interval != config_.poll.interval;
  config_.poll = config.poll;
  config_.source.timeout = config.source.timeout;
  config_.log = config.log;
  config_.hooks = config.hooks;
  hooks_.Reload(config.hooks);
  config_.history = config.history;
  config_.generator = config.generator;
  SetLogLevel(config.log.level);
  if (interval_changed && mode_ == Mode::kDaemon) {
    // Count the new interval from now, not from a tick of the old one that
    // may be an hour away.
    next_poll_ = steady_clock::now();
    SchedulePoll();
  }
  LogInfo("reloaded {}: poll.interval {}ms, source.timeout {}ms, log.level {}",
          config.path, config_.poll.interval.count(),
          config_.source.timeout.count(), LogLevelName(config_.log.level));
}

void Collector::PrepareDatabase() {
  using Prepared = std::pair<Status, NodeState>;
  OnDatabase<Prepared>(
      [this] {
        NodeState state;
        Status status = store_.Connect();
        if (status.ok()) status = store_.Migrate();
        if (status.ok()) status = store_.LoadNode(&state);
        return Prepared{status, std::move(state)};
      },
      [this](Prepared prepared) {
        OnDatabasePrepared(prepared.first, std::move(prepared.second));
      });
}

void Collector::OnDatabasePrepared(Status status, NodeState state) {
  if (!status.ok()) {
    AfterDatabaseFailure(status);
    if (mode_ == Mode::kOnce) {
      Finish(false);
    } else if (mode_ == Mode::kDaemon) {
      retry_timer_.expires_after(backoff_);
      retry_timer_.async_wait([this](boost::system::error_code ec) {
        if (!ec && mode_ == Mode::kDaemon) PrepareDatabase();
      });
    }
    MaybeFinish();
    return;
  }
  database_health_.Up(fmt::format("node {} has {} counters, commit {}",
                                  config_.node, state.baselines.size(),
                                  state.commit_seq));
  backoff_ = milliseconds(0);
  retry_after_ = {};
  engine_.Load(state.commit_seq, state.baselines);
  database_ready_ = true;
  if (!ready_sent_) {
    notifier_.Ready();
    ready_sent_ = true;
  }
  UpdateStatus();
  if (mode_ == Mode::kOnce) {
    Poll();
    return;
  }
  MaybeCommit();
  MaybeFinish();
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
    if (!ec && mode_ == Mode::kDaemon) Poll();
  });
}

void Collector::Poll() {
  if (mode_ == Mode::kDaemon) SchedulePoll();
  if (mode_ == Mode::kDaemon) {
    users_checked_ = false;
    hooks_.Poll();  // retries a failed hook, at most once a poll
  }
  if (fetch_in_flight_) {
    LogDebug("the previous fetch is still running; skipping this poll");
    return;
  }
  fetch_in_flight_ = true;
  source_.Fetch(config_.source.timeout,
                [this](Status status, StatsReply reply) {
                  boost::asio::post(io_, [this, status = std::move(status),
                                          reply = std::move(reply)]() mutable {
                    OnFetched(std::move(status), std::move(reply));
                    ReturnFreedMemory();
                  });
                });
}

void Collector::OnFetched(Status status, StatsReply reply) {
  fetch_in_flight_ = false;
  if (mode_ == Mode::kOnce || mode_ == Mode::kStopping) {
    final_fetch_done_ = true;
  }
  Snapshot snapshot;
  if (status.ok()) status = MakeSnapshot(reply, &snapshot);
  last_fetch_ok_ = status.ok();
  if (!status.ok()) {
    source_health_.Down(status.message());
    last_poll_result_ = "stats API: " + status.message();
  } else {
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
    if (observed.restarted > 0) {
      LogInfo(
          "{} counters started again from zero: sing-box restarted or "
          "reloaded its config; counting on from the new values",
          observed.restarted);
    }
    last_poll_result_ = fmt::format("last poll: {} counters, {} changed",
                                    snapshot.counters.size(), observed.changed);
    LogDebug("{}", last_poll_result_);
  }
  if (last_fetch_ok_ && database_ready_ && !database_health_.down()) {
    notifier_.Healthy();
  }
  MaybeCommit();
  UpdateStatus();
  MaybeFinish();
}

void Collector::MaybeCommit() {
  if (!database_ready_ || database_busy_) return;
  bool finishing = mode_ == Mode::kOnce || mode_ == Mode::kStopping;
  if (finishing && (!final_fetch_done_ || final_commit_tried_)) return;
  if (!finishing && steady_clock::now() < retry_after_) return;
  if (commit_unresolved_) {
    if (finishing) final_commit_tried_ = true;
    ResolveUnknownCommit();
    return;
  }
  if (MaybePrune()) return;
  if (!engine_.HasPending()) {
    CheckUsers();
    return;
  }
  if (finishing) final_commit_tried_ = true;
  auto batch = std::make_shared<CommitBatch>(engine_.Prepare());
  batch->read_users_fingerprint = mode_ == Mode::kDaemon && hooks_.enabled();
  size_t rows = batch->rows.size();
  // Interim use of the writer lease until the collector's state machine
  // takes it before loading: every commit takes (or renews) the lease
  // first, and the final one of a stop hands it back.
  milliseconds lease_ttl = std::max<milliseconds>(
      std::chrono::duration_cast<milliseconds>(config_.poll.interval * 3),
      std::chrono::seconds(1));
  OnDatabase<CommitResult>(
      [this, batch, lease_ttl, finishing, node = config_.node] {
        Status status = store_.Connect();
        LeaseState lease;
        if (status.ok()) status = store_.TakeLease(lease_ttl, &lease);
        if (!status.ok()) {
          return CommitResult{CommitOutcome::kNotApplied, status};
        }
        if (!lease.held) {
          return CommitResult{
              CommitOutcome::kLeaseLost,
              Status::Unavailable(LeaseHeldElsewhere(node, lease))};
        }
        batch->lease_token = lease.token;
        batch->lease_ttl = lease_ttl;
        CommitResult result = store_.Commit(*batch);
        if (finishing && result.outcome == CommitOutcome::kApplied) {
          store_.ReleaseLease(lease.token);
        }
        return result;
      },
      [this, rows](CommitResult result) { OnCommitted(result, rows); });
}

void Collector::OnCommitted(CommitResult result, size_t rows) {
  switch (result.outcome) {
    case CommitOutcome::kApplied:
      engine_.Committed();
      database_health_.Up(fmt::format("committed {} counters", rows));
      backoff_ = milliseconds(0);
      retry_after_ = {};
      LogDebug("committed {} counters (commit {})", rows, engine_.commit_seq());
      if (mode_ == Mode::kDaemon && !result.users_fingerprint.empty()) {
        users_checked_ = true;
        hooks_.UsersFingerprint(result.users_fingerprint);
      }
      break;
    case CommitOutcome::kNotApplied:
      engine_.NotCommitted();
      if (result.status.code() == Status::Code::kInvalid) {
        // The node's commit sequence moved under us: another collector
        // wrote for this node. Start again from what the database holds.
        LogError("{}", result.status.message());
        database_ready_ = false;
        PrepareDatabase();
        return;
      }
      AfterDatabaseFailure(result.status);
      break;
    case CommitOutcome::kLeaseLost:
      // Another collector writes for this node: nothing applied.
      engine_.NotCommitted();
      LogError("{}", result.status.message());
      AfterDatabaseFailure(result.status);
      break;
    case CommitOutcome::kUnknown:
      LogWarn(
          "the outcome of a commit of {} counters is unknown ({}); "
          "asking the database before committing again",
          rows, result.status.message());
      commit_unresolved_ = true;
      AfterDatabaseFailure(result.status);
      break;
  }
  if (mode_ == Mode::kDaemon) MaybeCommit();
  UpdateStatus();
  MaybeFinish();
}

bool Collector::MaybePrune() {
  // Only a running daemon prunes; --once and shutdown do not wait for it.
  if (mode_ != Mode::kDaemon) return false;
  auto now = steady_clock::now();
  if (next_prune_ == steady_clock::time_point{}) next_prune_ = now;
  if (now < next_prune_) return false;
  // Commits go first; a node so busy that something is always pending
  // prunes anyway once it is an hour late.
  if (engine_.HasPending() && now < next_prune_ + kPruneInterval) {
    return false;
  }
  next_prune_ = now + kPruneInterval;
  using Pruned = std::pair<Status, PruneResult>;
  std::chrono::hours retention = config_.history.retention;
  OnDatabase<Pruned>(
      [this, retention] {
        PruneResult result;
        Status status = store_.Connect();
        if (status.ok()) {
          status = store_.PruneHistory(retention, kPruneBudget, &result);
        }
        return Pruned{status, result};
      },
      [this, retention](Pruned pruned) {
        const auto& [status, result] = pruned;
        if (!status.ok()) {
          // An unreachable database is reported by the commits already.
          if (status.code() == Status::Code::kUnavailable) {
            LogDebug("{}", status.message());
          } else {
            LogWarn("{}; trying again in an hour", status.message());
          }
        } else if (result.deleted > 0) {
          LogInfo("deleted {} rows of hourly history older than {}h{}",
                  result.deleted, retention.count(),
                  result.done ? "" : "; more are left for the next hour");
        }
        MaybeCommit();
        MaybeFinish();
      });
  return true;
}

void Collector::CheckUsers() {
  if (mode_ != Mode::kDaemon || users_checked_ || !hooks_.enabled()) return;
  users_checked_ = true;
  using Read = std::pair<Status, std::string>;
  OnDatabase<Read>(
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
        MaybeCommit();
        MaybeFinish();
      });
}

void Collector::ResolveUnknownCommit() {
  using Read = std::pair<Status, int64_t>;
  OnDatabase<Read>(
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
    MaybeFinish();
    return;
  }
  commit_unresolved_ = false;
  int64_t before = engine_.commit_seq();
  if (!engine_.Resolve(seq)) {
    LogError(
        "node {}: the database's commit sequence is {}, but this "
        "collector expected {} or {}; is another collector running for "
        "this node? Reloading the node's state from the database",
        config_.node, seq, before, before + 1);
    database_ready_ = false;
    PrepareDatabase();
    return;
  }
  LogInfo("the commit whose outcome was unknown {}",
          seq == before + 1 ? "did apply" : "did not apply; retrying it");
  database_health_.Up("commit sequence read");
  if (mode_ == Mode::kDaemon) MaybeCommit();
  MaybeFinish();
}

void Collector::AfterDatabaseFailure(const Status& status) {
  database_health_.Down(status.message());
  backoff_ = std::clamp(backoff_ * 2, kMinBackoff, kMaxBackoff);
  retry_after_ = steady_clock::now() + backoff_;
}

void Collector::MaybeFinish() {
  if (mode_ != Mode::kOnce && mode_ != Mode::kStopping) return;
  if (fetch_in_flight_ || database_busy_ || !final_fetch_done_) return;
  bool ok = last_fetch_ok_ && database_ready_ && !commit_unresolved_ &&
            !engine_.HasPending();
  Finish(ok);
}

void Collector::Finish(bool ok) {
  if (mode_ == Mode::kStopped) return;
  once_ok_ = ok;
  mode_ = Mode::kStopped;
  poll_timer_.cancel();
  retry_timer_.cancel();
  watchdog_timer_.cancel();
  stop_timer_.cancel();
  int64_t pending = engine_.pending_bytes();
  if (pending > 0) {
    LogWarn(
        "{} bytes counted by sing-box are not committed; sing-box's "
        "counters still hold them, and the next start commits them from "
        "the stored baseline unless sing-box restarts first",
        pending);
  }
  io_.stop();
}

void Collector::ScheduleWatchdog() {
  std::optional<std::chrono::microseconds> interval =
      notifier_.WatchdogInterval();
  if (!interval) return;
  notifier_.Watchdog();
  watchdog_timer_.expires_after(*interval);
  watchdog_timer_.async_wait([this](boost::system::error_code ec) {
    if (!ec && mode_ != Mode::kStopped) ScheduleWatchdog();
  });
}

void Collector::UpdateStatus() {
  notifier_.Status(fmt::format(
      "{}; {} counters tracked, {} bytes pending; database {}",
      last_poll_result_, engine_.size(), engine_.pending_bytes(),
      database_ready_ && !database_health_.down() ? "ok" : "unavailable"));
}

}  // namespace boxmeter
