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
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "sing_box_rules.h"

namespace boxmeter {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

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
  // bob's password for this type, when his default one would not do
  // (shadowsocks 2022 methods need base64 keys).
  std::optional<std::string> bob_password = std::nullopt;
};

// Test names and failure messages show the type, never the object's bytes
// (which include pointers and change from build to build).
void PrintTo(const TypeCase& type, std::ostream* out) { *out << type.type; }

constexpr const char* kCertificate =
    R"("certificate_path": "/etc/sing-box/cert.pem", )"
    R"("key_path": "/etc/sing-box/key.pem")";

std::string WithTls(const std::string& before, const std::string& after) {
  return before + kCertificate + after;
}

// Options as PostgreSQL's jsonb prints them (keys by length, then bytes),
// each a config sing-box v1.13 loads: TLS with a certificate where it is
// enabled (common/tls/std_server.go) or required (protocol/hysteria,
// protocol/hysteria2, protocol/tuic, protocol/naive inbound.go), reality
// with its private key (common/tls/reality_server.go), shadowsocks 2022
// with its server key (protocol/shadowsocks/inbound_multi.go).
const std::vector<TypeCase> kTypes = {
    {"anytls", WithTls(R"({"tls": {"enabled": true, )", "}}")},
    {"http", R"({})"},
    {"hysteria", WithTls(R"({"tls": {"alpn": ["h3"], "enabled": true, )",
                         R"(}, "up_mbps": 100, "down_mbps": 100})")},
    {"hysteria2", WithTls(R"({"tls": {"alpn": ["h3"], "enabled": true, )",
                          R"(}, "obfs": {"type": "salamander", )"
                          R"("password": "obfs-secret"}})")},
    {"mixed", R"({"set_system_proxy": false})"},
    {"naive", WithTls(R"({"tls": {"enabled": true, )", "}}")},
    {"shadowsocks",
     R"({"method": "2022-blake3-aes-128-gcm", "password": )"
     R"("oKr/vR6ueOSeJK+KgtzLzQ=="})",
     "Zm9vYmFyYmF6cXV4MTIzNA=="},
    {"socks", R"({})"},
    {"trojan", WithTls(R"({"tls": {"enabled": true, )",
                       R"(, "server_name": "example.com"}})")},
    {"tuic", WithTls(R"({"tls": {"alpn": ["h3"], "enabled": true, )",
                     R"(}, "congestion_control": "bbr"})")},
    {"vless",
     R"({"tls": {"enabled": true, "reality": {"enabled": true, )"
     R"("handshake": {"server": "www.example.com", "server_port": 443}, )"
     R"("short_id": ["0123456789abcdef"], )"
     R"("private_key": "UuMBgl7MXTPx6lYuTFZTtB1o4ZNkH-BGAHmyJNtlkU0"}}})"},
    {"vmess", R"({"transport": {"path": "/ws", "type": "ws"}})"},
};

// The first of kTypes with this type.
TypeCase Type(const std::string& type) {
  for (const TypeCase& candidate : kTypes) {
    if (candidate.type == type) return candidate;
  }
  ADD_FAILURE() << "no TypeCase " << type;
  return {type, "{}"};
}

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
  if (type.bob_password) input.users[1].password = type.bob_password;
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
// generated inbounds sharing a user; an inbound without users (left out).
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
      {.tag = "vless-tls",
       .type = "vless",
       .listen = "0.0.0.0",
       .listen_port = 443,
       .options_json = WithTls(R"({"tls": {"enabled": true, )", "}}")},
      {.tag = "socks-local",
       .type = "socks",
       .listen = "127.0.0.1",
       .listen_port = 1080},
      {.tag = "trojan-empty", .type = "trojan", .listen_port = 8443},
      {.tag = "tuic-no-port",
       .type = "tuic",
       .options_json = R"({"tls": {"enabled": true, "insecure": true}})"},
  };
  input.users = Users();
  input.links = {{"vless-tls", "alice"},
                 {"vless-tls", "bob"},
                 {"socks-local", "carol"},
                 {"tuic-no-port", "bob"}};
  input.stats_listen = "[::1]:9090";
  input.stats_outbounds = {"direct", "block"};
  return input;
}

TEST(ConfigGeneratorTest, TemplateMergeMatchesGoldenFile) {
  GeneratedConfig config = GenerateSingBoxConfig(Mixed());
  ASSERT_TRUE(config.ok()) << ::testing::PrintToString(config.errors);
  EXPECT_EQ(config.inbounds, 3u);
  EXPECT_EQ(config.users, 3u);
  EXPECT_THAT(config.left_out,
              ElementsAre(HasSubstr("inbound 'trojan-empty' (type trojan) "
                                    "left out")));
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
  GeneratorInput input = OneInbound(Type("tuic"));
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

// --- What sing-box v1.13 would do with the output: each rule names the
// sing-box (or sing library) file it mirrors. ---

class LeftOutTest : public ::testing::TestWithParam<TypeCase> {};

// sing common/auth/auth.go (NewAuthenticator returns nil for no users: socks,
// http and mixed then skip authentication), protocol/naive/inbound.go
// ("missing users"), protocol/shadowsocks/inbound.go (no users: single-user
// mode on the inbound's password): no inbound is written without users.
TEST_P(LeftOutTest, InboundWithoutEligibleUsersIsLeftOut) {
  GeneratorInput input = OneInbound(GetParam());
  input.links.clear();
  GeneratedConfig config = GenerateSingBoxConfig(input);
  ASSERT_TRUE(config.ok()) << ::testing::PrintToString(config.errors);
  EXPECT_EQ(config.inbounds, 0u);
  EXPECT_EQ(config.users, 0u);
  EXPECT_THAT(config.text, Not(HasSubstr(GetParam().type + "-in")));
  ASSERT_EQ(config.left_out.size(), 1u);
  EXPECT_THAT(config.left_out[0], HasSubstr("inbound '" + GetParam().type +
                                            "-in' (type " + GetParam().type +
                                            ") left out: none of its users is "
                                            "eligible now"));
  EXPECT_THAT(config.left_out[0], HasSubstr("it comes back"));
}

INSTANTIATE_TEST_SUITE_P(EveryType, LeftOutTest, ::testing::ValuesIn(kTypes),
                         [](const auto& info) { return info.param.type; });

TEST(ConfigGeneratorTest, LeftOutLineSaysWhatSingBoxWouldDo) {
  for (const auto& [type, why] :
       std::vector<std::pair<std::string, std::string>>{
           {"socks", "accept anyone on it without authentication"},
           {"http", "accept anyone on it without authentication"},
           {"mixed", "accept anyone on it without authentication"},
           {"naive", "refuse to start (\"missing users\""},
           {"shadowsocks", "fall back to single-user mode"}}) {
    GeneratorInput input = OneInbound(Type(type));
    input.links.clear();
    GeneratedConfig config = GenerateSingBoxConfig(input);
    ASSERT_EQ(config.left_out.size(), 1u) << type;
    EXPECT_THAT(config.left_out[0], HasSubstr(why)) << type;
  }
}

TEST(ConfigGeneratorTest, LeftOutInboundIsNotInTheStatsLists) {
  GeneratorInput input = OneInbound(Type("socks"));
  input.inbounds.push_back({.tag = "http-in", .type = "http"});
  input.links = {{"http-in", "bob"}};
  GeneratedConfig config = GenerateSingBoxConfig(input);
  ASSERT_TRUE(config.ok()) << ::testing::PrintToString(config.errors);
  auto json = nlohmann::json::parse(config.text);
  EXPECT_EQ(json["experimental"]["v2ray_api"]["stats"]["inbounds"],
            nlohmann::json::parse(R"(["http-in"])"));
  EXPECT_EQ(json["experimental"]["v2ray_api"]["stats"]["users"],
            nlohmann::json::parse(R"(["bob"])"));
  EXPECT_EQ(json["inbounds"].size(), 1u);
}

// transport/trojan/service.go ("user already exists"); protocol/vless,
// protocol/vmess, protocol/tuic (users by uuid) and protocol/hysteria,
// protocol/hysteria2, protocol/anytls, protocol/shadowsocks (by password).
TEST(ConfigGeneratorRulesTest, TwoUsersWithOnePasswordOnTrojan) {
  GeneratorInput input = OneInbound(Type("trojan"));
  input.users[1].password = input.users[0].password;
  ExpectOneError(input, {"inbound 'trojan-in' (type trojan): users 'alice' "
                         "and 'bob' have the same password",
                         "refuse to start (\"user already exists\")",
                         "WHERE name = 'bob'"});
}

TEST(ConfigGeneratorRulesTest, TwoUsersWithOneUuidInAnyCaseOnVless) {
  GeneratorInput input = OneInbound(Type("vless"));
  input.users[1].uuid = "5B0D9A4E-3C1F-4E7A-9B2D-8F6C1A3E5D70";
  ExpectOneError(input, {"users 'alice' and 'bob' have the same uuid",
                         "count both under one name"});
}

TEST(ConfigGeneratorRulesTest, EveryCredentialKeyedTypeRefusesDuplicates) {
  for (const std::string type :
       {"anytls", "hysteria", "hysteria2", "tuic", "vmess", "shadowsocks"}) {
    GeneratorInput input = OneInbound(Type(type));
    input.users[1].uuid = input.users[0].uuid;
    input.users[1].password = input.users[0].password;
    GeneratedConfig config = GenerateSingBoxConfig(input);
    ASSERT_EQ(config.errors.size(), 1u)
        << type << ::testing::PrintToString(config.errors);
    EXPECT_THAT(config.errors[0], HasSubstr("users 'alice' and 'bob'"));
  }
}

TEST(ConfigGeneratorRulesTest, SamePasswordIsFineWhereUsersGoByName) {
  for (const std::string type : {"socks", "http", "mixed", "naive"}) {
    GeneratorInput input = OneInbound(Type(type));
    input.users[1].password = input.users[0].password;
    EXPECT_TRUE(GenerateSingBoxConfig(input).ok()) << type;
  }
}

// protocol/hysteria/inbound.go, protocol/hysteria2/inbound.go,
// protocol/tuic/inbound.go: C.ErrTLSRequired.
TEST(ConfigGeneratorRulesTest, QuicTypesNeedTls) {
  for (const std::string type : {"hysteria", "hysteria2", "tuic"}) {
    ExpectOneError(
        OneInbound({type, R"({"up_mbps": 10, "down_mbps": 10})"}),
        {"inbound '" + type + "-in' (type " + type + ")", "TLS is required",
         "set tls.enabled to true", "in inbounds.options"});
  }
}

// common/tls/std_server.go: "missing certificate", "missing key"; with
// insecure and neither, a self-signed certificate; acme needs a domain.
TEST(ConfigGeneratorRulesTest, EnabledTlsNeedsCertificateAndKey) {
  ExpectOneError(OneInbound({"trojan", R"({"tls": {"enabled": true}})"}),
                 {"inbound 'trojan-in' (type trojan)",
                  "\"missing certificate\"", "certificate_path"});
  ExpectOneError(OneInbound({"tuic", R"({"tls": {"enabled": true}})"}),
                 {"without a certificate and key", "tls.key_path"});
  ExpectOneError(OneInbound({"vmess", R"({"tls": {"enabled": true, )"
                                      R"("certificate_path": "/c.pem"}})"}),
                 {"\"missing key\"", "key_path"});
  for (const std::string ok :
       {R"({"tls": {"enabled": true, "insecure": true}})",
        R"({"tls": {"enabled": true, "acme": {"domain": ["a.example"]}}})",
        R"({"tls": {"enabled": true, "certificate": ["PEM"], "key": "PEM"}})",
        R"({"tls": {"enabled": false}})"}) {
    GeneratedConfig result = GenerateSingBoxConfig(OneInbound({"http", ok}));
    EXPECT_TRUE(result.ok()) << ok << ::testing::PrintToString(result.errors);
  }
  ExpectOneError(
      OneInbound({"http", R"({"tls": {"enabled": true, "acme": {}}})"}),
      {"\"missing certificate\""});
}

// common/tls/reality_server.go: no STDConfig for QUIC ("unsupported usage
// for reality"), a private key, and no certificate beside it.
TEST(ConfigGeneratorRulesTest, RealityRules) {
  ExpectOneError(
      OneInbound({"hysteria2", R"({"tls": {"enabled": true, "reality": )"
                               R"({"enabled": true, "private_key": "k"}}})"}),
      {"\"unsupported usage for reality\""});
  ExpectOneError(OneInbound({"vless", R"({"tls": {"enabled": true, )"
                                      R"("reality": {"enabled": true}}})"}),
                 {"tls.reality.private_key is missing"});
  ExpectOneError(
      OneInbound({"vless",
                  R"({"tls": {"enabled": true, "reality": )"
                  R"({"enabled": true, "short_id": ["abc"], )"
                  R"("private_key": )"
                  R"("UuMBgl7MXTPx6lYuTFZTtB1o4ZNkH-BGAHmyJNtlkU0"}}})"}),
      {"short_id \"abc\" is not up to 16 hex digits"});
  ExpectOneError(
      OneInbound({"vless",
                  R"({"tls": {"enabled": true, "key_path": "/k", )"
                  R"("reality": {"enabled": true, )"
                  R"("private_key": )"
                  R"("UuMBgl7MXTPx6lYuTFZTtB1o4ZNkH-BGAHmyJNtlkU0"}}})"}),
      {"tls.key_path is unavailable with reality"});
}

// protocol/naive/inbound.go: "TLS is required for QUIC server" unless the
// network is tcp only (option/types.go: the default is tcp and udp).
TEST(ConfigGeneratorRulesTest, NaiveNeedsTlsUnlessTcpOnly) {
  ExpectOneError(OneInbound({"naive", "{}"}), {"TLS is required"});
  EXPECT_TRUE(
      GenerateSingBoxConfig(OneInbound({"naive", R"({"network": "tcp"})"}))
          .ok());
}

// sing common/json/badoption/netip.go: listen is netip.ParseAddr'ed.
TEST(ConfigGeneratorRulesTest, ListenMustBeAnIpAddress) {
  for (const std::string bad :
       {"localhost", "[::]", "0.0.0.0:443", "", "01.2.3.4", "fe80::1%"}) {
    GeneratorInput input = OneInbound(Type("socks"));
    input.inbounds[0].listen = bad;
    ExpectOneError(input, {"inbound 'socks-in': listen \"" + bad +
                               "\" is not an IP address",
                           "netip.ParseAddr"});
  }
  for (const std::string good :
       {"::", "0.0.0.0", "127.0.0.1", "::1", "fe80::1%eth0", "::ffff:10.0.0.1",
        "2001:db8::7"}) {
    GeneratorInput input = OneInbound(Type("socks"));
    input.inbounds[0].listen = good;
    EXPECT_TRUE(GenerateSingBoxConfig(input).ok()) << good;
  }
}

// sing-vmess vless/protocol.go (FlowVision) and vless/service.go ("unknown
// flow").
TEST(ConfigGeneratorRulesTest, VlessFlowMustBeOneSingBoxKnows) {
  GeneratorInput input = OneInbound(Type("vless"));
  input.users[0].flow = "xtls-rprx-direct";
  ExpectOneError(input, {"user 'alice' has flow \"xtls-rprx-direct\"",
                         "\"unknown flow\"", "WHERE name = 'alice'"});
}

// protocol/shadowsocks/inbound.go and inbound_multi.go; sing-shadowsocks
// shadowaead_2022/service_multi.go and protocol.go.
TEST(ConfigGeneratorRulesTest, ShadowsocksMethodMustCarryUsers) {
  for (const std::string options :
       {R"({})", R"({"method": "none"})",
        R"({"method": "2022-blake3-chacha20-poly1305", "password": "x"})",
        R"({"method": "rc4-md5"})"}) {
    ExpectOneError(OneInbound({"shadowsocks", options}),
                   {"inbound 'shadowsocks-in' (type shadowsocks): method",
                    "\"unsupported method\"", "2022-blake3-aes-128-gcm"});
  }
  GeneratorInput legacy = OneInbound({"shadowsocks", R"({"method": )"
                                                     R"("aes-256-gcm"})"});
  EXPECT_TRUE(GenerateSingBoxConfig(legacy).ok())
      << "legacy AEAD methods take any password";
}

TEST(ConfigGeneratorRulesTest, Shadowsocks2022NeedsKeysOfTheMethodsLength) {
  ExpectOneError(OneInbound({"shadowsocks",
                             R"({"method": )"
                             R"("2022-blake3-aes-128-gcm"})",
                             "Zm9vYmFyYmF6cXV4MTIzNA=="}),
                 {"the server password is missing", "16 random bytes"});
  // A 16-byte server key for a 32-byte method; alice's and bob's 16-byte
  // keys are too short for it as well.
  GeneratedConfig config = GenerateSingBoxConfig(
      OneInbound({"shadowsocks",
                  R"({"method": "2022-blake3-aes-256-gcm", )"
                  R"("password": "oKr/vR6ueOSeJK+KgtzLzQ=="})",
                  "Zm9vYmFyYmF6cXV4MTIzNA=="}));
  ASSERT_EQ(config.errors.size(), 3u)
      << ::testing::PrintToString(config.errors);
  EXPECT_THAT(config.errors[0], HasSubstr("not a base64 key of that size"));
  EXPECT_THAT(config.errors[0], HasSubstr("32 random bytes"));
  EXPECT_THAT(config.errors[1], HasSubstr("user 'alice'"));
  EXPECT_THAT(config.errors[2], HasSubstr("user 'bob'"));
  GeneratorInput input = OneInbound(Type("shadowsocks"));
  input.users[1].password = "not base64!";
  ExpectOneError(input, {"user 'bob' has a password that is not a base64 "
                         "key of 16 bytes",
                         "encode(gen_random_bytes(16), 'base64')"});
}

TEST(ConfigGeneratorRulesTest, ShadowsocksRelayAndManagedAreRefused) {
  ExpectOneError(
      OneInbound({"shadowsocks", R"({"method": "aes-128-gcm", )"
                                 R"("destinations": [{"name": "d"}]})"}),
      {"\"destinations\" (relay mode)", "must not be combined"});
  ExpectOneError(OneInbound({"shadowsocks", R"({"method": "aes-128-gcm", )"
                                            R"("managed": true})"}),
                 {"\"managed\" is true", "managed servers"});
}

// protocol/hysteria2/inbound.go: "missing obfs password", "unknown obfs
// type".
TEST(ConfigGeneratorRulesTest, Hysteria2ObfsNeedsPasswordAndType) {
  GeneratedConfig config = GenerateSingBoxConfig(
      OneInbound({"hysteria2", WithTls(R"({"tls": {"enabled": true, )",
                                       R"(}, "obfs": {"type": "other"}})")}));
  ASSERT_EQ(config.errors.size(), 2u)
      << ::testing::PrintToString(config.errors);
  EXPECT_THAT(config.errors[0], HasSubstr("\"missing obfs password\""));
  EXPECT_THAT(config.errors[1], HasSubstr("\"unknown obfs type\""));
}

// protocol/shadowtls/inbound.go hands connections to the detour inbound
// (route/route.go), which meters them under its own users: refused.
TEST(ConfigGeneratorRulesTest, ShadowtlsIsRefused) {
  ExpectOneError(OneInbound({"shadowtls", R"({"version": 3})"}),
                 {"inbound 'shadowtls-in': boxmeter-gen does not write "
                  "shadowtls inbounds",
                  "detour", "WHERE tag = 'shadowtls-in'"});
  EXPECT_THAT(SupportedInboundTypes(), Not(::testing::Contains("shadowtls")));
}

// sing common/json/internal/contextjson/decode.go (byFoldedName) and
// fold.go: keys match sing-box's fields case-insensitively, including the
// long s and the Kelvin sign.
TEST(ConfigGeneratorRulesTest, ReservedKeysAreMatchedCaseInsensitively) {
  for (const std::string key : {"Listen", "LISTEN_PORT", "Tag", "TYPE",
                                "u\xC5\xBF"
                                "ers",
                                "U\xC5\xBF"
                                "ERS"}) {
    ExpectOneError(OneInbound({"socks", "{\"" + key + "\": 1}"}),
                   {"options set \"" + key + "\", which sing-box reads as",
                    "case-insensitively"});
  }
}

TEST(ConfigGeneratorRulesTest, TwoSpellingsOfOneFieldAreRefused) {
  ExpectOneError(
      OneInbound({"trojan", WithTls(R"({"tls": {"enabled": true, )",
                                    R"(}, "TLS": {"enabled": false}})")}),
      {"options set both \"tls\" and \"TLS\"", "same field"});
  // A field spelled otherwise is still what the rules check.
  ExpectOneError(OneInbound({"tuic", R"({"Tls": {"Enabled": true}})"}),
                 {"\"missing certificate\""});
}

TEST(ConfigGeneratorErrorTest, HintsQuoteTheNameAsAnSqlLiteral) {
  GeneratorInput input = OneInbound({"vless", "{}"});
  input.users[0].name = "o'brien";
  input.users[0].uuid.reset();
  input.links[1].user_name = "o'brien";
  ExpectOneError(input, {"has no uuid", "WHERE name = 'o''brien')"});
  input.users[0].name = "new\nline \\ 'q'";
  input.links[1].user_name = input.users[0].name;
  ExpectOneError(input, {R"(WHERE name = E'new\x0aline \\ ''q''')"});
}

TEST(SingBoxRulesTest, FoldKeyIsGoFoldName) {
  EXPECT_EQ(FoldKey("listen_port"), "LISTEN_PORT");
  EXPECT_EQ(FoldKey("u\xC5\xBF"
                    "ers"),
            "USERS");
  EXPECT_EQ(FoldKey("\xE2\x84\xAA"
                    "ey"),
            "KEY");
  EXPECT_EQ(FoldKey("\xC3\xA9"), "\xC3\xA9") << "other runes stay";
}

TEST(SingBoxRulesTest, Base64DecodedSize) {
  EXPECT_EQ(Base64DecodedSize("oKr/vR6ueOSeJK+KgtzLzQ=="), 16u);
  EXPECT_EQ(Base64DecodedSize("AAAA"), 3u);
  EXPECT_FALSE(Base64DecodedSize("AAA"));
  EXPECT_FALSE(Base64DecodedSize("AA=A"));
  EXPECT_FALSE(Base64DecodedSize("AA-_"));
  EXPECT_FALSE(Base64DecodedSize(""));
}

}  // namespace
}  // namespace boxmeter
