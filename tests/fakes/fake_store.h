// FakeStore: an in-memory Store that applies batches the way PgStore does
// (guarded by the node's commit sequence) and fails on command. Thread-safe:
// the collector calls it from its database thread while tests inspect it.
#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>

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
    for (const auto& [key, row] : rows_) out->baselines.push_back(row.baseline);
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
    }
    if (next == Next::kApplied) {
      return {CommitOutcome::kApplied, Status::Ok(),
              batch.read_users_fingerprint ? users_fingerprint_ : ""};
    }
    return {CommitOutcome::kUnknown, Status::Unavailable("fake: lost reply")};
  }
  // TEMPSTUB
  Status TakeLease(std::chrono::milliseconds, LeaseState* out) override {
    std::lock_guard lock(mu_);
    if (!up_) return Status::Unavailable("fake database is down");
    out->held = true;
    out->token = 1;
    return Status::Ok();
  }
  Status ReleaseLease(int64_t) override { return Status::Ok(); }
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
  int fingerprint_reads() {
    std::lock_guard lock(mu_);
    return fingerprint_reads_;
  }
  int prunes() {
    std::lock_guard lock(mu_);
    return prunes_;
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
  std::mutex mu_;
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
  std::chrono::hours last_retention_{0};
  std::chrono::milliseconds last_budget_{0};
};

}  // namespace boxmeter::testing
