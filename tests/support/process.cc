// Process, TempDir and the small helpers integration tests share.
//
// Each child runs in its own process group so that killing it also kills
// what it started: `runuser` keeps a child of its own, and a SIGKILL sent to
// runuser alone would leave that child running.
#include "process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>

extern char** environ;

namespace boxmeter::testing {
namespace {

constexpr auto kWaitStep = std::chrono::milliseconds(5);

std::runtime_error Failure(const std::string& what, int error) {
  return std::runtime_error(what + ": " + std::strerror(error));
}

int ExitCode(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return -1;
}

// "NAME=value" strings: the current environment with `overrides` applied.
std::vector<std::string> MergedEnvironment(
    const std::map<std::string, std::string>& overrides) {
  std::vector<std::string> merged;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    std::string_view text(*entry);
    std::string name(text.substr(0, text.find('=')));
    if (overrides.count(name) == 0) merged.emplace_back(text);
  }
  for (const auto& [name, value] : overrides) {
    merged.push_back(name + "=" + value);
  }
  return merged;
}

std::vector<char*> Pointers(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  for (std::string& s : strings) pointers.push_back(s.data());
  pointers.push_back(nullptr);
  return pointers;
}

int OpenOutput(const std::string& path) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0)
    throw Failure("cannot open " + path + " for a child's output", errno);
  return fd;
}

}  // namespace

std::unique_ptr<Process> Process::Start(const Options& options) {
  if (options.argv.empty()) {
    throw std::runtime_error("Process::Start: argv is empty");
  }
  std::vector<std::string> argv;
  if (!options.run_as.empty()) {
    argv = {"runuser", "-u", options.run_as, "--"};
  }
  argv.insert(argv.end(), options.argv.begin(), options.argv.end());
  std::vector<std::string> env = MergedEnvironment(options.env);
  // Everything the child needs is prepared before fork: between fork and
  // exec only async-signal-safe calls are allowed.
  std::vector<char*> argv_pointers = Pointers(argv);
  std::vector<char*> env_pointers = Pointers(env);
  int out_fd =
      options.stdout_path.empty() ? -1 : OpenOutput(options.stdout_path);
  int err_fd = -1;
  try {
    if (!options.stderr_path.empty()) {
      err_fd = options.stderr_path == options.stdout_path
                   ? fcntl(out_fd, F_DUPFD_CLOEXEC, 0)
                   : OpenOutput(options.stderr_path);
    }
  } catch (...) {
    if (out_fd >= 0) close(out_fd);
    throw;
  }
  // The child reports a failed exec through this pipe; a successful exec
  // closes it (O_CLOEXEC) and the parent reads end-of-file.
  int report[2];
  if (pipe2(report, O_CLOEXEC) != 0) throw Failure("pipe2", errno);

  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    // A test may block signals or ignore SIGPIPE; its children must not
    // inherit that.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);
    if (out_fd >= 0) dup2(out_fd, STDOUT_FILENO);
    if (err_fd >= 0) dup2(err_fd, STDERR_FILENO);
    execvpe(argv_pointers[0], argv_pointers.data(), env_pointers.data());
    int error = errno;
    ssize_t ignored = write(report[1], &error, sizeof error);
    (void)ignored;
    _exit(127);
  }
  int fork_error = errno;
  close(report[1]);
  if (out_fd >= 0) close(out_fd);
  if (err_fd >= 0) close(err_fd);
  if (pid < 0) {
    close(report[0]);
    throw Failure("cannot fork to start " + argv[0], fork_error);
  }
  // Also from the parent, so that a Signal sent right away reaches the group.
  setpgid(pid, pid);
  int exec_error = 0;
  ssize_t n;
  do {
    n = read(report[0], &exec_error, sizeof exec_error);
  } while (n < 0 && errno == EINTR);
  close(report[0]);
  if (n > 0) {
    int status;
    waitpid(pid, &status, 0);
    throw Failure("cannot start " + argv[0], exec_error);
  }
  return std::unique_ptr<Process>(new Process(pid));
}

Process::~Process() { Kill(); }

bool Process::Running() {
  if (exit_code_) return false;
  int status;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exit_code_ = ExitCode(status);
    return false;
  }
  return r == 0;
}

void Process::Signal(int signal) {
  if (!Running()) return;
  // The whole group: runuser and the command it runs.
  if (kill(-pid_, signal) != 0) kill(pid_, signal);
}

std::optional<int> Process::Wait(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (Running()) {
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(kWaitStep);
  }
  return exit_code_;
}

void Process::Kill() {
  if (exit_code_) return;
  // Kill the group even if the leader is already gone (a zombie still holds
  // its pid), then reap the leader. SIGKILL cannot be caught, so the blocking
  // waitpid returns promptly.
  kill(-pid_, SIGKILL);
  kill(pid_, SIGKILL);
  int status;
  pid_t r;
  do {
    r = waitpid(pid_, &status, 0);
  } while (r < 0 && errno == EINTR);
  exit_code_ = r == pid_ ? ExitCode(status) : 128 + SIGKILL;
}

int RunCommand(const Process::Options& options,
               std::chrono::milliseconds timeout, std::string* output) {
  Process::Options run = options;
  std::optional<TempDir> capture;
  std::string capture_path;
  if (output != nullptr) {
    capture.emplace();
    capture_path = capture->path() + "/output";
    if (run.stdout_path.empty()) run.stdout_path = capture_path;
    if (run.stderr_path.empty()) run.stderr_path = capture_path;
  }
  std::unique_ptr<Process> process = Process::Start(run);
  std::optional<int> code = process->Wait(timeout);
  if (!code) {
    process->Kill();
    code = process->Wait(std::chrono::milliseconds(0));
  }
  if (output != nullptr) *output += ReadFile(capture_path);
  return code.value_or(128 + SIGKILL);
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern =
      std::string(base != nullptr && *base != '\0' ? base : "/tmp") +
      "/boxmeter-test-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    throw Failure("mkdtemp " + pattern, errno);
  }
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw Failure("socket", errno);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;  // the kernel picks a free one
  socklen_t length = sizeof address;
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    int error = errno;
    close(fd);
    throw Failure("cannot find a free port on 127.0.0.1", error);
  }
  close(fd);
  return ntohs(address.sin_port);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

std::string Tail(const std::string& text, size_t max) {
  if (text.size() <= max) return text;
  return "..." + text.substr(text.size() - max);
}

}  // namespace boxmeter::testing
