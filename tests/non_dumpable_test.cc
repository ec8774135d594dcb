// Both binaries make themselves non-dumpable, so another process of the
// same uid (sing-box sharing the collector's PID namespace and user, as in
// the container layouts) cannot read their /proc/PID/environ, where
// BOXMETER_DATABASE_URL may hold the password. Each binary is held in its
// database connection (a listener that accepts and never answers), and a
// second process of its uid tries to read its environment. As root, both
// run as nobody through setpriv (which execs without forking, so the pid is
// the binary's); otherwise both simply run as the test's user.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "process.h"

namespace boxmeter::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;

constexpr const char* kSecret = "EnvironSecret-hunter2";

// A TCP listener on 127.0.0.1 that accepts and never says a word: libpq
// waits there for the server's first message.
class SilentListener {
 public:
  SilentListener() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    if (fd_ < 0 ||
        bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) ||
        listen(fd_, 8) ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length)) {
      throw std::runtime_error("cannot listen on 127.0.0.1");
    }
    port_ = ntohs(address.sin_port);
  }
  ~SilentListener() {
    for (int fd : accepted_) close(fd);
    close(fd_);
  }
  int port() const { return port_; }
  // Waits up to `timeout` for a connection; true if one came.
  bool Accept(std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(timeout.count())) != 1) return false;
    int fd = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) return false;
    accepted_.push_back(fd);
    return true;
  }

 private:
  int fd_ = -1;
  int port_ = 0;
  std::vector<int> accepted_;
};

class NonDumpableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // nobody must be able to read the config and run the binaries.
    ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
    for (const char* binary : {BOXMETER_COLLECTOR_BIN, BOXMETER_GEN_BIN}) {
      std::string copy =
          dir_.path() + "/" + std::filesystem::path(binary).filename().string();
      std::filesystem::copy_file(binary, copy);
      ASSERT_EQ(chmod(copy.c_str(), 0755), 0);
    }
    config_ = dir_.path() + "/boxmeter.yaml";
    // boxmeter-gen reads its template before it connects.
    std::string base = dir_.path() + "/base.json";
    std::ofstream(base) << "{}\n";
    ASSERT_EQ(chmod(base.c_str(), 0644), 0);
    std::ofstream(config_) << "node: edge-1\n"
                              "source: {address: '127.0.0.1:1'}\n"
                              "database: {url: 'host=127.0.0.1'}\n"
                              "generator: {template: '"
                           << base << "'}\n";
    ASSERT_EQ(chmod(config_.c_str(), 0644), 0);
  }

  // argv run as the same unprivileged uid the target runs as.
  static std::vector<std::string> AsTargetUser(std::vector<std::string> argv) {
    if (geteuid() != 0) return argv;
    std::vector<std::string> out = {"setpriv", "--reuid=65534", "--regid=65534",
                                    "--clear-groups", "--"};
    out.insert(out.end(), argv.begin(), argv.end());
    return out;
  }

  // Starts `binary` with the password in its environment, held in its
  // database connection.
  std::unique_ptr<Process> StartHeld(const std::string& binary,
                                     SilentListener& listener) {
    Process::Options options;
    options.argv =
        AsTargetUser({dir_.path() + "/" + binary, "--config", config_});
    options.env = {
        {"BOXMETER_DATABASE_URL",
         "postgresql://boxmeter:" + std::string(kSecret) +
             "@127.0.0.1:" + std::to_string(listener.port()) + "/boxmeter"},
        {"HOME", "/nonexistent"}};
    options.stderr_path = dir_.path() + "/" + binary + ".log";
    auto process = Process::Start(options);
    EXPECT_TRUE(listener.Accept(60s))
        << binary << " never connected to the database";
    return process;
  }

  // What another process of the target's uid reads of `pid`'s environment.
  static std::string ReadEnvironOf(pid_t pid, int* exit_code) {
    Process::Options options;
    options.argv =
        AsTargetUser({"cat", "/proc/" + std::to_string(pid) + "/environ"});
    std::string output;
    *exit_code = RunCommand(options, 30s, &output);
    return output;
  }

  TempDir dir_;
  std::string config_;
};

TEST_F(NonDumpableTest, AnOrdinaryProcessOfTheUidIsReadable) {
  // The control: the same reader does read a process that stays dumpable,
  // so the tests below would fail if the binaries did not protect
  // themselves.
  Process::Options options;
  options.argv = AsTargetUser({"sleep", "300"});
  options.env = {{"BOXMETER_DATABASE_URL", kSecret}};
  auto sleeper = Process::Start(options);
  int code = -1;
  std::string environ;
  ASSERT_TRUE(WaitUntil(
      [&] {
        environ = ReadEnvironOf(sleeper->pid(), &code);
        return environ.find(kSecret) != std::string::npos;
      },
      10s, 50ms))
      << "exit " << code << ": " << environ;
}

TEST_F(NonDumpableTest, TheCollectorsEnvironmentIsClosedToItsUid) {
  SilentListener listener;
  auto collector = StartHeld("boxmeter-collector", listener);
  ASSERT_TRUE(collector->Running());
  int code = -1;
  std::string environ = ReadEnvironOf(collector->pid(), &code);
  EXPECT_NE(code, 0);
  EXPECT_THAT(environ, Not(HasSubstr(kSecret)));
  EXPECT_THAT(environ, HasSubstr("Permission denied"));
  EXPECT_TRUE(collector->Running());
}

TEST_F(NonDumpableTest, TheGeneratorsEnvironmentIsClosedToItsUid) {
  SilentListener listener;
  auto gen = StartHeld("boxmeter-gen", listener);
  int code = -1;
  std::string environ = ReadEnvironOf(gen->pid(), &code);
  EXPECT_TRUE(gen->Running()) << "boxmeter-gen left its connection early";
  EXPECT_NE(code, 0);
  EXPECT_THAT(environ, Not(HasSubstr(kSecret)));
  EXPECT_THAT(environ, HasSubstr("Permission denied"));
}

}  // namespace
}  // namespace boxmeter::testing
