#include "config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

namespace boxmeter {
namespace {

using std::chrono::hours;
using std::chrono::milliseconds;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::SizeIs;

constexpr std::string_view kMinimal =
    "source:\n"
    "  address: 127.0.0.1:8080\n"
    "database:\n"
    "  url: postgresql://boxmeter@localhost/boxmeter\n";

std::string HostName() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return host;
}

// Each test writes its YAML into its own temporary directory, removed after.
class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = getenv("TMPDIR");
    std::string pattern =
        std::string(tmp && *tmp ? tmp : "/tmp") + "/boxmeter-config-XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    path_ = dir_ + "/boxmeter.yaml";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void Write(std::string_view content) {
    std::ofstream file(path_, std::ios::binary);
    file << content;
  }

  // The errors for `yaml`; fails the test if it loads.
  std::vector<std::string> Errors(std::string_view yaml,
                                  const Environment& env = {}) {
    Write(yaml);
    Config config;
    std::vector<std::string> errors;
    EXPECT_FALSE(LoadConfig(path_, env, &config, &errors));
    EXPECT_FALSE(errors.empty());
    return errors;
  }

  // The one error for `yaml`.
  std::string Error(std::string_view yaml, const Environment& env = {}) {
    std::vector<std::string> errors = Errors(yaml, env);
    EXPECT_THAT(errors, SizeIs(1));
    return errors.empty() ? "" : errors[0];
  }

  // The config from `yaml`; fails the test on errors.
  Config Load(std::string_view yaml, const Environment& env = {}) {
    Write(yaml);
    Config config;
    std::vector<std::string> errors;
    EXPECT_TRUE(LoadConfig(path_, env, &config, &errors));
    EXPECT_THAT(errors, ::testing::IsEmpty());
    return config;
  }

  std::string At(int line) { return path_ + ":" + std::to_string(line) + ": "; }

  std::string dir_;
  std::string path_;
};

// --- Good files ------------------------------------------------------------

TEST_F(ConfigTest, DefaultsFillEverythingButTheRequiredKeys) {
  Config config = Load(kMinimal);
  EXPECT_EQ(config.path, path_);
  EXPECT_EQ(config.node, HostName());
  EXPECT_FALSE(config.node.empty());
  EXPECT_EQ(config.source.address, "127.0.0.1:8080");
  EXPECT_EQ(config.source.timeout, milliseconds(5000));
  EXPECT_EQ(config.source.max_message_size, 256 * 1024 * 1024);
  EXPECT_EQ(config.database.url, "postgresql://boxmeter@localhost/boxmeter");
  EXPECT_EQ(config.poll.interval, milliseconds(10000));
  EXPECT_EQ(config.log.level, LogLevel::kInfo);
  EXPECT_EQ(config.generator.template_path, "/etc/boxmeter/sing-box.base.json");
  EXPECT_EQ(config.generator.output, "/etc/sing-box/config.json");
  EXPECT_THAT(config.generator.stats_outbounds, ElementsAre("direct"));
  EXPECT_EQ(config.hooks.on_users_changed, "");
  EXPECT_EQ(config.hooks.on_event, "");
  EXPECT_EQ(config.hooks.timeout, milliseconds(60000));
  EXPECT_EQ(config.history.retention, hours(400 * 24));
}

TEST_F(ConfigTest, ReadsEveryKey) {
  Config config = Load(
      "node: edge-7\n"
      "source:\n"
      "  address: '[::1]:9090'\n"
      "  timeout: 750ms\n"
      "  max_message_size: 64MiB\n"
      "database:\n"
      "  url: host=db dbname=meter\n"
      "poll:\n"
      "  interval: 2m\n"
      "log:\n"
      "  level: debug\n"
      "generator:\n"
      "  template: /srv/base.json\n"
      "  output: /srv/out.json\n"
      "  stats_outbounds: [direct, 'proxy a']\n"
      "hooks:\n"
      "  on_users_changed: |\n"
      "    boxmeter-gen\n"
      "    systemctl reload sing-box\n"
      "  on_event: /usr/local/bin/on-event-webhook.sh\n"
      "  timeout: 90s\n"
      "history:\n"
      "  retention: 36h\n");
  EXPECT_EQ(config.node, "edge-7");
  EXPECT_EQ(config.source.address, "[::1]:9090");
  EXPECT_EQ(config.source.timeout, milliseconds(750));
  EXPECT_EQ(config.source.max_message_size, 64 * 1024 * 1024);
  EXPECT_EQ(config.database.url, "host=db dbname=meter");
  EXPECT_EQ(config.poll.interval, milliseconds(120000));
  EXPECT_EQ(config.log.level, LogLevel::kDebug);
  EXPECT_EQ(config.generator.template_path, "/srv/base.json");
  EXPECT_EQ(config.generator.output, "/srv/out.json");
  EXPECT_THAT(config.generator.stats_outbounds,
              ElementsAre("direct", "proxy a"));
  EXPECT_EQ(config.hooks.on_users_changed,
            "boxmeter-gen\nsystemctl reload sing-box\n");
  EXPECT_EQ(config.hooks.on_event, "/usr/local/bin/on-event-webhook.sh");
  EXPECT_EQ(config.hooks.timeout, milliseconds(90000));
  EXPECT_EQ(config.history.retention, hours(36));
}

TEST_F(ConfigTest, EmptySectionsAndEmptyListsAreAllowed) {
  Config config = Load(std::string(kMinimal) +
                       "poll:\n"
                       "generator:\n"
                       "  stats_outbounds: []\n"
                       "hooks:\n"
                       "  on_users_changed:\n"
                       "  on_event:\n");
  EXPECT_EQ(config.poll.interval, milliseconds(10000));
  EXPECT_TRUE(config.generator.stats_outbounds.empty());
  EXPECT_EQ(config.hooks.on_users_changed, "");
  EXPECT_EQ(config.hooks.on_event, "");
}

TEST_F(ConfigTest, AcceptsTheAddressForms) {
  for (std::string address :
       {"127.0.0.1:8080", "'[::1]:8080'", "localhost:8080", "sing-box:1",
        "'[fe80::1]:65535'", "my_host.internal:443"}) {
    Config config =
        Load("source: {address: " + address + "}\ndatabase: {url: 'host=x'}\n");
    std::string expected = address;
    if (expected.front() == '\'')
      expected = expected.substr(1, expected.size() - 2);
    EXPECT_EQ(config.source.address, expected);
  }
}

TEST_F(ConfigTest, AcceptsByteSizesWithAndWithoutSuffix) {
  auto load_size = [&](std::string size) {
    return Load("source:\n  address: 127.0.0.1:8080\n  max_message_size: " +
                size + "\ndatabase:\n  url: host=x\n")
        .source.max_message_size;
  };
  EXPECT_EQ(load_size("1000"), 1000);
  EXPECT_EQ(load_size("64KiB"), 64 * 1024);
  EXPECT_EQ(load_size("256MiB"), 256 * 1024 * 1024);
  EXPECT_EQ(load_size("1GiB"), 1024 * 1024 * 1024);
  EXPECT_EQ(load_size("2147483647"), 2147483647);
}

TEST_F(ConfigTest, TheExampleFileLoads) {
  std::string example =
      std::string(BOXMETER_SOURCE_DIR) + "/deploy/boxmeter.example.yaml";
  Config config;
  std::vector<std::string> errors;
  ASSERT_TRUE(LoadConfig(example, {}, &config, &errors))
      << ::testing::PrintToString(errors);
  // The values docs/design.md's example shows, and the header's defaults.
  EXPECT_EQ(config.node, "edge-1");
  EXPECT_EQ(config.source.address, "127.0.0.1:8080");
  EXPECT_EQ(config.source.timeout, milliseconds(5000));
  EXPECT_EQ(config.source.max_message_size, Config().source.max_message_size);
  EXPECT_EQ(config.database.url, "postgresql://boxmeter@localhost/boxmeter");
  EXPECT_EQ(config.poll.interval, Config().poll.interval);
  EXPECT_EQ(config.log.level, LogLevel::kInfo);
  EXPECT_EQ(config.generator.template_path, Config().generator.template_path);
  EXPECT_EQ(config.generator.output, Config().generator.output);
  EXPECT_EQ(config.generator.stats_outbounds,
            Config().generator.stats_outbounds);
  // The systemd layout's hook (deploy/systemd/boxmeter-gen.path).
  EXPECT_EQ(config.hooks.on_users_changed, "touch /run/boxmeter/users-changed");
  EXPECT_EQ(config.hooks.timeout, Config().hooks.timeout);
  EXPECT_EQ(config.history.retention, Config().history.retention);
  // The endpoint is on, on loopback.
  EXPECT_EQ(config.metrics.listen, "127.0.0.1:9464");
  EXPECT_TRUE(config.metrics.per_user);
}

// --- metrics ---------------------------------------------------------------

TEST_F(ConfigTest, MetricsAreOffUnlessListenIsSet) {
  Config config = Load(kMinimal);
  EXPECT_EQ(config.metrics.listen, "");
  EXPECT_TRUE(config.metrics.per_user);
  EXPECT_EQ(
      Load(std::string(kMinimal) + "metrics: {listen: \"\"}\n").metrics.listen,
      "");
  EXPECT_EQ(
      Load(std::string(kMinimal) + "metrics:\n  listen:\n").metrics.listen, "");
}

TEST_F(ConfigTest, MetricsListenTakesIpAndPort) {
  auto listen = [&](std::string_view value) {
    return Load(std::string(kMinimal) + "metrics:\n  listen: \"" +
                std::string(value) + "\"\n")
        .metrics.listen;
  };
  EXPECT_EQ(listen("127.0.0.1:9464"), "127.0.0.1:9464");
  EXPECT_EQ(listen("0.0.0.0:1"), "0.0.0.0:1");
  EXPECT_EQ(listen("[::1]:65535"), "[::1]:65535");
  EXPECT_EQ(listen("[::]:9464"), "[::]:9464");
}

TEST_F(ConfigTest, MetricsListenErrorsNameTheKeyAndValue) {
  auto error = [&](std::string_view value) {
    return Error(std::string(kMinimal) + "metrics:\n  listen: \"" +
                 std::string(value) + "\"\n");
  };
  EXPECT_THAT(error("localhost:9464"),
              AllOf(HasSubstr(":6: metrics.listen: \"localhost:9464\""),
                    HasSubstr("host names are not taken"),
                    HasSubstr("127.0.0.1:9464")));
  EXPECT_THAT(error("127.0.0.1"), HasSubstr("has no :PORT"));
  EXPECT_THAT(error("::1:9464"), HasSubstr("IPv6 address without brackets"));
  EXPECT_THAT(error("[::1]9464"), HasSubstr("has no ]:PORT"));
  EXPECT_THAT(error("127.0.0.1:0"), HasSubstr("port outside 1..65535"));
  EXPECT_THAT(error("127.0.0.1:65536"), HasSubstr("port outside 1..65535"));
  EXPECT_THAT(error("127.0.0.1:http"), HasSubstr("does not end in a port"));
  EXPECT_THAT(Error(std::string(kMinimal) + "metrics: {listen: [a]}\n"),
              HasSubstr("metrics.listen: is a list"));
}

TEST_F(ConfigTest, MetricsPerUserIsABoolean) {
  EXPECT_FALSE(Load(std::string(kMinimal) + "metrics: {per_user: false}\n")
                   .metrics.per_user);
  EXPECT_TRUE(Load(std::string(kMinimal) + "metrics: {per_user: True}\n")
                  .metrics.per_user);
  EXPECT_THAT(Error(std::string(kMinimal) + "metrics: {per_user: maybe}\n"),
              AllOf(HasSubstr("metrics.per_user: \"maybe\" is not a boolean"),
                    HasSubstr("true or false")));
  EXPECT_THAT(Error(std::string(kMinimal) + "metrics: {per_users: false}\n"),
              HasSubstr("did you mean metrics.per_user?"));
}

// --- The environment -------------------------------------------------------

TEST_F(ConfigTest, EnvironmentUrlOverridesTheFile) {
  Config config = Load(kMinimal, {{"BOXMETER_DATABASE_URL", "host=other"}});
  EXPECT_EQ(config.database.url, "host=other");
}

TEST_F(ConfigTest, EnvironmentUrlStandsInForAMissingKey) {
  Config config = Load("source: {address: 127.0.0.1:8080}\n",
                       {{"BOXMETER_DATABASE_URL", "postgresql://h/db"}});
  EXPECT_EQ(config.database.url, "postgresql://h/db");
}

TEST_F(ConfigTest, EmptyEnvironmentUrlCountsAsUnset) {
  Config config = Load(kMinimal, {{"BOXMETER_DATABASE_URL", ""}});
  EXPECT_EQ(config.database.url, "postgresql://boxmeter@localhost/boxmeter");
}

TEST_F(ConfigTest, BadEnvironmentUrlIsNamedAndRedacted) {
  std::string error =
      Error(kMinimal, {{"BOXMETER_DATABASE_URL", "mysql:/u:hunter2@h/db"}});
  EXPECT_THAT(error,
              AllOf(HasSubstr("BOXMETER_DATABASE_URL"),
                    HasSubstr("not a PostgreSQL connection string"),
                    HasSubstr("mysql:***@h/db"), Not(HasSubstr("hunter2"))));
}

TEST(ConfigPathTest, FlagThenEnvironmentThenDefault) {
  Environment env{{"BOXMETER_CONFIG", "/env.yaml"}};
  EXPECT_EQ(ConfigPath(std::string("/flag.yaml"), env), "/flag.yaml");
  EXPECT_EQ(ConfigPath(std::nullopt, env), "/env.yaml");
  EXPECT_EQ(ConfigPath(std::nullopt, {}), kDefaultConfigPath);
  EXPECT_EQ(ConfigPath(std::nullopt, {{"BOXMETER_CONFIG", ""}}),
            kDefaultConfigPath);
}

TEST(ProcessEnvironmentTest, ReadsTheRealEnvironment) {
  ASSERT_EQ(setenv("BOXMETER_CONFIG_TEST_VAR", "a=b c", 1), 0);
  Environment env = ProcessEnvironment();
  unsetenv("BOXMETER_CONFIG_TEST_VAR");
  EXPECT_EQ(env["BOXMETER_CONFIG_TEST_VAR"], "a=b c");
}

// --- One test per kind of bad input -----------------------------------------

TEST_F(ConfigTest, BadDurationNamesFileLineKeyValueAndForm) {
  std::string error = Error(std::string(kMinimal) + "poll:\n  interval: 10\n");
  EXPECT_EQ(error, At(6) +
                       "poll.interval: \"10\" is not a duration; write a whole "
                       "number with a unit (ms, s, m, h or d), like 500ms, 10s "
                       "or 5m");
}

TEST_F(ConfigTest, ZeroDuration) {
  std::string error = Error(std::string(kMinimal) + "hooks:\n  timeout: 0s\n");
  EXPECT_THAT(error, AllOf(HasSubstr(At(6) + "hooks.timeout: \"0s\""),
                           HasSubstr("positive")));
}

TEST_F(ConfigTest, HookCommandsMustBeText) {
  std::vector<std::string> errors =
      Errors(std::string(kMinimal) +
             "hooks:\n  on_users_changed: [a]\n  on_event: {b: c}\n");
  EXPECT_THAT(
      errors,
      ElementsAre(At(6) + "hooks.on_users_changed: is a list; expected a "
                          "shell command, or \"\" for none",
                  At(7) + "hooks.on_event: is a mapping; expected a shell "
                          "command, or \"\" for none"));
}

TEST_F(ConfigTest, DurationTooLong) {
  std::string error = Error(
      "source:\n  address: 127.0.0.1:8080\n  timeout: 99999999999999999999d\n"
      "database: {url: host=x}\n");
  EXPECT_THAT(error, AllOf(HasSubstr(At(3) + "source.timeout:"),
                           HasSubstr("99999999999999999999d"),
                           HasSubstr("too long"), HasSubstr("36500d")));
}

TEST_F(ConfigTest, PollIntervalBelowMinimum) {
  std::string error = Error(std::string(kMinimal) + "poll: {interval: 50ms}\n");
  EXPECT_EQ(error, At(5) +
                       "poll.interval: \"50ms\" is too short; write at least "
                       "100ms");
}

TEST_F(ConfigTest, RetentionBelowOneHourOrNotWholeHours) {
  EXPECT_EQ(Error(std::string(kMinimal) + "history: {retention: 30m}\n"),
            At(5) +
                "history.retention: \"30m\" is too short; write at least "
                "1h");
  EXPECT_THAT(Error(std::string(kMinimal) + "history: {retention: 90m}\n"),
              AllOf(HasSubstr(At(5) + "history.retention:"),
                    HasSubstr("whole number of hours")));
}

TEST_F(ConfigTest, UnknownTopLevelKeyListsTheKnownOnes) {
  std::string error = Error(std::string(kMinimal) + "pol:\n  interval: 5s\n");
  EXPECT_EQ(error, At(5) +
                       "pol: unknown key (did you mean poll?); the known keys "
                       "at the top level are: node, source, database, poll, "
                       "log, generator, hooks, history, control, metrics");
}

TEST_F(ConfigTest, UnknownNestedKeyListsTheSectionsKeys) {
  std::string error = Error(
      "source:\n  address: 127.0.0.1:8080\n  timeuot: 5s\n"
      "database: {url: host=x}\n");
  EXPECT_EQ(error, At(3) +
                       "source.timeuot: unknown key (did you mean "
                       "source.timeout?); the known keys under source are: "
                       "address, timeout, max_message_size");
}

TEST_F(ConfigTest, UnknownKeyWithoutAnyCloseMatch) {
  std::string error = Error(std::string(kMinimal) + "colour: blue\n");
  EXPECT_THAT(error,
              AllOf(HasSubstr(At(5) + "colour: unknown key;"),
                    Not(HasSubstr("did you mean")), Not(HasSubstr("blue"))));
}

TEST_F(ConfigTest, MappingWhereAStringIsExpected) {
  std::string error =
      Error(std::string(kMinimal) + "log:\n  level:\n    name: debug\n");
  EXPECT_EQ(error, At(6) +
                       "log.level: is a mapping; expected debug, info, warn or "
                       "error");
}

TEST_F(ConfigTest, ListWhereADurationIsExpected) {
  std::string error =
      Error(std::string(kMinimal) + "poll:\n  interval: [10s]\n");
  EXPECT_THAT(error, AllOf(HasSubstr(At(6) + "poll.interval: is a list;"),
                           HasSubstr("expected a duration like")));
}

TEST_F(ConfigTest, StringWhereASectionIsExpected) {
  std::string error = Error(std::string(kMinimal) + "poll: 10s\n");
  EXPECT_EQ(error, At(5) +
                       "poll: is the string \"10s\"; expected a mapping with "
                       "the keys interval");
}

TEST_F(ConfigTest, KeyWithoutValue) {
  std::string error = Error(std::string(kMinimal) + "node:\n");
  EXPECT_THAT(error, AllOf(HasSubstr(At(5) + "node: has no value;"),
                           HasSubstr("host name")));
}

TEST_F(ConfigTest, EmptyNode) {
  std::string error = Error(std::string(kMinimal) + "node: ''\n");
  EXPECT_THAT(error, HasSubstr(At(5) + "node: \"\" is empty;"));
}

TEST_F(ConfigTest, BadLogLevel) {
  std::string error = Error(std::string(kMinimal) + "log: {level: verbose}\n");
  EXPECT_EQ(error, At(5) +
                       "log.level: \"verbose\" is not a log level; write "
                       "debug, info, warn or error");
}

TEST_F(ConfigTest, MissingAddress) {
  std::string error = Error("database:\n  url: host=x\n");
  EXPECT_EQ(error, path_ +
                       ": source.address: missing; set it to sing-box's "
                       "experimental.v2ray_api.listen address, like "
                       "127.0.0.1:8080");
}

TEST_F(ConfigTest, MissingAddressInAPresentSectionPointsAtIt) {
  std::string error =
      Error("database:\n  url: host=x\nsource:\n  timeout: 5s\n");
  EXPECT_THAT(error, HasSubstr(At(3) + "source.address: missing;"));
}

TEST_F(ConfigTest, MissingDatabaseUrlMentionsTheVariable) {
  std::string error = Error("source:\n  address: 127.0.0.1:8080\n");
  EXPECT_THAT(
      error,
      AllOf(HasSubstr(path_ + ": database.url: missing; set it to"),
            HasSubstr("postgresql://"), HasSubstr("BOXMETER_DATABASE_URL")));
}

TEST_F(ConfigTest, BadAddresses) {
  struct Case {
    std::string address;
    std::string why;
  };
  for (const Case& c : std::vector<Case>{
           {"127.0.0.1", "has no :port"},
           {"127.0.0.1:", "does not end in a port number"},
           {"127.0.0.1:http", "does not end in a port number"},
           {"127.0.0.1:0", "outside 1..65535"},
           {"127.0.0.1:65536", "outside 1..65535"},
           {"127.0.0.1:123456", "does not end in a port number"},
           {":8080", "has no host"},
           {"::1:8080", "IPv6 address without brackets"},
           {"[::1]", "has no :port"},
           {"[::1:8080", "no closing ]"},
           {"[local]:8080", "IPv6 address between [ and ]"},
           {"http://host:8080", "has a URL scheme"},
           {"a b:8080", "cannot be in a host name"},
       }) {
    SCOPED_TRACE(c.address);
    std::string error = Error("database: {url: host=x}\nsource:\n  address: '" +
                              c.address + "'\n");
    EXPECT_THAT(
        error, AllOf(HasSubstr(At(3) + "source.address: \"" + c.address + "\""),
                     HasSubstr(c.why), HasSubstr("[::1]:8080")));
  }
}

TEST_F(ConfigTest, BadByteSizes) {
  struct Case {
    std::string size;
    std::string hint;
  };
  for (const Case& c : std::vector<Case>{
           {"0", "like 268435456 or 256MiB"},
           {"-1", "like 268435456 or 256MiB"},
           {"256MB", "like 268435456 or 256MiB"},
           {"1.5MiB", "like 268435456 or 256MiB"},
           {"MiB", "like 268435456 or 256MiB"},
           {"2GiB", "at most 2147483647"},
           {"99999999999999999999999", "at most 2147483647"},
       }) {
    SCOPED_TRACE(c.size);
    std::string error = Error(
        "database: {url: host=x}\nsource:\n  address: 127.0.0.1:1\n"
        "  max_message_size: '" +
        c.size + "'\n");
    EXPECT_THAT(error, AllOf(HasSubstr(At(4) + "source.max_message_size: \"" +
                                       c.size + "\""),
                             HasSubstr(c.hint)));
  }
}

TEST_F(ConfigTest, BadDatabaseUrlIsRedacted) {
  std::string error = Error(
      "source: {address: 127.0.0.1:1}\n"
      "database:\n  url: postgres:/alice:hunter2@db/meter\n");
  EXPECT_THAT(error, AllOf(HasSubstr(At(3) + "database.url: \""),
                           HasSubstr("not a PostgreSQL connection string"),
                           Not(HasSubstr("hunter2"))));
}

TEST_F(ConfigTest, DatabaseUrlNeverLeaksThroughAnyMessage) {
  // The URL written as the section, under a wrong key, and as a node name.
  std::vector<std::string> errors = Errors(
      "source: {address: 127.0.0.1:1}\n"
      "database: postgresql://alice:hunter2@db/meter\n"
      "node: \"postgresql://alice:hunter2@db/x\\x01\"\n"
      "poll: {interval: 'host=db password=hunter2'}\n");
  ASSERT_THAT(errors, SizeIs(3));
  for (const std::string& error : errors) {
    EXPECT_THAT(error, Not(HasSubstr("hunter2")));
  }
  EXPECT_THAT(errors[1], AllOf(HasSubstr(At(2) + "database: is the string"),
                               HasSubstr("alice:***@db")));
}

TEST_F(ConfigTest, StatsOutboundsMustBeAListOfStrings) {
  EXPECT_THAT(Error(std::string(kMinimal) + "generator:\n"
                                            "  stats_outbounds: direct\n"),
              AllOf(HasSubstr(At(6) + "generator.stats_outbounds: is the "
                                      "string \"direct\";"),
                    HasSubstr("a list of outbound tags")));
  EXPECT_THAT(
      Error(std::string(kMinimal) + "generator:\n"
                                    "  stats_outbounds:\n"
                                    "    - direct\n"
                                    "    - {tag: x}\n"),
      HasSubstr(At(8) + "generator.stats_outbounds[1]: is a mapping; expected "
                        "an outbound tag"));
}

TEST_F(ConfigTest, EmptyGeneratorPath) {
  EXPECT_THAT(Error(std::string(kMinimal) + "generator: {output: ''}\n"),
              HasSubstr(At(5) + "generator.output: \"\" is empty;"));
}

TEST_F(ConfigTest, DuplicateKey) {
  std::string error =
      Error(std::string(kMinimal) + "poll: {interval: 5s}\npoll: {}\n");
  EXPECT_EQ(error, At(6) + "poll: set twice (first on line 5); keep one");
}

TEST_F(ConfigTest, NonScalarKey) {
  std::string error = Error(std::string(kMinimal) + "? [a, b]\n: 1\n");
  EXPECT_THAT(error, AllOf(HasSubstr(At(5) + "top level: a key is a list;"),
                           HasSubstr("node, source")));
}

TEST_F(ConfigTest, UnreadableFileNamesPathErrnoAndTheWayOut) {
  std::string missing = dir_ + "/nope.yaml";
  Config config;
  std::vector<std::string> errors;
  EXPECT_FALSE(LoadConfig(missing, {}, &config, &errors));
  ASSERT_THAT(errors, SizeIs(1));
  EXPECT_EQ(errors[0], missing +
                           ": cannot read the config file: No such file or "
                           "directory; pass --config FILE or set "
                           "BOXMETER_CONFIG to the config's path");
}

TEST_F(ConfigTest, DirectoryInsteadOfFile) {
  Config config;
  std::vector<std::string> errors;
  EXPECT_FALSE(LoadConfig(dir_, {}, &config, &errors));
  ASSERT_THAT(errors, SizeIs(1));
  EXPECT_THAT(errors[0], AllOf(HasSubstr(dir_ + ": cannot read"),
                               HasSubstr("Is a directory")));
}

TEST_F(ConfigTest, SyntaxErrorHasTheLine) {
  std::string error = Error(std::string(kMinimal) + "poll:\n  interval: [5s\n");
  EXPECT_THAT(error, AllOf(HasSubstr(At(7) + "YAML syntax error"),
                           HasSubstr("end of sequence flow not found"),
                           HasSubstr("fix the YAML syntax")));
  std::string error2 = Error("source:\n  address: a: b\n");
  EXPECT_THAT(error2, AllOf(HasSubstr(At(2) + "YAML syntax error at column"),
                            HasSubstr("illegal map value")));
}

TEST_F(ConfigTest, EmptyFile) {
  EXPECT_EQ(Error(""), path_ +
                           ": is empty; it needs at least source.address and "
                           "database.url (see deploy/boxmeter.example.yaml)");
  EXPECT_THAT(Error("# only a comment\n\n"), HasSubstr(": is empty;"));
}

TEST_F(ConfigTest, TopLevelThatIsNotAMapping) {
  EXPECT_EQ(Error("- source\n- database\n"),
            At(1) +
                "the top level is a list; expected a mapping of keys such "
                "as source: and database:");
  EXPECT_THAT(Error("hello\n"), HasSubstr("the top level is the string "
                                          "\"hello\";"));
}

TEST_F(ConfigTest, SeveralDocuments) {
  EXPECT_THAT(Error(std::string(kMinimal) + "---\nnode: x\n"),
              HasSubstr("holds 2 YAML documents"));
}

TEST_F(ConfigTest, BinaryFile) {
  std::string data = "ELF";
  data += '\0';
  data += "\x01\x02garbage";
  EXPECT_THAT(Error(data), AllOf(HasSubstr(path_ + ": is a binary file"),
                                 HasSubstr("offset 3")));
}

TEST_F(ConfigTest, InvalidUtf8) {
  EXPECT_THAT(Error(std::string(kMinimal) + "node: caf\xe9\n"),
              AllOf(HasSubstr(path_ + ": line 5: byte 0xe9 is not valid "
                                      "UTF-8"),
                    HasSubstr("UTF-8 text")));
  // UTF-8 itself is fine.
  EXPECT_EQ(Load(std::string(kMinimal) + "node: café-ñ\n").node, "café-ñ");
}

TEST_F(ConfigTest, ControlCharacter) {
  EXPECT_THAT(Error(std::string(kMinimal) + "node: a\x1b[0m\n"),
              HasSubstr(path_ + ": line 5: control character 0x1b"));
}

TEST_F(ConfigTest, OversizedFile) {
  EXPECT_THAT(Error(std::string(kMinimal) + "#" + std::string(2 << 20, 'x')),
              HasSubstr("larger than 1024 KiB"));
}

TEST_F(ConfigTest, ReportsEveryProblemAtOnce) {
  std::vector<std::string> errors = Errors(
      "source:\n"
      "  address: 127.0.0.1:8080\n"
      "  timeout: 5\n"
      "database:\n"
      "  url: postgresql://boxmeter@localhost/boxmeter\n"
      "poll:\n"
      "  interval: 1.5s\n"
      "log:\n"
      "  level: loud\n");
  ASSERT_THAT(errors, SizeIs(3));
  EXPECT_THAT(errors[0], HasSubstr(At(3) + "source.timeout: \"5\""));
  EXPECT_THAT(errors[1], HasSubstr(At(7) + "poll.interval: \"1.5s\""));
  EXPECT_THAT(errors[2], HasSubstr(At(9) + "log.level: \"loud\""));
}

TEST_F(ConfigTest, FailureLeavesTheOutputAloneAndAppendsErrors) {
  Write("poll: {interval: 1}\n");
  Config config;
  config.node = "untouched";
  std::vector<std::string> errors{"earlier"};
  EXPECT_FALSE(LoadConfig(path_, {}, &config, &errors));
  EXPECT_EQ(config.node, "untouched");
  EXPECT_EQ(errors[0], "earlier");
  EXPECT_THAT(errors, SizeIs(4));  // interval, address, url
}

TEST_F(ConfigTest, NeverThrowsOnMangledInput) {
  // Flip, drop and insert bytes in a valid file: whatever comes out, the
  // loader answers with a result, never an exception or a crash.
  std::string base(kMinimal);
  base += "poll: {interval: 10s}\ngenerator: {stats_outbounds: [a, b]}\n";
  std::mt19937 random(42);
  for (int round = 0; round < 500; ++round) {
    std::string data = base;
    for (int edit = 0; edit < 3; ++edit) {
      size_t at = random() % data.size();
      char c = static_cast<char>(random() % 256);
      switch (random() % 3) {
        case 0:
          data[at] = c;
          break;
        case 1:
          data.erase(at, 1);
          break;
        case 2:
          data.insert(at, 1, c);
          break;
      }
    }
    Write(data);
    Config config;
    std::vector<std::string> errors;
    bool ok = false;
    EXPECT_NO_THROW(ok = LoadConfig(path_, {}, &config, &errors)) << data;
    EXPECT_EQ(ok, errors.empty()) << data;
  }
  // Deep nesting.
  EXPECT_THAT(Errors(std::string(5000, '[')), Not(::testing::IsEmpty()));
  std::string deep;
  for (int i = 0; i < 3000; ++i) deep += std::string(i, ' ') + "a:\n";
  EXPECT_THAT(Errors(deep), Not(::testing::IsEmpty()));
}

// --- Durations -------------------------------------------------------------

TEST(ParseDurationTest, AcceptsEachUnit) {
  EXPECT_EQ(ParseDuration("500ms"), milliseconds(500));
  EXPECT_EQ(ParseDuration("10s"), milliseconds(10000));
  EXPECT_EQ(ParseDuration("5m"), milliseconds(300000));
  EXPECT_EQ(ParseDuration("2h"), milliseconds(7200000));
  EXPECT_EQ(ParseDuration("400d"), milliseconds(int64_t{400} * 86400000));
  EXPECT_EQ(ParseDuration("1ms"), milliseconds(1));
  EXPECT_EQ(ParseDuration("36500d"), milliseconds(int64_t{36500} * 86400000));
}

TEST(ParseDurationTest, RejectsEverythingElse) {
  for (std::string_view text : {"",
                                "10",
                                "1.5s",
                                "-1s",
                                "+1s",
                                "0s",
                                "0ms",
                                "10 s",
                                " 10s",
                                "10s ",
                                "s",
                                "ms",
                                "m",
                                "10S",
                                "10sec",
                                "1h30m",
                                "10us",
                                "1e3s",
                                "0x10s",
                                "36501d",
                                "9223372036854775807ms",
                                "99999999999999999999999s"}) {
    EXPECT_EQ(ParseDuration(text), std::nullopt) << '"' << text << '"';
  }
}

// --- Redaction -------------------------------------------------------------

TEST(RedactUrlTest, HidesThePasswordOfAUrl) {
  EXPECT_EQ(RedactUrl("postgresql://user:secret@host/db"),
            "postgresql://user:***@host/db");
  EXPECT_EQ(RedactUrl("postgres://u:s@h:5432/db?sslmode=require"),
            "postgres://u:***@h:5432/db?sslmode=require");
  // A password with an unescaped @, / or ? must not leak either.
  EXPECT_EQ(RedactUrl("postgresql://u:p@ss@h/db"), "postgresql://u:***@h/db");
  EXPECT_THAT(RedactUrl("postgresql://u:a/b?c@h/db"),
              AllOf(Not(HasSubstr("a/b")), HasSubstr("u:***@h/db")));
  EXPECT_EQ(RedactUrl("postgresql://h/db?user=u&password=secret&x=1"),
            "postgresql://h/db?user=u&password=***&x=1");
}

TEST(RedactUrlTest, HidesThePasswordOfKeyValuePairs) {
  EXPECT_EQ(RedactUrl("host=h password=secret dbname=d"),
            "host=h password=*** dbname=d");
  EXPECT_EQ(RedactUrl("password='se cr\\'et' host=h"), "password=*** host=h");
  EXPECT_EQ(RedactUrl("host=h password = secret"), "host=h password = ***");
  EXPECT_EQ(RedactUrl("PASSWORD=secret"), "PASSWORD=***");
  EXPECT_EQ(RedactUrl("host=h sslpassword=k password=p"),
            "host=h sslpassword=*** password=***");
  EXPECT_EQ(RedactUrl("password='unterminated"), "password=***");
}

TEST(RedactUrlTest, HidesThePasswordOfAMistypedUrl) {
  EXPECT_EQ(RedactUrl("postgres:/alice:secret@db/x"), "postgres:***@db/x");
  EXPECT_EQ(RedactUrl("alice:secret@db"), "alice:***@db");
}

TEST(RedactUrlTest, LeavesStringsWithoutPasswordsAlone) {
  for (std::string_view text :
       {"postgresql://boxmeter@localhost/boxmeter", "postgresql://h/db",
        "postgresql://u@h:5432/db", "host=h dbname=d user=u",
        "passfile=/x host=h", "mypassword=x", "", "10s", "not a url at all",
        "localhost:8080", "alice@db"}) {
    EXPECT_EQ(RedactUrl(text), text);
  }
}

}  // namespace
}  // namespace boxmeter
