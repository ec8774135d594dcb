// Deploy: the boxmeter-collector binary as systemd runs it. The test plays
// systemd's part of the sd_notify protocol (a datagram socket in
// NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID in the environment) around
// the real binary, a throwaway PostgreSQL and the fake-stats-server binary,
// and checks what boxmeter-collector.service relies on:
//
//   READY=1     only once the database answers (the unit's start waits);
//   WATCHDOG=1  at half of WATCHDOG_USEC, never later than WATCHDOG_USEC;
//   STATUS=...  after polls, saying whether the database is reachable;
//   STOPPING=1  on SIGTERM, then exit 0 (Restart=on-failure stays quiet).
//
// Also: the collector runs the example config's hook, which creates the file
// boxmeter-gen.path watches; and boxmeter-gen turns the base template into a
// config that makes sing-box count what boxmeter reads.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "config.h"
#include "fake_stats_process.h"
#include "pg_server.h"
#include "process.h"

namespace boxmeter::testing {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::json;

constexpr const char* kNode = "deploy";
constexpr const char* kDatabase = "deploy";
const std::string kSourceDir = BOXMETER_SOURCE_DIR;

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// One sd_notify assignment as the service manager receives it.
struct Notification {
  std::string text;  // "READY=1", "STATUS=...", ...
  pid_t pid = 0;     // the sender, from the kernel's SCM_CREDENTIALS
  std::chrono::nanoseconds at{0};  // kernel receive time (CLOCK_REALTIME)
};

// The service manager's end of NOTIFY_SOCKET: a Unix datagram socket that
// records every assignment with its sender and arrival time. A thread reads
// it all the time, as systemd does: a sender blocks once a few datagrams are
// queued (net.unix.max_dgram_qlen), and the collector's sd_notify would stall
// its event loop.
class NotifySocket {
 public:
  explicit NotifySocket(std::string path) : path_(std::move(path)) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) Fail("socket");
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path_.size() >= sizeof(address.sun_path)) {
      throw std::runtime_error("socket path too long: " + path_);
    }
    std::strcpy(address.sun_path, path_.c_str());
    if (bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
      Fail("bind " + path_);
    }
    int on = 1;
    if (setsockopt(fd_, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0) {
      Fail("SO_PASSCRED");
    }
    if (setsockopt(fd_, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) != 0) {
      Fail("SO_TIMESTAMPNS");
    }
    reader_ = std::thread([this] { Read(); });
  }
  ~NotifySocket() {
    stop_ = true;
    reader_.join();
    close(fd_);
  }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  const std::string& path() const { return path_; }

  // Everything received so far, in order.
  std::vector<Notification> All() {
    std::lock_guard<std::mutex> lock(mu_);
    return received_;
  }

  // Received so far that start with `prefix`.
  std::vector<Notification> Matching(const std::string& prefix) {
    std::vector<Notification> matching;
    for (const Notification& n : All()) {
      if (n.text.starts_with(prefix)) matching.push_back(n);
    }
    return matching;
  }

  // The index in All() of the first assignment exactly `text`, or -1.
  int IndexOf(const std::string& text) {
    std::vector<Notification> all = All();
    for (size_t i = 0; i < all.size(); ++i) {
      if (all[i].text == text) return static_cast<int>(i);
    }
    return -1;
  }

 private:
  void Read() {
    while (!stop_) {
      pollfd ready{fd_, POLLIN, 0};
      if (poll(&ready, 1, 20) <= 0) continue;
      char data[4096];
      alignas(cmsghdr) char
          control[CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(timespec))];
      iovec iov{data, sizeof data};
      msghdr message{};
      message.msg_iov = &iov;
      message.msg_iovlen = 1;
      message.msg_control = control;
      message.msg_controllen = sizeof control;
      ssize_t size = recvmsg(fd_, &message, MSG_DONTWAIT);
      if (size < 0) continue;
      Notification base;
      for (cmsghdr* c = CMSG_FIRSTHDR(&message); c != nullptr;
           c = CMSG_NXTHDR(&message, c)) {
        if (c->cmsg_level != SOL_SOCKET) continue;
        if (c->cmsg_type == SCM_CREDENTIALS) {
          ucred credentials;
          std::memcpy(&credentials, CMSG_DATA(c), sizeof credentials);
          base.pid = credentials.pid;
        } else if (c->cmsg_type == SCM_TIMESTAMPNS) {
          timespec time;
          std::memcpy(&time, CMSG_DATA(c), sizeof time);
          base.at = std::chrono::seconds(time.tv_sec) +
                    std::chrono::nanoseconds(time.tv_nsec);
        }
      }
      // A datagram may carry several newline-separated assignments.
      std::lock_guard<std::mutex> lock(mu_);
      for (const std::string& line :
           Lines(std::string(data, static_cast<size_t>(size)))) {
        Notification n = base;
        n.text = line;
        received_.push_back(n);
      }
    }
  }

  [[noreturn]] void Fail(const std::string& what) {
    throw std::runtime_error(what + ": " + std::strerror(errno));
  }

  std::string path_;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<Notification> received_;  // guarded by mu_
  std::thread reader_;
};

class DeployedCollectorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pg_ = std::make_unique<PgServer>();
    database_url_ = pg_->CreateDatabase(kDatabase);
    ASSERT_EQ(stats_.Command("set user>>>alice>>>traffic>>>uplink 1000"), "");
  }

  // The collector's config: fast polls, everything else as deployed.
  std::string WriteConfig(const std::string& extra = "") {
    std::string path = dir_.path() + "/boxmeter.yaml";
    std::ofstream(path) << "node: " << kNode << "\n"
                        << "source:\n"
                        << "  address: " << stats_.address() << "\n"
                        << "  timeout: 2s\n"
                        << "database:\n"
                        << "  url: " << database_url_ << "\n"
                        << "poll:\n"
                        << "  interval: 200ms\n"
                        << "log:\n"
                        << "  level: debug\n"
                        << extra;
    return path;
  }

  // Starts the collector the way systemd starts a Type=notify service:
  // NOTIFY_SOCKET, and when `watchdog_usec` is set, WATCHDOG_USEC with
  // WATCHDOG_PID naming the service's own pid (the shell exports its $$ and
  // execs the collector, which keeps that pid). Variables the test process
  // may have inherited are cleared first.
  void StartCollector(const std::string& config_path,
                      std::optional<int64_t> watchdog_usec = std::nullopt) {
    std::string script =
        "unset WATCHDOG_USEC WATCHDOG_PID BOXMETER_DATABASE_URL "
        "BOXMETER_CONFIG; ";
    if (watchdog_usec) {
      script += "export WATCHDOG_USEC=" + std::to_string(*watchdog_usec) +
                " WATCHDOG_PID=$$; ";
    }
    script += "exec \"$0\" --config \"$1\"";
    Process::Options options;
    options.argv = {"/bin/sh", "-c", script, BOXMETER_COLLECTOR_BIN,
                    config_path};
    options.env = {{"NOTIFY_SOCKET", notify_.path()}};
    options.stderr_path = log_path_;
    collector_ = Process::Start(options);
  }

  std::string LogTail() {
    std::vector<std::string> lines = Lines(ReadFile(log_path_));
    std::string tail;
    for (size_t i = lines.size() > 30 ? lines.size() - 30 : 0; i < lines.size();
         ++i) {
      tail += lines[i] + "\n";
    }
    return "collector log (tail):\n" + tail;
  }

  // Every assignment came from the collector itself.
  void ExpectAllFromTheCollector() {
    for (const Notification& n : notify_.All()) {
      EXPECT_EQ(n.pid, collector_->pid()) << n.text;
    }
  }

  TempDir dir_;
  FakeStatsProcess stats_{BOXMETER_FAKE_STATS_SERVER_BIN};
  std::unique_ptr<PgServer> pg_;
  std::string database_url_;
  NotifySocket notify_{dir_.path() + "/notify"};
  std::string log_path_ = dir_.path() + "/collector.log";
  std::unique_ptr<Process> collector_;
};

TEST_F(DeployedCollectorTest, ReadyOnlyOnceTheDatabaseAnswersThenStopping) {
  pg_->Stop();
  StartCollector(WriteConfig());

  // Polls go on while the database is down, and say so in STATUS=.
  ASSERT_TRUE(WaitUntil(
      [&] {
        int down = 0;
        for (const Notification& n : notify_.Matching("STATUS=")) {
          if (n.text.find("database unavailable") != std::string::npos) ++down;
        }
        return down >= 3;
      },
      20s))
      << LogTail();
  ASSERT_TRUE(collector_->Running()) << LogTail();
  // Nothing waits in the socket (a thread reads it all the time): no
  // READY=1 yet.
  EXPECT_EQ(notify_.IndexOf("READY=1"), -1) << LogTail();
  size_t before_database = notify_.All().size();

  pg_->Start();
  ASSERT_TRUE(WaitUntil([&] { return notify_.IndexOf("READY=1") >= 0; }, 60s))
      << LogTail();
  EXPECT_GE(notify_.IndexOf("READY=1"), static_cast<int>(before_database));

  // Once ready, STATUS= reports the polls and a reachable database.
  ASSERT_TRUE(WaitUntil(
      [&] {
        for (const Notification& n : notify_.Matching("STATUS=")) {
          if (n.text.find("last poll: 1 counters") != std::string::npos &&
              n.text.find("database ok") != std::string::npos) {
            return true;
          }
        }
        return false;
      },
      20s))
      << LogTail();

  collector_->Signal(SIGTERM);
  EXPECT_EQ(collector_->Wait(30s), 0) << LogTail();
  int ready = notify_.IndexOf("READY=1");
  int stopping = notify_.IndexOf("STOPPING=1");
  ASSERT_GE(stopping, 0) << LogTail();
  EXPECT_GT(stopping, ready);
  EXPECT_EQ(notify_.Matching("READY=").size(), 1u);
  EXPECT_EQ(notify_.Matching("STOPPING=").size(), 1u);
  ExpectAllFromTheCollector();
}

TEST_F(DeployedCollectorTest, WatchdogAtHalfTheRequestedInterval) {
  constexpr auto kWatchdog = 1000ms;
  StartCollector(
      WriteConfig(),
      std::chrono::duration_cast<std::chrono::microseconds>(kWatchdog).count());
  ASSERT_TRUE(WaitUntil(
      [&] { return notify_.Matching("WATCHDOG=1").size() >= 9; }, 30s))
      << LogTail();
  std::vector<Notification> pings = notify_.Matching("WATCHDOG=1");
  std::vector<std::chrono::nanoseconds> gaps;
  for (size_t i = 1; i < pings.size(); ++i) {
    gaps.push_back(pings[i].at - pings[i - 1].at);
  }
  // systemd kills a service that stays silent for WATCHDOG_USEC.
  for (auto gap : gaps) {
    EXPECT_LT(gap, kWatchdog)
        << "a ping came " << gap.count() / 1'000'000 << "ms after the "
        << "previous one";
  }
  // And the collector pings at half of it, not much faster.
  std::sort(gaps.begin(), gaps.end());
  auto median = gaps[gaps.size() / 2];
  EXPECT_GE(median, kWatchdog * 45 / 100) << median.count() / 1'000'000 << "ms";
  EXPECT_LE(median, kWatchdog * 75 / 100) << median.count() / 1'000'000 << "ms";

  collector_->Signal(SIGTERM);
  EXPECT_EQ(collector_->Wait(30s), 0) << LogTail();
  ExpectAllFromTheCollector();
}

TEST_F(DeployedCollectorTest, NoWatchdogPingsUnlessAsked) {
  StartCollector(WriteConfig());
  ASSERT_TRUE(WaitUntil([&] { return notify_.IndexOf("READY=1") >= 0; }, 30s))
      << LogTail();
  // Several polls' worth of STATUS=, and not one WATCHDOG=1.
  ASSERT_TRUE(
      WaitUntil([&] { return notify_.Matching("STATUS=").size() >= 6; }, 20s))
      << LogTail();
  EXPECT_EQ(notify_.Matching("WATCHDOG=").size(), 0u);
  collector_->Signal(SIGTERM);
  EXPECT_EQ(collector_->Wait(30s), 0) << LogTail();
}

// The collector runs the example config's hook once it has read the users
// (the first time after every start), and that creates the file
// boxmeter-gen.path watches. /run/boxmeter (the unit's RuntimeDirectory=) is
// a temporary directory here.
TEST_F(DeployedCollectorTest, RunsTheHookThatStartsTheGenerator) {
  Config example;
  std::vector<std::string> errors;
  ASSERT_TRUE(LoadConfig(kSourceDir + "/deploy/boxmeter.example.yaml", {},
                         &example, &errors));
  std::string hook = example.hooks.on_users_changed;
  std::string moved = std::regex_replace(hook, std::regex("/run/boxmeter/"),
                                         dir_.path() + "/run/");
  ASSERT_NE(moved, hook);
  ASSERT_EQ(mkdir((dir_.path() + "/run").c_str(), 0700), 0);
  std::string trigger = dir_.path() + "/run/users-changed";

  StartCollector(
      WriteConfig("hooks:\n  on_users_changed: \"" + moved + "\"\n"));
  EXPECT_TRUE(
      WaitUntil([&] { return access(trigger.c_str(), F_OK) == 0; }, 30s))
      << trigger << " was not created\n"
      << LogTail();
  collector_->Signal(SIGTERM);
  EXPECT_EQ(collector_->Wait(30s), 0) << LogTail();
}

// boxmeter-gen on the base template: sing-box's config with the database's
// inbound and user, and the experimental.v2ray_api block the collector reads.
TEST_F(DeployedCollectorTest, BaseTemplateBecomesAConfigSingBoxCounts) {
  std::string output = dir_.path() + "/config.json";
  std::string config =
      WriteConfig("generator:\n  template: " + kSourceDir +
                  "/deploy/sing-box.base.json\n  output: " + output + "\n");
  Process::Options migrate;
  migrate.argv = {BOXMETER_COLLECTOR_BIN, "--config", config, "--migrate"};
  std::string log;
  ASSERT_EQ(RunCommand(migrate, 60s, &log), 0) << log;
  pg_->Query(kDatabase,
             "INSERT INTO users (name, uuid) VALUES "
             "('alice', '9f1c4d3e-2b7a-4c61-8e0f-5a6b7c8d9e01');"
             "INSERT INTO inbounds (node, tag, type, listen_port) VALUES "
             "('deploy', 'vless-in', 'vless', 443);"
             "INSERT INTO inbound_users (inbound_id, user_id) "
             "SELECT i.id, u.id FROM inbounds i, users u;");

  Process::Options gen;
  gen.argv = {BOXMETER_GEN_BIN, "--config", config};
  ASSERT_EQ(RunCommand(gen, 60s, &log), 0) << log;
  Json written = Json::parse(ReadFile(output));

  Json base = Json::parse(ReadFile(kSourceDir + "/deploy/sing-box.base.json"));
  EXPECT_EQ(written["log"], base["log"]);
  EXPECT_EQ(written["outbounds"], base["outbounds"]);
  EXPECT_EQ(written["route"], base["route"]);
  ASSERT_EQ(written["inbounds"].size(), 1u);
  EXPECT_EQ(written["inbounds"][0]["tag"], "vless-in");
  EXPECT_EQ(written["inbounds"][0]["users"][0]["name"], "alice");

  const Json& api = written["experimental"]["v2ray_api"];
  EXPECT_EQ(api["listen"], stats_.address());
  EXPECT_EQ(api["stats"]["enabled"], true);
  EXPECT_EQ(api["stats"]["inbounds"], Json::array({"vless-in"}));
  EXPECT_EQ(api["stats"]["users"], Json::array({"alice"}));
  EXPECT_EQ(api["stats"]["outbounds"], Json::array({"direct"}));
}

}  // namespace
}  // namespace boxmeter::testing
