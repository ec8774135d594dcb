#include "atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
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

// `path`, or the file it points to when it is a symbolic link.
std::string Target(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return path;
  char resolved[PATH_MAX];
  if (realpath(path.c_str(), resolved) != nullptr) return resolved;
  // A dangling link: write where it points.
  std::vector<char> link(PATH_MAX);
  ssize_t n = readlink(path.c_str(), link.data(), link.size() - 1);
  if (n <= 0) return path;
  std::string target(link.data(), static_cast<size_t>(n));
  if (target.front() == '/') return target;
  return DirectoryOf(path) + "/" + target;
}

}  // namespace

Status WriteFileAtomically(const std::string& path, std::string_view content,
                           mode_t mode) {
  const std::string target = Target(path);
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
