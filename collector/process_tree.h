// ProcessTree: the processes below this one, found through /proc, so that a
// hook past its timeout is ended with everything it started. Killing the
// hook's process group is not enough: a child that calls setsid() leaves
// the group, and one whose parent exits is re-parented away from the
// collector. A cgroup per hook would need systemd's delegation, which a
// container does not have; this works in both.
#pragma once

#include <sys/types.h>

#include <vector>

namespace boxmeter {

// Makes this process the reaper of its orphaned descendants
// (PR_SET_CHILD_SUBREAPER): a hook's grandchild whose parent exits is
// re-parented to the collector instead of to init, so it stays among the
// collector's descendants. Its exit must then be reaped here
// (ReapChildrenExcept). Returns false if the kernel refused.
bool BecomeChildSubreaper();

// The direct children of `root` (zombies included).
std::vector<pid_t> Children(pid_t root);

// The pids of every live (not zombie) descendant of `root` except those in
// `spare` and their descendants, read from /proc/*/stat. Empty when /proc
// cannot be read.
std::vector<pid_t> LiveDescendants(pid_t root,
                                   const std::vector<pid_t>& spare = {});

// SIGKILLs every descendant of `root` but `spare` (and theirs), scanning
// again until none is left alive (a process may fork while it is being
// killed), for at most about a second.
// Signals go through a pidfd opened while the process is still a
// descendant, so a pid reused meanwhile is never hit. Returns the number of
// processes signalled.
int KillDescendants(pid_t root, const std::vector<pid_t>& spare = {});

// Reaps (waitpid WNOHANG) every exited child of this process except
// `except` (another thread waits for that one; 0: none). Children adopted
// as subreaper are reaped nowhere else.
void ReapChildrenExcept(pid_t except);

}  // namespace boxmeter
