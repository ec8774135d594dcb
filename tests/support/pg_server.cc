// PgServer: initdb and pg_ctl in a temporary directory.
//
// PostgreSQL refuses to run as root, so when the tests run as root the
// directory is handed to the postgres user and initdb/pg_ctl run through
// runuser. The server listens on 127.0.0.1 only, with its Unix socket inside
// the temporary directory, so it never collides with a system cluster.
// fsync is off: the data is thrown away, and a kImmediate stop is still a
// crash the server recovers from on Start, since WAL is written as usual.
#include "pg_server.h"

#include <pwd.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <stdexcept>

namespace boxmeter::testing {
namespace {

constexpr auto kCommandTimeout = std::chrono::seconds(120);
constexpr int kStartAttempts = 3;  // a "free" port can be taken meanwhile

// A command, run as `user` (empty: as we are).
Process::Options Command(std::vector<std::string> argv,
                         const std::string& user = "") {
  Process::Options options;
  options.argv = std::move(argv);
  options.run_as = user;
  return options;
}

std::string BinDir() {
  static const std::string dir = [] {
    const std::string debian = "/usr/lib/postgresql/15/bin";
    if (std::filesystem::exists(debian + "/initdb")) return debian;
    std::string output;
    int code = RunCommand(Command({"pg_config", "--bindir"}),
                          std::chrono::seconds(10), &output);
    while (!output.empty() &&
           isspace(static_cast<unsigned char>(output.back()))) {
      output.pop_back();
    }
    if (code != 0 || !std::filesystem::exists(output + "/initdb")) {
      throw std::runtime_error(
          "PgServer: no initdb in " + debian +
          " nor in `pg_config --bindir`; install postgresql-15");
    }
    return output;
  }();
  return dir;
}

std::string PercentEncode(const std::string& text) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string QuoteIdentifier(const std::string& name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

// Where the server's files live inside the temporary directory.
struct Paths {
  std::string data, log;
};

Paths PathsIn(const std::string& dir) {
  return {dir + "/data", dir + "/server.log"};
}

// The user that runs the server: postgres when we are root, else ourselves.
std::string ServerUser() { return geteuid() == 0 ? "postgres" : ""; }

}  // namespace

PgServer::PgServer() : dir_(std::make_unique<TempDir>()) {
  Paths paths = PathsIn(dir_->path());
  std::string user = ServerUser();
  if (!user.empty()) {
    passwd* pw = getpwnam(user.c_str());
    if (pw == nullptr) {
      throw std::runtime_error(
          "PgServer: running as root but there is no postgres user; install "
          "postgresql-15 or run the tests as an ordinary user");
    }
    if (chown(dir_->path().c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      throw std::runtime_error("PgServer: cannot chown " + dir_->path() +
                               " to postgres");
    }
  }
  std::string output;
  int code = RunCommand(
      Command({BinDir() + "/initdb", "-D", paths.data, "-A", "trust", "-U",
               "postgres", "--no-sync", "-E", "UTF8", "--locale=C"},
              user),
      kCommandTimeout, &output);
  if (code != 0) {
    throw std::runtime_error("PgServer: initdb in " + paths.data +
                             " failed (exit " + std::to_string(code) +
                             "; if it cannot enter the directory, set TMPDIR "
                             "to one the postgres user can reach):\n" +
                             Tail(output));
  }
  for (int attempt = 1;; ++attempt) {
    port_ = FreePort();
    try {
      Start();
      return;
    } catch (const std::runtime_error&) {
      if (attempt == kStartAttempts) throw;
    }
  }
}

PgServer::~PgServer() {
  if (running_) {
    try {
      Stop(StopMode::kImmediate);
    } catch (const std::exception&) {
      // Nothing more to do: the directory goes away regardless.
    }
  }
}

std::string PgServer::Url(const std::string& database) const {
  return "postgresql://postgres@127.0.0.1:" + std::to_string(port_) + "/" +
         PercentEncode(database);
}

std::string PgServer::CreateDatabase(const std::string& name) {
  Query("postgres", "CREATE DATABASE " + QuoteIdentifier(name));
  return Url(name);
}

std::string PgServer::Query(const std::string& database,
                            const std::string& sql) {
  TempDir capture;
  std::string out_path = capture.path() + "/stdout";
  std::string err_path = capture.path() + "/stderr";
  Process::Options psql = Command({BinDir() + "/psql", "-X", "-A", "-t", "-q",
                                   "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                                   "-p", std::to_string(port_), "-U",
                                   "postgres", "-d", database, "-c", sql});
  psql.env = {{"PGCONNECT_TIMEOUT", "10"}, {"PGOPTIONS", ""}};
  psql.stdout_path = out_path;
  psql.stderr_path = err_path;
  int code = RunCommand(psql, kCommandTimeout);
  std::string out = ReadFile(out_path);
  if (code != 0) {
    throw std::runtime_error(
        "PgServer::Query on database " + database + " failed (exit " +
        std::to_string(code) + "): " + ReadFile(err_path) + "SQL: " + sql +
        "\nserver log:\n" + Tail(ReadFile(PathsIn(dir_->path()).log)));
  }
  // psql ends the output with a newline; callers compare values.
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

void PgServer::Start() {
  Paths paths = PathsIn(dir_->path());
  // pg_ctl hands -o to a shell; the temporary directory's name is safe there.
  std::string server_options = "-c listen_addresses=127.0.0.1 -p " +
                               std::to_string(port_) +
                               " -c unix_socket_directories=" + dir_->path() +
                               " -c fsync=off -c full_page_writes=off";
  std::string output;
  int code = RunCommand(
      Command({BinDir() + "/pg_ctl", "-D", paths.data, "-l", paths.log, "-w",
               "-t", "60", "-o", server_options, "start"},
              ServerUser()),
      kCommandTimeout, &output);
  if (code != 0) {
    // A server that did start but not in time is stopped, so that a retry
    // does not leave it running.
    RunCommand(Command({BinDir() + "/pg_ctl", "-D", paths.data, "-m",
                        "immediate", "-w", "stop"},
                       ServerUser()),
               kCommandTimeout);
    throw std::runtime_error(
        "PgServer: pg_ctl start on 127.0.0.1:" + std::to_string(port_) +
        " failed (exit " + std::to_string(code) + "): " + output +
        "server log:\n" + Tail(ReadFile(paths.log)));
  }
  running_ = true;
}

void PgServer::Stop(StopMode mode) {
  Paths paths = PathsIn(dir_->path());
  std::string output;
  int code = RunCommand(Command({BinDir() + "/pg_ctl", "-D", paths.data, "-m",
                                 mode == StopMode::kFast ? "fast" : "immediate",
                                 "-w", "-t", "60", "stop"},
                                ServerUser()),
                        kCommandTimeout, &output);
  if (code != 0) {
    throw std::runtime_error("PgServer: pg_ctl stop failed (exit " +
                             std::to_string(code) + "): " + output +
                             "server log:\n" + Tail(ReadFile(paths.log)));
  }
  running_ = false;
}

}  // namespace boxmeter::testing
