// The chaos run: the world (servers, proxies, the collector), the events, and
// the checks. See chaos_run.h for what it proves and how.
#include "chaos_run.h"

#include <signal.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <iomanip>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "collector_runner.h"
#include "node_row_lock.h"
#include "pg_server.h"
#include "process.h"
#include "tcp_proxy.h"
#include "traffic.h"
#include "v2ray_server.h"

namespace boxmeter::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr const char* kNode = "chaos";
constexpr const char* kDatabase = "chaos";
constexpr const char* kPollInterval = "250ms";
constexpr const char* kSourceTimeout = "1s";
// With exactly_once_faults: answers may arrive up to 1.5 s late (more than
// once per call when HTTP/2 sends it in parts); they must not time out.
constexpr const char* kSourceTimeoutWithDelays = "4s";
constexpr auto kMaxAnswerDelay = 1500ms;
// An instance restarted sooner after its start than the 2 s instance
// tolerance, whose successor then counts more than it did, looks like one
// instance (a documented limit); each instance runs this long before a stop.
constexpr uint32_t kMinUptimeBeforeStop = 4;
// Longer than twice the collector's 30 s database backoff cap: after a run of
// database faults the next commit may be that far away.
constexpr auto kExactTimeout = 120s;
// How long a collector may stay down, or a fault stay on, before the run
// heals it by itself.
constexpr auto kMaxCollectorDown = 5s;
constexpr auto kMaxPgDown = 12s;

struct Account {
  V2RayServer::Account account;
  std::vector<size_t> inbounds;  // indexes into the v2ray inbounds
};

const std::vector<Account>& Accounts() {
  static const auto* accounts = new std::vector<Account>{
      {{"alice", "alice-pw"}, {0}},
      {{"bob", "bob-pw"}, {0, 1}},  // one user on both inbounds
      {{"carol", "carol-pw"}, {1}},
      {{"dave", "dave-pw"}, {1}},
  };
  return *accounts;
}

int PortOf(const std::string& address) {
  return std::stoi(address.substr(address.rfind(':') + 1));
}

class ChaosFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class Event {
  kTraffic,
  kKillCollector,
  kKillDuringCommit,
  kTermCollector,
  kStartCollector,
  kRestartV2Ray,
  kPgStopFast,
  kPgStopImmediate,
  kPgStart,
  kPgStall,
  kPgRefuse,
  kPgCut,
  kPgCutBeforeCommit,
  kPgCutAfterCommit,
  kApiStall,
  kApiRefuse,
  kApiCut,
  kHealAll,
  kCheckpoint,
  // exactly_once_faults
  kReloadStorm,
  kTermAfterRestart,
  kRowLockThenTerm,
  kApiDelay,
  kClockStep,
  kSecondCollector,
  kFlushThenRestart,
};

// A proxy fault that heals by itself at `until`.
struct ProxyFault {
  enum class Kind { kNone, kStall, kRefuse, kDelay } kind = Kind::kNone;
  Clock::time_point until;
};

class ChaosWorld {
 public:
  explicit ChaosWorld(const ChaosOptions& options)
      : options_(options), rng_(options.seed), start_(Clock::now()) {}

  ChaosReport Run() {
    try {
      SetUp();
      auto deadline = start_ + options_.duration;
      while (Clock::now() < deadline) {
        HealExpired();
        Step();
        Pause(Uniform(0, 600));
      }
      Finish();
      report_.ok = true;
    } catch (const std::exception& e) {
      report_.ok = false;
      report_.failure = e.what();
      report_.context = Context();
    }
    report_.elapsed =
        std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - start_);
    return report_;
  }

 private:
  // --- Randomness: every decision goes through rng_ -------------------------

  int64_t Uniform(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
  }
  bool Chance(double p) { return std::bernoulli_distribution(p)(rng_); }
  // 0 now and then, else spread over orders of magnitude up to `max`.
  int64_t Size(int64_t max) {
    if (Chance(0.1)) return 0;
    int bits =
        static_cast<int>(Uniform(4, static_cast<int64_t>(std::log2(max))));
    return Uniform(int64_t{1} << (bits - 1), int64_t{1} << bits);
  }
  void Pause(int64_t ms) { std::this_thread::sleep_for(milliseconds(ms)); }

  // --- Output ---------------------------------------------------------------

  void Say(const std::string& line) {
    double seconds =
        std::chrono::duration<double>(Clock::now() - start_).count();
    *options_.out << "[" << std::fixed << std::setprecision(1) << std::setw(7)
                  << seconds << "s] " << line << std::endl;
  }
  void Survived(const std::string& kind, const std::string& detail = "") {
    ++report_.events[kind];
    ++report_.total_events;
    Say("#" + std::to_string(report_.total_events) + " " + kind +
        (detail.empty() ? "" : " (" + detail + ")"));
  }
  std::string Context() {
    std::string context;
    if (collector_) {
      // Kept: the run's directories go with it.
      std::string kept = "/tmp/boxmeter-chaos-" +
                         std::to_string(options_.seed) + "-collector.log";
      std::ofstream(kept) << collector_->Log();
      context += "\ncollector log (kept as " + kept + "), tail:\n" +
                 collector_->LogTail(120);
    }
    if (v2ray_) context += "\nv2ray log tail:\n" + v2ray_->LogTail();
    if (api_proxy_ && pg_proxy_) context += "\n" + ProxyCounters();
    if (v2ray_) {
      try {
        context += "\nv2ray-core's API, asked directly: uptime " +
                   std::to_string(v2ray_->Uptime()) + "s";
      } catch (const std::exception& e) {
        context +=
            std::string("\nv2ray-core's API, asked directly: ") + e.what();
      }
    }
    return context;
  }

  // --- The world ------------------------------------------------------------

  void SetUp() {
    Say("chaos: seed " + std::to_string(options_.seed) + ", " +
        std::to_string(options_.duration.count()) + "s of events");
    pg_ = std::make_unique<PgServer>();
    pg_->CreateDatabase(kDatabase);
    pg_proxy_ = std::make_unique<TcpProxy>("127.0.0.1", pg_->port());
    target_ = std::make_unique<HttpTarget>();
    V2RayServer::Options v2ray_options;
    v2ray_options.inbounds = {{"socks-a", {}}, {"socks-b", {}}};
    for (const Account& account : Accounts()) {
      for (size_t inbound : account.inbounds) {
        v2ray_options.inbounds[inbound].accounts.push_back(account.account);
      }
    }
    v2ray_ = std::make_unique<V2RayServer>(v2ray_options);
    v2ray_->Start();
    api_proxy_ =
        std::make_unique<TcpProxy>("127.0.0.1", PortOf(v2ray_->ApiAddress()));
    collector_ = NewCollector(api_proxy_->address());
    collector_->Start();
    ++collector_starts_;
    Say("world: PostgreSQL :" + std::to_string(pg_->port()) + " via proxy " +
        pg_proxy_->address() + ", v2ray-core API " + v2ray_->ApiAddress() +
        " via proxy " + api_proxy_->address() + ", collector log " +
        collector_->log_path());
    Traffic();
    AwaitExact("first commit");
  }

  // A collector of this run's node, through the database proxy.
  std::unique_ptr<CollectorRunner> NewCollector(std::string source_address) {
    CollectorRunner::Settings settings{
        .node = kNode,
        .source_address = std::move(source_address),
        .database_url = "postgresql://postgres@" + pg_proxy_->address() + "/" +
                        kDatabase + "?connect_timeout=5",
        .poll_interval = kPollInterval,
        .source_timeout = options_.exactly_once_faults
                              ? kSourceTimeoutWithDelays
                              : kSourceTimeout,
        .log_level = "debug"};
    if (options_.exactly_once_faults) {
      settings.control_socket = runtime_dir_.path() + "/" +
                                std::to_string(++control_sockets_) + ".sock";
    }
    return std::make_unique<CollectorRunner>(options_.collector_binary,
                                             std::move(settings));
  }

  bool CollectorRunning() { return collector_->Running(); }
  bool DatabasePathHealthy() const {
    return pg_up_ && pg_fault_.kind == ProxyFault::Kind::kNone;
  }

  void StartCollector(const std::string& why) {
    if (CollectorRunning()) return;
    collector_->Start();
    ++collector_starts_;
    collector_down_since_.reset();
    Survived("collector start", why);
  }
  void CollectorStopped() { collector_down_since_ = Clock::now(); }

  // A collector that exits without being told to is a failure of the run:
  // nothing may crash it.
  void CheckCollectorAlive() {
    if (collector_down_since_ || CollectorRunning()) return;
    std::optional<int> code = collector_->Wait(0ms);
    throw ChaosFailure("the collector exited by itself (status " +
                       (code ? std::to_string(*code) : std::string("?")) +
                       "); it must survive every fault");
  }

  void StartPg(const std::string& why) {
    if (pg_up_) return;
    pg_->Start();
    pg_up_ = true;
    Survived("postgres start", why);
  }

  void SetFault(TcpProxy& proxy, ProxyFault& fault, ProxyFault::Kind kind,
                const std::string& name) {
    Heal(proxy, fault, "");
    fault.kind = kind;
    fault.until = Clock::now() + milliseconds(Uniform(500, 6000));
    if (kind == ProxyFault::Kind::kStall) proxy.SetStalled(true);
    if (kind == ProxyFault::Kind::kRefuse) proxy.SetRefusing(true);
    if (kind == ProxyFault::Kind::kDelay) {
      proxy.SetAnswerDelay(kMaxAnswerDelay,
                           static_cast<uint64_t>(Uniform(0, int64_t{1} << 40)));
    }
    Survived(name + (kind == ProxyFault::Kind::kStall    ? " proxy stall"
                     : kind == ProxyFault::Kind::kRefuse ? " proxy refuse"
                                                         : " answers delayed "
                                                           "0-1.5s"),
             std::to_string(std::chrono::duration_cast<milliseconds>(
                                fault.until - Clock::now())
                                .count()) +
                 "ms");
  }
  void Heal(TcpProxy& proxy, ProxyFault& fault, const std::string& name) {
    if (fault.kind == ProxyFault::Kind::kNone) return;
    proxy.SetStalled(false);
    proxy.SetRefusing(false);
    proxy.SetAnswerDelay(0ms);
    fault.kind = ProxyFault::Kind::kNone;
    if (!name.empty()) Survived(name + " proxy healed");
  }

  void HealExpired() {
    CheckCollectorAlive();
    auto now = Clock::now();
    if (pg_fault_.kind != ProxyFault::Kind::kNone && now >= pg_fault_.until) {
      Heal(*pg_proxy_, pg_fault_, "postgres");
    }
    if (api_fault_.kind != ProxyFault::Kind::kNone && now >= api_fault_.until) {
      Heal(*api_proxy_, api_fault_, "stats API");
    }
    if (!pg_up_ && now - pg_down_since_ > kMaxPgDown)
      StartPg("down long enough");
    if (collector_down_since_ &&
        now - *collector_down_since_ > kMaxCollectorDown) {
      StartCollector("down long enough");
    }
  }

  void HealAll() {
    Heal(*pg_proxy_, pg_fault_, "postgres");
    Heal(*api_proxy_, api_fault_, "stats API");
    StartPg("heal");
    StartCollector("heal");
  }

  // --- Checks
  // -----------------------------------------------------------------

  // Banked counters plus the running instance's, predictable ones only.
  CounterMap Expected() {
    CounterMap expected = banked_;
    for (const auto& [name, value] : v2ray_->GroundTruth()) {
      expected[name] += value;
    }
    return PredictableV2RayCounters(std::move(expected));
  }

  // Waits until the database equals the ground truth exactly.
  void AwaitExact(const std::string& why) {
    CounterMap expected, actual;
    std::string error;
    auto started = Clock::now();
    bool matched = WaitUntil(
        [&] {
          error = TryTrafficInDatabase(*pg_, kDatabase, kNode, &actual);
          actual = PredictableV2RayCounters(std::move(actual));
          expected = Expected();
          return error.empty() && expected == actual;
        },
        kExactTimeout, 200ms);
    if (!matched) {
      throw ChaosFailure("the database did not match v2ray-core exactly (" +
                         why + ") within " +
                         std::to_string(kExactTimeout.count()) + "s:\n" +
                         DescribeDifference(expected, actual) + error);
    }
    ++report_.exact_matches;
    fragile_ = false;
    Say("  exact: " + std::to_string(actual.size()) +
        " counters match v2ray-core (" + why + ", after " +
        std::to_string(
            std::chrono::duration_cast<milliseconds>(Clock::now() - started)
                .count()) +
        "ms)");
  }

  // The database may lag behind v2ray-core but never count more. Read the
  // database first: v2ray's counters only grow meanwhile.
  void CheckBound() {
    if (!pg_up_) return;
    CounterMap actual;
    if (!TryTrafficInDatabase(*pg_, kDatabase, kNode, &actual).empty()) return;
    actual = PredictableV2RayCounters(std::move(actual));
    CounterMap expected = Expected();
    for (const auto& [name, value] : actual) {
      auto it = expected.find(name);
      int64_t limit = it == expected.end() ? 0 : it->second;
      if (value > limit) {
        throw ChaosFailure("the database counts more than v2ray-core: " + name +
                           " is " + std::to_string(value) +
                           " in the database, at most " +
                           std::to_string(limit) + " in v2ray-core");
      }
    }
    ++report_.bound_checks;
  }

  // Waits for `count` successful polls that start after the call. A poll
  // needs the stats API: a fault on its path is healed first (the step
  // blocks here, so HealExpired would not end it on time).
  void AwaitPolls(size_t count) {
    Heal(*api_proxy_, api_fault_, "stats API");
    if (!collector_->AwaitPolls(count + 1, 30s)) {
      throw ChaosFailure("no " + std::to_string(count) +
                         " successful polls within 30s (the collector is " +
                         (collector_->Running() ? "still running" : "gone") +
                         ")");
    }
  }

  // --- Events
  // -----------------------------------------------------------------

  void Traffic() {
    int bursts = static_cast<int>(Uniform(1, 3));
    std::string detail;
    for (int i = 0; i < bursts; ++i) {
      const Account& account = Accounts()[Uniform(0, Accounts().size() - 1)];
      size_t inbound =
          account.inbounds[Uniform(0, account.inbounds.size() - 1)];
      int64_t down = Size(2 << 20);
      int64_t up = Size(256 << 10);
      PushTraffic(*target_, v2ray_->SocksPort(inbound), account.account.user,
                  account.account.password, down, up);
      report_.bytes_pushed += down + up;
      if (!detail.empty()) detail += ", ";
      detail += account.account.user + "@" +
                v2ray_->options().inbounds[inbound].tag + " " +
                std::to_string(down) + " down " + std::to_string(up) + " up";
    }
    Survived("traffic", detail);
  }

  void KillCollector() {
    if (Chance(0.5)) Traffic();
    Pause(Uniform(0, 400));  // anywhere in a poll, fetch or commit
    collector_->Kill();
    CollectorStopped();
    Survived("collector kill -9");
  }

  void KillDuringCommit() {
    // Stall the database path, push traffic, and wait for a poll that saw it
    // change: its commit is then stuck in the proxy, in flight, when the
    // collector dies. The database aborts the half-done transaction.
    Traffic();
    pg_proxy_->SetStalled(true);
    bool seen = collector_->AwaitPolls(2, 10s);
    Pause(Uniform(50, 300));
    collector_->Kill();
    CollectorStopped();
    Pause(Uniform(0, 2000));
    pg_proxy_->SetStalled(false);
    Survived("collector kill -9 during a commit",
             seen ? "commit stalled in flight" : "no poll seen; plain kill");
  }

  // SIGTERM is handled (one last poll and commit) once the collector has set
  // up its loop, which it logs; before that, in its first milliseconds,
  // SIGTERM's default action ends it (status 143) with nothing polled yet.
  // Waiting for the line makes the run test the handled case (and, with
  // exactly_once_faults, means its control socket listens).
  void AwaitCollectorStarted() {
    if (!WaitUntil(
            [&] {
              return collector_->CountLogLines(std::string("node ") + kNode +
                                               ": polling ") >=
                     static_cast<size_t>(collector_starts_);
            },
            10s, 20ms)) {
      throw ChaosFailure("the collector did not log its start within 10s");
    }
  }

  // SIGTERM and the exit it must lead to: 0 when everything it fetched is
  // committed. A collector whose database path is broken at the stop may
  // instead give up with a sysexits code and the bytes it leaves in its log
  // (v2ray-core still counts them: the next start commits them).
  void TermAndExpectExit(const std::string& kind) {
    AwaitCollectorStarted();
    bool database_healthy = DatabasePathHealthy();
    collector_->Signal(SIGTERM);
    std::optional<int> code = collector_->Wait(60s);
    if (!code)
      throw ChaosFailure("the collector did not exit within 60s of SIGTERM");
    CollectorStopped();
    bool may_give_up = !database_healthy;
    if (*code == 0) return Survived(kind, "exit 0");
    if (may_give_up && *code >= 64 && *code <= 78 &&
        collector_->LogTail(10).find("bytes") != std::string::npos) {
      return Survived(kind, "database unreachable: exit " +
                                std::to_string(*code) + ", bytes logged");
    }
    throw ChaosFailure("the collector exited with " + std::to_string(*code) +
                       " after SIGTERM; expected 0" +
                       (may_give_up ? " or a sysexits code with the bytes "
                                      "left in its log"
                                    : ""));
  }

  void TermCollector() {
    if (Chance(0.5)) Traffic();
    TermAndExpectExit("collector SIGTERM");
  }

  // --- exactly_once_faults ----------------------------------------------

  // v2ray-core instances that live 1-2 s, each with traffic and polled
  // after it: a reload per poll.
  void ReloadStorm() {
    Heal(*api_proxy_, api_fault_, "stats API");
    StartCollector("before a reload storm");
    int instances = static_cast<int>(Uniform(2, 5));
    for (int i = 0; i < instances; ++i) {
      Traffic();
      AwaitPolls(2);
      if (!WaitUntil([&] { return v2ray_->Uptime() >= 1; }, 10s, 50ms)) {
        throw ChaosFailure("v2ray-core's uptime never reached 1s");
      }
      // Held by the collector only until the database has it.
      if (!DatabasePathHealthy()) fragile_ = true;
      CounterMap last = v2ray_->GroundTruth();
      v2ray_->Stop();
      for (const auto& [name, value] : last) banked_[name] += value;
      v2ray_->Start();
    }
    Survived("reload storm", std::to_string(instances) + " instances of 1-2s");
  }

  // A restart, traffic in the new instance, and SIGTERM before the
  // collector may have polled it.
  void TermAfterRestart() {
    RestartV2Ray();
    Traffic();
    TermAndExpectExit("collector SIGTERM right after a restart");
  }

  // SIGTERM while another session holds the node's row: the collector must
  // wait, commit once the lock goes (within its stop budget), and exit 0.
  void RowLockThenTerm() {
    AwaitCollectorStarted();
    Traffic();
    auto held = milliseconds(Uniform(0, 3000));
    {
      NodeRowLock lock(pg_->Url(kDatabase), kNode);
      AwaitPolls(2);
      collector_->Signal(SIGTERM);
      Pause(held.count());
    }
    std::optional<int> code = collector_->Wait(60s);
    if (!code || *code != 0) {
      throw ChaosFailure(
          "after SIGTERM while another session held the node's row for " +
          std::to_string(held.count()) + "ms, the collector " +
          (code ? "exited with " + std::to_string(*code) + "; expected 0"
                : std::string("did not exit within 60s")));
    }
    CollectorStopped();
    Survived("collector SIGTERM while the node's row is locked",
             std::to_string(held.count()) + "ms, exit 0");
  }

  // The next collector run sees the wall clock stepped (libfaketime; the
  // monotonic clocks are left alone). At most 3 s: Debian 12's libfaketime
  // (0.9.10) shifts waits on CLOCK_MONOTONIC condition variables by the
  // offset all the same (fixed upstream later, wolfcw/libfaketime pull
  // request 503), so gRPC's timers, among them its reconnect backoff, fire
  // that much late: at +90 s a collector never reconnects to a v2ray-core
  // restarted during that run within the run's patience. Steps of 90 s are
  // WallClockStepTest's (exactly_once_e2e_test.cc), which restarts nothing.
  void ClockStep() {
    static constexpr int kOffsets[] = {-3, -1, 0, 1, 3};
    int offset = kOffsets[Uniform(0, std::size(kOffsets) - 1)];
    TermAndExpectExit("collector SIGTERM before a wall-clock step");
    collector_->SetEnvironment(
        offset == 0 ? std::map<std::string, std::string>{}
                    : FakeTimeEnvironment(std::chrono::seconds(offset)));
    StartCollector("wall clock " + std::to_string(offset) + "s off");
    Survived("wall-clock step between collector runs",
             std::to_string(offset) + "s");
  }

  // A second collector for the node, beside a second core with traffic of
  // its own: it must never write (the bound check would see that core's
  // bytes), while the first holds the node.
  void SecondCollector() {
    AwaitExact("before a second collector starts");  // the lease is fresh
    if (!other_core_) {
      other_core_ = std::make_unique<V2RayServer>(v2ray_->options());
      other_core_->Start();
    }
    std::unique_ptr<CollectorRunner> second =
        NewCollector(other_core_->ApiAddress());
    second->Start();
    const Account& account = Accounts()[Uniform(0, Accounts().size() - 1)];
    PushTraffic(*target_, other_core_->SocksPort(account.inbounds.front()),
                account.account.user, account.account.password,
                Size(2 << 20) + 1, Size(256 << 10) + 1);
    AwaitPolls(static_cast<size_t>(Uniform(2, 8)));
    CheckBound();
    second->Signal(SIGTERM);
    if (!second->Wait(60s)) {
      throw ChaosFailure(
          "the second collector did not exit within 60s of "
          "SIGTERM; its log " +
          second->log_path());
    }
    CheckBound();
    Survived("second collector for the node on another core",
             "it wrote nothing");
  }

  // `--flush`, then a v2ray-core restart at once, as the shipped reload
  // paths do: nothing may be lost. When the flush fails (the database path
  // is broken), the restart waits for polls like any other.
  void FlushThenRestart() {
    Heal(*api_proxy_, api_fault_, "stats API");
    StartCollector("before a flush");
    AwaitCollectorStarted();
    Traffic();
    bool cut_armed = pg_proxy_->cut_armed();
    int code = collector_->Flush(60s);
    if (code != 0) {
      if (DatabasePathHealthy() && !cut_armed) {
        throw ChaosFailure("--flush exited with " + std::to_string(code) +
                           " while the database path was healthy");
      }
      AwaitPolls(2);
      fragile_ = true;
    }
    CounterMap last = v2ray_->GroundTruth();
    v2ray_->Stop();
    for (const auto& [name, value] : last) banked_[name] += value;
    v2ray_->Start();
    Survived("--flush then a v2ray-core restart",
             "flush exit " + std::to_string(code));
  }

  // Before v2ray-core stops, a poll must have seen its last traffic.
  void SyncBeforeV2RayStop() {
    if (!WaitUntil([&] { return v2ray_->Uptime() >= kMinUptimeBeforeStop; },
                   std::chrono::seconds(kMinUptimeBeforeStop + 10), 100ms)) {
      throw ChaosFailure("v2ray-core's uptime never reached " +
                         std::to_string(kMinUptimeBeforeStop) + "s");
    }
    Heal(*api_proxy_, api_fault_, "stats API");
    StartCollector("before a v2ray-core stop");
    if (DatabasePathHealthy()) {
      AwaitExact("before a v2ray-core stop");
    } else {
      // The database cannot show it; the collector's log can. From now on
      // that traffic lives only in the collector until the database has it.
      AwaitPolls(2);
      fragile_ = true;
      Say("  two polls saw the last traffic; holding it in the collector");
    }
  }

  void RestartV2Ray() {
    SyncBeforeV2RayStop();
    CounterMap last = v2ray_->GroundTruth();
    bool kill = Chance(0.5);
    if (kill) {
      v2ray_->Kill();
    } else {
      v2ray_->Stop();
    }
    for (const auto& [name, value] : last) banked_[name] += value;
    Pause(Uniform(0, 1500));
    v2ray_->Start();
    Survived("v2ray-core restart", kill ? "kill -9" : "SIGTERM");
  }

  void StopPg(PgServer::StopMode mode) {
    pg_->Stop(mode);
    pg_up_ = false;
    pg_down_since_ = Clock::now();
    Survived(mode == PgServer::StopMode::kFast ? "postgres stop fast"
                                               : "postgres stop immediate");
  }

  void Checkpoint() {
    CheckBound();
    bool healthy = DatabasePathHealthy() && CollectorRunning() &&
                   api_fault_.kind == ProxyFault::Kind::kNone;
    if (healthy && Chance(0.3)) AwaitExact("checkpoint");
    Survived("checkpoint", fragile_ ? "bound" : "bound and maybe exact");
  }

  void Step() {
    bool collector_up = CollectorRunning();
    std::vector<std::pair<Event, double>> choices = {
        {Event::kTraffic, 6},
        {Event::kRestartV2Ray, 0.8},
        {Event::kCheckpoint, 1},
        {Event::kPgCut, 0.5},
        {Event::kPgCutBeforeCommit, 0.6},
        {Event::kPgCutAfterCommit, 0.8},
        {Event::kApiCut, 0.5},
    };
    if (collector_up && !fragile_) {
      choices.push_back({Event::kKillCollector, 1.2});
      choices.push_back({Event::kTermCollector, 0.8});
      if (DatabasePathHealthy())
        choices.push_back({Event::kKillDuringCommit, 0.8});
    }
    if (!collector_up) choices.push_back({Event::kStartCollector, 4});
    if (pg_up_) {
      choices.push_back({Event::kPgStopFast, 0.5});
      choices.push_back({Event::kPgStopImmediate, 0.5});
    } else {
      choices.push_back({Event::kPgStart, 3});
    }
    if (pg_fault_.kind == ProxyFault::Kind::kNone) {
      choices.push_back({Event::kPgStall, 0.6});
      choices.push_back({Event::kPgRefuse, 0.4});
    }
    if (api_fault_.kind == ProxyFault::Kind::kNone) {
      choices.push_back({Event::kApiStall, 0.6});
      choices.push_back({Event::kApiRefuse, 0.4});
    }
    if (!DatabasePathHealthy() || api_fault_.kind != ProxyFault::Kind::kNone ||
        !collector_up) {
      choices.push_back({Event::kHealAll, 0.7});
    }
    if (options_.exactly_once_faults) {
      choices.push_back({Event::kReloadStorm, 0.5});
      choices.push_back({Event::kFlushThenRestart, 0.5});
      if (api_fault_.kind == ProxyFault::Kind::kNone) {
        choices.push_back({Event::kApiDelay, 0.6});
      }
      if (collector_up && !fragile_) {
        choices.push_back({Event::kClockStep, 0.4});
        if (DatabasePathHealthy()) {
          choices.push_back({Event::kTermAfterRestart, 0.5});
          choices.push_back({Event::kRowLockThenTerm, 0.5});
          if (api_fault_.kind == ProxyFault::Kind::kNone) {
            choices.push_back({Event::kSecondCollector, 0.3});
          }
        }
      }
    }
    double total = 0;
    for (const auto& choice : choices) total += choice.second;
    double pick = std::uniform_real_distribution<double>(0, total)(rng_);
    Event event = choices.back().first;
    for (const auto& [candidate, weight] : choices) {
      if (pick < weight) {
        event = candidate;
        break;
      }
      pick -= weight;
    }
    switch (event) {
      case Event::kTraffic:
        return Traffic();
      case Event::kKillCollector:
        return KillCollector();
      case Event::kKillDuringCommit:
        return KillDuringCommit();
      case Event::kTermCollector:
        return TermCollector();
      case Event::kStartCollector:
        return StartCollector("");
      case Event::kRestartV2Ray:
        return RestartV2Ray();
      case Event::kPgStopFast:
        return StopPg(PgServer::StopMode::kFast);
      case Event::kPgStopImmediate:
        return StopPg(PgServer::StopMode::kImmediate);
      case Event::kPgStart:
        return StartPg("");
      case Event::kPgStall:
        return SetFault(*pg_proxy_, pg_fault_, ProxyFault::Kind::kStall,
                        "postgres");
      case Event::kPgRefuse:
        return SetFault(*pg_proxy_, pg_fault_, ProxyFault::Kind::kRefuse,
                        "postgres");
      case Event::kPgCut:
        pg_proxy_->CutAll();
        return Survived("postgres proxy cut", "every connection reset");
      case Event::kPgCutBeforeCommit:
        pg_proxy_->CutOnClientBytes(TcpProxy::PostgresCommitMessage(),
                                    TcpProxy::CutWhen::kBeforeForwarding);
        return Survived("postgres cut before COMMIT", "armed: next COMMIT");
      case Event::kPgCutAfterCommit:
        pg_proxy_->CutOnClientBytes(TcpProxy::PostgresCommitMessage(),
                                    TcpProxy::CutWhen::kAfterForwarding);
        return Survived("postgres cut after COMMIT",
                        "armed: next COMMIT applies, its reply is lost");
      case Event::kApiStall:
        return SetFault(*api_proxy_, api_fault_, ProxyFault::Kind::kStall,
                        "stats API");
      case Event::kApiRefuse:
        return SetFault(*api_proxy_, api_fault_, ProxyFault::Kind::kRefuse,
                        "stats API");
      case Event::kApiCut:
        api_proxy_->CutAll();
        return Survived("stats API proxy cut", "every connection reset");
      case Event::kHealAll:
        HealAll();
        return Survived("heal all");
      case Event::kCheckpoint:
        return Checkpoint();
      case Event::kReloadStorm:
        return ReloadStorm();
      case Event::kTermAfterRestart:
        return TermAfterRestart();
      case Event::kRowLockThenTerm:
        return RowLockThenTerm();
      case Event::kApiDelay:
        return SetFault(*api_proxy_, api_fault_, ProxyFault::Kind::kDelay,
                        "stats API");
      case Event::kClockStep:
        return ClockStep();
      case Event::kSecondCollector:
        return SecondCollector();
      case Event::kFlushThenRestart:
        return FlushThenRestart();
    }
  }

  void Finish() {
    Say("events over: healing everything for the final comparison");
    HealAll();
    AwaitExact("final");
    collector_->Signal(SIGTERM);
    std::optional<int> code = collector_->Wait(60s);
    if (!code || *code != 0) {
      throw ChaosFailure(
          "the collector did not exit 0 after the final SIGTERM");
    }
    CounterMap expected = Expected();
    CounterMap actual =
        PredictableV2RayCounters(TrafficInDatabase(*pg_, kDatabase, kNode));
    if (expected != actual) {
      throw ChaosFailure("after the final SIGTERM the database differs:\n" +
                         DescribeDifference(expected, actual));
    }
    report_.counters_compared = actual.size();
    for (const auto& [name, value] : actual) report_.bytes_compared += value;
    std::ostringstream totals;
    for (const auto& [name, value] : actual) {
      totals << "  " << name << " = " << value << "\n";
    }
    Say("final totals (database == v2ray-core, banked across " +
        std::to_string(report_.events["v2ray-core restart"]) + " restarts):\n" +
        totals.str());
    Say(ProxyCounters());
  }

  std::string ProxyCounters() const {
    auto counters = [](const TcpProxy& proxy) {
      return std::to_string(proxy.connections()) + " connections, " +
             std::to_string(proxy.cuts()) + " cut (" +
             std::to_string(proxy.pattern_cuts()) + " at a pattern), " +
             std::to_string(proxy.refused()) + " refused, " +
             std::to_string(proxy.target_unreachable()) +
             " with the target unreachable";
    };
    return "proxy counters: postgres " + counters(*pg_proxy_) + "; stats API " +
           counters(*api_proxy_);
  }

  const ChaosOptions& options_;
  std::mt19937_64 rng_;
  Clock::time_point start_;
  ChaosReport report_;

  TempDir runtime_dir_;  // control sockets; removed after every collector
  int control_sockets_ = 0;
  // Destroyed in reverse: the collector first, PostgreSQL last.
  std::unique_ptr<PgServer> pg_;
  std::unique_ptr<TcpProxy> pg_proxy_;
  std::unique_ptr<HttpTarget> target_;
  std::unique_ptr<V2RayServer> v2ray_;
  std::unique_ptr<TcpProxy> api_proxy_;
  std::unique_ptr<CollectorRunner> collector_;
  std::unique_ptr<V2RayServer> other_core_;  // for SecondCollector

  CounterMap banked_;  // counters of v2ray instances that are gone
  bool pg_up_ = true;
  Clock::time_point pg_down_since_;
  ProxyFault pg_fault_;
  ProxyFault api_fault_;
  std::optional<Clock::time_point> collector_down_since_;
  int collector_starts_ = 0;
  // The collector holds traffic of a v2ray instance that is gone and that
  // the database does not have yet: it must not die until then.
  bool fragile_ = false;
};

}  // namespace

ChaosReport RunChaos(const ChaosOptions& options) {
  return ChaosWorld(options).Run();
}

}  // namespace boxmeter::testing
