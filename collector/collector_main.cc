// boxmeter-collector: polls sing-box's stats API and commits every user's,
// inbound's and outbound's traffic to PostgreSQL exactly once.
#include <sysexits.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "collector.h"
#include "collector_metrics.h"
#include "command_line.h"
#include "config.h"
#include "control_socket.h"
#include "grpc_stats_source.h"
#include "log.h"
#include "metrics_server.h"
#include "notifier.h"
#include "pg_store.h"
#include "program.h"
#include "writer_lease.h"

namespace boxmeter {
namespace {

const std::vector<FlagSpec> kFlags = ProgramFlags({
    {"once", false,
     "poll and commit once, then exit (non-zero when that failed)"},
    {"check-config", false, "validate the config file and exit"},
    {"migrate", false, "apply the database schema and exit"},
    {"grant-node", true,
     "with --migrate: then let the collector login ROLE write this config's "
     "node (grant_node; run as the schema's owner)",
     "ROLE"},
    {"flush", false,
     "ask the running collector of this config's node to poll and commit "
     "now; exit 0 once that commit is in the database (run it right before "
     "reloading sing-box)"},
});

std::string Usage() {
  return "Usage: boxmeter-collector [options]\n"
         "\n"
         "Polls sing-box's V2Ray stats API (experimental.v2ray_api) every\n"
         "poll.interval and commits each user's, inbound's and outbound's\n"
         "traffic to PostgreSQL exactly once, through sing-box restarts and\n"
         "reloads, collector crashes and database outages. Runs until SIGTERM\n"
         "or SIGINT: it waits for a commit in flight, polls once more and\n"
         "commits, and exits 0 only when nothing is left uncommitted. SIGHUP\n"
         "reloads the config file. Only one collector writes a node at a\n"
         "time (a lease in the database); a second one waits as a standby.\n"
         "\n"
         "Options:\n" +
         FormatFlags(kFlags) +
         "\n"
         "Environment:\n"
         "  BOXMETER_CONFIG        the config file, unless --config is given\n"
         "  BOXMETER_DATABASE_URL  overrides database.url(_file)\n"
         "  BOXMETER_DATABASE_URL_FILE\n"
         "                         a file holding the URL; overrides\n"
         "                         database.url(_file)\n"
         "  CREDENTIALS_DIRECTORY  where a relative *_file path is looked up\n"
         "  PG* and ~/.pgpass      as libpq reads them\n"
         "  NOTIFY_SOCKET          systemd readiness, status and watchdog\n"
         "  BOXMETER_HEALTH_FILE   touched after every poll that reached both\n"
         "                         the stats API and the database (for\n"
         "                         container health checks)\n"
         "\n"
         "Exit status:\n"
         "  0   success; after SIGTERM/SIGINT: everything counted is "
         "committed\n"
         "  64  bad command line\n"
         "  69  --once, --migrate or --flush: the stats API, the database or\n"
         "      the running collector failed (the message says which)\n"
         "  75  stopped with traffic left uncommitted (the log says how much)\n"
         "  78  the config file is missing or invalid\n";
}

// --flush: the running collector polls and commits now.
int Flush(const Config& config) {
  // As long as the collector's own stop may take (a fetch, then a commit),
  // plus a lease to lapse: a collector restarted after a crash commits only
  // once its predecessor's lease has lapsed.
  auto timeout =
      Collector::StopBudget(config) + WriterLeaseTtl(config.poll.interval);
  Status status = RequestFlush(config.control.socket, config.node, timeout);
  if (!status.ok()) {
    LogError("{}", status.message());
    return EX_UNAVAILABLE;
  }
  LogInfo(
      "node {}: flushed; everything sing-box counted up to now is "
      "committed",
      config.node);
  return 0;
}

// --migrate [--grant-node ROLE].
int Migrate(PgStore& store, const std::string& node,
            const std::optional<std::string>& grant_to) {
  Status status = store.Connect();
  if (status.ok()) status = store.Migrate();
  if (status.ok()) LogInfo("the database schema is up to date");
  if (status.ok() && grant_to) {
    status = store.GrantNode(*grant_to);
    if (status.ok()) LogInfo("node {}: login {} may write it", node, *grant_to);
  }
  if (!status.ok()) {
    LogError("{}", status.message());
    return EX_UNAVAILABLE;
  }
  return 0;
}

// Until the signal_set in Main exists, SIGTERM, SIGINT and SIGHUP would take
// their default action: a stop right after start would end the collector
// with status 143 instead of a last commit and 0. Blocked, they wait for it.
// Threads started meanwhile (gRPC's, the database worker) keep the block,
// so these signals are then taken by the main thread; hooks start with an
// empty mask (HookRunner).
void BlockStopSignals(bool block) {
  sigset_t set;
  sigemptyset(&set);
  for (int signal : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&set, signal);
  pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, nullptr);
}

// SIGTERM/SIGINT stop the collector; SIGHUP reloads the config file.
void HandleSignals(boost::asio::signal_set& signals, Collector& collector,
                   const std::string& config_path) {
  signals.async_wait([&signals, &collector, config_path](
                         boost::system::error_code ec, int signal) {
    if (ec) return;
    if (signal == SIGHUP) {
      Config config;
      std::vector<std::string> errors;
      if (LoadConfig(config_path, ProcessEnvironment(), &config, &errors)) {
        collector.Reload(config);
      } else {
        for (const std::string& error : errors) LogError("{}", error);
        LogError("kept the running config: {} problem(s) in {}", errors.size(),
                 config_path);
      }
    } else {
      collector.Stop();
    }
    HandleSignals(signals, collector, config_path);
  });
}

int Main(int argc, char** argv) {
  BlockStopSignals(true);
  const ProgramInfo program{"boxmeter-collector", kFlags, Usage()};
  CommandLine cli;
  if (std::optional<int> done = StartProgram(program, argc, argv, &cli)) {
    return *done;
  }

  if (cli.Has("grant-node") && !cli.Has("migrate")) {
    std::fprintf(stderr,
                 "boxmeter-collector: --grant-node %s works only with "
                 "--migrate (run as the schema's owner); add --migrate\n",
                 cli.Value("grant-node")->c_str());
    return EX_USAGE;
  }
  Config config;
  if (!LoadConfigOrReport(program, cli,
                          "fix them and run again (--check-config checks "
                          "without starting)",
                          &config)) {
    return EX_CONFIG;
  }
  for (const std::string& warning :
       ConfigWarnings(config, ProcessEnvironment())) {
    LogWarn("{}", warning);
  }
  if (cli.Has("check-config")) {
    std::printf("%s: ok\n", config.path.c_str());
    return 0;
  }
  SetLogLevel(config.log.level);
  if (cli.Has("flush")) {
    BlockStopSignals(false);
    return Flush(config);
  }

  // Who this process is in the node's writer lease, as another collector
  // for the same node will name it in its log.
  PgStore store(config.database.url, config.node, NewLeaseHolder());
  if (cli.Has("migrate")) {
    BlockStopSignals(false);
    return Migrate(store, config.node, cli.Value("grant-node"));
  }

  LogInfo("node {}: writer lease holder \"{}\"", config.node,
          store.lease_holder());
  GrpcStatsSource source(config.source.address, config.source.max_message_size);
  const char* health_file = std::getenv("BOXMETER_HEALTH_FILE");
  SystemdNotifier notifier(health_file ? health_file : "");
  boost::asio::io_context io;
  // The /metrics endpoint, when metrics.listen is set (not for --once).
  std::unique_ptr<CollectorMetrics> metrics;
  if (!config.metrics.listen.empty() && !cli.Has("once")) {
    metrics = std::make_unique<CollectorMetrics>(CollectorMetrics::Options{
        config.node, config.metrics.per_user, BoxmeterVersion()});
  }
  Collector collector(io, config, source, store, notifier, metrics.get());

  if (cli.Has("once")) {
    BlockStopSignals(false);
    collector.StartOnce();
    io.run();
    return collector.ExitCode();
  }

  boost::asio::signal_set signals(io, SIGTERM, SIGINT, SIGHUP);
  HandleSignals(signals, collector, config.path);
  ControlServer control(io, config.control.socket, config.node,
                        [&collector](Collector::FlushDone done) {
                          collector.Flush(std::move(done));
                        });
  if (Status status = control.Open(); !status.ok()) {
    LogWarn("{}; --flush cannot reach this collector", status.message());
  }
  std::unique_ptr<MetricsServer> metrics_server;
  if (metrics) {
    metrics_server = std::make_unique<MetricsServer>(
        config.metrics.listen, [&metrics] { return metrics->RenderPieces(); });
    if (Status status = metrics_server->Start(); status.ok()) {
      LogInfo("serving Prometheus metrics on http://{}/metrics",
              config.metrics.listen);
    } else {
      // Counting matters more than its metrics: go on without them.
      LogError("{}; the collector runs without its metrics endpoint",
               status.message());
      metrics_server.reset();
    }
  }
  BlockStopSignals(false);
  collector.Start();
  io.run();
  return collector.ExitCode();
}

}  // namespace
}  // namespace boxmeter

int main(int argc, char** argv) { return boxmeter::Main(argc, argv); }
