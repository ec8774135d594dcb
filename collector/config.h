// Config: the YAML file both binaries read (see deploy/boxmeter.example.yaml
// for every key). LoadConfig reads it, applies the environment's overrides and
// defaults, and validates everything at once so an operator sees every
// problem in one run.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "log.h"

namespace boxmeter {

inline constexpr const char* kDefaultConfigPath = "/etc/boxmeter/boxmeter.yaml";

struct Config {
  std::string path;  // the file this came from

  std::string node;  // default: the host name

  struct Source {
    std::string address;  // host:port of experimental.v2ray_api.listen
    std::chrono::milliseconds timeout{5000};
    // gRPC's receive limit; the default fits well over a million counters.
    int64_t max_message_size = 256 * 1024 * 1024;
  } source;

  struct Database {
    // libpq URL or key=value string: database.url, or the content of
    // database.url_file; $BOXMETER_DATABASE_URL and $BOXMETER_DATABASE_URL_FILE
    // override both. Empty when only the other binary's login was read (see
    // ConfigUser).
    std::string url;
    // The file `url` was read from (database.url_file or
    // $BOXMETER_DATABASE_URL_FILE, resolved), or "" when it was not.
    std::string url_file;
  } database;

  struct Poll {
    std::chrono::milliseconds interval{10000};
  } poll;

  struct Log {
    LogLevel level = LogLevel::kInfo;
  } log;

  struct Generator {
    std::string template_path = "/etc/boxmeter/sing-box.base.json";
    std::string output = "/etc/sing-box/config.json";
    std::vector<std::string> stats_outbounds{"direct"};
    // boxmeter-gen's own login, so the collector's need not read every
    // user's credentials: generator.database_url or the content of
    // generator.database_url_file, overridden by
    // $BOXMETER_GENERATOR_DATABASE_URL(_FILE). Empty: boxmeter-gen uses
    // database.url. A file is only read when loading as kGenerator.
    std::string database_url;
    std::string database_url_file;  // as Database::url_file
  } generator;

  struct Hooks {
    std::string on_users_changed;  // run with /bin/sh -c; empty: none
    // Run with /bin/sh -c once per usage event, its JSON on stdin (the
    // collector delivers the outbox of schema/0012); empty: none.
    std::string on_event;
    std::chrono::milliseconds timeout{60000};
  } hooks;

  struct History {
    std::chrono::hours retention{400 * 24};
  } history;

  // The local socket on which the collector takes `--flush` requests. Its
  // directory must exist (systemd: RuntimeDirectory=boxmeter).
  struct Control {
    std::string socket = "/run/boxmeter/collector.sock";
  } control;

  // The Prometheus endpoint (metrics_server.h, collector_metrics.h).
  struct Metrics {
    // "IP:PORT" or "[IPv6]:PORT" to serve GET /metrics on; empty: off.
    std::string listen;
    // Whether per-user traffic series are exposed (2 per user).
    bool per_user = true;
  } metrics;
};

// Which binary loads the config. Each reads only its own secret files
// (database.url_file for the collector, generator.database_url_file for
// boxmeter-gen when set), so each can be given only its own credential (a
// systemd LoadCredential=, a Docker or Kubernetes secret); the other
// binary's keys are still checked for form.
enum class ConfigUser { kCollector, kGenerator };

// The process environment, as a map so tests can pass their own.
using Environment = std::map<std::string, std::string>;
Environment ProcessEnvironment();

// "500ms", "10s", "5m", "2h", "400d": a positive whole number and a unit.
std::optional<std::chrono::milliseconds> ParseDuration(std::string_view text);

// The config file to read: `flag` (from --config) if given, else
// $BOXMETER_CONFIG, else kDefaultConfigPath.
std::string ConfigPath(const std::optional<std::string>& flag,
                       const Environment& env);

// Reads and validates the file at `path`. On success fills `out` and returns
// true. Otherwise returns false and appends one message per problem, each
// naming the file, the key (with its line where known), the bad value and
// what is expected. The database URL comes from, first to last:
// $BOXMETER_DATABASE_URL, the file named by $BOXMETER_DATABASE_URL_FILE,
// database.url or database.url_file (not both). boxmeter-gen's from
// $BOXMETER_GENERATOR_DATABASE_URL, $BOXMETER_GENERATOR_DATABASE_URL_FILE,
// generator.database_url or generator.database_url_file, else the database
// URL. A relative *_file path is taken inside $CREDENTIALS_DIRECTORY
// (systemd's LoadCredential=). A URL file must be a regular file of at most
// 64 KiB holding one connection string (a trailing newline is dropped); its
// content never appears in a message.
bool LoadConfig(const std::string& path, const Environment& env, Config* out,
                std::vector<std::string>* errors,
                ConfigUser user = ConfigUser::kCollector);

// The URL boxmeter-gen connects with: generator.database_url if set, else
// database.url.
const std::string& GeneratorDatabaseUrl(const Config& config);

// True when a source.address ("host:port" or "[v6]:port") names this
// machine's loopback: 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z), or a name
// that resolves only to those (localhost, *.localhost, ip6-localhost,
// ip6-loopback).
bool IsLoopbackAddress(std::string_view address);

// `url` with any password replaced by "***", for logs and errors.
std::string RedactUrl(std::string_view url);

// What is risky but not wrong in a loaded config, one message per problem,
// each naming the file or key and what to do; empty when nothing is:
// - database.url holds a password (and $BOXMETER_DATABASE_URL does not
//   override it) while the file can be read by its group or by others
//   (the mode bits of the file and the search bits of its directories);
// - source.address is not a loopback address: the stats API has neither TLS
//   nor authentication.
// Messages never contain the password. The binaries log them at start-up.
std::vector<std::string> ConfigWarnings(const Config& config,
                                        const Environment& env);

}  // namespace boxmeter
