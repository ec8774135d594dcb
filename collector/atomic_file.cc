#include "atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace boxmeter {
namespace {

std::string Errno(int error) { return std::strerror(error); }

std::string DirectoryOf(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string BaseName(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Whether a link owned by `uid` in a directory like `dir` can only have
// been put there by someone this process trusts: root or itself.
bool Trusted(uid_t uid) { return uid == 0 || uid == geteuid(); }

// Why the link at `link` may not be followed, or "" when it may: it and its
// directory must belong to root or this user, and nobody else may write the
// directory (otherwise another user could have planted or could swap it).
std::string UntrustedLink(const std::string& link, const struct stat& st) {
  const std::string dir = DirectoryOf(link);
  struct stat dir_st;
  if (stat(dir.c_str(), &dir_st) != 0) {
    return "its directory " + dir + " cannot be examined (" + Errno(errno) +
           ")";
  }
  if (!Trusted(st.st_uid)) {
    return "the link belongs to uid " + std::to_string(st.st_uid);
  }
  if (!Trusted(dir_st.st_uid)) {
    return "its directory " + dir + " belongs to uid " +
           std::to_string(dir_st.st_uid);
  }
  if ((dir_st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", dir_st.st_mode & 07777);
    return "its directory " + dir + " is writable by others (mode " + mode +
           ")";
  }
  return "";
}

// Where writing `path` lands: `path` itself, or, when it is a symbolic link
// (dangling or not, possibly to further links), the file at the end of the
// chain, each link checked with UntrustedLink first.
Status Target(const std::string& path, std::string* target) {
  std::string current = path;
  for (int hops = 0; hops < 40; ++hops) {
    struct stat st;
    if (lstat(current.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) {
      *target = current;
      return Status::Ok();
    }
    if (std::string why = UntrustedLink(current, st); !why.empty()) {
      return Status::Error(
          "refusing to write " + path + ": " + current +
          " is a symbolic link and " + why +
          "; boxmeter-gen writes through a link only when the link and its "
          "directory belong to root or to this user (uid " +
          std::to_string(geteuid()) +
          ") and nobody else may write the directory, so that no other "
          "user can redirect the write; point generator.output at the real "
          "file, or make the directory root's and not group- or "
          "world-writable");
    }
    std::vector<char> link(PATH_MAX);
    ssize_t n = readlink(current.c_str(), link.data(), link.size() - 1);
    if (n <= 0) {
      return Status::Error("cannot write " + path + ": cannot read the link " +
                           current + " (" + Errno(errno) + ")");
    }
    std::string next(link.data(), static_cast<size_t>(n));
    current = next.front() == '/' ? next : DirectoryOf(current) + "/" + next;
  }
  return Status::Error("cannot write " + path +
                       ": more than 40 symbolic links in a row; point "
                       "generator.output at the real file");
}

}  // namespace

Status WriteFileAtomically(const std::string& path, std::string_view content,
                           mode_t mode) {
  std::string target;
  if (Status status = Target(path, &target); !status.ok()) return status;
  const std::string dir = DirectoryOf(target);
  std::string temp = dir + "/." + BaseName(target) + ".tmp-XXXXXX";
  int fd = mkstemp(temp.data());
  if (fd < 0) {
    int error = errno;
    return Status::Error("cannot write " + path +
                         ": cannot create a temporary file in " + dir + " (" +
                         Errno(error) +
                         "); check that the directory exists and that this "
                         "user may write to it");
  }
  auto fail = [&](const std::string& what, int error) {
    if (fd >= 0) close(fd);
    unlink(temp.c_str());
    return Status::Error("cannot write " + path + ": " + what + " " + temp +
                         " failed (" + Errno(error) + "); " + path +
                         " is unchanged");
  };
  if (fchmod(fd, mode) != 0) return fail("fchmod of", errno);
  size_t written = 0;
  while (written < content.size()) {
    ssize_t n = write(fd, content.data() + written, content.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("writing", errno);
    }
    written += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) return fail("fsync of", errno);
  int closed = close(fd);
  fd = -1;
  if (closed != 0) return fail("closing", errno);
  if (rename(temp.c_str(), target.c_str()) != 0) {
    return fail("renaming to " + target + " from", errno);
  }
  // Make the rename durable. A failure here leaves the new file in place,
  // visible to every reader; only a crash right now could undo it.
  int dir_fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    fsync(dir_fd);
    close(dir_fd);
  }
  return Status::Ok();
}

Status ReadWholeFile(const std::string& path, std::string* content) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int error = errno;
    if (error == ENOENT) {
      return Status::Invalid(path + " does not exist");
    }
    return Status::Error("cannot open " + path + ": " + Errno(error));
  }
  std::string out;
  char buffer[65536];
  while (true) {
    ssize_t n = read(fd, buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      int error = errno;
      close(fd);
      return Status::Error("cannot read " + path + ": " + Errno(error));
    }
    if (n == 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  *content = std::move(out);
  return Status::Ok();
}

}  // namespace boxmeter
