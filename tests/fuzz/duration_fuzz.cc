// Fuzzes the small parsers of the config: ParseDuration, ParseLogLevel and
// RedactUrl. Properties, beyond "no crash, no UB":
//   - ParseDuration accepts exactly <digits><unit> with a value in
//     1ms..36500d, and returns digits * unit (checked in 128-bit arithmetic);
//   - RedactUrl hides a password completely, whatever bytes it holds, in the
//     three places libpq reads one: a URL's user info, a URL's ?password=
//     parameter, and a key=value string's password=.
#include <fuzzer/FuzzedDataProvider.h>

#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "config.h"
#include "fuzz_check.h"
#include "log.h"

namespace {

// What ParseDuration must return for `text`, worked out independently.
std::optional<int64_t> ExpectedMs(std::string_view text) {
  static constexpr std::pair<std::string_view, int64_t> kUnits[] = {
      {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
  for (auto [unit, ms] : kUnits) {
    if (text.size() <= unit.size() || !text.ends_with(unit)) continue;
    std::string_view digits = text.substr(0, text.size() - unit.size());
    __int128 value = 0;
    for (char c : digits) {
      if (c < '0' || c > '9') return std::nullopt;
      value = value * 10 + (c - '0');
      if (value > (__int128{1} << 100)) value = __int128{1} << 100;
    }
    value *= ms;
    if (value <= 0 || value > __int128{36500} * 86400000) return std::nullopt;
    return static_cast<int64_t>(value);
  }
  return std::nullopt;
}

// Keeps the bytes of `text` for which `keep` holds.
template <typename Keep>
std::string Filter(std::string text, Keep keep) {
  std::string out;
  for (char c : text) {
    if (keep(static_cast<unsigned char>(c))) out += c;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace boxmeter;
  std::string_view input(reinterpret_cast<const char*>(data), size);

  std::optional<std::chrono::milliseconds> duration = ParseDuration(input);
  std::optional<int64_t> expected = ExpectedMs(input);
  FUZZ_CHECK(duration.has_value() == expected.has_value());
  if (duration) FUZZ_CHECK(duration->count() == *expected);

  if (std::optional<LogLevel> level = ParseLogLevel(input)) {
    FUZZ_CHECK(LogLevelName(*level) == input);
  }

  // Anything at all: no crash.
  (void)RedactUrl(input);

  FuzzedDataProvider provider(data, size);
  // A C string (libpq's input) cannot hold NUL.
  std::string secret = Filter(provider.ConsumeRandomLengthString(64),
                              [](unsigned char c) { return c != 0; });
  // In a URL's user info a password cannot hold '@', '/', '?' or '#'
  // unescaped (libpq would split the URL there); anything else can appear.
  std::string in_userinfo = Filter(secret, [](unsigned char c) {
    return c != '@' && c != '/' && c != '?' && c != '#';
  });
  FUZZ_CHECK(RedactUrl("postgresql://boxmeter:" + in_userinfo +
                       "@db.example:5432/boxmeter") ==
             "postgresql://boxmeter:***@db.example:5432/boxmeter");
  // A URL parameter ends at '&' or '#'.
  std::string in_query =
      Filter(secret, [](unsigned char c) { return c != '&' && c != '#'; });
  FUZZ_CHECK(RedactUrl("postgresql://db.example/boxmeter?password=" + in_query +
                       "&sslmode=require") ==
             "postgresql://db.example/boxmeter?password=***&sslmode=require");
  // A bare key=value value ends at whitespace; a backslash escapes the next
  // byte (libpq's conninfo_parse). It may not start with a quote (that is
  // the quoted form, below).
  std::string bare;
  for (char c : secret) {
    if (std::isspace(static_cast<unsigned char>(c)) || c == '\\') bare += '\\';
    bare += c;
  }
  if (!bare.empty() && bare[0] != '\'' && bare[0] != '"') {
    FUZZ_CHECK(
        RedactUrl("host=db.example password=" + bare + " dbname=boxmeter") ==
        "host=db.example password=*** dbname=boxmeter");
  }
  // A quoted value, with quotes and backslashes escaped as libpq wants.
  std::string quoted = "'";
  for (char c : secret) {
    if (c == '\'' || c == '\\') quoted += '\\';
    quoted += c;
  }
  quoted += "'";
  FUZZ_CHECK(
      RedactUrl("host=db.example password=" + quoted + " dbname=boxmeter") ==
      "host=db.example password=*** dbname=boxmeter");
  return 0;
}
