// PgServer's template (tests/support/pg_server.h): a server started from a
// WriteTemplate directory runs on its own copy, with the owner and mode
// PostgreSQL demands, leaves the template untouched and shares nothing with
// another server from it; without a usable template it runs initdb as
// before.
#include "pg_server.h"

#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "process.h"

namespace boxmeter::testing {
namespace {

// The uid PostgreSQL runs as: postgres when we are root (pg_server.cc).
uid_t ServerUid() {
  if (geteuid() != 0) return geteuid();
  passwd* pw = getpwnam("postgres");
  return pw == nullptr ? geteuid() : pw->pw_uid;
}

TEST(PgServerTest, StartsOnItsOwnCopyOfTheTemplate) {
  TempDir dir;
  const std::string template_dir = dir.path() + "/template";
  PgServer::WriteTemplate(template_dir);
  ASSERT_TRUE(std::filesystem::exists(template_dir + "/PG_VERSION"));
  ASSERT_FALSE(std::filesystem::exists(template_dir + ".partial"));
  {
    // A file only the template has shows that the server's directory is a
    // copy of it, not initdb's.
    std::ofstream marker(template_dir + "/boxmeter-template-marker");
    marker << "from the template";
  }

  PgServer first(template_dir);
  PgServer second(template_dir);
  EXPECT_EQ(first.Query("postgres",
                        "SELECT pg_read_file('boxmeter-template-marker')"),
            "from the template");

  std::string first_data = first.Query("postgres", "SHOW data_directory");
  std::string second_data = second.Query("postgres", "SHOW data_directory");
  EXPECT_NE(first_data, template_dir);
  EXPECT_NE(first_data, second_data);
  EXPECT_NE(first.port(), second.port());
  struct stat st;
  ASSERT_EQ(stat(first_data.c_str(), &st), 0) << first_data;
  EXPECT_EQ(st.st_mode & 07777, 0700u) << first_data;
  EXPECT_EQ(st.st_uid, ServerUid()) << first_data;

  // What one server writes, the other and the template never see.
  first.Query("postgres", "CREATE TABLE only_in_first (x int)");
  EXPECT_EQ(first.Query("postgres",
                        "SELECT count(*) FROM pg_class WHERE relname = "
                        "'only_in_first'"),
            "1");
  EXPECT_EQ(second.Query("postgres",
                         "SELECT count(*) FROM pg_class WHERE relname = "
                         "'only_in_first'"),
            "0");
  EXPECT_FALSE(std::filesystem::exists(template_dir + "/postmaster.pid"));

  // Stopped and started again, the copy is still a working server.
  first.Stop();
  first.Start();
  EXPECT_EQ(first.Query("postgres", "SELECT count(*) FROM only_in_first"), "0");
}

TEST(PgServerTest, RunsInitdbWithoutAUsableTemplate) {
  TempDir dir;
  PgServer missing(dir.path() + "/missing");
  EXPECT_EQ(missing.Query("postgres", "SELECT 1"), "1");
  // A directory that is not a data directory (an interrupted cleanup, say).
  std::filesystem::create_directory(dir.path() + "/empty");
  PgServer empty(dir.path() + "/empty");
  EXPECT_EQ(empty.Query("postgres", "SELECT 1"), "1");
}

}  // namespace
}  // namespace boxmeter::testing
