#include "delta_engine.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

namespace boxmeter {
namespace {

constexpr int64_t kStart = 1'700'000'000'000;  // ms; some instance start

CounterKey User(const std::string& name) {
  return CounterKey{CounterKind::kUser, name};
}

Snapshot Snap(int64_t instance_start_ms, int64_t taken_at_ms,
              std::vector<std::pair<CounterKey, CounterValues>> counters) {
  Snapshot snapshot;
  snapshot.instance_start_ms = instance_start_ms;
  snapshot.taken_at_ms = taken_at_ms;
  for (auto& [key, values] : counters) snapshot.counters[key] = values;
  return snapshot;
}

// The rows of a batch by name, for assertions.
std::map<std::string, CommitRow> Rows(const CommitBatch& batch) {
  std::map<std::string, CommitRow> rows;
  for (const CommitRow& row : batch.rows) rows[row.key.name] = row;
  return rows;
}

TEST(DeltaEngineTest, FirstSightOfANewCounterCountsEverything) {
  DeltaEngine engine;
  engine.Load(0, {});
  engine.Observe(Snap(kStart, kStart + 5000, {{User("a"), {100, 200}}}));
  CommitBatch batch = engine.Prepare();
  ASSERT_EQ(batch.rows.size(), 1u);
  EXPECT_EQ(batch.expected_seq, 0);
  EXPECT_EQ(batch.rows[0].delta, (CounterValues{100, 200}));
  EXPECT_EQ(batch.rows[0].baseline, (CounterValues{100, 200}));
  EXPECT_EQ(batch.rows[0].instance_start_ms, kStart);
  EXPECT_EQ(batch.observed_at_ms, kStart + 5000);
}

TEST(DeltaEngineTest, SameInstanceCountsTheDifference) {
  DeltaEngine engine;
  engine.Load(3, {{User("a"), {100, 200}, kStart}});
  engine.Observe(Snap(kStart + 700, kStart + 9000, {{User("a"), {150, 260}}}));
  CommitBatch batch = engine.Prepare();
  ASSERT_EQ(batch.rows.size(), 1u);
  EXPECT_EQ(batch.expected_seq, 3);
  EXPECT_EQ(batch.rows[0].delta, (CounterValues{50, 60}));
  EXPECT_EQ(batch.rows[0].baseline, (CounterValues{150, 260}));
  // The stored identity is kept, not walked by the uptime's jitter.
  EXPECT_EQ(batch.rows[0].instance_start_ms, kStart);
}

TEST(DeltaEngineTest, RestartDetectedByUptimeCountsTheNewValue) {
  DeltaEngine engine;
  engine.Load(0, {{User("a"), {100, 200}, kStart}});
  // Higher values than the baseline, but a start time 60 s later: a restart
  // (or a config reload) whose instance already moved more than the old one.
  int64_t new_start = kStart + 60'000;
  auto result = engine.Observe(
      Snap(new_start, new_start + 30'000, {{User("a"), {500, 900}}}));
  EXPECT_EQ(result.restarted, 1u);
  CommitBatch batch = engine.Prepare();
  ASSERT_EQ(batch.rows.size(), 1u);
  EXPECT_EQ(batch.rows[0].delta, (CounterValues{500, 900}));
  EXPECT_EQ(batch.rows[0].instance_start_ms, new_start);
}

TEST(DeltaEngineTest, RestartDetectedByDecreaseCountsTheNewValue) {
  DeltaEngine engine;
  engine.Load(0, {{User("a"), {100, 200}, kStart}});
  // Same apparent start time (within tolerance), but lower values.
  auto result = engine.Observe(
      Snap(kStart + 1000, kStart + 9000, {{User("a"), {40, 250}}}));
  EXPECT_EQ(result.restarted, 1u);
  CommitBatch batch = engine.Prepare();
  ASSERT_EQ(batch.rows.size(), 1u);
  EXPECT_EQ(batch.rows[0].delta, (CounterValues{40, 250}));
}

TEST(DeltaEngineTest, UnchangedCountersAreNotWritten) {
  DeltaEngine engine;
  engine.Load(0,
              {{User("a"), {100, 200}, kStart}, {User("b"), {1, 1}, kStart}});
  auto result = engine.Observe(Snap(
      kStart, kStart + 9000, {{User("a"), {100, 200}}, {User("b"), {2, 1}}}));
  EXPECT_EQ(result.changed, 1u);
  CommitBatch batch = engine.Prepare();
  ASSERT_EQ(batch.rows.size(), 1u);
  EXPECT_EQ(batch.rows[0].key.name, "b");
}

TEST(DeltaEngineTest, IdleNodeHasNothingToCommit) {
  DeltaEngine engine;
  engine.Load(0, {{User("a"), {100, 200}, kStart}});
  engine.Observe(Snap(kStart, kStart + 9000, {{User("a"), {100, 200}}}));
  EXPECT_FALSE(engine.HasPending());
  EXPECT_TRUE(engine.Prepare().rows.empty());
}

TEST(DeltaEngineTest, PendingSurvivesFailedCommitsAndRestarts) {
  DeltaEngine engine;
  engine.Load(0, {});
  engine.Observe(Snap(kStart, kStart + 1000, {{User("a"), {10, 20}}}));
  engine.Prepare();
  engine.NotCommitted();  // the database is down
  engine.Observe(Snap(kStart, kStart + 2000, {{User("a"), {15, 30}}}));
  // sing-box restarts while the database is still down.
  int64_t new_start = kStart + 10'000;
  engine.Observe(Snap(new_start, new_start + 1000, {{User("a"), {7, 8}}}));
  engine.Prepare();
  engine.NotCommitted();
  engine.Observe(Snap(new_start, new_start + 2000, {{User("a"), {9, 9}}}));
  CommitBatch batch = engine.Prepare();
  ASSERT_EQ(batch.rows.size(), 1u);
  EXPECT_EQ(batch.rows[0].delta, (CounterValues{15 + 9, 30 + 9}));
  EXPECT_EQ(batch.rows[0].baseline, (CounterValues{9, 9}));
  EXPECT_EQ(batch.rows[0].instance_start_ms, new_start);
  engine.Committed();
  EXPECT_FALSE(engine.HasPending());
  EXPECT_EQ(engine.commit_seq(), 1);
}

TEST(DeltaEngineTest, TrafficSeenDuringACommitStaysPending) {
  DeltaEngine engine;
  engine.Load(0, {});
  engine.Observe(Snap(kStart, kStart + 1000, {{User("a"), {10, 0}}}));
  engine.Prepare();
  engine.Observe(Snap(kStart, kStart + 2000, {{User("a"), {25, 0}}}));
  engine.Committed();
  CommitBatch batch = engine.Prepare();
  ASSERT_EQ(batch.rows.size(), 1u);
  EXPECT_EQ(batch.rows[0].delta, (CounterValues{15, 0}));
  EXPECT_EQ(batch.expected_seq, 1);
}

TEST(DeltaEngineTest, UnknownOutcomeIsResolvedByTheSequence) {
  for (bool applied : {true, false}) {
    SCOPED_TRACE(applied ? "applied" : "not applied");
    DeltaEngine engine;
    engine.Load(5, {});
    engine.Observe(Snap(kStart, kStart + 1000, {{User("a"), {10, 0}}}));
    engine.Prepare();
    EXPECT_TRUE(engine.Resolve(applied ? 6 : 5));
    EXPECT_EQ(engine.commit_seq(), applied ? 6 : 5);
    EXPECT_EQ(engine.HasPending(), !applied);
  }
}

TEST(DeltaEngineTest, ASequenceFromAnotherWriterAsksForAReload) {
  DeltaEngine engine;
  engine.Load(5, {});
  engine.Observe(Snap(kStart, kStart + 1000, {{User("a"), {10, 0}}}));
  engine.Prepare();
  EXPECT_FALSE(engine.Resolve(9));
  EXPECT_FALSE(engine.in_flight());
}

TEST(DeltaEngineTest, ReplayedBatchCarriesTheSameExpectedSequence) {
  // The store applies a batch only while the node's sequence equals
  // expected_seq, so a batch that is sent twice applies once. The engine's
  // part: a batch prepared after a commit expects the next sequence.
  DeltaEngine engine;
  engine.Load(0, {});
  engine.Observe(Snap(kStart, kStart + 1000, {{User("a"), {10, 0}}}));
  CommitBatch first = engine.Prepare();
  engine.Committed();
  engine.Observe(Snap(kStart, kStart + 2000, {{User("a"), {11, 0}}}));
  CommitBatch second = engine.Prepare();
  EXPECT_EQ(first.expected_seq, 0);
  EXPECT_EQ(second.expected_seq, 1);
}

TEST(DeltaEngineTest, ObservationsBeforeLoadContinueFromTheStoredBaseline) {
  DeltaEngine engine;
  // The database is down at start; two polls happen first.
  engine.Observe(Snap(kStart, kStart + 1000,
                      {{User("a"), {150, 250}}, {User("new"), {5, 5}}}));
  engine.Observe(Snap(kStart, kStart + 2000,
                      {{User("a"), {160, 260}}, {User("new"), {6, 6}}}));
  EXPECT_FALSE(engine.loaded());
  engine.Load(2, {{User("a"), {100, 200}, kStart},
                  {User("idle"), {1, 1}, kStart - 100'000}});
  auto rows = Rows(engine.Prepare());
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows["a"].delta, (CounterValues{60, 60}));
  EXPECT_EQ(rows["new"].delta, (CounterValues{6, 6}));
  EXPECT_EQ(engine.size(), 3u);
}

TEST(DeltaEngineTest, ObservationsBeforeLoadAcrossARestart) {
  DeltaEngine engine;
  int64_t new_start = kStart + 50'000;
  engine.Observe(Snap(new_start, new_start + 1000, {{User("a"), {30, 40}}}));
  engine.Load(0, {{User("a"), {100, 200}, kStart}});
  auto rows = Rows(engine.Prepare());
  EXPECT_EQ(rows["a"].delta, (CounterValues{30, 40}));
}

TEST(DeltaEngineTest, HugeValuesSaturateInsteadOfWrapping) {
  DeltaEngine engine;
  engine.Load(0, {});
  int64_t max = std::numeric_limits<int64_t>::max();
  engine.Observe(Snap(kStart, kStart + 1000, {{User("a"), {max, 0}}}));
  engine.Observe(
      Snap(kStart + 60'000, kStart + 61'000, {{User("a"), {max, 0}}}));
  auto rows = Rows(engine.Prepare());
  EXPECT_EQ(rows["a"].delta.uplink, max);
}

// A randomized run: the engine, a simulated database applying its batches the
// way the store does, and an independent model of what the totals must be,
// driven by one random sequence of traffic, polls, commits with every
// outcome, sing-box restarts, collector crashes and database outages.
class Simulation {
 public:
  explicit Simulation(uint32_t seed) : random_(seed) {}

  void Run(int steps) {
    engine_ = std::make_unique<DeltaEngine>();
    NewInstance();
    for (int i = 0; i < steps; ++i) Step();
    Drain();
    for (const auto& [name, expected] : expected_) {
      SCOPED_TRACE(name);
      EXPECT_EQ(db_[name].total, expected);
    }
    for (const auto& [name, row] : db_) {
      if (!expected_.count(name)) {
        EXPECT_EQ(row.total, (CounterValues{})) << name;
      }
    }
  }

 private:
  struct DbRow {
    CounterValues total;
    CounterValues base;
    int64_t instance_start_ms = 0;
  };

  int Pick(int n) {
    return std::uniform_int_distribution<int>(0, n - 1)(random_);
  }

  void Advance(int64_t min_ms, int64_t max_ms) {
    now_ms_ += std::uniform_int_distribution<int64_t>(min_ms, max_ms)(random_);
  }

  void NewInstance() {
    Advance(3000, 20'000);  // an instance lives longer than the tolerance
    instance_start_ms_ = now_ms_;
    live_.clear();
    polled_.clear();
  }

  void Traffic() {
    std::string name = "u" + std::to_string(Pick(6));
    int64_t up = Pick(1'000'000), down = Pick(1'000'000);
    live_[name].uplink += up;
    live_[name].downlink += down;
  }

  void Poll() {
    Advance(500, 10'000);
    Snapshot snapshot;
    snapshot.taken_at_ms = now_ms_;
    // Uptime is whole seconds: the computed start lags by up to a second.
    snapshot.instance_start_ms =
        now_ms_ - ((now_ms_ - instance_start_ms_) / 1000) * 1000;
    for (const auto& [name, values] : live_) {
      snapshot.counters[User(name)] = values;
      CounterValues& polled = polled_[name];
      expected_[name].uplink += values.uplink - polled.uplink;
      expected_[name].downlink += values.downlink - polled.downlink;
      polled = values;
    }
    engine_->Observe(snapshot);
  }

  void Apply(const CommitBatch& batch) {
    if (batch.expected_seq != db_seq_) return;
    for (const CommitRow& row : batch.rows) {
      DbRow& db = db_[row.key.name];
      db.total.uplink += row.delta.uplink;
      db.total.downlink += row.delta.downlink;
      db.base = row.baseline;
      db.instance_start_ms = row.instance_start_ms;
    }
    ++db_seq_;
  }

  void Commit() {
    if (!engine_->loaded() || engine_->in_flight()) return;
    CommitBatch batch = engine_->Prepare();
    if (Pick(3) == 0) Poll();  // a poll lands while the commit is in flight
    switch (Pick(5)) {
      case 0:
      case 1:
        Apply(batch);
        engine_->Committed();
        break;
      case 2:
        engine_->NotCommitted();
        break;
      case 3:  // connection lost during COMMIT, which did apply
        Apply(batch);
        ASSERT_TRUE(engine_->Resolve(db_seq_));
        break;
      case 4:  // connection lost during COMMIT, which did not apply
        ASSERT_TRUE(engine_->Resolve(db_seq_));
        break;
    }
  }

  // The collector dies: what it had pending is gone. What sing-box's
  // cumulative counters hold beyond the database's baseline is found again
  // by the next poll, unless sing-box restarts first.
  void Crash() {
    engine_ = std::make_unique<DeltaEngine>();
    for (auto& [name, expected] : expected_) expected = db_[name].total;
    for (auto& [name, polled] : polled_) {
      const DbRow& db = db_[name];
      polled = SameInstance(db.instance_start_ms, instance_start_ms_)
                   ? db.base
                   : CounterValues{};
    }
  }

  void Load() {
    if (engine_->loaded()) return;
    std::vector<Baseline> baselines;
    for (const auto& [name, row] : db_) {
      baselines.push_back({User(name), row.base, row.instance_start_ms});
    }
    engine_->Load(db_seq_, baselines);
  }

  void Step() {
    int roll = Pick(100);
    if (roll < 45) {
      Traffic();
    } else if (roll < 65) {
      Poll();
    } else if (roll < 80) {
      Commit();
    } else if (roll < 86) {
      NewInstance();  // sing-box restarts or reloads
    } else if (roll < 91) {
      Crash();
    } else {
      Load();  // the database answers at start-up
    }
  }

  // The end: sing-box stays up, the database answers, and the collector
  // polls and commits until nothing is pending.
  void Drain() {
    Load();
    Poll();
    while (engine_->HasPending()) {
      CommitBatch batch = engine_->Prepare();
      Apply(batch);
      engine_->Committed();
    }
  }

  std::mt19937 random_;
  std::unique_ptr<DeltaEngine> engine_;
  int64_t now_ms_ = kStart;
  int64_t instance_start_ms_ = 0;
  std::map<std::string, CounterValues> live_;    // sing-box's counters
  std::map<std::string, CounterValues> polled_;  // last poll, this instance
  std::map<std::string, CounterValues> expected_;
  std::map<std::string, DbRow> db_;
  int64_t db_seq_ = 0;
};

TEST(DeltaEngineTest, RandomizedAgainstAModel) {
  for (uint32_t seed = 1; seed <= 300; ++seed) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    Simulation(seed).Run(400);
    if (HasFailure()) break;
  }
}

}  // namespace
}  // namespace boxmeter
