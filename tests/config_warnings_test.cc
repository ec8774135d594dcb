// ConfigWarnings: what is risky but valid in a loaded config. A database
// password in a file others can read, and a stats API address off loopback
// (the API has no TLS and no authentication).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "config.h"
#include "support/process.h"

namespace boxmeter {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::SizeIs;

constexpr const char* kSecret = "hunter2-Sekr1t";

class ConfigWarningsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<testing::TempDir>();
    // mkdtemp makes it 0700, which would hide any file inside from others.
    ASSERT_EQ(chmod(dir_->path().c_str(), 0755), 0);
    path_ = dir_->path() + "/boxmeter.yaml";
  }

  // Writes a config with `url` and `address`, gives it `mode`, loads it and
  // returns its warnings.
  std::vector<std::string> Warnings(
      const std::string& url, mode_t mode,
      const std::string& address = "127.0.0.1:8080",
      const Environment& env = {}) {
    {
      std::ofstream file(path_, std::ios::trunc);
      file << "source:\n  address: \"" << address << "\"\n"
           << "database:\n  url: \"" << url << "\"\n";
    }
    EXPECT_EQ(chmod(path_.c_str(), mode), 0);
    Config config;
    std::vector<std::string> errors;
    EXPECT_TRUE(LoadConfig(path_, env, &config, &errors));
    EXPECT_THAT(errors, IsEmpty());
    std::vector<std::string> warnings = ConfigWarnings(config, env);
    for (const std::string& warning : warnings) {
      EXPECT_THAT(warning, Not(HasSubstr(kSecret)));
    }
    return warnings;
  }

  std::string UrlWithPassword() const {
    return std::string("postgresql://boxmeter:") + kSecret +
           "@db.example/boxmeter";
  }

  std::unique_ptr<testing::TempDir> dir_;
  std::string path_;
};

TEST_F(ConfigWarningsTest, PasswordInAFileOthersCanRead) {
  EXPECT_THAT(Warnings(UrlWithPassword(), 0644),
              ElementsAre(AllOf(HasSubstr(path_ + ": database.url holds a "
                                                  "password and the file is "
                                                  "readable by others"),
                                HasSubstr("chmod 600 " + path_),
                                HasSubstr("BOXMETER_DATABASE_URL"))));
}

TEST_F(ConfigWarningsTest, PasswordInAFileItsGroupCanRead) {
  EXPECT_THAT(Warnings(UrlWithPassword(), 0640),
              ElementsAre(HasSubstr("readable by its group")));
}

TEST_F(ConfigWarningsTest, PasswordInKeyValueFormCountsToo) {
  EXPECT_THAT(Warnings(std::string("host=db password=") + kSecret, 0604),
              ElementsAre(HasSubstr("readable by others")));
}

TEST_F(ConfigWarningsTest, OwnerOnlyFileIsFine) {
  EXPECT_THAT(Warnings(UrlWithPassword(), 0600), IsEmpty());
  EXPECT_THAT(Warnings(UrlWithPassword(), 0400), IsEmpty());
}

TEST_F(ConfigWarningsTest, ADirectoryOthersCannotEnterProtectsTheFile) {
  ASSERT_EQ(chmod(dir_->path().c_str(), 0700), 0);
  EXPECT_THAT(Warnings(UrlWithPassword(), 0644), IsEmpty());
  ASSERT_EQ(chmod(dir_->path().c_str(), 0750), 0);
  EXPECT_THAT(Warnings(UrlWithPassword(), 0644),
              ElementsAre(HasSubstr("readable by its group")));
}

TEST_F(ConfigWarningsTest, NoPasswordNoWarning) {
  EXPECT_THAT(Warnings("postgresql://boxmeter@db.example/boxmeter", 0644),
              IsEmpty());
  EXPECT_THAT(Warnings("host=db dbname=boxmeter", 0666), IsEmpty());
}

TEST_F(ConfigWarningsTest, EnvironmentOverrideMeansTheFileIsNotUsed) {
  // The password comes from the environment; the file's URL is not used.
  Environment env{
      {"BOXMETER_DATABASE_URL", "postgresql://boxmeter@db.example/boxmeter"}};
  EXPECT_THAT(Warnings(UrlWithPassword(), 0644, "127.0.0.1:8080", env),
              IsEmpty());
}

TEST_F(ConfigWarningsTest, LoopbackAddressesAreQuiet) {
  for (const char* address :
       {"127.0.0.1:8080", "127.10.20.30:1", "[::1]:8080", "localhost:8080",
        "LocalHost:9", "api.localhost:8080", "[::ffff:127.0.0.1]:8080",
        "ip6-localhost:8080"}) {
    EXPECT_THAT(Warnings("host=db", 0600, address), IsEmpty()) << address;
    // The same test tells the stats source it shares this kernel.
    EXPECT_TRUE(IsLoopbackAddress(address)) << address;
  }
}

TEST_F(ConfigWarningsTest, StatsApiOffLoopbackIsAWarning) {
  for (const char* address :
       {"10.0.0.5:8080", "0.0.0.0:8080", "[::]:8080", "[2001:db8::1]:8080",
        "sing-box:8080", "localhost.example.com:8080", "128.0.0.1:8080"}) {
    EXPECT_THAT(
        Warnings("host=db", 0600, address),
        ElementsAre(AllOf(HasSubstr(path_ + ": source.address \"" + address +
                                    "\" is not a loopback address"),
                          HasSubstr("no TLS and no authentication"))))
        << address;
    EXPECT_FALSE(IsLoopbackAddress(address)) << address;
  }
}

TEST_F(ConfigWarningsTest, BothAtOnce) {
  EXPECT_THAT(Warnings(UrlWithPassword(), 0644, "192.0.2.1:8080"), SizeIs(2));
}

}  // namespace
}  // namespace boxmeter
