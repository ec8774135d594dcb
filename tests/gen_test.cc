// The boxmeter-gen binary against a throwaway PostgreSQL: which users it
// writes (eligibility), how it writes (atomically, mode 0600, --check,
// --stdout), and that every kind of bad input gets its exit status and a
// message naming the row or file, with an existing output left untouched.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "pg_database_test.h"
#include "pg_server.h"
#include "process.h"

namespace boxmeter::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using Json = nlohmann::json;
using namespace std::chrono_literals;

constexpr const char* kNode = "edge-1";

constexpr const char* kTemplate = R"json({
  "log": {"level": "warn"},
  "inbounds": [{"type": "direct", "tag": "dns-in", "listen": "127.0.0.1"}],
  "outbounds": [{"type": "direct", "tag": "direct"}],
  "experimental": {"cache_file": {"enabled": true}}
}
)json";

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out.flush()) throw std::runtime_error("cannot write " + path);
}

// What identifies a file's version: its bytes, inode and modification time.
struct FileState {
  std::string content;
  ino_t inode = 0;
  int64_t mtime_ns = 0;
  mode_t mode = 0;
  bool operator==(const FileState&) const = default;
};

std::optional<FileState> Stat(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return std::nullopt;
  return FileState{ReadFile(path), st.st_ino,
                   st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec,
                   st.st_mode & 07777};
}

Process::Options Command(std::vector<std::string> argv,
                         std::map<std::string, std::string> env = {}) {
  Process::Options options;
  options.argv = std::move(argv);
  options.env = std::move(env);
  return options;
}

struct GenRun {
  int code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

class GenTest : public PgDatabaseTest {
 protected:
  GenTest() : PgDatabaseTest("gen_test") {}

  void SetUp() override {
    PgDatabaseTest::SetUp();
    if (HasFatalFailure()) return;
    template_path_ = dir_.path() + "/base.json";
    output_path_ = dir_.path() + "/config.json";
    WriteText(template_path_, kTemplate);
    WriteConfig();
    std::string log;
    ASSERT_EQ(RunCommand(Command({BOXMETER_COLLECTOR_BIN, "--config",
                                  config_path(), "--migrate"},
                                 CleanEnv()),
                         60s, &log),
              0)
        << log;
  }

  void WriteConfig(const std::string& database_url = "") {
    WriteText(config_path(), "node: " + std::string(kNode) +
                                 "\n"
                                 "source:\n"
                                 "  address: 127.0.0.1:18080\n"
                                 "database:\n"
                                 "  url: \"" +
                                 (database_url.empty() ? url() : database_url) +
                                 "\"\n"
                                 "generator:\n"
                                 "  template: \"" +
                                 template_path_ +
                                 "\"\n"
                                 "  output: \"" +
                                 output_path_ +
                                 "\"\n"
                                 "  stats_outbounds: [direct]\n");
  }

  std::string config_path() const { return dir_.path() + "/boxmeter.yaml"; }

  static std::map<std::string, std::string> CleanEnv() {
    return {{"BOXMETER_DATABASE_URL", ""},
            {"BOXMETER_CONFIG", ""},
            {"PGCONNECT_TIMEOUT", "5"}};
  }

  GenRun Gen(std::vector<std::string> flags = {}) {
    std::vector<std::string> argv = {BOXMETER_GEN_BIN, "--config",
                                     config_path()};
    argv.insert(argv.end(), flags.begin(), flags.end());
    GenRun run;
    std::string out = dir_.path() + "/gen.stdout";
    std::string err = dir_.path() + "/gen.stderr";
    // Process appends to these; each run starts from empty files.
    unlink(out.c_str());
    unlink(err.c_str());
    Process::Options options = Command(argv, CleanEnv());
    options.stdout_path = out;
    options.stderr_path = err;
    run.code = RunCommand(options, 60s);
    run.out = ReadFile(out);
    run.err = ReadFile(err);
    return run;
  }

  std::string Sql(const std::string& sql) {
    return server().Query(database(), sql);
  }

  // The standard rows: two inbounds with a few users, all eligible.
  void InsertStandardRows() {
    Sql(R"sql(
      INSERT INTO users (name, uuid, password, flow) VALUES
        ('alice', '5b0d9a4e-3c1f-4e7a-9b2d-8f6c1a3e5d70', 'alice-pw',
         'xtls-rprx-vision'),
        ('bob', 'c2a7e1f0-8d4b-4b69-a3e5-1f0d2c9b8a76', 'bob-pw', NULL);
      INSERT INTO inbounds (node, tag, type, listen, listen_port, options)
        VALUES ('edge-1', 'vless-in', 'vless', '::', 443,
                '{"tls": {"enabled": true, "key_path": "/k.pem",
                          "certificate_path": "/c.pem"}}'),
               ('edge-1', 'trojan-in', 'trojan', '0.0.0.0', 8443, '{}');
      INSERT INTO inbound_users (inbound_id, user_id)
        SELECT i.id, u.id FROM inbounds i, users u;
    )sql");
  }

  // Writes a first config and returns its state.
  FileState WriteGood() {
    InsertStandardRows();
    GenRun run = Gen();
    EXPECT_EQ(run.code, 0) << run.err;
    std::optional<FileState> state = Stat(output_path_);
    EXPECT_TRUE(state.has_value());
    return state.value_or(FileState{});
  }

  Json Output() { return Json::parse(ReadFile(output_path_)); }

  static std::vector<std::string> UserNames(const Json& inbound) {
    std::vector<std::string> names;
    for (const Json& user : inbound["users"]) {
      names.push_back(user.contains("name") ? user["name"] : user["username"]);
    }
    return names;
  }

  TempDir dir_;
  std::string template_path_;
  std::string output_path_;
};

TEST_F(GenTest, WritesOnlyEligibleUsersOfThisNodesEnabledInbounds) {
  InsertStandardRows();
  Sql(R"sql(
    INSERT INTO users (name, uuid, password, enabled, expires_at, quota_bytes)
      VALUES
      ('disabled', gen_random_uuid(), 'pw', false, NULL, NULL),
      ('expired', gen_random_uuid(), 'pw', true, now() - interval '1 s', NULL),
      ('later', gen_random_uuid(), 'pw', true, now() + interval '1 day', NULL),
      ('at-quota', gen_random_uuid(), 'pw', true, NULL, 1000),
      ('under-quota', gen_random_uuid(), 'pw', true, NULL, 1001),
      ('zero-quota', gen_random_uuid(), 'pw', true, NULL, 0);
    INSERT INTO inbound_users (inbound_id, user_id)
      SELECT i.id, u.id FROM inbounds i, users u
       WHERE i.tag = 'vless-in' AND u.name NOT IN ('alice', 'bob');
    -- Usage counts over all nodes: 600 here and 400 on another node.
    INSERT INTO nodes (name) VALUES ('edge-1'), ('edge-2');
    INSERT INTO counters (node, kind, name, uplink, downlink, instance_start)
      VALUES ('edge-1', 'user', 'at-quota', 100, 500, now()),
             ('edge-2', 'user', 'at-quota', 300, 100, now()),
             ('edge-1', 'user', 'under-quota', 500, 500, now()),
             ('edge-1', 'inbound', 'at-quota', 99999, 99999, now());
    -- Inbounds the node must not get: disabled, or another node's.
    INSERT INTO inbounds (node, tag, type, enabled)
      VALUES ('edge-1', 'off-in', 'vless', false),
             ('edge-2', 'other-in', 'vless', true);
    INSERT INTO users (name, uuid) VALUES ('only-elsewhere', gen_random_uuid());
    INSERT INTO inbound_users (inbound_id, user_id)
      SELECT i.id, u.id FROM inbounds i, users u
       WHERE i.tag IN ('off-in', 'other-in') AND u.name = 'only-elsewhere';
  )sql");

  GenRun run = Gen();
  ASSERT_EQ(run.code, 0) << run.err;
  EXPECT_THAT(run.err,
              HasSubstr("wrote " + output_path_ + ": 2 inbound(s), 4 user(s)"));
  Json config = Output();
  ASSERT_EQ(config["inbounds"].size(), 3u) << config.dump(2);
  EXPECT_EQ(config["inbounds"][0]["tag"], "dns-in");
  EXPECT_EQ(config["inbounds"][1]["tag"], "trojan-in");
  EXPECT_EQ(config["inbounds"][2]["tag"], "vless-in");
  EXPECT_EQ(UserNames(config["inbounds"][1]),
            (std::vector<std::string>{"alice", "bob"}));
  EXPECT_EQ(UserNames(config["inbounds"][2]),
            (std::vector<std::string>{"alice", "bob", "later", "under-quota"}));
  EXPECT_EQ(config["inbounds"][2]["tls"],
            Json::parse(R"({"enabled": true, "key_path": "/k.pem",
                            "certificate_path": "/c.pem"})"));
  EXPECT_EQ(config["inbounds"][2]["users"][0],
            Json::parse(R"({"name": "alice", "flow": "xtls-rprx-vision",
                            "uuid": "5b0d9a4e-3c1f-4e7a-9b2d-8f6c1a3e5d70"})"));
  EXPECT_EQ(config["inbounds"][1]["users"][1],
            Json::parse(R"({"name": "bob", "password": "bob-pw"})"));
  const Json& api = config["experimental"]["v2ray_api"];
  EXPECT_EQ(api["listen"], "127.0.0.1:18080");
  EXPECT_EQ(api["stats"]["inbounds"],
            Json::parse(R"(["trojan-in", "vless-in"])"));
  EXPECT_EQ(api["stats"]["outbounds"], Json::parse(R"(["direct"])"));
  EXPECT_EQ(api["stats"]["users"],
            Json::parse(R"(["alice", "bob", "later", "under-quota"])"));
  EXPECT_EQ(config["experimental"]["cache_file"],
            Json::parse(R"({"enabled": true})"));
}

TEST_F(GenTest, WritesMode0600AndCheckTellsWhetherTheFileIsUpToDate) {
  InsertStandardRows();
  GenRun check = Gen({"--check"});
  EXPECT_EQ(check.code, 1) << check.err;
  EXPECT_THAT(check.err, HasSubstr("would change"));
  EXPECT_FALSE(Stat(output_path_)) << "--check writes nothing";

  WriteText(output_path_, "old\n");
  chmod(output_path_.c_str(), 0644);
  ASSERT_EQ(Gen().code, 0);
  std::optional<FileState> written = Stat(output_path_);
  ASSERT_TRUE(written);
  EXPECT_EQ(written->mode, 0600u) << "the config holds credentials";

  check = Gen({"--check"});
  EXPECT_EQ(check.code, 0) << check.err;
  EXPECT_THAT(check.err, HasSubstr("is up to date"));

  // An operator disables bob: the file is now stale, and --check leaves it.
  Sql("UPDATE users SET enabled = false WHERE name = 'bob'");
  check = Gen({"--check"});
  EXPECT_EQ(check.code, 1);
  EXPECT_EQ(Stat(output_path_), written);
  ASSERT_EQ(Gen().code, 0);
  EXPECT_THAT(ReadFile(output_path_), Not(HasSubstr("bob")));
  EXPECT_EQ(Gen({"--check"}).code, 0);
}

// The container and systemd layouts: the generator runs as its own user and
// writes into a set-group-ID directory of sing-box's group, which must read it.
TEST_F(GenTest, WritesMode0640InASetGroupIdDirectory) {
  InsertStandardRows();
  ASSERT_EQ(chmod(dir_.path().c_str(), 02700), 0);
  ASSERT_EQ(Gen().code, 0);
  std::optional<FileState> written = Stat(output_path_);
  ASSERT_TRUE(written);
  EXPECT_EQ(written->mode, 0640u) << "readable by the directory's group";
  ASSERT_EQ(chmod(dir_.path().c_str(), 0700), 0);
  Sql("UPDATE users SET enabled = false WHERE name = 'bob'");
  ASSERT_EQ(Gen().code, 0);
  EXPECT_EQ(Stat(output_path_)->mode, 0600u) << "an ordinary directory again";
}

TEST_F(GenTest, SameDatabaseGivesTheSameBytesAndStdoutWritesNothing) {
  InsertStandardRows();
  GenRun printed = Gen({"--stdout"});
  ASSERT_EQ(printed.code, 0) << printed.err;
  EXPECT_FALSE(Stat(output_path_)) << "--stdout writes no file";
  ASSERT_EQ(Gen().code, 0);
  EXPECT_EQ(ReadFile(output_path_), printed.out);
  // Rows inserted in a different order (new ids) give the same bytes.
  Sql("DELETE FROM inbound_users; DELETE FROM inbounds; DELETE FROM users;");
  Sql(R"sql(
    INSERT INTO inbounds (node, tag, type, listen, listen_port, options)
      VALUES ('edge-1', 'trojan-in', 'trojan', '0.0.0.0', 8443, '{}'),
             ('edge-1', 'vless-in', 'vless', '::', 443,
              '{"tls": {"enabled": true, "key_path": "/k.pem",
                        "certificate_path": "/c.pem"}}');
    INSERT INTO users (name, uuid, password, flow) VALUES
      ('bob', 'c2a7e1f0-8d4b-4b69-a3e5-1f0d2c9b8a76', 'bob-pw', NULL),
      ('alice', '5b0d9a4e-3c1f-4e7a-9b2d-8f6c1a3e5d70', 'alice-pw',
       'xtls-rprx-vision');
    INSERT INTO inbound_users (inbound_id, user_id)
      SELECT i.id, u.id FROM inbounds i, users u ORDER BY u.name DESC;
  )sql");
  EXPECT_EQ(Gen({"--stdout"}).out, printed.out);
  EXPECT_EQ(Gen({"--check"}).code, 0);
}

// --- Bad input: its exit status and message, and the file untouched. ---

class GenBadInputTest : public GenTest {
 protected:
  void SetUp() override {
    GenTest::SetUp();
    if (HasFatalFailure()) return;
    before_ = WriteGood();
  }

  // Runs boxmeter-gen, expects `code` and every fragment in its stderr, and
  // that the output file is exactly as before.
  void ExpectRejected(int code, const std::vector<std::string>& fragments) {
    GenRun run = Gen();
    EXPECT_EQ(run.code, code) << run.err;
    for (const std::string& fragment : fragments) {
      EXPECT_THAT(run.err, HasSubstr(fragment));
    }
    EXPECT_THAT(run.err, HasSubstr("nothing written"));
    EXPECT_EQ(Stat(output_path_), before_) << "the output was touched";
    EXPECT_TRUE(run.out.empty());
  }

  FileState before_;
};

TEST_F(GenBadInputTest, VlessUserWithoutUuid) {
  Sql("UPDATE users SET uuid = NULL WHERE name = 'bob'");
  ExpectRejected(EX_DATAERR, {"inbound 'vless-in' (type vless): user 'bob' "
                              "has no uuid"});
}

TEST_F(GenBadInputTest, TrojanUserWithoutPassword) {
  Sql("UPDATE users SET password = NULL WHERE name = 'alice'");
  ExpectRejected(EX_DATAERR, {"inbound 'trojan-in' (type trojan): user "
                              "'alice' has no password"});
}

TEST_F(GenBadInputTest, UnknownInboundType) {
  Sql("UPDATE inbounds SET type = 'vlesss' WHERE tag = 'vless-in'");
  ExpectRejected(EX_DATAERR, {"inbound 'vless-in': type 'vlesss'"});
}

TEST_F(GenBadInputTest, InboundTagAlsoInTheTemplate) {
  Sql("UPDATE inbounds SET tag = 'dns-in' WHERE tag = 'vless-in'");
  ExpectRejected(EX_DATAERR,
                 {"inbound 'dns-in' is defined both in template " +
                  template_path_ + " (inbounds[0]) and in the database"});
}

TEST_F(GenBadInputTest, OptionsThatSetUsers) {
  Sql("UPDATE inbounds SET options = '{\"users\": []}' WHERE tag = "
      "'trojan-in'");
  ExpectRejected(EX_DATAERR, {"inbound 'trojan-in': options set \"users\""});
}

TEST_F(GenBadInputTest, TemplateNotAJsonObject) {
  WriteText(template_path_, "[]\n");
  ExpectRejected(EX_DATAERR, {"template " + template_path_ +
                              ": the top level is an array"});
}

TEST_F(GenBadInputTest, TemplateNotJson) {
  WriteText(template_path_, "{\"log\": \n");
  ExpectRejected(EX_DATAERR,
                 {"template " + template_path_ + " is not valid JSON"});
}

TEST_F(GenBadInputTest, TemplateUnreadable) {
  template_path_ = dir_.path() + "/missing.json";
  WriteConfig();
  ExpectRejected(EX_NOINPUT, {"cannot read the template", "missing.json"});
}

TEST_F(GenBadInputTest, DatabaseUnavailable) {
  WriteConfig("postgresql://postgres:secret@127.0.0.1:" +
              std::to_string(FreePort()) + "/nowhere");
  GenRun run = Gen();
  EXPECT_THAT(run.err, Not(HasSubstr("secret")));
  ExpectRejected(EX_UNAVAILABLE, {"connection lost or refused"});
}

TEST_F(GenBadInputTest, SchemaNotMigrated) {
  WriteConfig(server().CreateDatabase(database() + "_empty"));
  ExpectRejected(EX_UNAVAILABLE, {"boxmeter-collector --migrate"});
}

TEST_F(GenBadInputTest, ConfigInvalid) {
  WriteText(config_path(), "node: edge-1\nsource: {}\n");
  ExpectRejected(EX_CONFIG, {"source.address"});
}

TEST(GenUsageTest, BadFlagsAreUsageErrors) {
  std::string out;
  EXPECT_EQ(RunCommand(Command({BOXMETER_GEN_BIN, "--frobnicate"}), 10s, &out),
            EX_USAGE);
  EXPECT_THAT(out, HasSubstr("--frobnicate"));
  out.clear();
  EXPECT_EQ(
      RunCommand(Command({BOXMETER_GEN_BIN, "--stdout", "--check"}), 10s, &out),
      EX_USAGE);
  EXPECT_THAT(out, HasSubstr("exclude each other"));
}

TEST(GenUsageTest, HelpDocumentsEveryExitStatus) {
  std::string out;
  ASSERT_EQ(RunCommand(Command({BOXMETER_GEN_BIN, "--help"}), 10s, &out), 0);
  for (const char* code :
       {"  0 ", "  1 ", "  64 ", "  65 ", "  66 ", "  69 ", "  73 ", "  78 "}) {
    EXPECT_THAT(out, HasSubstr(code));
  }
  out.clear();
  ASSERT_EQ(RunCommand(Command({BOXMETER_GEN_BIN, "--version"}), 10s, &out), 0);
  EXPECT_THAT(out, HasSubstr("boxmeter-gen "));
}

// Output problems: a path that cannot become a file. The file system is
// checked to be untouched (no temporary file left behind).
TEST_F(GenTest, OutputUnwritableWritesNothing) {
  InsertStandardRows();
  std::string blocker = dir_.path() + "/not-a-dir";
  WriteText(blocker, "a file, not a directory\n");
  for (const std::string& output :
       {blocker + "/config.json", dir_.path() + "/a-directory"}) {
    mkdir((dir_.path() + "/a-directory").c_str(), 0755);
    output_path_ = output;
    WriteConfig();
    GenRun run = Gen();
    EXPECT_EQ(run.code, EX_CANTCREAT) << output;
    EXPECT_THAT(run.err, HasSubstr("cannot write " + output));
    EXPECT_THAT(run.err, HasSubstr("generator.output"));
  }
  struct stat st;
  ASSERT_EQ(stat((dir_.path() + "/a-directory").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  std::string listing;
  RunCommand(Command({"/bin/ls", "-A", dir_.path()}), 10s, &listing);
  EXPECT_THAT(listing, Not(HasSubstr(".tmp-"))) << listing;
}

TEST_F(GenTest, SymlinkedOutputReplacesItsTarget) {
  InsertStandardRows();
  std::string real = dir_.path() + "/real.json";
  WriteText(real, "old\n");
  ASSERT_EQ(symlink(real.c_str(), output_path_.c_str()), 0);
  ASSERT_EQ(Gen().code, 0);
  struct stat st;
  ASSERT_EQ(lstat(output_path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode)) << "the link stays a link";
  EXPECT_THAT(ReadFile(real), HasSubstr("vless-in"));
}

// --- An inbound whose last eligible user goes is left out, never written
// without users (sing common/auth/auth.go: no users, no authentication). ---

struct LastUserCase {
  std::string type;
  std::string options;  // valid for sing-box v1.13 with one user
  std::string password;
};

void PrintTo(const LastUserCase& c, std::ostream* out) { *out << c.type; }

const std::vector<LastUserCase> kLastUserCases = {
    {"socks", "{}", "pw-1"},
    {"http", "{}", "pw-1"},
    {"mixed", "{}", "pw-1"},
    {"naive", R"({"network": "tcp"})", "pw-1"},
    {"shadowsocks",
     R"({"method": "2022-blake3-aes-128-gcm", )"
     R"("password": "oKr/vR6ueOSeJK+KgtzLzQ=="})",
     "Zm9vYmFyYmF6cXV4MTIzNA=="},
    {"trojan", "{}", "pw-1"},
};

class GenLastUserTest : public GenTest,
                        public ::testing::WithParamInterface<LastUserCase> {};

TEST_P(GenLastUserTest, InboundLeavesWithItsLastUserAndComesBack) {
  const LastUserCase& c = GetParam();
  Sql("INSERT INTO users (name, password, quota_bytes) VALUES ('solo', '" +
      c.password +
      "', 1000);"
      "INSERT INTO inbounds (node, tag, type, listen_port, options) VALUES "
      "('edge-1', 'lone-in', '" +
      c.type + "', 1080, '" + c.options +
      "');"
      "INSERT INTO inbound_users SELECT i.id, u.id FROM inbounds i, users u;");
  GenRun run = Gen();
  ASSERT_EQ(run.code, 0) << run.err;
  EXPECT_EQ(Output()["inbounds"].size(), 2u) << ReadFile(output_path_);

  // solo goes over quota: the inbound would have no users.
  Sql("INSERT INTO nodes (name) VALUES ('edge-1');"
      "INSERT INTO counters (node, kind, name, uplink, downlink, "
      "instance_start) VALUES ('edge-1', 'user', 'solo', 600, 600, now())");
  run = Gen();
  ASSERT_EQ(run.code, 0) << run.err;
  EXPECT_THAT(run.err, HasSubstr("inbound 'lone-in' (type " + c.type +
                                 ") left out: none of its users is eligible"));
  Json config = Output();
  ASSERT_EQ(config["inbounds"].size(), 1u) << config.dump(2);
  EXPECT_EQ(config["inbounds"][0]["tag"], "dns-in");
  EXPECT_EQ(config["experimental"]["v2ray_api"]["stats"]["inbounds"],
            Json::array());
  EXPECT_THAT(ReadFile(output_path_), Not(HasSubstr("lone-in")));

  Sql("UPDATE users SET quota_bytes = NULL WHERE name = 'solo'");
  run = Gen();
  ASSERT_EQ(run.code, 0) << run.err;
  EXPECT_THAT(run.err, Not(HasSubstr("left out")));
  EXPECT_EQ(Output()["inbounds"][1]["tag"], "lone-in");
}

INSTANTIATE_TEST_SUITE_P(ByType, GenLastUserTest,
                         ::testing::ValuesIn(kLastUserCases),
                         [](const auto& info) { return info.param.type; });

// --- Credential uniqueness per inbound in the database
// (schema/0007_generator_safety.sql). ---

class GenCredentialTest : public GenTest {
 protected:
  void SetUp() override {
    GenTest::SetUp();
    if (HasFatalFailure()) return;
    Sql(R"sql(
      INSERT INTO users (name, uuid, password) VALUES
        ('alice', '5b0d9a4e-3c1f-4e7a-9b2d-8f6c1a3e5d70', 'same-pw'),
        ('bob', 'c2a7e1f0-8d4b-4b69-a3e5-1f0d2c9b8a76', 'same-pw'),
        ('carol', '5b0d9a4e-3c1f-4e7a-9b2d-8f6c1a3e5d70', 'carol-pw');
      INSERT INTO inbounds (node, tag, type, listen_port) VALUES
        ('edge-1', 'trojan-in', 'trojan', 1), ('edge-1', 'socks-in', 'socks', 2),
        ('edge-1', 'vless-in', 'vless', 3);
    )sql");
  }

  // The error of `sql`, or "" when it succeeded.
  std::string SqlError(const std::string& sql) {
    try {
      Sql(sql);
      return "";
    } catch (const std::exception& e) {
      return e.what();
    }
  }

  static std::string Link(const std::string& user, const std::string& tag) {
    return "INSERT INTO inbound_users SELECT i.id, u.id FROM inbounds i, "
           "users u WHERE i.tag = '" +
           tag + "' AND u.name = '" + user + "'";
  }
};

TEST_F(GenCredentialTest, LinkingASecondUserWithTheSamePasswordFails) {
  Sql(Link("alice", "trojan-in"));
  std::string error = SqlError(Link("bob", "trojan-in"));
  EXPECT_THAT(error, HasSubstr("users 'alice' and 'bob' of inbound "
                               "'trojan-in' (node 'edge-1', type trojan) "
                               "have the same password"));
  EXPECT_EQ(Sql("SELECT count(*) FROM inbound_users"), "1");
  // socks users are found by name: the same password is fine there.
  Sql(Link("alice", "socks-in") + ";" + Link("bob", "socks-in"));
  EXPECT_EQ(Sql("SELECT count(*) FROM inbound_users"), "3");
}

TEST_F(GenCredentialTest, LinkingASecondUserWithTheSameUuidFails) {
  Sql(Link("carol", "vless-in"));
  EXPECT_THAT(SqlError(Link("alice", "vless-in")),
              HasSubstr("users 'carol' and 'alice' of inbound 'vless-in' "
                        "(node 'edge-1', type vless) have the same uuid"));
}

TEST_F(GenCredentialTest, ChangingALinkedUsersCredentialToACollisionFails) {
  Sql(Link("alice", "vless-in") + ";" + Link("bob", "vless-in"));
  EXPECT_THAT(SqlError("UPDATE users SET uuid = "
                       "'5b0d9a4e-3c1f-4e7a-9b2d-8f6c1a3e5d70' WHERE name = "
                       "'bob'"),
              HasSubstr("users 'alice' and 'bob' of inbound 'vless-in'"));
  EXPECT_EQ(Sql("SELECT uuid FROM users WHERE name = 'bob'"),
            "c2a7e1f0-8d4b-4b69-a3e5-1f0d2c9b8a76");
  // Swapping two credentials in one transaction works when deferred.
  Sql("BEGIN; SET CONSTRAINTS users_unique_credentials DEFERRED;"
      "UPDATE users SET uuid = 'c2a7e1f0-8d4b-4b69-a3e5-1f0d2c9b8a76' "
      "WHERE name = 'alice';"
      "UPDATE users SET uuid = '5b0d9a4e-3c1f-4e7a-9b2d-8f6c1a3e5d70' "
      "WHERE name = 'bob'; COMMIT;");
}

TEST_F(GenCredentialTest, ChangingAnInboundsTypeToACollisionFails) {
  Sql(Link("alice", "socks-in") + ";" + Link("bob", "socks-in"));
  EXPECT_THAT(
      SqlError("UPDATE inbounds SET type = 'trojan' WHERE tag = 'socks-in'"),
      HasSubstr("users 'alice' and 'bob' of inbound 'socks-in' (node "
                "'edge-1', type trojan) have the same password"));
}

// What the trigger cannot see (rows from before the migration, a deferred
// check not yet run) the generator still refuses, naming both users.
TEST_F(GenCredentialTest, GeneratorRefusesACollisionTheDatabaseHas) {
  Sql("ALTER TABLE inbound_users DISABLE TRIGGER USER;" +
      Link("alice", "trojan-in") + ";" + Link("bob", "trojan-in") +
      "; ALTER TABLE inbound_users ENABLE TRIGGER USER;");
  GenRun run = Gen();
  EXPECT_EQ(run.code, EX_DATAERR) << run.err;
  EXPECT_THAT(run.err, HasSubstr("inbound 'trojan-in' (type trojan): users "
                                 "'alice' and 'bob' have the same password"));
  EXPECT_FALSE(Stat(output_path_));
}

// --- generator.output through symbolic links: only links nobody else can
// have planted or swapped are followed. ---

class GenOutputLinkTest : public GenTest {
 protected:
  void SetUp() override {
    GenTest::SetUp();
    if (HasFatalFailure()) return;
    InsertStandardRows();
    links_ = dir_.path() + "/links";
    ASSERT_EQ(mkdir(links_.c_str(), 0755), 0);
    target_ = dir_.path() + "/target.json";
  }

  // Points generator.output at a link in links_ to target_.
  void LinkOutput() {
    output_path_ = links_ + "/config.json";
    ASSERT_EQ(symlink(target_.c_str(), output_path_.c_str()), 0);
    WriteConfig();
  }

  void ExpectRefused(const std::string& why) {
    GenRun run = Gen();
    EXPECT_EQ(run.code, EX_CANTCREAT) << run.err;
    EXPECT_THAT(run.err,
                HasSubstr("refusing to write " + output_path_ + ": " +
                          output_path_ + " is a symbolic link and " + why));
    EXPECT_THAT(run.err, HasSubstr("nobody else may write the directory"));
    struct stat st;
    EXPECT_EQ(lstat(output_path_.c_str(), &st), 0);
    EXPECT_TRUE(S_ISLNK(st.st_mode)) << "the link is left alone";
  }

  std::string links_;
  std::string target_;
};

TEST_F(GenOutputLinkTest, LinkInAWorldWritableDirectoryIsRefused) {
  WriteText(target_, "precious\n");
  LinkOutput();
  ASSERT_EQ(chmod(links_.c_str(), 01777), 0);
  ExpectRefused("its directory " + links_ +
                " is writable by others (mode 1777)");
  EXPECT_EQ(ReadFile(target_), "precious\n");
}

TEST_F(GenOutputLinkTest, DanglingLinkInAGroupWritableDirectoryIsRefused) {
  LinkOutput();
  ASSERT_EQ(chmod(links_.c_str(), 0775), 0);
  ExpectRefused("its directory " + links_ + " is writable by others");
  EXPECT_FALSE(Stat(target_)) << "nothing was created where it pointed";
}

TEST_F(GenOutputLinkTest, LinkOwnedByAnotherUserIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give a link away";
  WriteText(target_, "precious\n");
  LinkOutput();
  ASSERT_EQ(lchown(output_path_.c_str(), 65534, 65534), 0);
  ExpectRefused("the link belongs to uid 65534");
  EXPECT_EQ(ReadFile(target_), "precious\n");
}

TEST_F(GenOutputLinkTest, LinkInADirectoryOfAnotherUserIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give a directory away";
  LinkOutput();
  ASSERT_EQ(chown(links_.c_str(), 65534, 65534), 0);
  ExpectRefused("its directory " + links_ + " belongs to uid 65534");
  EXPECT_FALSE(Stat(target_));
}

TEST_F(GenOutputLinkTest, TrustedDanglingLinkCreatesItsTarget) {
  LinkOutput();
  GenRun run = Gen();
  ASSERT_EQ(run.code, 0) << run.err;
  EXPECT_THAT(ReadFile(target_), HasSubstr("vless-in"));
  struct stat st;
  ASSERT_EQ(lstat(output_path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
}

TEST_F(GenOutputLinkTest, EveryLinkOfAChainIsChecked) {
  // links/config.json -> open/hop -> target.json, with open/ world-writable.
  std::string open = dir_.path() + "/open";
  ASSERT_EQ(mkdir(open.c_str(), 0755), 0);
  ASSERT_EQ(chmod(open.c_str(), 0777), 0);
  ASSERT_EQ(symlink(target_.c_str(), (open + "/hop").c_str()), 0);
  output_path_ = links_ + "/config.json";
  ASSERT_EQ(symlink((open + "/hop").c_str(), output_path_.c_str()), 0);
  WriteConfig();
  GenRun run = Gen();
  EXPECT_EQ(run.code, EX_CANTCREAT) << run.err;
  EXPECT_THAT(run.err, HasSubstr(open +
                                 "/hop is a symbolic link and its "
                                 "directory " +
                                 open + " is writable by others"));
  EXPECT_FALSE(Stat(target_));
}

}  // namespace
}  // namespace boxmeter::testing
