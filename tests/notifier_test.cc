// SystemdNotifier's health file ($BOXMETER_HEALTH_FILE): touched only as a
// regular file, never through a link, and never blocking the event loop,
// whatever another user planted at the path.
#include "notifier.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <future>

#include "support/process.h"

namespace boxmeter {
namespace {

using namespace std::chrono_literals;

// Calls Healthy() on another thread; fails the test if it blocks.
void TouchWithin(SystemdNotifier& notifier, std::chrono::seconds limit) {
  auto done = std::async(std::launch::async, [&] { notifier.Healthy(); });
  ASSERT_EQ(done.wait_for(limit), std::future_status::ready)
      << "Healthy() blocked";
}

struct timespec ModifiedAt(const std::string& path, bool follow = true) {
  struct stat st {};
  EXPECT_EQ(follow ? stat(path.c_str(), &st) : lstat(path.c_str(), &st), 0)
      << path;
  return st.st_mtim;
}

bool Same(const struct timespec& a, const struct timespec& b) {
  return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

struct timespec kLongAgo = {1'000'000'000, 0};

TEST(NotifierTest, CreatesAndTouchesARegularFile) {
  testing::TempDir dir;
  std::string path = dir.path() + "/healthy";
  SystemdNotifier notifier(path);
  TouchWithin(notifier, 10s);
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  struct timespec times[2] = {kLongAgo, kLongAgo};
  ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  TouchWithin(notifier, 10s);
  EXPECT_GT(ModifiedAt(path).tv_sec, kLongAgo.tv_sec);
}

TEST(NotifierTest, AFifoAtThePathNeitherBlocksNorIsWritten) {
  testing::TempDir dir;
  std::string path = dir.path() + "/healthy";
  ASSERT_EQ(mkfifo(path.c_str(), 0666), 0);
  SystemdNotifier notifier(path);
  // No reader: a blocking open for writing would wait forever.
  TouchWithin(notifier, 10s);
  TouchWithin(notifier, 10s);  // and again, after the warning
  struct stat st {};
  ASSERT_EQ(lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
}

TEST(NotifierTest, ALinkAtThePathIsNotFollowed) {
  testing::TempDir dir;
  std::string target = dir.path() + "/target";
  std::ofstream(target) << "someone else's file";
  struct timespec times[2] = {kLongAgo, kLongAgo};
  ASSERT_EQ(utimensat(AT_FDCWD, target.c_str(), times, 0), 0);
  std::string path = dir.path() + "/healthy";
  ASSERT_EQ(symlink(target.c_str(), path.c_str()), 0);
  // A dangling link must not create its target either.
  std::string dangling = dir.path() + "/dangling";
  std::string missing = dir.path() + "/created-through-link";
  ASSERT_EQ(symlink(missing.c_str(), dangling.c_str()), 0);

  SystemdNotifier notifier(path);
  TouchWithin(notifier, 10s);
  SystemdNotifier dangling_notifier(dangling);
  TouchWithin(dangling_notifier, 10s);

  EXPECT_TRUE(Same(ModifiedAt(target), kLongAgo));
  EXPECT_NE(access(missing.c_str(), F_OK), 0);
}

}  // namespace
}  // namespace boxmeter
