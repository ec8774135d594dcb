#include "pg_bouncer.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace boxmeter::testing {
namespace {

constexpr auto kStartTimeout = std::chrono::seconds(30);

// Whether something accepts TCP connections on 127.0.0.1:`port`.
bool Accepts(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  bool connected =
      connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
  close(fd);
  return connected;
}

}  // namespace

std::string PgBouncer::Binary() {
  for (const char* path : {"/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"}) {
    if (access(path, X_OK) == 0) return path;
  }
  return "";
}

PgBouncer::PgBouncer(int server_port, int server_connections)
    : dir_(std::make_unique<TempDir>()), port_(FreePort()) {
  std::string binary = Binary();
  if (binary.empty()) {
    throw std::runtime_error(
        "PgBouncer: no pgbouncer in /usr/sbin or /usr/bin; install the "
        "pgbouncer package (scripts/install-deps.sh test)");
  }
  const std::string& dir = dir_->path();
  std::ofstream(dir + "/userlist.txt") << "\"postgres\" \"\"\n";
  std::ofstream(dir + "/pgbouncer.ini")
      << "[databases]\n"
      << "* = host=127.0.0.1 port=" << server_port << "\n"
      << "[pgbouncer]\n"
      << "listen_addr = 127.0.0.1\n"
      << "listen_port = " << port_ << "\n"
      << "unix_socket_dir =\n"
      << "auth_type = trust\n"
      << "auth_file = " << dir << "/userlist.txt\n"
      << "pool_mode = transaction\n"
      << "default_pool_size = " << server_connections << "\n"
      << "max_db_connections = " << server_connections << "\n"
      << "min_pool_size = 0\n"
      << "reserve_pool_size = 0\n"
      << "logfile = " << dir << "/pgbouncer.log\n";
  std::string user;
  if (geteuid() == 0) {
    user = "postgres";
    passwd* pw = getpwnam(user.c_str());
    if (pw == nullptr || chown(dir.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      throw std::runtime_error("PgBouncer: running as root, cannot hand " +
                               dir + " to the postgres user");
    }
  }
  Process::Options options;
  options.argv = {binary, dir + "/pgbouncer.ini"};
  options.stdout_path = dir + "/stdout.log";
  options.stderr_path = dir + "/stdout.log";
  options.run_as = user;
  process_ = Process::Start(options);
  if (!WaitUntil([&] { return Accepts(port_) || !process_->Running(); },
                 kStartTimeout, std::chrono::milliseconds(20)) ||
      !process_->Running()) {
    throw std::runtime_error("PgBouncer: pgbouncer did not start on port " +
                             std::to_string(port_) + ":\n" + Log());
  }
}

PgBouncer::~PgBouncer() = default;  // the Process kills pgbouncer

std::string PgBouncer::Url(const std::string& database) const {
  return "postgresql://postgres@127.0.0.1:" + std::to_string(port_) + "/" +
         database;
}

std::string PgBouncer::Log() const {
  return ReadFile(dir_->path() + "/stdout.log") +
         ReadFile(dir_->path() + "/pgbouncer.log");
}

}  // namespace boxmeter::testing
