// Hostile and extreme input through the pure core: counter names that try
// to break parsing, quoting or storage, values at the edges of int64, and
// user names and tags full of shell metacharacters in the generator's
// output. Each test states the outcome: kept byte for byte, skipped and
// counted, or saturated; never a crash, a wrap-around or a mangled name.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "config_generator.h"
#include "counter_name.h"
#include "delta_engine.h"
#include "snapshot.h"

namespace boxmeter {
namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
constexpr int64_t kStartMs = 1'700'000'000'000;

// A 64 KiB name that ends in what a counter name's suffix looks like, so
// parsing from the wrong end would cut it.
std::string LongName() {
  std::string name;
  while (name.size() < 64 * 1024 - 19) name += "abc>>>\"'\\";
  name.resize(64 * 1024 - 19);
  return name + ">>>traffic>>>uplink";
}

// Names sing-box would pass through as they are: users and tags are
// operator-chosen strings.
std::vector<std::string> HostileNames() {
  return {
      "it's \"quoted\"",
      "back\\slash\\",
      "\\N",  // COPY's NULL marker
      "\\.",  // COPY's end-of-data marker
      "'; DROP TABLE counters; --",
      "1' OR '1'='1",
      "$1::bigint); DELETE FROM nodes; --",
      "ünïcødé 用户 🚀",
      "\u202eRTL override\u202c",
      "zero\u200bwidth",
      "e\u0301 combining",
      ">>>leading",
      "trailing>>>",
      ">>>",
      "a>>>b>>>c",
      "user>>>inner>>>traffic>>>downlink",
      "tab\there, new\nline, cr\rhere",
      std::string("nul\0inside", 10),
      LongName(),
  };
}

StatsReply ReplyOf(const std::vector<RawStat>& stats, int64_t at_ms = kStartMs,
                   uint32_t uptime_s = 100) {
  StatsReply reply;
  reply.boot_id = "boot";
  reply.same_kernel = true;
  reply.answered_wall_ms = at_ms + 20;
  reply.before = {at_ms, at_ms + 10, uptime_s};
  reply.stats = stats;
  reply.after = {at_ms + 10, at_ms + 20, uptime_s};
  return reply;
}

TEST(HostileInputTest, HostileNamesRoundTripThroughFormatAndParse) {
  for (const std::string& name : HostileNames()) {
    for (CounterKind kind :
         {CounterKind::kInbound, CounterKind::kOutbound, CounterKind::kUser}) {
      for (Direction direction : {Direction::kUplink, Direction::kDownlink}) {
        std::optional<CounterName> parsed =
            ParseCounterName(FormatCounterName(kind, name, direction));
        ASSERT_TRUE(parsed.has_value()) << name.substr(0, 80);
        EXPECT_EQ(parsed->key.name, name);
        EXPECT_EQ(parsed->key.kind, kind);
        EXPECT_EQ(parsed->direction, direction);
      }
    }
  }
}

TEST(HostileInputTest, HostileNamesReachTheCommitBatchUnchanged) {
  std::vector<RawStat> stats;
  int64_t i = 0;
  for (const std::string& name : HostileNames()) {
    ++i;
    stats.push_back(
        {FormatCounterName(CounterKind::kUser, name, Direction::kUplink), i});
    stats.push_back(
        {FormatCounterName(CounterKind::kUser, name, Direction::kDownlink),
         1000 * i});
  }
  Snapshot snapshot;
  ASSERT_TRUE(MakeSnapshot(ReplyOf(stats), &snapshot).ok());
  EXPECT_EQ(snapshot.malformed, 0u);
  EXPECT_EQ(snapshot.duplicates, 0u);
  ASSERT_EQ(snapshot.counters.size(), HostileNames().size());

  DeltaEngine engine;
  engine.Load(0, {}, {});
  engine.Observe(snapshot);
  CommitBatch batch = engine.Prepare();
  ASSERT_EQ(batch.rows.size(), HostileNames().size());
  i = 0;
  for (const std::string& name : HostileNames()) {
    ++i;
    auto row =
        std::find_if(batch.rows.begin(), batch.rows.end(),
                     [&](const CommitRow& r) { return r.key.name == name; });
    ASSERT_NE(row, batch.rows.end()) << "lost: " << name.substr(0, 80);
    EXPECT_EQ(row->delta, (CounterValues{i, 1000 * i})) << name.substr(0, 80);
  }
}

TEST(HostileInputTest, NamesThatAreNotTrafficCountersAreCountedNotKept) {
  Snapshot snapshot;
  ASSERT_TRUE(MakeSnapshot(ReplyOf({{"", 1},
                                    {">>>", 1},
                                    {"user>>>traffic>>>uplink", 1},
                                    {"user>>>>>>traffic>>>uplink", 1},
                                    {"User>>>a>>>traffic>>>uplink", 1},
                                    {"user>>>a>>>traffic>>>Uplink", 1},
                                    {"user>>>a>>>traffic>>>uplink ", 1},
                                    {"group>>>a>>>traffic>>>uplink", 1},
                                    {std::string(70000, '>'), 1}}),
                           &snapshot)
                  .ok());
  EXPECT_EQ(snapshot.counters.size(), 0u);
  EXPECT_EQ(snapshot.malformed, 9u);
  EXPECT_EQ(snapshot.first_malformed, "");
}

TEST(HostileInputTest, ZeroNegativeAndMaximumValues) {
  const std::string up =
      FormatCounterName(CounterKind::kUser, "edge", Direction::kUplink);
  const std::string down =
      FormatCounterName(CounterKind::kUser, "edge", Direction::kDownlink);
  Snapshot snapshot;
  ASSERT_TRUE(
      MakeSnapshot(ReplyOf({{up, 0},
                            {down, kMax},
                            {FormatCounterName(CounterKind::kUser, "neg",
                                               Direction::kUplink),
                             -1},
                            {FormatCounterName(CounterKind::kUser, "min",
                                               Direction::kUplink),
                             std::numeric_limits<int64_t>::min()}}),
                   &snapshot)
          .ok());
  // Zero and the maximum are values; a negative one is not a byte count and
  // is skipped (and counted, so the collector can say so).
  EXPECT_EQ(snapshot.negative, 2u);
  ASSERT_EQ(snapshot.counters.size(), 1u);
  const CounterKey edge{CounterKind::kUser, "edge"};
  EXPECT_EQ(snapshot.counters.at(edge), (CounterValues{0, kMax}));

  DeltaEngine engine;
  engine.Load(0, {}, {});
  engine.Observe(snapshot);
  CommitBatch first = engine.Prepare();
  ASSERT_EQ(first.rows.size(), 1u);
  EXPECT_EQ(first.rows[0].delta, (CounterValues{0, kMax}));
  engine.NotCommitted();

  // A new instance counts the maximum again while the first is still
  // pending: the pending sum saturates instead of wrapping negative.
  Snapshot restarted = snapshot;
  restarted.instance.start.lo_ms += 60'000;
  restarted.instance.start.hi_ms += 60'000;
  restarted.taken_at_ms += 60'000;
  restarted.counters[edge] = {kMax, kMax};
  engine.Observe(restarted);
  CommitBatch second = engine.Prepare();
  ASSERT_EQ(second.rows.size(), 1u);
  EXPECT_EQ(second.rows[0].delta, (CounterValues{kMax, kMax}));
  EXPECT_EQ(second.rows[0].baseline, (CounterValues{kMax, kMax}));
  engine.Committed();
  EXPECT_FALSE(engine.HasPending());
  EXPECT_EQ(engine.pending_bytes(), 0);
}

TEST(HostileInputTest, ShellMetacharactersInNamesAreOnlyEverJsonText) {
  // User names, tags and passwords are data: the generator writes them as
  // JSON strings (escaped where JSON needs it), never interpolates them into
  // anything else, and they parse back byte for byte.
  const std::vector<std::string> names = {
      "$(touch /tmp/boxmeter-pwned)",
      "`id`",
      "a; reboot",
      "x && rm -rf / || true",
      "quote\" and 'single'",
      "back\\slash \\n not a newline",
      "real\nnewline\ttab",
      "pipe | redirect > /etc/passwd < in",
      "glob * ? [a-z] ~root $HOME ${PATH} !! #comment",
  };
  GeneratorInput input;
  input.template_json =
      R"({"outbounds": [{"type": "direct", "tag": "direct"}]})";
  input.template_name = "hostile.json";
  input.stats_listen = "127.0.0.1:8080";
  input.stats_outbounds = {"direct"};
  const std::string tag = "in; $(reboot) `id` \"q\" 'q'";
  input.inbounds.push_back(InboundRow{.tag = tag,
                                      .type = "trojan",
                                      .listen = "127.0.0.1",
                                      .listen_port = 4443});
  for (const std::string& name : names) {
    input.users.push_back(UserRow{.name = name, .password = name + " pw $(x)"});
    input.links.push_back({tag, name});
  }
  GeneratedConfig config = GenerateSingBoxConfig(input);
  ASSERT_TRUE(config.ok()) << config.errors[0];

  nlohmann::json parsed = nlohmann::json::parse(config.text);
  const nlohmann::json& inbound = parsed["inbounds"][0];
  EXPECT_EQ(inbound["tag"], tag);
  ASSERT_EQ(inbound["users"].size(), names.size());
  std::vector<std::string> written;
  for (const nlohmann::json& user : inbound["users"]) {
    written.push_back(user["name"]);
    EXPECT_EQ(user["password"], user["name"].get<std::string>() + " pw $(x)");
  }
  std::vector<std::string> sorted = names;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(written, sorted);
  const nlohmann::json& stats = parsed["experimental"]["v2ray_api"]["stats"];
  EXPECT_EQ(stats["users"].get<std::vector<std::string>>(), sorted);
  EXPECT_EQ(stats["inbounds"][0], tag);
  // A raw newline inside a JSON string would be invalid JSON; it is escaped.
  EXPECT_NE(config.text.find(R"(real\nnewline\ttab)"), std::string::npos);
}

TEST(HostileInputTest, DeeplyNestedTemplateIsRefusedNotACrash) {
  // Regression: 100,000 levels of arrays overflowed the stack when the
  // generator copied and wrote the template (found by feeding generator_fuzz
  // a deep input); 30,000 levels wrote 1.8 GB of indentation.
  GeneratorInput input;
  input.stats_listen = "127.0.0.1:8080";
  for (int depth : {150, 100'000}) {
    input.template_json = "{\"route\": " + std::string(depth, '[') +
                          std::string(depth, ']') + "}";
    GeneratedConfig config = GenerateSingBoxConfig(input);
    ASSERT_FALSE(config.ok()) << depth;
    EXPECT_NE(config.errors[0].find("nested deeper than 100 levels"),
              std::string::npos)
        << config.errors[0];
  }
  // Options from the database are held to the same limit.
  input.template_json = "{}";
  input.inbounds.push_back(
      InboundRow{.tag = "deep",
                 .type = "trojan",
                 .options_json = "{\"tls\": " + std::string(5000, '[') +
                                 std::string(5000, ']') + "}"});
  GeneratedConfig config = GenerateSingBoxConfig(input);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.errors[0].find("nested deeper than 100 levels"),
            std::string::npos)
      << config.errors[0];
  // A realistic depth is fine.
  input.inbounds.clear();
  input.template_json = "{\"route\": {\"rules\": [{\"a\": [[[{\"b\": 1}]]]}]}}";
  EXPECT_TRUE(GenerateSingBoxConfig(input).ok());
}

}  // namespace
}  // namespace boxmeter
