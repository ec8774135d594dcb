// GenerateSingBoxConfig: golden files for every inbound type, one test per
// kind of bad input, and determinism.
//
// The golden files are tests/golden/*.json. After an intended change of the
// output, regenerate them and review the diff:
//
//   BOXMETER_UPDATE_GOLDEN=1 build/tests/boxmeter_unit_tests
//       --gtest_filter='*Golden*'   (one command line)
//   git diff tests/golden
#include "config_generator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace boxmeter {
namespace {

using ::testing::HasSubstr;

std::string GoldenPath(const std::string& name) {
  return std::string(BOXMETER_SOURCE_DIR) + "/tests/golden/" + name + ".json";
}

// Compares `text` with the golden file `name`, or rewrites the file when
// BOXMETER_UPDATE_GOLDEN is set.
void ExpectGolden(const std::string& name, const std::string& text) {
  std::string path = GoldenPath(name);
  const char* update = std::getenv("BOXMETER_UPDATE_GOLDEN");
  if (update != nullptr && *update != '\0') {
    std::ofstream out(path, std::ios::binary);
    out << text;
    ASSERT_TRUE(out.flush()) << "cannot write " << path;
    return;
  }
  std::ifstream in(path, std::ios::binary);
  ASSERT_TRUE(in) << "no golden file " << path
                  << "; create it with BOXMETER_UPDATE_GOLDEN=1";
  std::stringstream golden;
  golden << in.rdbuf();
  EXPECT_EQ(golden.str(), text)
      << "the generated config differs from " << path
      << "; if the change is intended, regenerate with "
         "BOXMETER_UPDATE_GOLDEN=1 and review the diff";
}

constexpr const char* kTemplate = R"json({
  "log": {"level": "warn", "timestamp": true},
  "outbounds": [
    {"type": "direct", "tag": "direct"},
    {"type": "block", "tag": "block"}
  ],
  "route": {"final": "direct"}
})json";

constexpr const char* kAliceUuid = "5b0d9a4e-3c1f-4e7a-9b2d-8f6c1a3e5d70";
constexpr const char* kBobUuid = "C2A7E1F0-8D4B-4B69-A3E5-1F0D2C9B8A76";

// alice has every optional field set; bob only what is required; carol is
// in the rows but linked to nothing, so she must not appear.
std::vector<UserRow> Users() {
  return {
      {.name = "alice",
       .uuid = kAliceUuid,
       .password = "8JCsPssfgS8tiRwiMlhARg==",
       .flow = "xtls-rprx-vision",
       .alter_id = 0},
      {.name = "bob", .uuid = kBobUuid, .password = "p@ss \"quoted\" ünï"},
      {.name = "carol", .uuid = kAliceUuid, .password = "unused"},
  };
}

struct TypeCase {
  std::string type;
  std::string options_json;
};

// Options as PostgreSQL's jsonb prints them (keys by length, then bytes).
const std::vector<TypeCase> kTypes = {
    {"anytls",
     R"({"tls": {"enabled": true, "key_path": "/etc/sing-box/key.pem", )"
     R"("certificate_path": "/etc/sing-box/cert.pem"}})"},
    {"http", R"({})"},
    {"hysteria",
     R"({"tls": {"alpn": ["h3"], "enabled": true}, "up_mbps": 100, )"
     R"("down_mbps": 100})"},
    {"hysteria2",
     R"({"tls": {"alpn": ["h3"], "enabled": true}, "obfs": {"type": )"
     R"("salamander", "password": "obfs-secret"}})"},
    {"mixed", R"({"set_system_proxy": false})"},
    {"naive", R"({"tls": {"enabled": true}})"},
    {"shadowsocks", R"({"method": "2022-blake3-aes-128-gcm", "password": )"
                    R"("oKr/vR6ueOSeJK+KgtzLzQ=="})"},
    {"shadowtls",
     R"({"version": 3, "handshake": {"server": "www.example.com", )"
     R"("server_port": 443}, "strict_mode": true})"},
    {"socks", R"({})"},
    {"trojan", R"({"tls": {"enabled": true, "server_name": "example.com"}})"},
    {"tuic",
     R"({"tls": {"alpn": ["h3"], "enabled": true}, "congestion_control": )"
     R"("bbr"})"},
    {"vless",
     R"({"tls": {"enabled": true, "reality": {"enabled": true, )"
     R"("handshake": {"server": "www.example.com", "server_port": 443}, )"
     R"("short_id": ["0123456789abcdef"], "private_key": "UuMBgl7MXTPx"}}})"},
    {"vmess", R"({"transport": {"path": "/ws", "type": "ws"}})"},
};

GeneratorInput OneInbound(const TypeCase& type) {
  GeneratorInput input;
  input.template_json = kTemplate;
  input.template_name = "base.json";
  input.inbounds = {{.tag = type.type + "-in",
                     .type = type.type,
                     .listen = "::",
                     .listen_port = 8443,
                     .options_json = type.options_json}};
  input.users = Users();
  input.links = {{type.type + "-in", "bob"}, {type.type + "-in", "alice"}};
  input.stats_listen = "127.0.0.1:8080";
  input.stats_outbounds = {"direct"};
  return input;
}

class GoldenTypeTest : public ::testing::TestWithParam<TypeCase> {};

TEST_P(GoldenTypeTest, MatchesGoldenFile) {
  GeneratedConfig config = GenerateSingBoxConfig(OneInbound(GetParam()));
  ASSERT_TRUE(config.ok()) << ::testing::PrintToString(config.errors);
  EXPECT_EQ(config.inbounds, 1u);
  EXPECT_EQ(config.users, 2u);
  ExpectGolden(GetParam().type, config.text);
}

INSTANTIATE_TEST_SUITE_P(EveryType, GoldenTypeTest, ::testing::ValuesIn(kTypes),
                         [](const auto& info) { return info.param.type; });

TEST(ConfigGeneratorTest, EverySupportedTypeHasAGoldenTest) {
  std::vector<std::string> tested;
  for (const TypeCase& type : kTypes) tested.push_back(type.type);
  std::sort(tested.begin(), tested.end());
  EXPECT_EQ(tested, SupportedInboundTypes());
}

// A template with its own inbound, experimental keys and key order; two
// generated inbounds sharing a user; an inbound without users.
GeneratorInput Mixed() {
  GeneratorInput input;
  input.template_json = R"json({
  "route": {"final": "direct", "rules": [{"inbound": ["api-in"], "outbound": "direct"}]},
  "inbounds": [{"type": "direct", "tag": "api-in", "listen": "127.0.0.1", "listen_port": 5353}],
  "experimental": {"cache_file": {"enabled": true, "path": "cache.db"}},
  "log": {"level": "info"},
  "outbounds": [{"type": "direct", "tag": "direct"}, {"type": "block", "tag": "block"}]
})json";
  input.template_name = "/etc/boxmeter/sing-box.base.json";
  input.inbounds = {
      {.tag = "vless-reality",
       .type = "vless",
       .listen = "0.0.0.0",
       .listen_port = 443,
       .options_json = R"({"tls": {"enabled": true}})"},
      {.tag = "socks-local",
       .type = "socks",
       .listen = "127.0.0.1",
       .listen_port = 1080},
      {.tag = "trojan-empty", .type = "trojan", .listen_port = 8443},
      {.tag = "tuic-no-port", .type = "tuic"},
  };
  input.users = Users();
  input.links = {{"vless-reality", "alice"},
                 {"vless-reality", "bob"},
                 {"socks-local", "carol"},
                 {"tuic-no-port", "bob"}};
  input.stats_listen = "[::1]:9090";
  input.stats_outbounds = {"direct", "block"};
  return input;
}

TEST(ConfigGeneratorTest, TemplateMergeMatchesGoldenFile) {
  GeneratedConfig config = GenerateSingBoxConfig(Mixed());
  ASSERT_TRUE(config.ok()) << ::testing::PrintToString(config.errors);
  EXPECT_EQ(config.inbounds, 4u);
  EXPECT_EQ(config.users, 3u);
  ExpectGolden("template_merge", config.text);
}

TEST(ConfigGeneratorTest, SameRowsInAnyOrderGiveTheSameBytes) {
  GeneratorInput input = Mixed();
  std::string expected = GenerateSingBoxConfig(input).text;
  ASSERT_FALSE(expected.empty());
  std::mt19937 random(20240601);
  for (int i = 0; i < 50; ++i) {
    std::shuffle(input.inbounds.begin(), input.inbounds.end(), random);
    std::shuffle(input.users.begin(), input.users.end(), random);
    std::shuffle(input.links.begin(), input.links.end(), random);
    ASSERT_EQ(GenerateSingBoxConfig(input).text, expected) << "shuffle " << i;
  }
}

TEST(ConfigGeneratorTest, EndsWithOneNewlineAndIndentsByTwo) {
  std::string text = GenerateSingBoxConfig(Mixed()).text;
  ASSERT_GE(text.size(), 2u);
  EXPECT_EQ(text.back(), '\n');
  EXPECT_NE(text[text.size() - 2], '\n');
  EXPECT_EQ(text.substr(0, 4), "{\n  ");
}

TEST(ConfigGeneratorTest, EmptyDatabaseStillWritesTheStatsBlock) {
  GeneratorInput input;
  input.template_json = "{}";
  input.stats_listen = "127.0.0.1:8080";
  GeneratedConfig config = GenerateSingBoxConfig(input);
  ASSERT_TRUE(config.ok()) << ::testing::PrintToString(config.errors);
  EXPECT_EQ(config.text,
            "{\n"
            "  \"inbounds\": [],\n"
            "  \"experimental\": {\n"
            "    \"v2ray_api\": {\n"
            "      \"listen\": \"127.0.0.1:8080\",\n"
            "      \"stats\": {\n"
            "        \"enabled\": true,\n"
            "        \"inbounds\": [],\n"
            "        \"outbounds\": [],\n"
            "        \"users\": []\n"
            "      }\n"
            "    }\n"
            "  }\n"
            "}\n");
}

// --- Bad input: every problem is reported, nothing is emitted. ---

// Generates `input`, expects failure with exactly one error containing every
// fragment of `expected`.
void ExpectOneError(const GeneratorInput& input,
                    const std::vector<std::string>& expected) {
  GeneratedConfig config = GenerateSingBoxConfig(input);
  EXPECT_FALSE(config.ok());
  EXPECT_TRUE(config.text.empty());
  ASSERT_EQ(config.errors.size(), 1u)
      << ::testing::PrintToString(config.errors);
  for (const std::string& fragment : expected) {
    EXPECT_THAT(config.errors[0], HasSubstr(fragment));
  }
}

TEST(ConfigGeneratorErrorTest, VlessUserWithoutUuid) {
  GeneratorInput input = OneInbound({"vless", "{}"});
  input.users[0].uuid.reset();
  ExpectOneError(input, {"inbound 'vless-in' (type vless)", "user 'alice'",
                         "has no uuid", "UPDATE users SET uuid ="});
}

TEST(ConfigGeneratorErrorTest, TrojanUserWithoutPassword) {
  GeneratorInput input = OneInbound({"trojan", "{}"});
  input.users[1].password.reset();
  ExpectOneError(input, {"inbound 'trojan-in' (type trojan)", "user 'bob'",
                         "has no password", "UPDATE users SET password"});
}

TEST(ConfigGeneratorErrorTest, EmptyPasswordIsMissing) {
  GeneratorInput input = OneInbound({"socks", "{}"});
  input.users[1].password = "";
  ExpectOneError(input, {"user 'bob'", "has an empty password"});
}

TEST(ConfigGeneratorErrorTest, TuicNeedsUuidAndPassword) {
  GeneratorInput input = OneInbound({"tuic", "{}"});
  input.users[0].uuid.reset();
  input.users[0].password.reset();
  GeneratedConfig config = GenerateSingBoxConfig(input);
  ASSERT_EQ(config.errors.size(), 2u)
      << ::testing::PrintToString(config.errors);
  EXPECT_THAT(config.errors[0], HasSubstr("user 'alice' has no uuid"));
  EXPECT_THAT(config.errors[1], HasSubstr("user 'alice' has no password"));
}

TEST(ConfigGeneratorErrorTest, InvalidUuid) {
  GeneratorInput input = OneInbound({"vmess", "{}"});
  input.users[1].uuid = "c2a7e1f0-8d4b-4b69-a3e5-1f0d2c9b8a7";
  ExpectOneError(
      input, {"inbound 'vmess-in' (type vmess)", "user 'bob'",
              "uuid \"c2a7e1f0-8d4b-4b69-a3e5-1f0d2c9b8a7\"", "is not a UUID"});
}

TEST(ConfigGeneratorErrorTest, UnknownInboundType) {
  GeneratorInput input = OneInbound({"vlesss", "{}"});
  ExpectOneError(input, {"inbound 'vlesss-in'", "type 'vlesss'",
                         "set inbounds.type to one of: anytls, http"});
}

TEST(ConfigGeneratorErrorTest, DuplicateTagsAmongRows) {
  GeneratorInput input = OneInbound({"vless", "{}"});
  input.inbounds.push_back(input.inbounds[0]);
  input.inbounds.back().type = "vmess";
  ExpectOneError(input,
                 {"inbound tag 'vless-in' appears 2 times", "must be unique"});
}

TEST(ConfigGeneratorErrorTest, TagAlsoInTemplate) {
  GeneratorInput input = OneInbound({"vless", "{}"});
  input.template_json = R"({"inbounds": [{"type": "direct", "tag": "dns-in"}, )"
                        R"({"type": "vless", "tag": "vless-in"}]})";
  ExpectOneError(input, {"inbound 'vless-in' is defined both in template "
                         "base.json (inbounds[1]) and in the database",
                         "remove it from one of them"});
}

TEST(ConfigGeneratorErrorTest, TemplateNotJson) {
  GeneratorInput input = OneInbound({"vless", "{}"});
  input.template_json = "{\"log\": {},,}";
  ExpectOneError(input, {"template base.json is not valid JSON",
                         "parse error at line 1, column 12"});
}

TEST(ConfigGeneratorErrorTest, TemplateNotAnObject) {
  GeneratorInput input = OneInbound({"vless", "{}"});
  input.template_json = "[{\"type\": \"direct\"}]";
  ExpectOneError(input, {"template base.json: the top level is an array",
                         "expected a JSON object"});
}

TEST(ConfigGeneratorErrorTest, TemplateInboundsNotAnArray) {
  GeneratorInput input = OneInbound({"vless", "{}"});
  input.template_json = R"({"inbounds": {"tag": "x"}})";
  ExpectOneError(input, {"template base.json: \"inbounds\" is an object",
                         "expected an array"});
}

TEST(ConfigGeneratorErrorTest, TemplateWithItsOwnV2rayApi) {
  GeneratorInput input = OneInbound({"vless", "{}"});
  input.template_json =
      R"({"experimental": {"v2ray_api": {"listen": "127.0.0.1:1"}}})";
  ExpectOneError(input, {"template base.json: experimental.v2ray_api is set",
                         "remove it"});
}

TEST(ConfigGeneratorErrorTest, OptionsMayNotSetWhatTheGeneratorWrites) {
  GeneratorInput input = OneInbound({"vless", R"({"users": [], "tag": "x"})"});
  GeneratedConfig config = GenerateSingBoxConfig(input);
  ASSERT_EQ(config.errors.size(), 2u)
      << ::testing::PrintToString(config.errors);
  EXPECT_THAT(config.errors[0],
              HasSubstr("inbound 'vless-in': options set \"tag\""));
  EXPECT_THAT(config.errors[1], HasSubstr("options set \"users\""));
  EXPECT_THAT(config.errors[1], HasSubstr("inbound_users"));
}

TEST(ConfigGeneratorErrorTest, OptionsNotAnObject) {
  GeneratorInput input = OneInbound({"vless", R"([1, 2])"});
  ExpectOneError(input, {"inbound 'vless-in': options are an array",
                         "expected a JSON object"});
}

TEST(ConfigGeneratorErrorTest, EveryProblemIsReportedAtOnce) {
  GeneratorInput input = Mixed();
  input.users[0].uuid.reset();      // alice: vless without uuid
  input.users[2].password.reset();  // carol: socks without password
  input.inbounds.push_back({.tag = "x", .type = "wireguard"});
  GeneratedConfig config = GenerateSingBoxConfig(input);
  EXPECT_EQ(config.errors.size(), 3u)
      << ::testing::PrintToString(config.errors);
  EXPECT_TRUE(config.text.empty());
}

}  // namespace
}  // namespace boxmeter
