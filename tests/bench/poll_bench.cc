// boxmeter-bench: the cost of one poll cycle at 10k to 1M counters, against
// the naive writer, the textbook set-based writer and PostgreSQL's floor.
//
// For each size N (stats served by the fake StatsService, as in "a reply of
// N counters": half users, a quarter inbounds, a quarter outbounds, in
// uplink/downlink pairs, so N/2 tracked counters, i.e. database rows) one
// child process:
//   - starts a throwaway PostgreSQL (PgServer: default settings apart from
//     fsync and full_page_writes off) and the fake-stats-server binary,
//   - loads every counter once (the first commit of a new node),
//   - for each fraction changed: touches that fraction of the stats, then
//     polls exactly as the collector does (GrpcStatsSource, MakeSnapshot,
//     DeltaEngine, PgStore::Commit), warm-up polls first, and applies each
//     batch also with the reference writers, each on its own database,
//   - polls with nothing changed and proves nothing was written,
//   - measures the delta engine's memory per counter and the peak RSS.
// The parent collects the children's results and prints the tables. A
// child per N keeps the memory figures of one size free of the others.
//
// Benchmark code: failures throw and end the run with a message.
#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <pqxx/pqxx>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "delta_engine.h"
#include "fake_stats_process.h"
#include "fake_stats_server.h"
#include "grpc_stats_source.h"
#include "log.h"
#include "pg_server.h"
#include "pg_store.h"
#include "process.h"
#include "process_probe.h"
#include "reference_writers.h"
#include "snapshot.h"
#include "stats.pb.h"

namespace boxmeter::testing {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kNode[] = "bench";
constexpr int64_t kTouchBytes = 1500;  // added to each changed stat per poll
constexpr auto kFetchTimeout = std::chrono::seconds(60);
constexpr int64_t kMaxMessageBytes = int64_t{1} << 30;
constexpr auto kServerAnswerTimeout = std::chrono::seconds(120);

constexpr const char* kUsage = R"(usage: boxmeter-bench [options]
  --stats N,N,...      stats served per run, two per tracked counter
                       (default 10000,100000,400000,1000000)
  --fractions F,F,...  fractions changed per poll (default 0.01,0.1,1)
  --polls K            measured polls per fraction, median reported (5)
  --warmup W           unmeasured polls before them (2)
  --idle-polls K       polls with nothing changed (5)
  --naive-max-rows R   naive writer on at most R rows, then extrapolated
                       (default 100000)
  --shared-buffers S   PostgreSQL's shared_buffers, e.g. 1GB (default: the
                       server's default, 128MB)
  --output FILE        also write the tables to FILE
  --fake-server BIN    the fake-stats-server binary (default: the built one)
  --core-only          time only the pure core (MakeSnapshot, DeltaEngine) on
                       synthetic replies: no server, no database; for
                       profiling with callgrind
)";

struct Options {
  // 400k: a node of 200k users.
  std::vector<size_t> stats = {10'000, 100'000, 400'000, 1'000'000};
  std::vector<double> fractions = {0.01, 0.1, 1.0};
  int polls = 5;
  int warmup = 2;
  int idle_polls = 5;
  size_t naive_max_rows = 100'000;
  std::string output;
  std::string shared_buffers;  // empty: PostgreSQL's default
  std::string fake_server = BOXMETER_FAKE_STATS_SERVER_BIN;
  bool child = false;  // run one size and print raw records
  bool core_only = false;
};

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  size_t mid = values.size() / 2;
  return values.size() % 2 == 1 ? values[mid]
                                : (values[mid - 1] + values[mid]) / 2;
}

// What a child reports to the parent: one line per record, "KIND key=value
// ...". Times are medians in milliseconds; "_cpu" is CPU time of the
// PostgreSQL backend that did the work, which the machine's other load does
// not inflate.
using Record = std::map<std::string, double>;

void Emit(const std::string& kind, const Record& record) {
  std::string line = kind;
  for (const auto& [key, value] : record) {
    line += fmt::format(" {}={}", key, value);
  }
  std::cout << line << std::endl;
}

// Wall and server CPU time of one piece of work, over several polls.
struct Costs {
  std::vector<double> wall_ms, cpu_ms;

  template <typename Work>
  void Measure(int backend_pid, Work work) {
    int64_t cpu0 = CpuNanos(backend_pid);
    auto t0 = Clock::now();
    work();
    wall_ms.push_back(Ms(Clock::now() - t0));
    cpu_ms.push_back((CpuNanos(backend_pid) - cpu0) / 1e6);
  }
  void Put(Record& record, const std::string& name, double scale = 1) const {
    record[name] = Median(wall_ms) * scale;
    record[name + "_cpu"] = Median(cpu_ms) * scale;
  }
};

// The collector's poll, step by step and blocking: the same calls its event
// loop makes, timed.
class Poller {
 public:
  Poller(const std::string& address, const std::string& url)
      : source_(address, kMaxMessageBytes), store_(url, kNode) {
    Check(store_.Migrate(), "migrating");
    NodeState state;
    Check(store_.LoadNode(&state), "loading the node");
    engine_.Load(state.commit_seq, state.instance, state.baselines);
  }

  struct Result {
    double rpc_ms = 0, fetch_ms = 0, delta_ms = 0, commit_ms = 0, poll_ms = 0;
    double commit_cpu_ms = 0;  // of PgStore's backend, when it is known
    CommitBatch batch;  // what was committed (empty when nothing changed)
  };

  // PgStore's backend process, found by the caller, for CPU readings.
  void set_backend_pid(int pid) { backend_pid_ = pid; }

  Result Poll() {
    Result result;
    auto t0 = Clock::now();
    Snapshot snapshot;
    {
      StatsReply reply = Fetch();
      result.rpc_ms = Ms(Clock::now() - t0);
      Check(MakeSnapshot(reply, &snapshot), "making the snapshot");
    }  // the reply is freed here, as in the collector
    auto t1 = Clock::now();
    engine_.Observe(snapshot);
    bool pending = engine_.HasPending();
    if (pending) result.batch = engine_.Prepare();
    auto t2 = Clock::now();
    int64_t cpu0 = CpuNanos(backend_pid_);
    if (pending) {
      CommitResult commit = store_.Commit(result.batch);
      if (commit.outcome != CommitOutcome::kApplied) {
        throw std::runtime_error("commit failed: " + commit.status.message());
      }
      engine_.Committed();
    }
    auto t3 = Clock::now();
    result.commit_cpu_ms = (CpuNanos(backend_pid_) - cpu0) / 1e6;
    snapshot = Snapshot();
    auto t4 = Clock::now();
    result.fetch_ms = Ms(t1 - t0);
    result.delta_ms = Ms(t2 - t1);
    result.commit_ms = Ms(t3 - t2);
    result.poll_ms = Ms(t4 - t0);
    return result;
  }

  // A snapshot of what the server holds now, untimed.
  Snapshot TakeSnapshot() {
    Snapshot snapshot;
    Check(MakeSnapshot(Fetch(), &snapshot), "making the snapshot");
    return snapshot;
  }

  const DeltaEngine& engine() const { return engine_; }

 private:
  static void Check(const Status& status, const std::string& what) {
    if (!status.ok()) throw std::runtime_error(what + ": " + status.message());
  }

  StatsReply Fetch() {
    std::promise<std::pair<Status, StatsReply>> done;
    auto future = done.get_future();
    source_.Fetch(
        std::chrono::duration_cast<std::chrono::milliseconds>(kFetchTimeout),
        [&done](Status status, StatsReply reply) {
          done.set_value({std::move(status), std::move(reply)});
        });
    auto [status, reply] = future.get();
    Check(status, "fetching");
    return std::move(reply);
  }

  GrpcStatsSource source_;
  PgStore store_;
  DeltaEngine engine_;
  int backend_pid_ = -1;
};

// The node's commit sequence and how many rows of the metering tables were
// written since transaction `marker` (by xmin), from a separate connection.
struct WriteProbe {
  int64_t commit_seq = 0;
  int64_t newer_rows = 0;
};

WriteProbe ProbeWrites(pqxx::connection& db, const std::string& marker_xid) {
  pqxx::read_transaction tx(db);
  WriteProbe probe;
  probe.commit_seq =
      tx.exec_params1("SELECT commit_seq FROM nodes WHERE name = $1", kNode)[0]
          .as<int64_t>();
  // A row inserted or updated after the marker carries a newer xmin.
  probe.newer_rows = tx.exec_params1(
                           "SELECT (SELECT count(*) FROM counters "
                           "         WHERE age(xmin) < age($1::xid)) + "
                           "       (SELECT count(*) FROM counter_hourly "
                           "         WHERE age(xmin) < age($1::xid)) + "
                           "       (SELECT count(*) FROM nodes "
                           "         WHERE age(xmin) < age($1::xid))",
                           marker_xid)[0]
                         .as<int64_t>();
  tx.commit();
  return probe;
}

// The database's counter and hourly totals, as text.
std::string Sums(const std::string& url) {
  pqxx::connection db(url);
  pqxx::read_transaction tx(db);
  pqxx::row row = tx.exec1(
      "SELECT (SELECT count(*) || ' counters ' || sum(uplink) || '/' || "
      "sum(downlink) FROM counters), "
      "(SELECT count(*) || ' hourly ' || sum(uplink) || '/' || sum(downlink) "
      "FROM counter_hourly)");
  return row[0].as<std::string>() + ", " + row[1].as<std::string>();
}

std::string CurrentXid(pqxx::connection& db) {
  pqxx::work tx(db);
  // The low 32 bits of the 64-bit id are the xid that rows carry.
  std::string xid = tx.exec1("SELECT (txid_current() % 4294967296)::text")[0]
                        .as<std::string>();
  tx.commit();
  return xid;
}

// A command to the fake server ("touch FRACTION BYTES": add BYTES to that
// fraction of its counters, spread evenly, starting one further each time).
void Command(FakeStatsProcess& server, const std::string& command) {
  std::string error = server.Command(command);
  if (!error.empty()) throw std::runtime_error(error);
}

void Progress(const std::string& text) {
  std::cerr << "[bench] " << text << std::endl;
}

// One size, in this (child) process. Prints records on stdout.
void RunSize(const Options& options, size_t stats) {
  Progress(fmt::format("N={}: starting PostgreSQL and the fake server", stats));
  PgServer pg;
  if (!options.shared_buffers.empty()) {
    pg.Query("postgres", "ALTER SYSTEM SET shared_buffers = '" +
                             options.shared_buffers + "'");
    pg.Stop();
    pg.Start();
  }
  std::string url = pg.CreateDatabase("boxmeter");
  std::string setbased_url = pg.CreateDatabase("setbased");
  std::string naive_url = pg.CreateDatabase("naive");
  std::string log_url = pg.CreateDatabase("deltalog");
  std::string floor_url = pg.CreateDatabase("floor");
  // In its own process, so this one's memory is the collector's alone: a
  // million counters and the reply built from them cost the server hundreds
  // of megabytes, as they cost sing-box.
  FakeStatsProcess server(options.fake_server, kServerAnswerTimeout);
  Command(server, fmt::format("populate {}", stats));

  for (const std::string& reference : {setbased_url, naive_url, log_url}) {
    PrepareReferenceDatabase(reference, kNode);
  }
  SetBasedWriter setbased(setbased_url, kNode);
  SetBasedWriter naive_loader(naive_url, kNode);
  SetBasedWriter log_loader(log_url, kNode);
  NaiveWriter naive(naive_url, kNode, /*prepared=*/false);
  NaiveWriter naive_prepared(naive_url, kNode, /*prepared=*/true);
  CopyFloor floor(floor_url);
  pqxx::connection observer(url);

  Poller poller(server.address(), url);
  {
    pqxx::read_transaction tx(observer);
    poller.set_backend_pid(tx.exec1("SELECT pid FROM pg_stat_activity "
                                    "WHERE datname = current_database() "
                                    "AND backend_type = 'client backend' "
                                    "AND pid <> pg_backend_pid()")[0]
                               .as<int>());
  }
  Record size{{"stats", stats}};
  bool peak_reset_works = ResetPeakResident();
  size["peak_reset"] = peak_reset_works;

  // Every counter once: the first commit of a new node inserts them all.
  Command(server, fmt::format("touch 1 {}", kTouchBytes));
  {
    Poller::Result first = poller.Poll();
    size["initial_rows"] = first.batch.rows.size();
    size["initial_ms"] = first.poll_ms;
    size["counters"] = poller.engine().size();
    setbased.Commit(first.batch);
    naive_loader.Commit(first.batch);
    log_loader.Commit(first.batch);
    Progress(fmt::format("N={}: loaded {} counters in {:.0f} ms", stats,
                         first.batch.rows.size(), first.poll_ms));
  }
  DeltaLogWriter log(log_url, kNode);
  // A node that has run for a while has been vacuumed and analyzed by
  // autovacuum (a minute after a bulk insert, by default); right after the
  // first load the planner still believes the tables are empty.
  for (const std::string& db : {url, setbased_url, naive_url, log_url}) {
    pqxx::connection connection(db);
    pqxx::nontransaction tx(connection);
    tx.exec("VACUUM ANALYZE");
  }

  // The engine's own footprint: a second engine fed the same snapshot,
  // measured by allocated heap and by RSS with free memory returned.
  {
    Snapshot snapshot = poller.TakeSnapshot();
    TrimHeap();
    int64_t heap0 = HeapInUseBytes(), rss0 = ResidentBytes();
    DeltaEngine probe;
    probe.Load(0, {}, {});
    probe.Observe(snapshot);
    probe.Prepare();  // the batch is dropped at once
    probe.Committed();
    TrimHeap();
    int64_t heap1 = HeapInUseBytes(), rss1 = ResidentBytes();
    double n = static_cast<double>(probe.size());
    size["engine_heap"] = static_cast<double>(heap1 - heap0) / n;
    size["engine_rss"] = static_cast<double>(rss1 - rss0) / n;
  }
  TrimHeap();

  double peak_all = 0;
  for (double fraction : options.fractions) {
    std::vector<double> rpc, fetch, delta, poll, peak;
    Costs commit, set, flo, log_commit, log_fold, naive_costs, prepared_costs;
    CommitBatch last;
    for (int i = 0; i < options.warmup + options.polls; ++i) {
      Command(server, fmt::format("touch {} {}", fraction, kTouchBytes));
      if (i == options.warmup && fraction == options.fractions.back()) {
        // What a collector holds between polls as it runs today, and what it
        // would hold if it gave freed memory back (malloc_trim) after each.
        size["rss_between_mb"] = ResidentBytes() / 1e6;
        TrimHeap();
        size["rss_trimmed_mb"] = ResidentBytes() / 1e6;
        size["heap_between_mb"] = HeapInUseBytes() / 1e6;
      }
      ResetPeakResident();
      Poller::Result p = poller.Poll();
      double peak_mb = PeakResidentBytes() / 1e6;
      // Every writer applies every batch, so their tables age alike.
      Costs set_one, log_one, fold_one;
      set_one.Measure(setbased.backend_pid(),
                      [&] { setbased.Commit(p.batch); });
      log_one.Measure(log.backend_pid(), [&] { log.Commit(p.batch); });
      fold_one.Measure(log.backend_pid(), [&] { log.Fold(); });
      if (i < options.warmup) continue;
      rpc.push_back(p.rpc_ms);
      fetch.push_back(p.fetch_ms);
      delta.push_back(p.delta_ms);
      poll.push_back(p.poll_ms);
      peak.push_back(peak_mb);
      commit.wall_ms.push_back(p.commit_ms);
      commit.cpu_ms.push_back(p.commit_cpu_ms);
      for (auto [to, from] : {std::pair{&set, &set_one},
                              {&log_commit, &log_one},
                              {&log_fold, &fold_one}}) {
        to->wall_ms.push_back(from->wall_ms[0]);
        to->cpu_ms.push_back(from->cpu_ms[0]);
      }
      flo.Measure(floor.backend_pid(), [&] { floor.Copy(p.batch); });
      last = std::move(p.batch);
    }
    Record r{{"stats", stats},
             {"fraction", fraction},
             {"changed", last.rows.size()},
             {"rpc", Median(rpc)},
             {"fetch", Median(fetch)},
             {"delta", Median(delta)},
             {"poll", Median(poll)},
             {"peak_mb", *std::max_element(peak.begin(), peak.end())}};
    commit.Put(r, "commit");
    set.Put(r, "set");
    flo.Put(r, "floor");
    log_commit.Put(r, "log");
    log_fold.Put(r, "fold");
    size_t naive_rows = std::min(last.rows.size(), options.naive_max_rows);
    r["naive_rows"] = naive_rows;
    if (naive_rows > 0) {
      Progress(fmt::format("N={} changed {}: naive writer on {} rows", stats,
                           last.rows.size(), naive_rows));
      naive_costs.Measure(naive.backend_pid(),
                          [&] { naive.Commit(last, naive_rows); });
      double scale = static_cast<double>(last.rows.size()) / naive_rows;
      naive_costs.Put(r, "naive", scale);
      prepared_costs.Measure(naive_prepared.backend_pid(),
                             [&] { naive_prepared.Commit(last, naive_rows); });
      prepared_costs.Put(r, "naive_prep", scale);
    }
    peak_all = std::max(peak_all, r["peak_mb"]);
    Progress(fmt::format(
        "N={} changed {}: fetch {:.0f} ms, delta {:.0f} ms, commit {:.0f} ms "
        "(server CPU {:.0f}), poll {:.0f} ms; set-based {:.0f}, naive {:.0f}, "
        "floor {:.0f}, delta log {:.0f} + fold {:.0f} ms",
        stats, last.rows.size(), r["fetch"], r["delta"], r["commit"],
        r["commit_cpu"], r["poll"], r["set"], r["naive"], r["floor"], r["log"],
        r["fold"]));
    Emit("fraction", r);
  }

  // Idle: nothing changed since the last poll.
  {
    std::string marker = CurrentXid(observer);
    WriteProbe before = ProbeWrites(observer, marker);
    std::vector<double> idle;
    for (int i = 0; i < options.idle_polls; ++i) {
      ResetPeakResident();
      Poller::Result p = poller.Poll();
      peak_all = std::max(peak_all, PeakResidentBytes() / 1e6);
      if (!p.batch.rows.empty()) {
        throw std::runtime_error("an idle poll produced a batch");
      }
      idle.push_back(p.poll_ms);
    }
    WriteProbe after = ProbeWrites(observer, marker);
    size["idle_ms"] = Median(idle);
    size["idle_rows"] = after.newer_rows - before.newer_rows;
    size["idle_seq_moved"] = after.commit_seq - before.commit_seq;
    Progress(
        fmt::format("N={}: idle poll {:.0f} ms, {} rows written, "
                    "commit_seq {} -> {}",
                    stats, size["idle_ms"], size["idle_rows"],
                    before.commit_seq, after.commit_seq));
  }
  size["peak_mb"] = peak_all;
  // Every writer but the naive one applied every batch (the delta log folded
  // after each), so their totals and hourly sums must agree to the byte.
  std::string boxmeter_sums = Sums(url);
  size["writers_agree"] =
      Sums(setbased_url) == boxmeter_sums && Sums(log_url) == boxmeter_sums;
  if (size["writers_agree"] == 0) {
    Progress("the writers' totals differ: boxmeter " + boxmeter_sums +
             ", set-based " + Sums(setbased_url) + ", delta log " +
             Sums(log_url));
  }
  Emit("size", size);
}

// The client's share of the RPC: decoding the QueryStats reply the way
// GrpcStatsSource does (protobuf objects on the heap, names moved into the
// RawStats, the message freed), and the same with the message on a protobuf
// arena, for comparison.
void DecodeReply(const Options& options, const StatsReply& reply) {
  namespace api = v2ray::core::app::stats::command;
  std::string wire;
  {
    api::QueryStatsResponse response;
    for (const RawStat& stat : reply.stats) {
      api::Stat* added = response.add_stat();
      added->set_name(stat.name);
      added->set_value(stat.value);
    }
    response.SerializeToString(&wire);
  }
  auto decode = [&](bool arena) {
    auto t0 = Clock::now();
    std::vector<RawStat> stats;
    {
      google::protobuf::Arena pool;
      api::QueryStatsResponse heap_response;
      api::QueryStatsResponse* response =
          arena
              ? google::protobuf::Arena::CreateMessage<api::QueryStatsResponse>(
                    &pool)
              : &heap_response;
      if (!response->ParseFromString(wire)) throw std::runtime_error("parse");
      stats.reserve(response->stat_size());
      for (api::Stat& stat : *response->mutable_stat()) {
        stats.push_back({std::move(*stat.mutable_name()), stat.value()});
      }
    }
    auto t1 = Clock::now();
    stats = {};
    return std::pair{Ms(t1 - t0), Ms(Clock::now() - t1)};
  };
  for (bool arena : {false, true}) {
    std::vector<double> parse, release;
    for (int i = 0; i < options.polls; ++i) {
      auto [parse_ms, release_ms] = decode(arena);
      parse.push_back(parse_ms);
      release.push_back(release_ms);
    }
    std::cout << fmt::format(
                     "core: {} stats ({:.1f} MB on the wire), decode {}: "
                     "parse and move {:.1f} ms, free the names {:.1f} ms",
                     reply.stats.size(), wire.size() / 1e6,
                     arena ? "on an arena" : "on the heap", Median(parse),
                     Median(release))
              << std::endl;
  }
}

// The pure core alone: a synthetic reply of `stats` stats, as the fake
// server sends it, through MakeSnapshot and DeltaEngine, idle and with each
// fraction changed. Deterministic work, so callgrind's counts are stable.
void RunCore(const Options& options, size_t stats) {
  StatsReply reply;
  reply.same_kernel = true;
  reply.before = {
      .sent_ms = 1'000'000, .received_ms = 1'000'010, .uptime_s = 100};
  reply.after = {
      .sent_ms = 1'000'040, .received_ms = 1'000'050, .uptime_s = 100};
  for (size_t i = 0; i < stats; ++i) {
    reply.stats.push_back({FakeStatsServer::SyntheticName(i), 1000});
  }
  DecodeReply(options, reply);
  DeltaEngine engine;
  engine.Load(0, {}, {});
  auto poll = [&](double* snapshot_ms, double* delta_ms) {
    StatsReply copy = reply;  // the fetch hands over a fresh reply each time
    auto t0 = Clock::now();
    Snapshot snapshot;
    if (!MakeSnapshot(copy, &snapshot).ok()) throw std::runtime_error("core");
    copy = StatsReply();
    auto t1 = Clock::now();
    engine.Observe(snapshot);
    if (engine.HasPending()) {
      engine.Prepare();
      engine.Committed();
    }
    auto t2 = Clock::now();
    *snapshot_ms = Ms(t1 - t0);
    *delta_ms = Ms(t2 - t1);
  };
  double snapshot_ms, delta_ms;
  poll(&snapshot_ms, &delta_ms);  // every counter is new
  std::vector<double> all_fractions = {0};
  all_fractions.insert(all_fractions.end(), options.fractions.begin(),
                       options.fractions.end());
  for (double fraction : all_fractions) {
    std::vector<double> snapshots, deltas;
    size_t step = fraction > 0 ? std::max<size_t>(1, std::llround(1 / fraction))
                               : stats + 1;
    for (int i = 0; i < options.polls; ++i) {
      for (size_t k = i % step; k < stats; k += step) {
        reply.stats[k].value += kTouchBytes;
      }
      poll(&snapshot_ms, &delta_ms);
      snapshots.push_back(snapshot_ms);
      deltas.push_back(delta_ms);
    }
    std::cout << fmt::format(
                     "core: {} stats, {:g}% changed: MakeSnapshot {:.1f} ms, "
                     "Observe+Prepare+Committed {:.1f} ms",
                     stats, fraction * 100, Median(snapshots), Median(deltas))
              << std::endl;
  }
}

// ---- The parent: one child per size, then the tables. ----

std::string Count(size_t n) {
  if (n >= 1'000'000 && n % 1'000'000 == 0)
    return fmt::format("{}M", n / 1'000'000);
  if (n >= 1'000 && n % 1'000 == 0) return fmt::format("{}k", n / 1'000);
  return std::to_string(n);
}

// "1M (500k)": stats served, and the counters (rows) they make.
std::string Size(double stats) {
  auto n = static_cast<size_t>(stats);
  return Count(n) + " (" + Count(n / 2) + ")";
}

std::string Ratio(double a, double b) {
  if (!(b > 0)) return "-";
  return fmt::format("{:.1f}x", a / b);
}

// "wall (server CPU)" in milliseconds.
std::string WallCpu(const Record& r, const std::string& name) {
  if (r.count(name) == 0) return "-";
  return fmt::format("{:.0f} ({:.0f})", r.at(name), r.at(name + "_cpu"));
}

// A ratio of wall times, and of server CPU times in parentheses.
std::string Ratios(const Record& r, const std::string& a,
                   const std::string& b) {
  if (r.count(a) == 0 || r.count(b) == 0) return "-";
  return Ratio(r.at(a), r.at(b)) + " (" +
         Ratio(r.at(a + "_cpu"), r.at(b + "_cpu")) + ")";
}

std::string Tables(const std::vector<Record>& fractions,
                   const std::vector<Record>& sizes) {
  std::string out =
      "Poll cycle (medians; fetch = RPC + parse + de-dup, with the RPC alone "
      "in parentheses; delta = DeltaEngine::Observe + Prepare; commit = "
      "PgStore::Commit; rows/s = changed counters / commit time):\n\n"
      "| stats (counters) | changed counters | fetch ms | delta ms | "
      "commit ms | poll ms | rows/s | peak RSS MB |\n"
      "|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const Record& r : fractions) {
    double changed = r.at("changed");
    out += fmt::format(
        "| {} | {} ({:g}%) | {:.0f} ({:.0f}) | {:.0f} | {:.0f} | {:.0f} | "
        "{:.0f}k | {:.0f} |\n",
        Size(r.at("stats")), Count(static_cast<size_t>(changed)),
        r.at("fraction") * 100, r.at("fetch"), r.at("rpc"), r.at("delta"),
        r.at("commit"), r.at("poll"),
        r.at("commit") > 0 ? changed / r.at("commit") : 0.0, r.at("peak_mb"));
  }
  bool extrapolated = false;
  out +=
      "\nThe same rows written by each writer in the same run, ms of wall "
      "time (server CPU time in parentheses):\n\n"
      "| stats (counters) | changed | boxmeter commit | set-based | naive | "
      "naive, prepared | COPY floor | delta log commit | delta log fold | "
      "naive / boxmeter | boxmeter / set-based | boxmeter / floor | "
      "log commit / floor |\n"
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const Record& r : fractions) {
    std::string naive = WallCpu(r, "naive");
    std::string prepared = WallCpu(r, "naive_prep");
    if (r.count("naive") > 0 && r.at("naive_rows") < r.at("changed")) {
      naive += "*";
      prepared += "*";
      extrapolated = true;
    }
    out += fmt::format(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        Size(r.at("stats")), Count(static_cast<size_t>(r.at("changed"))),
        WallCpu(r, "commit"), WallCpu(r, "set"), naive, prepared,
        WallCpu(r, "floor"), WallCpu(r, "log"), WallCpu(r, "fold"),
        Ratios(r, "naive", "commit"), Ratios(r, "commit", "set"),
        Ratios(r, "commit", "floor"), Ratios(r, "log", "floor"));
  }
  if (extrapolated) {
    out +=
        "\n\\* the naive writer ran on the first rows of the batch only (see "
        "--naive-max-rows) and its time was scaled up linearly.\n";
  }
  out +=
      "\nPer size: the first commit (every counter new), polls with nothing "
      "changed (with the proof that nothing was written: rows of counters, "
      "counter_hourly and nodes with a newer xmin, and the node's "
      "commit_seq), memory, and whether boxmeter, the set-based writer and "
      "the delta log ended with the same totals and hourly sums:\n\n"
      "| stats (counters) | first load ms (rows) | idle poll ms | rows "
      "written when idle | commit_seq when idle | engine bytes/counter (heap, "
      "RSS) | RSS between polls MB (after malloc_trim; heap in use) | peak "
      "RSS MB | writers agree |\n"
      "|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
  for (const Record& s : sizes) {
    out += fmt::format(
        "| {} | {:.0f} ({}) | {:.0f} | {:.0f} | {} | {:.0f}, {:.0f} | {:.0f} "
        "({:.0f}; {:.0f}) | {:.0f}{} | {} |\n",
        Size(s.at("stats")), s.at("initial_ms"),
        Count(static_cast<size_t>(s.at("initial_rows"))), s.at("idle_ms"),
        s.at("idle_rows"), s.at("idle_seq_moved") == 0 ? "unchanged" : "MOVED",
        s.at("engine_heap"), s.at("engine_rss"), s.at("rss_between_mb"),
        s.at("rss_trimmed_mb"), s.at("heap_between_mb"), s.at("peak_mb"),
        s.at("peak_reset") != 0 ? "" : " (since start)",
        s.at("writers_agree") != 0 ? "yes" : "NO");
  }
  return out;
}

std::string Machine() {
  std::string memory = "?";
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  while (meminfo >> key >> kb) {
    if (key == "MemTotal:") {
      memory = fmt::format("{:.1f} GiB", kb / 1024.0 / 1024.0);
      break;
    }
    meminfo.ignore(1 << 10, '\n');
  }
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) != 3) load[0] = load[1] = load[2] = -1;
  return fmt::format("{} CPUs, {} memory, load average {:.2f} {:.2f} {:.2f}",
                     sysconf(_SC_NPROCESSORS_ONLN), memory, load[0], load[1],
                     load[2]);
}

template <typename T>
std::vector<T> ParseList(const std::string& text) {
  std::vector<T> values;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    std::stringstream one(item);
    T value{};
    if (!(one >> value) || !(one >> std::ws).eof()) {
      throw std::invalid_argument("not a number: '" + item + "'");
    }
    values.push_back(value);
  }
  return values;
}

int RunParent(const Options& options, const char* self) {
  std::vector<Record> fractions, sizes;
  std::string started = Machine();
  auto t0 = Clock::now();
  for (size_t stats : options.stats) {
    TempDir dir;
    std::string records = dir.path() + "/records";
    Process::Options child;
    child.argv = {"",
                  "--child",
                  "--stats",
                  std::to_string(stats),
                  "--polls",
                  std::to_string(options.polls),
                  "--warmup",
                  std::to_string(options.warmup),
                  "--idle-polls",
                  std::to_string(options.idle_polls),
                  "--naive-max-rows",
                  std::to_string(options.naive_max_rows),
                  "--fake-server",
                  options.fake_server};
    child.argv[0] = self;  // this very binary
    std::string list;
    for (double f : options.fractions)
      list += fmt::format("{}{:g}", list.empty() ? "" : ",", f);
    if (!options.shared_buffers.empty()) {
      child.argv.push_back("--shared-buffers");
      child.argv.push_back(options.shared_buffers);
    }
    child.argv.push_back("--fractions");
    child.argv.push_back(list);
    child.stdout_path = records;
    int code = RunCommand(child, std::chrono::hours(3));
    if (code != 0) {
      std::cerr << "boxmeter-bench: the run with " << stats
                << " stats failed (exit " << code << "); see above\n";
      return 1;
    }
    std::ifstream in(records);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string kind, pair;
      fields >> kind;
      Record record;
      while (fields >> pair) {
        size_t equals = pair.find('=');
        if (equals == std::string::npos) continue;
        record[pair.substr(0, equals)] = std::stod(pair.substr(equals + 1));
      }
      if (kind == "fraction") fractions.push_back(record);
      if (kind == "size") sizes.push_back(record);
    }
  }
  std::string pg_version;
  Process::Options version;
  version.argv = {"/usr/lib/postgresql/15/bin/postgres", "--version"};
  RunCommand(version, std::chrono::seconds(10), &pg_version);
  while (!pg_version.empty() && pg_version.back() == '\n')
    pg_version.pop_back();
  std::string report = fmt::format(
      "boxmeter-bench: {} polls measured after {} warm-up, medians; "
      "{} idle polls\n"
      "machine at start: {}\nmachine at end:   {}\n{}, default settings but "
      "fsync=off, full_page_writes=off (a throwaway test server), "
      "shared_buffers={}; run took {:.0f} s\n\n",
      options.polls, options.warmup, options.idle_polls, started, Machine(),
      pg_version,
      options.shared_buffers.empty() ? "128MB (default)"
                                     : options.shared_buffers,
      std::chrono::duration<double>(Clock::now() - t0).count());
  report += Tables(fractions, sizes);
  std::cout << "\n" << report;
  if (!options.output.empty()) {
    std::ofstream out(options.output);
    out << report;
    if (!out) {
      std::cerr << "boxmeter-bench: cannot write " << options.output << "\n";
      return 1;
    }
  }
  return 0;
}

int Main(int argc, char** argv) {
  SetLogLevel(LogLevel::kWarn);  // migrations and notices are not news here
  Options options;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        std::cout << kUsage;
        return 0;
      }
      if (arg == "--child" || arg == "--core-only") {
        (arg == "--child" ? options.child : options.core_only) = true;
        continue;
      }
      if (i + 1 >= argc) throw std::invalid_argument(arg + " wants a value");
      std::string value = argv[++i];
      if (arg == "--stats") {
        options.stats = ParseList<size_t>(value);
      } else if (arg == "--fractions") {
        options.fractions = ParseList<double>(value);
      } else if (arg == "--polls") {
        options.polls = std::stoi(value);
      } else if (arg == "--warmup") {
        options.warmup = std::stoi(value);
      } else if (arg == "--idle-polls") {
        options.idle_polls = std::stoi(value);
      } else if (arg == "--naive-max-rows") {
        options.naive_max_rows = std::stoul(value);
      } else if (arg == "--shared-buffers") {
        options.shared_buffers = value;
      } else if (arg == "--output") {
        options.output = value;
      } else if (arg == "--fake-server") {
        options.fake_server = value;
      } else {
        throw std::invalid_argument("unknown option " + arg);
      }
    }
    if (options.polls < 1 || options.warmup < 0 || options.idle_polls < 1) {
      throw std::invalid_argument("--polls and --idle-polls want 1 or more");
    }
    for (double f : options.fractions) {
      if (!(f > 0 && f <= 1)) {
        throw std::invalid_argument("fractions are in (0, 1]");
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "boxmeter-bench: " << e.what() << "\n" << kUsage;
    return 64;
  }
  try {
    if (options.core_only) {
      for (size_t stats : options.stats) RunCore(options, stats);
      return 0;
    }
    if (!options.child) {
      char self[4096];
      ssize_t length = readlink("/proc/self/exe", self, sizeof self - 1);
      if (length <= 0) throw std::runtime_error("cannot read /proc/self/exe");
      self[length] = '\0';
      return RunParent(options, self);
    }
    if (options.stats.size() != 1) {
      throw std::invalid_argument("--child runs exactly one --stats size");
    }
    RunSize(options, options.stats[0]);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "boxmeter-bench: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace
}  // namespace boxmeter::testing

int main(int argc, char** argv) { return boxmeter::testing::Main(argc, argv); }
