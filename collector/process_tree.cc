#include "process_tree.h"

#include <dirent.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>

namespace boxmeter {
namespace {

struct ProcInfo {
  pid_t parent = 0;
  bool zombie = false;
};

// One /proc/PID/stat: "pid (comm) state ppid ...". The command may hold
// spaces and parentheses, so parse from the last ')'.
bool ReadStat(pid_t pid, ProcInfo* out) {
  std::ifstream file("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(file, line)) return false;
  size_t paren = line.rfind(')');
  if (paren == std::string::npos) return false;
  std::istringstream rest(line.substr(paren + 1));
  char state = 0;
  long parent = 0;
  if (!(rest >> state >> parent)) return false;
  out->parent = static_cast<pid_t>(parent);
  out->zombie = state == 'Z' || state == 'X';
  return true;
}

std::map<pid_t, ProcInfo> AllProcesses() {
  std::map<pid_t, ProcInfo> all;
  DIR* proc = opendir("/proc");
  if (!proc) return all;
  while (dirent* entry = readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(entry->d_name, &end, 10);
    if (pid <= 0 || *end != '\0') continue;
    ProcInfo info;
    if (ReadStat(static_cast<pid_t>(pid), &info)) {
      all[static_cast<pid_t>(pid)] = info;
    }
  }
  closedir(proc);
  return all;
}

// Every descendant of `root` (zombies included: they may still have
// children being re-parented).
std::vector<pid_t> Descendants(pid_t root, const std::map<pid_t, ProcInfo>& all,
                               const std::vector<pid_t>& spare) {
  std::multimap<pid_t, pid_t> children;
  for (const auto& [pid, info] : all) children.emplace(info.parent, pid);
  std::vector<pid_t> out;
  std::vector<pid_t> queue{root};
  while (!queue.empty()) {
    pid_t parent = queue.back();
    queue.pop_back();
    auto [begin, end] = children.equal_range(parent);
    for (auto it = begin; it != end; ++it) {
      if (it->second == root ||
          std::find(spare.begin(), spare.end(), it->second) != spare.end()) {
        continue;
      }
      out.push_back(it->second);
      queue.push_back(it->second);
    }
  }
  return out;
}

bool IsDescendant(pid_t pid, pid_t root) {
  // Walk up the parents; bounded in case /proc changes under us.
  for (int depth = 0; depth < 4096 && pid > 1; ++depth) {
    ProcInfo info;
    if (!ReadStat(pid, &info)) return false;
    if (info.parent == root) return true;
    pid = info.parent;
  }
  return false;
}

// SIGKILL through a pidfd, checked to still be below `root` after it was
// opened; plain kill() where pidfds are not available (before Linux 5.3).
bool KillIfDescendant(pid_t pid, pid_t root) {
#if defined(SYS_pidfd_open) && defined(SYS_pidfd_send_signal)
  long fd = syscall(SYS_pidfd_open, pid, 0);
  if (fd >= 0) {
    bool ok = IsDescendant(pid, root) &&
              syscall(SYS_pidfd_send_signal, static_cast<int>(fd), SIGKILL,
                      nullptr, 0) == 0;
    close(static_cast<int>(fd));
    return ok;
  }
  if (errno != ENOSYS) return false;  // gone already
#endif
  return IsDescendant(pid, root) && kill(pid, SIGKILL) == 0;
}

}  // namespace

bool BecomeChildSubreaper() {
  return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0;
}

std::vector<pid_t> Children(pid_t root) {
  std::vector<pid_t> out;
  for (const auto& [pid, info] : AllProcesses()) {
    if (info.parent == root) out.push_back(pid);
  }
  return out;
}

std::vector<pid_t> LiveDescendants(pid_t root,
                                   const std::vector<pid_t>& spare) {
  std::map<pid_t, ProcInfo> all = AllProcesses();
  std::vector<pid_t> out;
  for (pid_t pid : Descendants(root, all, spare)) {
    if (!all[pid].zombie) out.push_back(pid);
  }
  return out;
}

int KillDescendants(pid_t root, const std::vector<pid_t>& spare) {
  std::set<pid_t> signalled;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (std::chrono::steady_clock::now() < deadline) {
    std::vector<pid_t> live = LiveDescendants(root, spare);
    if (live.empty()) break;
    bool any_new = false;
    for (pid_t pid : live) {
      if (KillIfDescendant(pid, root) && signalled.insert(pid).second) {
        any_new = true;
      }
    }
    // Only processes already signalled and still dying: give them a moment
    // rather than spin on /proc.
    if (!any_new) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return static_cast<int>(signalled.size());
}

void ReapChildrenExcept(pid_t except) {
  pid_t self = getpid();
  for (const auto& [pid, info] : AllProcesses()) {
    if (info.parent == self && info.zombie && pid != except) {
      waitpid(pid, nullptr, WNOHANG);
    }
  }
}

}  // namespace boxmeter
