// Connection strings from files (systemd credentials, Docker and Kubernetes
// secrets) and boxmeter-gen's own login: which source wins, that each binary
// reads only its own file, and that no message shows a file's content.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <future>

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

constexpr const char* kSecret = "Sekr1t-hunter2";
constexpr const char* kSource = "source: {address: 127.0.0.1:8080}\n";

class ConfigSecretFileTest : public ::testing::Test {
 protected:
  void SetUp() override { path_ = dir_.path() + "/boxmeter.yaml"; }

  // Writes `content` to `name` in the test directory; returns its path.
  std::string Secret(const std::string& name, const std::string& content) {
    std::string path = dir_.path() + "/" + name;
    std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
    return path;
  }

  bool LoadAs(ConfigUser user, const std::string& yaml, const Environment& env,
              Config* config, std::vector<std::string>* errors) {
    std::ofstream(path_, std::ios::trunc) << kSource << yaml;
    bool ok = LoadConfig(path_, env, config, errors, user);
    for (const std::string& error : *errors) {
      EXPECT_THAT(error, Not(HasSubstr(kSecret)));
    }
    return ok;
  }

  Config Load(const std::string& yaml, const Environment& env = {},
              ConfigUser user = ConfigUser::kCollector) {
    Config config;
    std::vector<std::string> errors;
    EXPECT_TRUE(LoadAs(user, yaml, env, &config, &errors));
    EXPECT_THAT(errors, IsEmpty());
    return config;
  }

  std::vector<std::string> Errors(const std::string& yaml,
                                  const Environment& env = {},
                                  ConfigUser user = ConfigUser::kCollector) {
    Config config;
    std::vector<std::string> errors;
    EXPECT_FALSE(LoadAs(user, yaml, env, &config, &errors));
    return errors;
  }

  std::string Url() const {
    return std::string("postgresql://boxmeter:") + kSecret + "@db/boxmeter";
  }

  testing::TempDir dir_;
  std::string path_;
};

TEST_F(ConfigSecretFileTest, AbsolutePathIsReadAndItsNewlineDropped) {
  std::string file = Secret("url", Url() + "\n");
  Config config = Load("database: {url_file: " + file + "}\n");
  EXPECT_EQ(config.database.url, Url());
  EXPECT_EQ(config.database.url_file, file);
}

TEST_F(ConfigSecretFileTest, RelativePathIsASystemdCredential) {
  Secret("database-url", "host=db dbname=boxmeter\r\n");
  Config config = Load("database: {url_file: database-url}\n",
                       {{"CREDENTIALS_DIRECTORY", dir_.path()}});
  EXPECT_EQ(config.database.url, "host=db dbname=boxmeter");
  EXPECT_EQ(config.database.url_file, dir_.path() + "/database-url");
}

TEST_F(ConfigSecretFileTest, RelativePathWithoutCredentialsIsAnError) {
  EXPECT_THAT(Errors("database: {url_file: database-url}\n"),
              ElementsAre(AllOf(HasSubstr(path_ + ":2: database.url_file: "
                                                  "\"database-url\" is a "
                                                  "relative path"),
                                HasSubstr("$CREDENTIALS_DIRECTORY"),
                                HasSubstr("LoadCredential="))));
}

TEST_F(ConfigSecretFileTest, KubernetesSecretLinksAreFollowed) {
  // A Kubernetes secret volume: name -> ..data/name, ..data -> a directory.
  std::string target = Secret("real-url", Url());
  std::string link = dir_.path() + "/linked-url";
  ASSERT_EQ(symlink(target.c_str(), link.c_str()), 0);
  EXPECT_EQ(Load("database: {url_file: " + link + "}\n").database.url, Url());
}

TEST_F(ConfigSecretFileTest, EnvironmentFileOverridesTheKeysAndTheUrlItWins) {
  std::string file = Secret("url", Url());
  Config config = Load("database: {url: host=from-config}\n",
                       {{"BOXMETER_DATABASE_URL_FILE", file}});
  EXPECT_EQ(config.database.url, Url());
  // $BOXMETER_DATABASE_URL wins over both; the file is then not read at all.
  config = Load("database: {url: host=from-config}\n",
                {{"BOXMETER_DATABASE_URL", "host=from-env"},
                 {"BOXMETER_DATABASE_URL_FILE", dir_.path() + "/missing"}});
  EXPECT_EQ(config.database.url, "host=from-env");
  EXPECT_TRUE(config.database.url_file.empty());
}

TEST_F(ConfigSecretFileTest, UrlAndUrlFileTogetherAreAnError) {
  std::string file = Secret("url", Url());
  EXPECT_THAT(Errors("database:\n  url: host=x\n  url_file: " + file + "\n"),
              ElementsAre(HasSubstr(path_ + ":4: database.url_file: set "
                                            "together with database.url "
                                            "(line 3); keep one")));
}

TEST_F(ConfigSecretFileTest, UnreadableFilesAreNamedWithWhatToDo) {
  std::string missing = dir_.path() + "/missing";
  EXPECT_THAT(Errors("database: {url_file: " + missing + "}\n"),
              ElementsAre(AllOf(HasSubstr("database.url_file: \"" + missing +
                                          "\" cannot be read: No such file"),
                                HasSubstr("put one connection string in it"))));
  EXPECT_THAT(Errors("", {{"BOXMETER_DATABASE_URL_FILE", missing}}),
              ElementsAre(HasSubstr("BOXMETER_DATABASE_URL_FILE "
                                    "(environment): \"" +
                                    missing + "\" cannot be read")));
  EXPECT_THAT(Errors("database: {url_file: " + dir_.path() + "}\n"),
              ElementsAre(HasSubstr("is not a regular file")));
  EXPECT_THAT(Errors("database: {url_file: " + Secret("empty", "\n") + "}\n"),
              ElementsAre(HasSubstr("is empty")));
  EXPECT_THAT(Errors("database: {url_file: " +
                     Secret("big", "host=x " + std::string(70000, 'a')) +
                     "}\n"),
              ElementsAre(HasSubstr("is larger than 64 KiB")));
}

TEST_F(ConfigSecretFileTest, ABarePasswordInTheFileIsNeverShown) {
  for (std::string content :
       {std::string(kSecret), std::string(kSecret) + "\nhost=x",
        "host=x\n" + std::string(kSecret)}) {
    EXPECT_THAT(
        Errors("database: {url_file: " + Secret("url", content) + "}\n"),
        ElementsAre(HasSubstr("does not hold a PostgreSQL connection string "
                              "on one line (its content is not shown")))
        << content;
  }
}

TEST_F(ConfigSecretFileTest, AFifoAtThePathDoesNotBlockTheLoad) {
  std::string fifo = dir_.path() + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  auto errors = std::async(std::launch::async, [&] {
    return Errors("database: {url_file: " + fifo + "}\n");
  });
  ASSERT_EQ(errors.wait_for(std::chrono::seconds(10)),
            std::future_status::ready)
      << "LoadConfig blocked opening a FIFO";
  EXPECT_THAT(errors.get(), ElementsAre(HasSubstr("is not a regular file")));
}

// --- boxmeter-gen's own login ----------------------------------------------

TEST_F(ConfigSecretFileTest, EachBinaryReadsOnlyItsOwnFile) {
  // Each unit is given only its own credential; the other file is absent.
  std::string yaml =
      "database: {url_file: collector-url}\n"
      "generator: {database_url_file: generator-url}\n";
  Secret("collector-url", "host=db user=collector");
  Config collector =
      Load(yaml, {{"CREDENTIALS_DIRECTORY", dir_.path()}},
           ConfigUser::kCollector);
  EXPECT_EQ(collector.database.url, "host=db user=collector");
  EXPECT_TRUE(collector.generator.database_url.empty());

  ASSERT_EQ(unlink((dir_.path() + "/collector-url").c_str()), 0);
  Secret("generator-url", "host=db user=generator");
  Config generator =
      Load(yaml, {{"CREDENTIALS_DIRECTORY", dir_.path()}},
           ConfigUser::kGenerator);
  EXPECT_TRUE(generator.database.url.empty());
  EXPECT_EQ(generator.generator.database_url, "host=db user=generator");
  EXPECT_EQ(GeneratorDatabaseUrl(generator), "host=db user=generator");
}

TEST_F(ConfigSecretFileTest, GeneratorWithoutItsOwnLoginUsesTheDatabaseUrl) {
  Config config = Load("database: {url_file: " + Secret("url", Url()) + "}\n",
                       {}, ConfigUser::kGenerator);
  EXPECT_EQ(GeneratorDatabaseUrl(config), Url());
  EXPECT_THAT(Errors("", {}, ConfigUser::kGenerator),
              ElementsAre(HasSubstr("database.url: missing")));
}

TEST_F(ConfigSecretFileTest, GeneratorUrlNeedsNoDatabaseUrl) {
  Config config = Load("generator: {database_url: host=db user=gen}\n", {},
                       ConfigUser::kGenerator);
  EXPECT_EQ(GeneratorDatabaseUrl(config), "host=db user=gen");
  // The collector still needs its own.
  EXPECT_THAT(Errors("generator: {database_url: host=db user=gen}\n"),
              ElementsAre(HasSubstr("database.url: missing")));
}

TEST_F(ConfigSecretFileTest, GeneratorEnvironmentOverridesItsKeys) {
  std::string yaml =
      "database: {url: host=db user=collector}\n"
      "generator: {database_url: host=db user=gen}\n";
  Config config =
      Load(yaml,
           {{"BOXMETER_GENERATOR_DATABASE_URL_FILE",
             Secret("gen", "host=db user=gen-file\n")},
            {"BOXMETER_DATABASE_URL", "host=db user=inherited"}},
           ConfigUser::kGenerator);
  // The collector's variable (inherited through a hook) does not win over
  // the generator's own login.
  EXPECT_EQ(GeneratorDatabaseUrl(config), "host=db user=gen-file");
  config = Load(yaml, {{"BOXMETER_GENERATOR_DATABASE_URL", "host=db user=env"}},
                ConfigUser::kGenerator);
  EXPECT_EQ(GeneratorDatabaseUrl(config), "host=db user=env");
}

TEST_F(ConfigSecretFileTest, GeneratorKeysAreCheckedByTheCollectorToo) {
  EXPECT_THAT(Errors("database: {url: host=x}\n"
                     "generator: {database_url: not-a-url}\n"),
              ElementsAre(HasSubstr("generator.database_url: \"not-a-url\" "
                                    "is not a PostgreSQL connection string")));
}

TEST_F(ConfigSecretFileTest, WarningsCoverTheGeneratorUrlButNotFiles) {
  ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
  Config config = Load("database: {url_file: " + Secret("url", Url()) +
                       "}\ngenerator: {database_url: '" + Url() + "'}\n");
  ASSERT_EQ(chmod(path_.c_str(), 0644), 0);
  std::vector<std::string> warnings = ConfigWarnings(config, {});
  EXPECT_THAT(warnings,
              ElementsAre(AllOf(HasSubstr(path_ + ": generator.database_url "
                                                  "holds a password"),
                                HasSubstr("generator.database_url_file"))));
  for (const std::string& warning : warnings) {
    EXPECT_THAT(warning, Not(HasSubstr(kSecret)));
  }
}

}  // namespace
}  // namespace boxmeter
