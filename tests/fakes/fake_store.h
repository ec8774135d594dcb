// FakeStore: an in-memory Store that applies batches the way PgStore does
// (guarded by the node's writer lease and commit sequence) and fails on
// command. Thread-safe: the collector calls it from its database thread
// while tests inspect it.
//
// The writer lease follows PgStore's rules (store.h) on an injectable clock
// (SetClock; the steady clock by default): this store is holder(); a test
// plays another collector for the same node with TakeLeaseAs (which, like a
// collector, cannot take a live lease) or StealLease (a takeover after this
// store's lease lapsed, without waiting for the clock).
#pragma once

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>

#include "store.h"

namespace boxmeter::testing {

class FakeStore : public Store {
 public:
  struct Row {
    CounterValues total;
    Baseline baseline;
  };

  // What the next Commit calls do, in order; kApplied once the queue is
  // empty. kUnknownApplied applies the batch but reports kUnknown (the reply
  // to COMMIT was lost); kUnknown reports kUnknown without applying.
  enum class Next { kApplied, kNotApplied, kUnknownApplied, kUnknown };

  Status Connect() override {
    std::lock_guard lock(mu_);
    ++connects_;
    return up_ ? Status::Ok() : Status::Unavailable("fake database is down");
  }
  Status Migrate() override {
    std::lock_guard lock(mu_);
    return up_ ? Status::Ok() : Status::Unavailable("fake database is down");
  }
  Status LoadNode(NodeState* out) override {
    std::lock_guard lock(mu_);
    if (!up_) return Status::Unavailable("fake database is down");
    out->commit_seq = seq_;
    out->instance = instance_;
    out->baselines.clear();
    out->totals.clear();
    for (const auto& [key, row] : rows_) {
      out->baselines.push_back(row.baseline);
      out->totals.push_back({key, row.total});
    }
    ++loads_;
    return Status::Ok();
  }
  CommitResult Commit(const CommitBatch& batch) override {
    std::unique_lock lock(mu_);
    ++commits_;
    // Held: the commit is "in flight" until the test releases it.
    gate_.wait(lock, [this] { return !hold_commits_; });
    if (!up_) {
      return {CommitOutcome::kNotApplied,
              Status::Unavailable("fake database is down")};
    }
    Next next = Next::kApplied;
    if (!script_.empty()) {
      next = script_.front();
      script_.pop_front();
    }
    if (next == Next::kNotApplied) {
      return {CommitOutcome::kNotApplied, Status::Error("fake failure")};
    }
    if (batch.lease_token != lease_.token || lease_.holder != holder_) {
      return {
          CommitOutcome::kLeaseLost,
          Status::Invalid("fake: " + LeaseLost("fake-node", holder_,
                                               batch.lease_token, LeaseNow()))};
    }
    if (batch.expected_seq != seq_) {
      return {CommitOutcome::kNotApplied,
              Status::Invalid("fake: commit sequence moved")};
    }
    if (next != Next::kUnknown) {
      for (const CommitRow& row : batch.rows) {
        Row& stored = rows_[row.key];
        stored.total.uplink += row.delta.uplink;
        stored.total.downlink += row.delta.downlink;
        stored.baseline = {row.key, row.baseline, row.generation};
      }
      instance_ = batch.instance;
      ++seq_;
      ++applied_;
      lease_expires_ = std::max(lease_expires_, clock_() + batch.lease_ttl);
    }
    if (next == Next::kApplied) {
      if (batch.read_users_fingerprint) ++fingerprint_reads_;
      return {CommitOutcome::kApplied, Status::Ok(),
              batch.read_users_fingerprint ? users_fingerprint_ : ""};
    }
    return {CommitOutcome::kUnknown, Status::Unavailable("fake: lost reply")};
  }
  Status TakeLease(std::chrono::milliseconds ttl, LeaseState* out) override {
    std::lock_guard lock(mu_);
    ++lease_takes_;
    if (!up_) return Status::Unavailable("fake database is down");
    if (ttl.count() <= 0) return Status::Invalid("fake: lease TTL <= 0");
    TakeLocked(holder_, ttl);
    *out = LeaseNow();
    out->held = lease_.holder == holder_;
    return Status::Ok();
  }
  Status ReleaseLease(int64_t token) override {
    std::lock_guard lock(mu_);
    ++lease_releases_;
    if (!up_) return Status::Unavailable("fake database is down");
    if (lease_.holder == holder_ && lease_.token == token) lease_.holder = "";
    return Status::Ok();
  }
  Status ReadCommitSeq(int64_t* seq) override {
    std::lock_guard lock(mu_);
    if (!up_) return Status::Unavailable("fake database is down");
    *seq = seq_;
    return Status::Ok();
  }
  Status ReadUsersFingerprint(std::string* fingerprint) override {
    std::lock_guard lock(mu_);
    ++fingerprint_reads_;
    if (!up_) return Status::Unavailable("fake database is down");
    *fingerprint = users_fingerprint_;
    return Status::Ok();
  }
  Status ReadUndeliveredEvents(int max_events, std::chrono::milliseconds lease,
                               std::vector<UsageEvent>* out) override {
    std::lock_guard lock(mu_);
    ++event_reads_;
    out->clear();
    if (!up_) return Status::Unavailable("fake database is down");
    last_event_lease_ = lease;
    if (events_delivered_elsewhere_) return Status::Ok();
    for (const auto& [id, event] : events_) {
      if (static_cast<int>(out->size()) == max_events) break;
      if (event.marks == 0) out->push_back({id, event.json});
    }
    return Status::Ok();
  }
  Status MarkEventDelivered(int64_t id,
                            std::chrono::milliseconds lease) override {
    std::lock_guard lock(mu_);
    if (!up_) return Status::Unavailable("fake database is down");
    auto found = events_.find(id);
    if (found == events_.end()) {
      return Status::Error("fake: no usage event has id " + std::to_string(id));
    }
    ++found->second.marks;
    last_event_lease_ = lease;
    return Status::Ok();
  }
  Status EnsureHistoryPartitions(int days_ahead, int* created) override {
    std::lock_guard lock(mu_);
    ++partition_runs_;
    last_days_ahead_ = days_ahead;
    *created = 0;
    if (!up_) return Status::Unavailable("fake database is down");
    return Status::Ok();
  }
  Status PruneHistory(std::chrono::hours retention,
                      std::chrono::milliseconds budget,
                      PruneResult* out) override {
    std::lock_guard lock(mu_);
    ++prunes_;
    last_retention_ = retention;
    last_budget_ = budget;
    if (!up_) return Status::Unavailable("fake database is down");
    *out = PruneResult{};
    return Status::Ok();
  }

  // Usage events: AddEvent records one (its JSON is {"id":N}); marks(id)
  // counts MarkEventDelivered calls for it (once marked, reads skip it).
  void AddEvent(int64_t id) {
    std::lock_guard lock(mu_);
    events_[id] = {fmt::format("{{\"id\":{}}}", id), 0};
  }
  int marks(int64_t id) {
    std::lock_guard lock(mu_);
    return events_.count(id) ? events_[id].marks : 0;
  }
  int event_reads() {
    std::lock_guard lock(mu_);
    return event_reads_;
  }
  std::chrono::milliseconds last_event_lease() {
    std::lock_guard lock(mu_);
    return last_event_lease_;
  }
  // Another node's collector holds the delivery lease: reads return none.
  void DeliverEventsElsewhere(bool elsewhere) {
    std::lock_guard lock(mu_);
    events_delivered_elsewhere_ = elsewhere;
  }

  // The lease's clock (milliseconds, any epoch); the steady clock if unset.
  void SetClock(std::function<std::chrono::milliseconds()> clock) {
    std::lock_guard lock(mu_);
    clock_ = std::move(clock);
  }
  // Who this store is in the lease ("host fake pid 1 this" unless set).
  void SetHolder(std::string holder) {
    std::lock_guard lock(mu_);
    holder_ = std::move(holder);
  }
  std::string holder() {
    std::lock_guard lock(mu_);
    return holder_;
  }
  // Another collector for the node tries to take the lease, with the same
  // rules as TakeLease: true when it holds it now.
  bool TakeLeaseAs(const std::string& holder, std::chrono::milliseconds ttl) {
    std::lock_guard lock(mu_);
    TakeLocked(holder, ttl);
    return lease_.holder == holder;
  }
  // Another collector took the node over (as after this store's lease
  // lapsed), whoever held it: the token moves on.
  void StealLease(const std::string& holder, std::chrono::milliseconds ttl) {
    std::lock_guard lock(mu_);
    lease_expires_ = clock_();
    TakeLocked(holder, ttl);
  }
  // The lease now: held is whether this store holds it.
  LeaseState lease() {
    std::lock_guard lock(mu_);
    LeaseState now = LeaseNow();
    now.held = !lease_.holder.empty() && lease_.holder == holder_;
    return now;
  }
  int connects() {
    std::lock_guard lock(mu_);
    return connects_;
  }
  int lease_takes() {
    std::lock_guard lock(mu_);
    return lease_takes_;
  }
  int lease_releases() {
    std::lock_guard lock(mu_);
    return lease_releases_;
  }

  // While held, Commit blocks (on the collector's database thread) after
  // counting itself in commits(), as a commit waiting on a row lock would.
  void HoldCommits(bool hold) {
    {
      std::lock_guard lock(mu_);
      hold_commits_ = hold;
    }
    gate_.notify_all();
  }

  void SetUp(bool up) {
    std::lock_guard lock(mu_);
    up_ = up;
  }
  void Script(std::initializer_list<Next> next) {
    std::lock_guard lock(mu_);
    script_.insert(script_.end(), next);
  }
  CounterValues Total(const CounterKey& key) {
    std::lock_guard lock(mu_);
    return rows_.count(key) ? rows_[key].total : CounterValues{};
  }
  int commits() {
    std::lock_guard lock(mu_);
    return commits_;
  }
  int applied() {
    std::lock_guard lock(mu_);
    return applied_;
  }
  int loads() {
    std::lock_guard lock(mu_);
    return loads_;
  }
  // What ReadUsersFingerprint and applied commits report from now on.
  void SetUsersFingerprint(std::string fingerprint) {
    std::lock_guard lock(mu_);
    users_fingerprint_ = std::move(fingerprint);
  }
  // Reads of the users fingerprint: alone, and in applied commits.
  int fingerprint_reads() {
    std::lock_guard lock(mu_);
    return fingerprint_reads_;
  }
  int prunes() {
    std::lock_guard lock(mu_);
    return prunes_;
  }
  // EnsureHistoryPartitions calls, and the days ahead of the last one.
  int partition_runs() {
    std::lock_guard lock(mu_);
    return partition_runs_;
  }
  int last_days_ahead() {
    std::lock_guard lock(mu_);
    return last_days_ahead_;
  }
  std::chrono::hours last_retention() {
    std::lock_guard lock(mu_);
    return last_retention_;
  }
  std::chrono::milliseconds last_budget() {
    std::lock_guard lock(mu_);
    return last_budget_;
  }

 private:
  static std::chrono::milliseconds SteadyNow() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now().time_since_epoch());
  }
  // PgStore's kTakeLease: free, lapsed or already `holder`'s.
  void TakeLocked(const std::string& holder, std::chrono::milliseconds ttl) {
    std::chrono::milliseconds now = clock_();
    if (!lease_.holder.empty() && lease_.holder != holder &&
        lease_expires_ > now) {
      return;
    }
    if (lease_.holder != holder) ++lease_.token;
    lease_.holder = holder;
    lease_expires_ = now + ttl;
  }
  // The lease as the database has it (held is left false).
  LeaseState LeaseNow() {
    LeaseState now{false, lease_.token, lease_.holder,
                   std::chrono::milliseconds(0)};
    if (!lease_.holder.empty()) {
      now.expires_in =
          std::max(std::chrono::milliseconds(0), lease_expires_ - clock_());
    }
    return now;
  }

  std::mutex mu_;
  std::function<std::chrono::milliseconds()> clock_ = SteadyNow;
  std::string holder_ = "host fake pid 1 this";
  LeaseState lease_;  // holder and token; holder empty: nobody
  std::chrono::milliseconds lease_expires_{0};
  int lease_takes_ = 0, lease_releases_ = 0;
  std::condition_variable gate_;
  bool hold_commits_ = false;
  bool up_ = true;
  std::deque<Next> script_;
  std::map<CounterKey, Row> rows_;
  InstanceIdentity instance_;
  int64_t seq_ = 0;
  std::string users_fingerprint_ = "initial";
  int fingerprint_reads_ = 0;
  int connects_ = 0, commits_ = 0, applied_ = 0, loads_ = 0, prunes_ = 0;
  int partition_runs_ = 0, last_days_ahead_ = 0;
  struct StoredEvent {
    std::string json;
    int marks = 0;
  };
  std::map<int64_t, StoredEvent> events_;
  int event_reads_ = 0;
  std::chrono::milliseconds last_event_lease_{0};
  bool events_delivered_elsewhere_ = false;
  std::chrono::hours last_retention_{0};
  std::chrono::milliseconds last_budget_{0};
};

}  // namespace boxmeter::testing
