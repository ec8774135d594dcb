// The chaos run: the world (servers, proxies, the collector), the events, and
// the checks. See chaos_run.h for what it proves and how.
#include "chaos_run.h"

#include <signal.h>

#include <cmath>
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

// The counters the run can predict: the api inbound and outbound count the
// stats calls themselves (every poll and every ground-truth read).
CounterMap Predictable(CounterMap counters) {
  std::erase_if(counters, [](const auto& entry) {
    return entry.first.starts_with("inbound>>>api-in>>>") ||
           entry.first.starts_with("outbound>>>api>>>");
  });
  return WithoutZeros(std::move(counters));
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
};

// A proxy fault that heals by itself at `until`.
struct ProxyFault {
  enum class Kind { kNone, kStall, kRefuse } kind = Kind::kNone;
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
      report_.failure += Context();
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
      context += "\ncollector log " + collector_->log_path() + ", tail:\n" +
                 collector_->LogTail(60);
    }
    if (v2ray_) context += "\nv2ray log tail:\n" + v2ray_->LogTail();
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
    collector_ = std::make_unique<CollectorRunner>(
        options_.collector_binary,
        CollectorRunner::Settings{
            .node = kNode,
            .source_address = api_proxy_->address(),
            .database_url = "postgresql://postgres@" + pg_proxy_->address() +
                            "/" + kDatabase + "?connect_timeout=5",
            .poll_interval = kPollInterval,
            .source_timeout = kSourceTimeout,
            .log_level = "debug"});
    collector_->Start();
    ++collector_starts_;
    Say("world: PostgreSQL :" + std::to_string(pg_->port()) + " via proxy " +
        pg_proxy_->address() + ", v2ray-core API " + v2ray_->ApiAddress() +
        " via proxy " + api_proxy_->address() + ", collector log " +
        collector_->log_path());
    Traffic();
    AwaitExact("first commit");
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
    Survived(name + (kind == ProxyFault::Kind::kStall ? " proxy stall"
                                                      : " proxy refuse"),
             std::to_string(std::chrono::duration_cast<milliseconds>(
                                fault.until - Clock::now())
                                .count()) +
                 "ms");
  }
  void Heal(TcpProxy& proxy, ProxyFault& fault, const std::string& name) {
    if (fault.kind == ProxyFault::Kind::kNone) return;
    proxy.SetStalled(false);
    proxy.SetRefusing(false);
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
    return Predictable(std::move(expected));
  }

  // Waits until the database equals the ground truth exactly.
  void AwaitExact(const std::string& why) {
    CounterMap expected, actual;
    std::string error;
    auto started = Clock::now();
    bool matched = WaitUntil(
        [&] {
          error = TryTrafficInDatabase(*pg_, kDatabase, kNode, &actual);
          actual = Predictable(std::move(actual));
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
    actual = Predictable(std::move(actual));
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

  // Waits for `count` successful polls that start after the call.
  void AwaitPolls(size_t count) {
    const std::string kPollLine = "last poll: ";
    size_t before = collector_->CountLogLines(kPollLine);
    if (!WaitUntil(
            [&] {
              return collector_->CountLogLines(kPollLine) >= before + count + 1;
            },
            30s, 50ms)) {
      throw ChaosFailure("no " + std::to_string(count) +
                         " successful polls within 30s");
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
    size_t polls = collector_->CountLogLines("last poll: ");
    bool seen = WaitUntil(
        [&] { return collector_->CountLogLines("last poll: ") >= polls + 2; },
        10s, 20ms);
    Pause(Uniform(50, 300));
    collector_->Kill();
    CollectorStopped();
    Pause(Uniform(0, 2000));
    pg_proxy_->SetStalled(false);
    Survived("collector kill -9 during a commit",
             seen ? "commit stalled in flight" : "no poll seen; plain kill");
  }

  void TermCollector() {
    if (Chance(0.5)) Traffic();
    // SIGTERM is handled (one last poll and commit, exit 0) once the
    // collector has set up its loop, which it logs; before that, in its
    // first milliseconds, SIGTERM's default action ends it (status 143)
    // with nothing polled yet. Wait for the line, so the run tests the
    // handled case.
    if (!WaitUntil(
            [&] {
              return collector_->CountLogLines(std::string("node ") + kNode +
                                               ": polling ") >=
                     static_cast<size_t>(collector_starts_);
            },
            10s, 20ms)) {
      throw ChaosFailure("the collector did not log its start within 10s");
    }
    collector_->Signal(SIGTERM);
    std::optional<int> code = collector_->Wait(60s);
    if (!code)
      throw ChaosFailure("the collector did not exit within 60s of SIGTERM");
    if (*code != 0) {
      throw ChaosFailure("the collector exited with " + std::to_string(*code) +
                         " after SIGTERM; expected 0");
    }
    CollectorStopped();
    Survived("collector SIGTERM", "exit 0");
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
    CounterMap actual = Predictable(TrafficInDatabase(*pg_, kDatabase, kNode));
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
    Say("proxy counters: postgres " + std::to_string(pg_proxy_->connections()) +
        " connections, " + std::to_string(pg_proxy_->cuts()) + " cut (" +
        std::to_string(pg_proxy_->pattern_cuts()) + " at a COMMIT), " +
        std::to_string(pg_proxy_->refused()) + " refused; stats API " +
        std::to_string(api_proxy_->connections()) + " connections, " +
        std::to_string(api_proxy_->cuts()) + " cut, " +
        std::to_string(api_proxy_->refused()) + " refused");
  }

  const ChaosOptions& options_;
  std::mt19937_64 rng_;
  Clock::time_point start_;
  ChaosReport report_;

  // Destroyed in reverse: the collector first, PostgreSQL last.
  std::unique_ptr<PgServer> pg_;
  std::unique_ptr<TcpProxy> pg_proxy_;
  std::unique_ptr<HttpTarget> target_;
  std::unique_ptr<V2RayServer> v2ray_;
  std::unique_ptr<TcpProxy> api_proxy_;
  std::unique_ptr<CollectorRunner> collector_;

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
