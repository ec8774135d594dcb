// PgServer: initdb (or a copy of its template) and pg_ctl in a temporary
// directory.
//
// PostgreSQL refuses to run as root, so when the tests run as root the
// directory is handed to the postgres user and initdb/pg_ctl run through
// runuser. The server listens on 127.0.0.1 only, with its Unix socket inside
// the temporary directory, so it never collides with a system cluster.
// fsync is off: the data is thrown away, and a kImmediate stop is still a
// crash the server recovers from on Start, since WAL is written as usual.
#include "pg_server.h"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

// The uid and gid that run the server.
struct Account {
  uid_t uid;
  gid_t gid;
};

Account ServerAccount() {
  std::string user = ServerUser();
  if (user.empty()) return {geteuid(), getegid()};
  passwd* pw = getpwnam(user.c_str());
  if (pw == nullptr) {
    throw std::runtime_error(
        "PgServer: running as root but there is no postgres user; install "
        "postgresql-15 or run the tests as an ordinary user");
  }
  return {pw->pw_uid, pw->pw_gid};
}

// Hands `dir` to the server user when we are root, so that initdb and pg_ctl,
// running as that user, can write inside it.
void HandToServerUser(const std::string& dir) {
  if (ServerUser().empty()) return;
  Account account = ServerAccount();
  if (chown(dir.c_str(), account.uid, account.gid) != 0) {
    throw std::runtime_error("PgServer: cannot chown " + dir + " to postgres");
  }
}

// initdb's data directory at `data`, whose parent is the server user's.
void InitDb(const std::string& data) {
  std::string output;
  int code =
      RunCommand(Command({BinDir() + "/initdb", "-D", data, "-A", "trust", "-U",
                          "postgres", "--no-sync", "-E", "UTF8", "--locale=C"},
                         ServerUser()),
                 kCommandTimeout, &output);
  if (code != 0) {
    throw std::runtime_error("PgServer: initdb in " + data + " failed (exit " +
                             std::to_string(code) +
                             "; if it cannot enter the directory, set TMPDIR "
                             "to one the postgres user can reach):\n" +
                             Tail(output));
  }
}

// Copies the directory `from` to `to` (absent) with its modes and owners:
// `cp -a` run as ourselves, since as root it keeps the postgres owner and
// reaches a template the postgres user may not (a build tree under /root).
// Returns cp's exit code, its output appended to `*output`.
int CopyTree(const std::string& from, const std::string& to,
             std::string* output) {
  return RunCommand(Command({"cp", "-a", "--", from, to}), kCommandTimeout,
                    output);
}

// Why `dir` is not a template WriteTemplate wrote for the server user, or ""
// if it is one.
std::string TemplateProblem(const std::string& dir) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    return std::string("cannot stat it: ") + std::strerror(errno);
  }
  if (!S_ISDIR(st.st_mode)) return "it is not a directory";
  if (!std::filesystem::exists(dir + "/PG_VERSION") ||
      !std::filesystem::exists(dir + "/global/pg_control")) {
    return "it holds no PG_VERSION or global/pg_control";
  }
  uid_t server_uid = ServerAccount().uid;
  if (st.st_uid != server_uid) {
    return "it is owned by uid " + std::to_string(st.st_uid) + ", not " +
           std::to_string(server_uid) + " (the user that runs the server)";
  }
  return "";
}

// Copies the template `template_dir` to `data`; false, after saying why on
// stderr and removing any partial copy, if it is unusable.
bool CopyTemplate(const std::string& template_dir, const std::string& data) {
  std::string problem = TemplateProblem(template_dir);
  if (problem.empty()) {
    std::string output;
    int code = CopyTree(template_dir, data, &output);
    if (code == 0) return true;
    problem = "cp -a failed (exit " + std::to_string(code) + "): " + output;
    std::error_code ignored;
    std::filesystem::remove_all(data, ignored);
  }
  std::fprintf(stderr,
               "PgServer: not using the template %s (%s); running initdb "
               "instead\n",
               template_dir.c_str(), problem.c_str());
  return false;
}

std::string TemplateFromEnvironment() {
  const char* value = std::getenv(PgServer::kTemplateVariable);
  return value == nullptr ? "" : value;
}

}  // namespace

PgServer::PgServer() : PgServer(TemplateFromEnvironment()) {}

PgServer::PgServer(const std::string& template_dir)
    : dir_(std::make_unique<TempDir>()) {
  Paths paths = PathsIn(dir_->path());
  HandToServerUser(dir_->path());
  if (template_dir.empty() || !CopyTemplate(template_dir, paths.data)) {
    InitDb(paths.data);
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

void PgServer::WriteTemplate(const std::string& path) {
  TempDir work;
  HandToServerUser(work.path());
  std::string data = PathsIn(work.path()).data;
  InitDb(data);
  std::string partial = path + ".partial";
  std::error_code error;
  std::filesystem::remove_all(partial, error);
  std::string output;
  int code = CopyTree(data, partial, &output);
  if (code != 0) {
    std::filesystem::remove_all(partial, error);
    throw std::runtime_error("PgServer::WriteTemplate: cp -a " + data + " " +
                             partial + " failed (exit " + std::to_string(code) +
                             "): " + output);
  }
  std::filesystem::remove_all(path, error);
  std::filesystem::rename(partial, path, error);
  if (error) {
    throw std::runtime_error("PgServer::WriteTemplate: cannot rename " +
                             partial + " to " + path + ": " + error.message());
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
