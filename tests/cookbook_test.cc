// schema/COOKBOOK.md is executable documentation: every ```sql block in it
// runs here, in order, through psql against a database with traffic
// committed through PgStore, and its output must equal the ```text block
// that follows it, exactly as an operator sees it in psql.
//
// Two allowances keep the expected outputs stable over time:
// - The results are written as on the date in the file's
//   `<!-- cookbook-date: YYYY-MM-DD -->` comment (in UTC). The data is laid
//   out relative to today, so every date in an expected block is shifted by
//   the days between that date and today before comparing.
// - A cell written as `…` stands for a generated value (a uuid or a
//   password): that line is compared field by field, `…` matching any one.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "sql_fixture.h"

namespace boxmeter {
namespace {

using testing::SqlTest;
using testing::Traffic;

constexpr const char* kCookbook = BOXMETER_SOURCE_DIR "/schema/COOKBOOK.md";

struct Example {
  int line = 0;  // of the ```sql fence in COOKBOOK.md
  std::string sql;
  std::string expected;
};

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The ```sql blocks, each with the ```text block after it. A sql block
// without one is a failure: every statement's result is checked.
std::vector<Example> ParseCookbook(const std::string& text, std::string* date) {
  std::vector<Example> examples;
  std::vector<std::string> lines = Lines(text);
  std::smatch match;
  static const std::regex kDate(
      R"(<!-- cookbook-date: (\d{4}-\d{2}-\d{2}) -->)");
  for (size_t i = 0; i < lines.size(); ++i) {
    if (std::regex_search(lines[i], match, kDate)) *date = match[1];
    if (lines[i] != "```sql") continue;
    Example example;
    example.line = static_cast<int>(i + 1);
    for (++i; i < lines.size() && lines[i] != "```"; ++i) {
      example.sql += lines[i] + "\n";
    }
    size_t next = i + 1;
    while (next < lines.size() && lines[next].empty()) ++next;
    if (next >= lines.size() || lines[next] != "```text") {
      ADD_FAILURE() << kCookbook << ":" << example.line
                    << ": a ```sql block without the ```text block of its "
                       "result after it";
      continue;
    }
    for (i = next + 1; i < lines.size() && lines[i] != "```"; ++i) {
      example.expected += lines[i] + "\n";
    }
    examples.push_back(std::move(example));
  }
  return examples;
}

// Every YYYY-MM-DD in `text` moved by `days`.
std::string ShiftDates(const std::string& text, int days) {
  using namespace std::chrono;
  static const std::regex kDay(R"((\d{4})-(\d{2})-(\d{2}))");
  std::string out;
  auto begin = std::sregex_iterator(text.begin(), text.end(), kDay);
  size_t last = 0;
  for (auto it = begin; it != std::sregex_iterator(); ++it) {
    const std::smatch& m = *it;
    year_month_day day{
        sys_days{year_month_day{
            year{std::stoi(m[1])},
            month{static_cast<unsigned>(std::stoi(m[2]))},
            std::chrono::day{static_cast<unsigned>(std::stoi(m[3]))}}} +
        std::chrono::days{days}};
    char buffer[16];
    std::snprintf(
        buffer, sizeof buffer, "%04d-%02u-%02u", static_cast<int>(day.year()),
        static_cast<unsigned>(day.month()), static_cast<unsigned>(day.day()));
    out += text.substr(last, m.position() - last) + buffer;
    last = m.position() + m.length();
  }
  return out + text.substr(last);
}

std::string TrimRight(std::string line) {
  while (!line.empty() && isspace(static_cast<unsigned char>(line.back()))) {
    line.pop_back();
  }
  return line;
}

std::vector<std::string> Fields(const std::string& line) {
  std::vector<std::string> fields;
  std::istringstream in(line);
  for (std::string field; in >> field;) fields.push_back(field);
  return fields;
}

// Whether psql's `actual` output is what `expected` shows.
bool Matches(const std::string& expected, const std::string& actual) {
  std::vector<std::string> want = Lines(expected), got = Lines(actual);
  while (!want.empty() && TrimRight(want.back()).empty()) want.pop_back();
  while (!got.empty() && TrimRight(got.back()).empty()) got.pop_back();
  if (want.size() != got.size()) return false;
  for (size_t i = 0; i < want.size(); ++i) {
    if (want[i].find("…") == std::string::npos) {
      if (TrimRight(want[i]) != TrimRight(got[i])) return false;
      continue;
    }
    std::vector<std::string> a = Fields(want[i]), b = Fields(got[i]);
    if (a.size() != b.size()) return false;
    for (size_t k = 0; k < a.size(); ++k) {
      if (a[k] != "…" && a[k] != b[k]) return false;
    }
  }
  return true;
}

std::string Psql() {
  const std::string debian = "/usr/lib/postgresql/15/bin/psql";
  return std::filesystem::exists(debian) ? debian : "psql";
}

constexpr int64_t kMiB = 1024 * 1024;

class CookbookTest : public SqlTest {
 protected:
  // Five users on two nodes with three weeks of traffic, committed through
  // PgStore as the collectors of edge-1 and edge-2 would. In MiB:
  //
  //   day     node    alice  bob   carol  dave  erin  ghost
  //   -20     edge-1  300    100
  //   -3      edge-1  200    1200               700
  //   -1      edge-2  100                 40    100
  //   -1      edge-1         600   50
  //   today   edge-1  50                        500   1
  //   today   edge-2  150
  //
  // Each user's traffic also passes the inbound it is linked to, and the
  // outbound `direct`. ghost is not a user; edge-2 also counts an inbound
  // old-in that is not in inbounds. edge-2's collector last committed three
  // hours ago.
  void SetUp() override {
    SqlTest::SetUp();
    if (HasFatalFailure()) return;
    setup_day_ms_ = DayMs(0);
    Query(R"sql(
      INSERT INTO inbounds (node, tag, type, listen_port) VALUES
        ('edge-1', 'vless-in', 'vless', 443),
        ('edge-1', 'trojan-in', 'trojan', 8443),
        ('edge-2', 'vless-in', 'vless', 443);
      SELECT add_user('alice', quota_bytes => pg_size_bytes('5 GB')),
             add_user('bob', quota_bytes => pg_size_bytes('2 GB')),
             add_user('carol', expires_at => current_date - 1),
             add_user('dave'),
             add_user('erin', quota_bytes => pg_size_bytes('1 GB'));
      SELECT disable_user('dave');
      SELECT link_user('alice', 'edge-1', 'vless-in'),
             link_user('alice', 'edge-2', 'vless-in'),
             link_user('bob', 'edge-1', 'trojan-in'),
             link_user('carol', 'edge-1', 'vless-in'),
             link_user('dave', 'edge-2', 'vless-in'),
             link_user('erin', 'edge-1', 'vless-in'),
             link_user('erin', 'edge-2', 'vless-in');
    )sql");
    struct Use {
      const char* user;  // nullptr: traffic of no user
      const char* inbound;
      int64_t mib;
    };
    auto commit = [&](const std::string& node, int day, int hour,
                      std::vector<Use> uses) {
      std::vector<Traffic> traffic;
      int64_t all = 0;
      for (const Use& use : uses) {
        // A tenth up, the rest down, as browsing goes.
        int64_t up = use.mib * kMiB / 10, down = use.mib * kMiB - up;
        if (use.user)
          traffic.push_back({CounterKind::kUser, use.user, up, down});
        traffic.push_back({CounterKind::kInbound, use.inbound, up, down});
        all += use.mib * kMiB;
      }
      traffic.push_back(
          {CounterKind::kOutbound, "direct", all / 10, all - all / 10});
      meter(node).Commit(traffic, DayMs(day, hour));
    };
    commit("edge-1", -20, 10,
           {{"alice", "vless-in", 300}, {"bob", "trojan-in", 100}});
    commit("edge-1", -3, 14,
           {{"alice", "vless-in", 200},
            {"bob", "trojan-in", 1200},
            {"erin", "vless-in", 700}});
    commit("edge-2", -1, 9,
           {{"alice", "vless-in", 100},
            {"dave", "vless-in", 40},
            {"erin", "vless-in", 100},
            {nullptr, "old-in", 5}});
    commit("edge-1", -1, 21,
           {{"bob", "trojan-in", 600}, {"carol", "vless-in", 50}});
    commit("edge-1", 0, 0,
           {{"alice", "vless-in", 50},
            {"erin", "vless-in", 500},
            {"ghost", "vless-in", 1}});
    commit("edge-2", 0, 0, {{"alice", "vless-in", 150}});
    Query(
        "UPDATE nodes SET last_commit_at = now() - interval '3 hours' "
        "WHERE name = 'edge-2'");
  }

  int64_t setup_day_ms_ = 0;

  // Runs `sql` with psql as an operator would, in UTC; stdout and stderr.
  std::string RunPsql(const std::string& sql, int* code) {
    testing::TempDir dir;
    std::string file = dir.path() + "/example.sql";
    std::ofstream(file) << sql;
    testing::Process::Options psql;
    psql.argv = {Psql(), "-X", "-v", "ON_ERROR_STOP=1", "-P", "pager=off",
                 "-f",   file, Url()};
    psql.env = {{"PGTZ", "UTC"}, {"PGDATESTYLE", "ISO"}, {"PGOPTIONS", ""}};
    std::string output;
    *code = testing::RunCommand(psql, std::chrono::seconds(60), &output);
    return output;
  }
};

TEST(CookbookParseTest, ShiftsDatesAndMatchesGeneratedValues) {
  EXPECT_EQ(ShiftDates("2026-11-25 and 2026-12-31 10:00", 7),
            "2026-12-02 and 2027-01-07 10:00");
  EXPECT_EQ(ShiftDates("2024-03-01", -1), "2024-02-29");
  EXPECT_TRUE(Matches(" a | …\n---\n x | …\n", " a | b\n---\n x | 1234-5\n"));
  EXPECT_FALSE(Matches(" a | …\n", " a | b c\n"));
  EXPECT_FALSE(Matches(" a | b\n", " a | c\n"));
  EXPECT_FALSE(Matches(" a\n", " a\n b\n"));
}

TEST_F(CookbookTest, EveryStatementRunsAndGivesItsDocumentedResult) {
  std::ifstream file(kCookbook);
  ASSERT_TRUE(file) << "cannot read " << kCookbook;
  std::stringstream text;
  text << file.rdbuf();
  std::string date;
  std::vector<Example> examples = ParseCookbook(text.str(), &date);
  ASSERT_FALSE(date.empty())
      << kCookbook << " has no <!-- cookbook-date: YYYY-MM-DD --> comment";
  EXPECT_GE(examples.size(), 15u);
  EXPECT_LE(examples.size(), 40u);

  // The data is laid out around the day SetUp ran; a run across midnight
  // (UTC) would compare with the wrong days.
  if (DayMs(0) != setup_day_ms_) GTEST_SKIP() << "ran across midnight UTC";
  std::string today = Query("SET TIME ZONE 'UTC'; SELECT current_date");
  int shift =
      std::stoi(Query("SELECT date '" + today + "' - date '" + date + "'"));
  for (const Example& example : examples) {
    SCOPED_TRACE(std::string(kCookbook) + ":" + std::to_string(example.line));
    int code = 0;
    std::string output = RunPsql(example.sql, &code);
    ASSERT_EQ(code, 0) << "psql failed on:\n" << example.sql << output;
    std::string expected = ShiftDates(example.expected, shift);
    EXPECT_TRUE(Matches(expected, output))
        << "for:\n"
        << example.sql << "psql printed:\n"
        << output << "but the cookbook shows (dates moved by " << shift
        << " days):\n"
        << expected;
  }
}

}  // namespace
}  // namespace boxmeter
