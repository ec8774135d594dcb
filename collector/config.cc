// Reading the config file. The file is checked in layers, each of which can
// stop the load: it must be readable, a small UTF-8 text file, one YAML
// document, and a mapping at the top. Below that every key is checked on its
// own and every problem is collected, so an operator fixes the whole file in
// one round instead of one typo per restart.
//
// Every message has the shape `FILE:LINE: KEY: problem; what to write`. The
// line is the line of the key (yaml-cpp's marks are 0-based). Values are
// quoted through Quote(), which redacts passwords, so a database URL written
// under the wrong key never leaks into a log either.
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <fmt/core.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <sstream>
#include <utility>

#include "pg_connection_defaults.h"  // PercentDecoded
#include "safe_text.h"
#include "utf8.h"

extern char** environ;

namespace boxmeter {
namespace {

using std::chrono::milliseconds;

constexpr std::string_view kDatabaseUrlVariable = "BOXMETER_DATABASE_URL";
constexpr std::string_view kGeneratorDatabaseUrlVariable =
    "BOXMETER_GENERATOR_DATABASE_URL";
constexpr std::string_view kConfigVariable = "BOXMETER_CONFIG";
// Where systemd puts the files of LoadCredential= and SetCredential=.
constexpr std::string_view kCredentialsVariable = "CREDENTIALS_DIRECTORY";

// A connection string with a long password and every option is a few hundred
// bytes; the cap keeps a wrong path from being slurped.
constexpr size_t kMaxSecretFileSize = 64 * 1024;

// A config file is a few dozen lines. Anything larger is almost certainly the
// wrong file, and the cap keeps /dev/zero or a log file from being slurped.
constexpr size_t kMaxFileSize = 1 << 20;

// The longest duration accepted: 100 years. It still fits in nanoseconds when
// added to the current time, so no caller has to think about overflow.
constexpr int64_t kMaxDurationMs = int64_t{36500} * 24 * 3600 * 1000;

constexpr milliseconds kMinPollInterval{100};

// gRPC takes its message size limit as an int.
constexpr int64_t kMaxMessageSize = std::numeric_limits<int>::max();

constexpr std::string_view kDurationHint =
    "write a whole number with a unit (ms, s, m, h or d), like 500ms, 10s or "
    "5m";

enum class DurationProblem { kNone, kSyntax, kZero, kTooLong };

DurationProblem ParseDurationChecked(std::string_view text, milliseconds* out) {
  int64_t unit_ms = 0;
  std::string_view digits;
  auto ends_with = [&](std::string_view suffix) {
    return text.size() > suffix.size() &&
           text.substr(text.size() - suffix.size()) == suffix;
  };
  if (ends_with("ms")) {
    unit_ms = 1;
    digits = text.substr(0, text.size() - 2);
  } else if (ends_with("s")) {
    unit_ms = 1000;
  } else if (ends_with("m")) {
    unit_ms = 60 * 1000;
  } else if (ends_with("h")) {
    unit_ms = 3600 * 1000;
  } else if (ends_with("d")) {
    unit_ms = 24 * 3600 * 1000;
  } else {
    return DurationProblem::kSyntax;
  }
  if (unit_ms != 1) digits = text.substr(0, text.size() - 1);
  if (digits.empty()) return DurationProblem::kSyntax;
  int64_t count = 0;
  bool too_long = false;
  for (char c : digits) {
    if (c < '0' || c > '9') return DurationProblem::kSyntax;
    // Keep scanning after an overflow: "99999999999999999999x" is a syntax
    // error, not a duration that is too long.
    if (!too_long) {
      count = count * 10 + (c - '0');
      if (count > kMaxDurationMs / unit_ms) too_long = true;
    }
  }
  if (too_long) return DurationProblem::kTooLong;
  if (count == 0) return DurationProblem::kZero;
  *out = milliseconds(count * unit_ms);
  return DurationProblem::kNone;
}

// "268435456", "64KiB", "256MiB", "1GiB".
std::optional<int64_t> ParseByteSize(std::string_view text) {
  int64_t unit = 1;
  for (auto [suffix, size] : {std::pair<std::string_view, int64_t>{"KiB", 1024},
                              {"MiB", 1024 * 1024},
                              {"GiB", 1024 * 1024 * 1024}}) {
    if (text.size() > suffix.size() &&
        text.substr(text.size() - suffix.size()) == suffix) {
      unit = size;
      text.remove_suffix(suffix.size());
      break;
    }
  }
  if (text.empty()) return std::nullopt;
  int64_t count = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    // Past the limit the exact value does not matter (the caller rejects
    // it); saturate rather than overflow int64.
    count = std::min(count * 10 + (c - '0'), kMaxMessageSize + 1);
  }
  return count > kMaxMessageSize / unit ? kMaxMessageSize + 1 : count * unit;
}

// The shortest spelling: 100ms, 1h.
std::string FormatDuration(milliseconds value) {
  for (auto [unit, ms] : {std::pair<const char*, int64_t>{"d", 86400000},
                          {"h", 3600000},
                          {"m", 60000},
                          {"s", 1000}}) {
    if (value.count() % ms == 0) {
      return fmt::format("{}{}", value.count() / ms, unit);
    }
  }
  return fmt::format("{}ms", value.count());
}

bool HasControlCharacter(std::string_view text) {
  return std::any_of(text.begin(), text.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f;
  });
}

// A value for a message: passwords redacted, control characters escaped,
// long values shortened, in double quotes.
std::string Quote(std::string_view value) {
  constexpr size_t kMaxShown = 100;
  return QuotedText(RedactUrl(value), kMaxShown);
}

// A key as written when it is a plain name, else quoted and escaped.
std::string PlainOrQuoted(std::string_view key) {
  bool plain = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' ||
           c == '-' || c == '.';
  });
  return plain ? std::string(key) : Quote(key);
}

// Levenshtein distance, for "did you mean" on unknown keys.
size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1,
                         diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string Join(const std::vector<std::string_view>& items) {
  std::string out;
  for (std::string_view item : items) {
    if (!out.empty()) out += ", ";
    out += item;
  }
  return out;
}

// Where the file stops being plain UTF-8 text, as a message; "" if it is.
// yaml-cpp silently accepts invalid UTF-8 and stray control bytes, and a
// binary file then fails with a confusing syntax error or, worse, parses.
std::string TextProblem(std::string_view data) {
  // A zero byte anywhere marks a binary file (or UTF-16), whatever comes
  // before it.
  if (size_t zero = data.find('\0'); zero != std::string_view::npos) {
    return fmt::format(
        "is a binary file (a zero byte at offset {}), not YAML text; check "
        "the path",
        zero);
  }
  size_t line = 1;
  size_t i = 0;
  while (i < data.size()) {
    auto c = static_cast<unsigned char>(data[i]);
    if (c == '\n') ++line;
    if (c < 0x80) {
      if (c < 0x20 && c != '\n' && c != '\r' && c != '\t') {
        return fmt::format(
            "line {}: control character 0x{:02x}; a config file is plain "
            "text (is this the right file?)",
            line, c);
      }
      ++i;
      continue;
    }
    size_t length = Utf8SequenceLength(data, i);
    if (length == 0) {
      return fmt::format(
          "line {}: byte 0x{:02x} is not valid UTF-8; save the file as "
          "UTF-8 text (is this the right file?)",
          line, c);
    }
    i += length;
  }
  return "";
}

// Reads at most `max` + 1 bytes of `fd` into `data` (so an oversized file is
// detected without reading all of it) and closes it. Returns 0 or errno.
int ReadBounded(int fd, size_t max, std::string* data) {
  char buffer[16384];
  int error = 0;
  while (data->size() <= max) {
    ssize_t n = read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      error = errno;
      break;
    }
    if (n == 0) break;
    data->append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  return error;
}

bool ReadConfigFile(const std::string& path, std::string* data,
                    std::string* problem) {
  auto cannot_read = [&](int error) {
    *problem = fmt::format(
        "cannot read the config file: {}; pass --config FILE or set {} to "
        "the config's path",
        std::strerror(error), kConfigVariable);
    return false;
  };
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return cannot_read(errno);
  if (int error = ReadBounded(fd, kMaxFileSize, data)) {
    return cannot_read(error);
  }
  if (data->size() > kMaxFileSize) {
    *problem = fmt::format(
        "is larger than {} KiB; a config file is a few dozen lines (is this "
        "the right file?)",
        kMaxFileSize / 1024);
    return false;
  }
  return true;
}

// A secret file: only a regular file (opened without blocking, so a FIFO
// planted at the path cannot stall the start), of at most
// kMaxSecretFileSize bytes. Symbolic links are followed: Kubernetes mounts
// secrets as links into a ..data directory. `problem` completes a sentence
// that starts with the path.
bool ReadSecretFile(const std::string& path, std::string* data,
                    std::string* problem) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    *problem = fmt::format("cannot be read: {}", std::strerror(errno));
    return false;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    *problem = "is not a regular file";
    return false;
  }
  if (int error = ReadBounded(fd, kMaxSecretFileSize, data)) {
    *problem = fmt::format("cannot be read: {}", std::strerror(error));
    return false;
  }
  if (data->size() > kMaxSecretFileSize) {
    *problem = fmt::format(
        "is larger than {} KiB, too large for a "
        "connection string",
        kMaxSecretFileSize / 1024);
    return false;
  }
  return true;
}

std::string NodeKind(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Scalar:
      return "the string " + Quote(node.Scalar());
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return "empty";
  }
  return "unknown";
}

// One key of a mapping: the key node (for its line) and its value.
struct Entry {
  YAML::Node key;
  YAML::Node value;
};

// The keys of one section; absent keys are simply not in the map.
using Entries = std::map<std::string, Entry, std::less<>>;

// yaml-cpp 0.7's LoadAll never returns on some invalid input, such as a
// file that starts with ",": the parser does not consume the token it cannot
// place, so it yields the same empty document at the same position forever,
// allocating as it goes (yaml-cpp issue 1040; found by config_fuzz). This
// walks the documents first without building them, and throws the parse
// error LoadAll should have thrown when a document makes no progress.
class DocumentWalker : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark&) override {
    events_ = 0;
    only_null_ = true;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& mark, YAML::anchor_t) override {
    if (events_++ == 0) first_ = mark;
  }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override {
    Content(mark);
  }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                const std::string&) override {
    Content(mark);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&,
                       YAML::anchor_t, YAML::EmitterStyle::value) override {
    Content(mark);
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {
    Content(mark);
  }
  void OnMapEnd() override {}

  // A document that is a lone null at the position of the previous one:
  // the parser is stuck.
  bool Stuck() {
    bool stuck = only_null_ && events_ == 1 && have_previous_ &&
                 first_.pos == previous_.pos;
    previous_ = first_;
    have_previous_ = events_ > 0;
    return stuck;
  }
  const YAML::Mark& mark() const { return first_; }

 private:
  void Content(const YAML::Mark& mark) {
    if (events_++ == 0) first_ = mark;
    only_null_ = false;
  }

  int events_ = 0;
  bool only_null_ = true;
  YAML::Mark first_ = YAML::Mark::null_mark();
  YAML::Mark previous_ = YAML::Mark::null_mark();
  bool have_previous_ = false;
};

void CheckDocumentsEnd(const std::string& data) {
  std::istringstream in(data);
  YAML::Parser parser(in);
  DocumentWalker walker;
  while (parser.HandleNextDocument(walker)) {
    if (walker.Stuck()) {
      throw YAML::ParserException(walker.mark(),
                                  "unexpected character where a value or "
                                  "key should start");
    }
  }
}

class ConfigReader {
 public:
  ConfigReader(const std::string& path, const Environment& env, ConfigUser user,
               std::vector<std::string>* errors)
      : path_(path), env_(env), user_(user), errors_(errors) {}

  bool Read(Config* out) {
    size_t errors_before = errors_->size();
    Config config;
    config.path = path_;
    ReadFile(&config);
    if (errors_->size() != errors_before) return false;
    *out = std::move(config);
    return true;
  }

 private:
  void ReadFile(Config* config) {
    std::string data;
    std::string problem;
    if (!ReadConfigFile(path_, &data, &problem)) {
      FileError(problem);
      return;
    }
    problem = TextProblem(data);
    if (!problem.empty()) {
      FileError(problem);
      return;
    }
    std::vector<YAML::Node> documents;
    try {
      CheckDocumentsEnd(data);
      documents = YAML::LoadAll(data);
    } catch (const YAML::Exception& e) {
      std::string what = e.msg;
      // yaml-cpp's words for input that ends inside a construct.
      if (what == "bad file") {
        what =
            "the file ends inside an unclosed [, {, or quote, or nests too "
            "deep";
      }
      Error(e.mark, fmt::format("YAML syntax error at column {}: {}; fix "
                                "the YAML syntax",
                                e.mark.column + 1, what));
      return;
    }
    if (documents.empty() || documents[0].IsNull()) {
      FileError(
          "is empty; it needs at least source.address and database.url (see "
          "deploy/boxmeter.example.yaml)");
      return;
    }
    if (documents.size() > 1) {
      Error(documents[1].Mark(),
            fmt::format("holds {} YAML documents (separated by ---); write "
                        "one",
                        documents.size()));
      return;
    }
    const YAML::Node& root = documents[0];
    if (!root.IsMap()) {
      Error(root.Mark(),
            fmt::format("the top level is {}; expected a mapping of keys "
                        "such as source: and database:",
                        NodeKind(root)));
      return;
    }
    ReadRoot(root, config);
  }

  void ReadRoot(const YAML::Node& root, Config* config) {
    Entries top = Keys(root, "",
                       {"node", "source", "database", "poll", "log",
                        "generator", "hooks", "history", "control", "metrics"});

    ReadNode(top, config);

    Entries source =
        Section(top, "source", {"address", "timeout", "max_message_size"});
    if (auto* e = Find(source, "address")) {
      ReadAddress(*e, &config->source.address);
    } else {
      Missing(top, "source", "source.address",
              "set it to sing-box's experimental.v2ray_api.listen address, "
              "like 127.0.0.1:8080");
    }
    ReadDuration(source, "source.timeout", milliseconds(1),
                 &config->source.timeout);
    ReadByteSize(source, "source.max_message_size",
                 &config->source.max_message_size);

    // boxmeter-gen reads the collector's login only when it has none of
    // its own; the collector never reads boxmeter-gen's file.
    bool as_generator = user_ == ConfigUser::kGenerator;
    bool use_database =
        !as_generator || !AnyUrlSet(top, "generator", kGeneratorUrl);
    Entries database = Section(top, "database", {"url", "url_file"});
    if (!ReadUrl(database, kDatabaseUrl, use_database, &config->database.url,
                 &config->database.url_file) &&
        use_database) {
      Missing(top, "database", "database.url",
              fmt::format("set it to {}, or set database.url_file to a file "
                          "holding it, or set {} or {} in the environment",
                          kUrlExpected, kDatabaseUrl.variable,
                          kDatabaseUrl.file_variable));
    }

    Entries poll = Section(top, "poll", {"interval"});
    ReadDuration(poll, "poll.interval", kMinPollInterval,
                 &config->poll.interval);

    Entries log = Section(top, "log", {"level"});
    if (auto* e = Find(log, "level")) {
      if (auto text = String(*e, "log.level", "debug, info, warn or error")) {
        if (auto level = ParseLogLevel(*text)) {
          config->log.level = *level;
        } else {
          Error(e->key, fmt::format("log.level: {} is not a log level; write "
                                    "debug, info, warn or error",
                                    Quote(*text)));
        }
      }
    }

    Entries generator = Section(top, "generator",
                                {"template", "output", "stats_outbounds",
                                 "database_url", "database_url_file"});
    ReadUrl(generator, kGeneratorUrl, as_generator,
            &config->generator.database_url,
            &config->generator.database_url_file);
    ReadPath(generator, "generator.template",
             "the path of sing-box's base config template",
             &config->generator.template_path);
    ReadPath(generator, "generator.output",
             "the path to write sing-box's config to",
             &config->generator.output);
    ReadOutbounds(generator, &config->generator.stats_outbounds);

    Entries hooks =
        Section(top, "hooks", {"on_users_changed", "on_event", "timeout"});
    ReadCommand(hooks, "hooks.on_users_changed",
                &config->hooks.on_users_changed);
    ReadCommand(hooks, "hooks.on_event", &config->hooks.on_event);
    ReadDuration(hooks, "hooks.timeout", milliseconds(1),
                 &config->hooks.timeout);

    Entries history = Section(top, "history", {"retention"});
    ReadRetention(history, &config->history.retention);

    Entries control = Section(top, "control", {"socket"});
    ReadPath(control, "control.socket",
             "the path of the collector's control socket (--flush)",
             &config->control.socket);

    Entries metrics = Section(top, "metrics", {"listen", "per_user"});
    if (const Entry* e = Find(metrics, "listen")) {
      ReadListen(*e, &config->metrics.listen);
    }
    if (const Entry* e = Find(metrics, "per_user")) {
      ReadBool(*e, "metrics.per_user", &config->metrics.per_user);
    }
  }

  // --- Sections and keys -------------------------------------------------

  // The keys of `map`, reporting duplicate keys, keys that are not plain
  // names, and unknown keys (with the known ones, and a guess at the
  // intended one).
  Entries Keys(const YAML::Node& map, std::string_view section,
               std::vector<std::string_view> known) {
    Entries entries;
    std::string prefix = section.empty() ? "" : std::string(section) + ".";
    for (auto it = map.begin(); it != map.end(); ++it) {
      YAML::Node key = it->first;  // a copy: `it->` yields a temporary
      if (!key.IsScalar()) {
        Error(key, fmt::format("{}: a key is {}; keys are plain names: {}",
                               section.empty() ? "top level" : section,
                               NodeKind(key), Join(known)));
        continue;
      }
      const std::string& name = key.Scalar();
      std::string full = prefix + name;
      if (std::find(known.begin(), known.end(), name) == known.end()) {
        std::string guess;
        for (std::string_view candidate : known) {
          if (EditDistance(name, candidate) <= 2) {
            guess = fmt::format(" (did you mean {}{}?)", prefix, candidate);
            break;
          }
        }
        Error(key,
              fmt::format("{}: unknown key{}; the known keys {} are: {}",
                          PlainOrQuoted(full), guess,
                          section.empty() ? std::string("at the top level")
                                          : "under " + std::string(section),
                          Join(known)));
        continue;
      }
      auto [existing, inserted] = entries.emplace(name, Entry{key, it->second});
      if (!inserted) {
        Error(key, fmt::format("{}: set twice (first on line {}); keep one",
                               full, Line(existing->second.key.Mark())));
      }
    }
    return entries;
  }

  // A section such as `source:`. Absent or empty: no keys (defaults apply).
  Entries Section(const Entries& top, std::string_view name,
                  std::vector<std::string_view> known) {
    const Entry* e = Find(top, name);
    if (!e || e->value.IsNull()) return {};
    if (!e->value.IsMap()) {
      Error(e->key, fmt::format("{}: is {}; expected a mapping with the keys "
                                "{}",
                                name, NodeKind(e->value), Join(known)));
      return {};
    }
    return Keys(e->value, name, known);
  }

  static const Entry* Find(const Entries& entries, std::string_view name) {
    auto it = entries.find(name);
    return it == entries.end() ? nullptr : &it->second;
  }

  // A scalar value as a string, or an error naming what was expected.
  std::optional<std::string> String(const Entry& e, std::string_view key,
                                    std::string_view expected) {
    if (e.value.IsScalar()) return e.value.Scalar();
    if (e.value.IsNull()) {
      Error(e.key, fmt::format("{}: has no value; expected {}", key, expected));
    } else {
      Error(e.key, fmt::format("{}: is {}; expected {}", key, NodeKind(e.value),
                               expected));
    }
    return std::nullopt;
  }

  // A string that names something (a node, a path, an outbound tag): not
  // empty and without control characters.
  std::optional<std::string> Name(const Entry& e, std::string_view key,
                                  std::string_view expected) {
    auto text = String(e, key, expected);
    if (!text) return std::nullopt;
    if (text->empty() || HasControlCharacter(*text)) {
      Error(e.key, fmt::format("{}: {} is {}; expected {}", key, Quote(*text),
                               text->empty() ? "empty" : "not a plain string",
                               expected));
      return std::nullopt;
    }
    return text;
  }

  void Missing(const Entries& top, std::string_view section,
               std::string_view key, std::string_view what_to_do) {
    if (const Entry* e = Find(top, section)) {
      // A section that is not a mapping has been reported already.
      if (!e->value.IsMap() && !e->value.IsNull()) return;
      Error(e->key, fmt::format("{}: missing; {}", key, what_to_do));
    } else {
      FileError(fmt::format("{}: missing; {}", key, what_to_do));
    }
  }

  // --- Values ------------------------------------------------------------

  void ReadNode(const Entries& top, Config* config) {
    if (const Entry* e = Find(top, "node")) {
      if (auto name = Name(*e, "node",
                           "this node's name, or remove the key to use "
                           "the host name")) {
        config->node = *name;
      }
      return;
    }
    char host[256] = {};
    if (gethostname(host, sizeof host - 1) != 0) {
      FileError(fmt::format(
          "node: not set, and the host name cannot be read ({}); set node",
          std::strerror(errno)));
      return;
    }
    config->node = host;
    if (config->node.empty()) {
      FileError("node: not set, and the host name is empty; set node");
    }
  }

  // host:port, where host is a name, an IPv4 address or a bracketed IPv6
  // address: the forms gRPC's default resolver takes.
  void ReadAddress(const Entry& e, std::string* out) {
    constexpr std::string_view kExpected =
        "host:port, like 127.0.0.1:8080, [::1]:8080 or localhost:8080";
    auto text = String(e, "source.address", kExpected);
    if (!text) return;
    auto bad = [&](std::string_view why) {
      Error(e.key, fmt::format("source.address: {} {}; write {}", Quote(*text),
                               why, kExpected));
    };
    std::string_view address = *text;
    std::string_view host;
    std::string_view port;
    if (address.starts_with('[')) {
      size_t close = address.find(']');
      if (close == std::string_view::npos) return bad("has no closing ]");
      host = address.substr(1, close - 1);
      if (close + 1 >= address.size() || address[close + 1] != ':') {
        return bad("has no :port after the IPv6 address");
      }
      port = address.substr(close + 2);
      bool ipv6 = !host.empty() && host.find(':') != std::string_view::npos &&
                  std::all_of(host.begin(), host.end(), [](char c) {
                    return std::isxdigit(static_cast<unsigned char>(c)) ||
                           c == ':' || c == '.';
                  });
      if (!ipv6) return bad("does not hold an IPv6 address between [ and ]");
    } else {
      if (address.find("://") != std::string_view::npos) {
        return bad("has a URL scheme; gRPC wants only host:port");
      }
      size_t colon = address.rfind(':');
      if (colon == std::string_view::npos) return bad("has no :port");
      host = address.substr(0, colon);
      port = address.substr(colon + 1);
      if (host.find(':') != std::string_view::npos) {
        return bad("looks like an IPv6 address without brackets");
      }
      if (host.empty()) return bad("has no host before the :port");
      bool plain = std::all_of(host.begin(), host.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '.' ||
               c == '-' || c == '_';
      });
      if (!plain) return bad("has characters that cannot be in a host name");
    }
    if (std::string_view problem = PortProblem(port); !problem.empty()) {
      return bad(problem);
    }
    *out = *text;
  }

  // What is wrong with the port after an address's host, or "" when it is
  // a number in 1..65535.
  static std::string_view PortProblem(std::string_view port) {
    bool digits = !port.empty() && port.size() <= 5 &&
                  std::all_of(port.begin(), port.end(),
                              [](char c) { return c >= '0' && c <= '9'; });
    if (!digits) return "does not end in a port number";
    int number = std::stoi(std::string(port));
    if (number < 1 || number > 65535) return "has a port outside 1..65535";
    return "";
  }

  // metrics.listen: an IP address (IPv6 in brackets) and a port; "" or
  // null turns the endpoint off. No host names: what a name resolves to
  // can change, and an endpoint meant for loopback must not end up public.
  void ReadListen(const Entry& e, std::string* out) {
    constexpr std::string_view kExpected =
        "IP:PORT, like 127.0.0.1:9464 or [::1]:9464, or \"\" for no "
        "endpoint";
    if (e.value.IsNull()) return;
    auto text = String(e, "metrics.listen", kExpected);
    if (!text || text->empty()) return;
    auto bad = [&](std::string_view why) {
      Error(e.key, fmt::format("metrics.listen: {} {}; write {}", Quote(*text),
                               why, kExpected));
    };
    std::string_view listen = *text;
    std::string host;
    std::string_view port;
    bool ok_host = false;
    if (listen.starts_with('[')) {
      size_t close = listen.find("]:");
      if (close == std::string_view::npos) return bad("has no ]:PORT");
      host = std::string(listen.substr(1, close - 1));
      port = listen.substr(close + 2);
      struct in6_addr v6;
      ok_host = inet_pton(AF_INET6, host.c_str(), &v6) == 1;
    } else {
      size_t colon = listen.rfind(':');
      if (colon == std::string_view::npos) return bad("has no :PORT");
      host = std::string(listen.substr(0, colon));
      port = listen.substr(colon + 1);
      if (host.find(':') != std::string::npos) {
        return bad("looks like an IPv6 address without brackets");
      }
      unsigned char v4[4];
      ok_host = inet_pton(AF_INET, host.c_str(), v4) == 1;
    }
    if (!ok_host) {
      return bad(
          "does not start with an IP address (host names are not "
          "taken)");
    }
    if (std::string_view problem = PortProblem(port); !problem.empty()) {
      return bad(problem);
    }
    *out = *text;
  }

  // true or false (YAML's spellings of them, any case).
  void ReadBool(const Entry& e, std::string_view key, bool* out) {
    auto text = String(e, key, "true or false");
    if (!text) return;
    std::string lower = *text;
    for (char& c : lower) c = std::tolower(static_cast<unsigned char>(c));
    if (lower == "true") {
      *out = true;
    } else if (lower == "false") {
      *out = false;
    } else {
      Error(e.key, fmt::format("{}: {} is not a boolean; write true or false",
                               key, Quote(*text)));
    }
  }

  // Stores the duration only if it is valid, so the default stays otherwise.
  void ReadDuration(const Entries& section, std::string_view key,
                    milliseconds minimum, milliseconds* out) {
    const Entry* e = Find(section, key.substr(key.find('.') + 1));
    if (!e) return;
    auto text = String(*e, key, "a duration like 500ms, 10s or 5m");
    if (!text) return;
    milliseconds value{};
    switch (ParseDurationChecked(*text, &value)) {
      case DurationProblem::kNone:
        break;
      case DurationProblem::kSyntax:
        Error(e->key, fmt::format("{}: {} is not a duration; {}", key,
                                  Quote(*text), kDurationHint));
        return;
      case DurationProblem::kZero:
        Error(e->key, fmt::format("{}: {} is zero; write a positive duration, "
                                  "like 500ms, 10s or 5m",
                                  key, Quote(*text)));
        return;
      case DurationProblem::kTooLong:
        Error(e->key, fmt::format("{}: {} is too long; write at most 36500d "
                                  "(100 years)",
                                  key, Quote(*text)));
        return;
    }
    if (value < minimum) {
      Error(e->key, fmt::format("{}: {} is too short; write at least {}", key,
                                Quote(*text), FormatDuration(minimum)));
      return;
    }
    *out = value;
  }

  void ReadByteSize(const Entries& section, std::string_view key,
                    int64_t* out) {
    const Entry* e = Find(section, "max_message_size");
    if (!e) return;
    constexpr std::string_view kExpected =
        "a number of bytes, optionally with KiB, MiB or GiB, like 268435456 "
        "or 256MiB";
    auto text = String(*e, key, kExpected);
    if (!text) return;
    std::optional<int64_t> size = ParseByteSize(*text);
    if (!size || *size == 0) {
      Error(e->key, fmt::format("{}: {} is not a positive size; write {}", key,
                                Quote(*text), kExpected));
    } else if (*size > kMaxMessageSize) {
      Error(e->key, fmt::format("{}: {} is larger than gRPC allows; write at "
                                "most {} (just under 2GiB)",
                                key, Quote(*text), kMaxMessageSize));
    } else {
      *out = *size;
    }
  }

  // Where one login's connection string may come from, first to last: an
  // environment variable, a file named by an environment variable, a key
  // holding the string or a key naming a file (not both). An empty variable
  // counts as unset: `BOXMETER_DATABASE_URL=` in a unit or compose file should
  // not silently replace the file's URL with nothing.
  struct UrlSources {
    std::string_view url_key;   // "database.url"
    std::string_view file_key;  // "database.url_file"
    std::string_view variable;
    std::string_view file_variable;
  };

  static constexpr UrlSources kDatabaseUrl{"database.url", "database.url_file",
                                           kDatabaseUrlVariable,
                                           "BOXMETER_DATABASE_URL_FILE"};
  static constexpr UrlSources kGeneratorUrl{
      "generator.database_url", "generator.database_url_file",
      kGeneratorDatabaseUrlVariable, "BOXMETER_GENERATOR_DATABASE_URL_FILE"};

  static constexpr std::string_view kUrlExpected =
      "a PostgreSQL URL like postgresql://boxmeter@localhost/boxmeter, or "
      "key=value pairs like \"host=localhost dbname=boxmeter\"";

  std::string Variable(std::string_view name) const {
    auto it = env_.find(std::string(name));
    return it == env_.end() ? "" : it->second;
  }

  bool AnyUrlSet(const Entries& top, std::string_view section,
                 const UrlSources& sources) const {
    if (!Variable(sources.variable).empty() ||
        !Variable(sources.file_variable).empty()) {
      return true;
    }
    const Entry* e = Find(top, section);
    if (!e || !e->value.IsMap()) return false;
    auto key = [](std::string_view full) {
      return std::string(full.substr(full.find('.') + 1));
    };
    return e->value[key(sources.url_key)] || e->value[key(sources.file_key)];
  }

  // Resolves one login into `url` and `file` (the file it came from). With
  // `read_files` false a URL file is only named, not read: it belongs to the
  // other binary. Returns whether any source is set. The keys' values are
  // checked even when a variable overrides them: --check-config should catch
  // a broken file before the variable goes.
  bool ReadUrl(const Entries& section, const UrlSources& sources,
               bool read_files, std::string* url, std::string* file) {
    auto name = [](std::string_view full) {
      return full.substr(full.find('.') + 1);
    };
    const Entry* url_entry = Find(section, name(sources.url_key));
    const Entry* file_entry = Find(section, name(sources.file_key));
    std::optional<std::string> inline_url;
    if (url_entry) {
      inline_url = String(*url_entry, sources.url_key, kUrlExpected);
      if (inline_url && !LooksLikeConnectionString(*inline_url)) {
        Error(url_entry->key,
              fmt::format("{}: {} is not a PostgreSQL connection string; "
                          "write {}",
                          sources.url_key, Quote(*inline_url), kUrlExpected));
        inline_url.reset();
      }
    }
    std::optional<std::string> path;
    if (file_entry) {
      path = Name(*file_entry, sources.file_key,
                  "the path of a file holding the connection string");
    }
    if (url_entry && file_entry) {
      Error(file_entry->key,
            fmt::format("{}: set together with {} (line {}); keep one",
                        sources.file_key, sources.url_key,
                        Line(url_entry->key.Mark())));
    }
    if (std::string value = Variable(sources.variable); !value.empty()) {
      if (!LooksLikeConnectionString(value)) {
        errors_->push_back(
            fmt::format("{} (environment): {} is not a PostgreSQL connection "
                        "string; set it to {}",
                        sources.variable, Quote(value), kUrlExpected));
      }
      *url = value;
      return true;
    }
    if (std::string value = Variable(sources.file_variable); !value.empty()) {
      if (read_files) {
        std::string where =
            fmt::format("{} (environment)", sources.file_variable);
        ReadUrlFile(
            value,
            [&](std::string message) {
              errors_->push_back(fmt::format("{}: {}", where, message));
            },
            url, file);
      }
      return true;
    }
    if (url_entry) {
      if (inline_url) *url = *inline_url;
      return true;
    }
    if (!file_entry) return false;
    if (path && read_files) {
      ReadUrlFile(
          *path,
          [&](std::string message) {
            Error(file_entry->key,
                  fmt::format("{}: {}", sources.file_key, message));
          },
          url, file);
    }
    return true;
  }

  // Reads the connection string in the file at `path` (inside
  // $CREDENTIALS_DIRECTORY when relative). Never quotes the content: a file
  // meant to hold a URL may hold a bare password.
  template <typename Report>
  void ReadUrlFile(const std::string& path, Report report, std::string* url,
                   std::string* file) {
    constexpr std::string_view kWhatToDo =
        "put one connection string in it, like "
        "postgresql://boxmeter:PASSWORD@localhost/boxmeter, readable only by "
        "the user that runs this program";
    std::string resolved = path;
    if (!path.starts_with('/')) {
      std::string credentials = Variable(kCredentialsVariable);
      if (credentials.empty()) {
        report(fmt::format(
            "{} is a relative path and ${} is not set; write an absolute "
            "path, or pass the file as a systemd credential "
            "(LoadCredential={}:/etc/boxmeter/...)",
            Quote(path), kCredentialsVariable, path));
        return;
      }
      resolved = credentials + "/" + path;
    }
    std::string data;
    std::string problem;
    if (!ReadSecretFile(resolved, &data, &problem)) {
      report(fmt::format("{} {}; {}", Quote(resolved), problem, kWhatToDo));
      return;
    }
    while (!data.empty() && (data.back() == '\n' || data.back() == '\r')) {
      data.pop_back();
    }
    if (data.empty()) {
      report(fmt::format("{} is empty; {}", Quote(resolved), kWhatToDo));
      return;
    }
    if (HasControlCharacter(data) || !LooksLikeConnectionString(data)) {
      report(fmt::format(
          "{} does not hold a PostgreSQL connection string on one line (its "
          "content is not shown: it may hold a password); {}",
          Quote(resolved), kWhatToDo));
      return;
    }
    *url = std::move(data);
    *file = resolved;
  }

  // libpq takes a URL or key=value pairs; anything else (a bare host name,
  // "localhost/boxmeter") fails at connect time with a less helpful error.
  static bool LooksLikeConnectionString(std::string_view text) {
    return text.starts_with("postgresql://") ||
           text.starts_with("postgres://") ||
           text.find('=') != std::string_view::npos;
  }

  void ReadPath(const Entries& section, std::string_view key,
                std::string_view what, std::string* out) {
    const Entry* e = Find(section, key.substr(key.find('.') + 1));
    if (!e) return;
    if (auto path = Name(*e, key, what)) *out = *path;
  }

  // A hook's shell command. It may span lines (a YAML block scalar), and
  // null means "no hook", the same as "".
  void ReadCommand(const Entries& hooks, std::string_view key,
                   std::string* out) {
    const Entry* e = Find(hooks, key.substr(key.find('.') + 1));
    if (!e || e->value.IsNull()) return;
    if (auto text = String(*e, key, "a shell command, or \"\" for none")) {
      *out = *text;
    }
  }

  void ReadOutbounds(const Entries& generator, std::vector<std::string>* out) {
    const Entry* e = Find(generator, "stats_outbounds");
    if (!e) return;
    constexpr std::string_view kExpected =
        "a list of outbound tags, like [direct], or [] for none";
    if (!e->value.IsSequence()) {
      Error(e->key, fmt::format("generator.stats_outbounds: is {}; expected {}",
                                NodeKind(e->value), kExpected));
      return;
    }
    std::vector<std::string> tags;
    bool ok = true;
    for (size_t i = 0; i < e->value.size(); ++i) {
      Entry item{e->value[i], e->value[i]};
      auto tag = Name(item, fmt::format("generator.stats_outbounds[{}]", i),
                      "an outbound tag");
      if (tag) {
        tags.push_back(*tag);
      } else {
        ok = false;
      }
    }
    if (ok) *out = std::move(tags);
  }

  void ReadRetention(const Entries& history, std::chrono::hours* out) {
    if (!Find(history, "retention")) return;
    milliseconds value{-1};
    ReadDuration(history, "history.retention", std::chrono::hours(1), &value);
    if (value.count() < 0) return;  // already reported
    if (value % std::chrono::hours(1) != milliseconds(0)) {
      Error(Find(history, "retention")->key,
            "history.retention: is not a whole number of hours; write it in "
            "h or d, like 36h or 400d");
      return;
    }
    *out = std::chrono::duration_cast<std::chrono::hours>(value);
  }

  // --- Messages ----------------------------------------------------------

  static int Line(const YAML::Mark& mark) { return mark.line + 1; }

  void Error(const YAML::Node& node, std::string message) {
    Error(node.Mark(), std::move(message));
  }

  void Error(const YAML::Mark& mark, std::string message) {
    if (mark.is_null()) return FileError(std::move(message));
    errors_->push_back(fmt::format("{}:{}: {}", path_, Line(mark), message));
  }

  void FileError(std::string message) {
    errors_->push_back(fmt::format("{}: {}", path_, message));
  }

  const std::string& path_;
  const Environment& env_;
  ConfigUser user_;
  std::vector<std::string>* errors_;
};

// The length of a password value in key=value form starting at `begin`:
// a quoted value runs to its closing quote, a bare one to the next unescaped
// space (libpq honours backslash escapes in both), or in a URL's query to the
// next & or #.
size_t ValueLength(std::string_view text, size_t begin, bool in_url) {
  if (begin >= text.size()) return 0;
  char quote = text[begin];
  if (!in_url && (quote == '\'' || quote == '"')) {
    size_t i = begin + 1;
    while (i < text.size() && text[i] != quote) i += text[i] == '\\' ? 2 : 1;
    return std::min(i + 1, text.size()) - begin;
  }
  size_t i = begin;
  while (i < text.size()) {
    char c = text[i];
    if (in_url ? (c == '&' || c == '#')
               : std::isspace(static_cast<unsigned char>(c))) {
      break;
    }
    i += !in_url && c == '\\' ? 2 : 1;
  }
  return std::min(i, text.size()) - begin;
}

// Redacts `password=…` and `sslpassword=…` (libpq's secret keywords) in
// key=value strings and in a URL's query parameters. One pass from left to
// right that resumes after each redacted value, so that text inside a value
// (a quoted password holding " sslpassword=x") is never taken for a key.
void RedactPasswordParameters(std::string* text, bool in_url) {
  // The length of the secret keyword starting at `at` after a separator, or
  // 0. "sslpassword" first: its "password" has no separator before it.
  auto keyword_at = [text](size_t at) -> size_t {
    char before = at == 0 ? ' ' : (*text)[at - 1];
    if (!std::isspace(static_cast<unsigned char>(before)) && before != '?' &&
        before != '&') {
      return 0;
    }
    for (std::string_view keyword : {"sslpassword", "password"}) {
      if (text->size() - at >= keyword.size() &&
          std::equal(keyword.begin(), keyword.end(), text->begin() + at,
                     [](char k, char c) {
                       return k == std::tolower(static_cast<unsigned char>(c));
                     })) {
        return keyword.size();
      }
    }
    return 0;
  };
  auto skip_spaces = [&](size_t i) {
    // libpq allows spaces around '=' in key=value strings.
    while (!in_url && i < text->size() &&
           std::isspace(static_cast<unsigned char>((*text)[i]))) {
      ++i;
    }
    return i;
  };
  for (size_t at = 0; at < text->size(); ++at) {
    size_t length = keyword_at(at);
    if (length == 0) continue;
    size_t i = skip_spaces(at + length);
    if (i >= text->size() || (*text)[i] != '=') continue;
    i = skip_spaces(i + 1);
    text->replace(i, ValueLength(*text, i, in_url), "***");
    at = i + 2;  // past the "***"
  }
}

// A URL's query parameters whose keyword libpq decodes to a secret one:
// `?pass%77ord=...` is a password too. A value runs to the next '&' (libpq
// splits on nothing else).
void RedactEncodedQueryPasswords(std::string* url) {
  size_t query = url->find('?');
  if (query == std::string::npos) return;
  size_t begin = query + 1;
  while (begin <= url->size()) {
    size_t end = url->find('&', begin);
    if (end == std::string::npos) end = url->size();
    size_t equals = url->find('=', begin);
    if (equals < end) {
      std::string keyword =
          PercentDecoded(std::string_view(*url).substr(begin, equals - begin));
      for (char& c : keyword) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      }
      if (keyword == "password" || keyword == "sslpassword") {
        url->replace(equals + 1, end - equals - 1, "***");
        end = equals + 4;
      }
    }
    begin = end + 1;
  }
}

}  // namespace

Environment ProcessEnvironment() {
  Environment env;
  for (char** entry = environ; entry && *entry; ++entry) {
    std::string_view text(*entry);
    size_t equals = text.find('=');
    if (equals == std::string_view::npos) continue;
    env.emplace(std::string(text.substr(0, equals)),
                std::string(text.substr(equals + 1)));
  }
  return env;
}

std::optional<milliseconds> ParseDuration(std::string_view text) {
  milliseconds value{};
  if (ParseDurationChecked(text, &value) != DurationProblem::kNone) {
    return std::nullopt;
  }
  return value;
}

std::string ConfigPath(const std::optional<std::string>& flag,
                       const Environment& env) {
  if (flag) return *flag;
  auto it = env.find(std::string(kConfigVariable));
  if (it != env.end() && !it->second.empty()) return it->second;
  return kDefaultConfigPath;
}

bool LoadConfig(const std::string& path, const Environment& env, Config* out,
                std::vector<std::string>* errors, ConfigUser user) {
  std::vector<std::string> local_errors;
  if (!errors) errors = &local_errors;
  // The reader catches yaml-cpp's parse errors itself; this is the last line
  // for anything unforeseen (an accessor throwing, bad_alloc).
  try {
    return ConfigReader(path, env, user, errors).Read(out);
  } catch (const std::exception& e) {
    errors->push_back(
        fmt::format("{}: could not read the config ({}); check the file's YAML",
                    path, e.what()));
  } catch (...) {
    errors->push_back(fmt::format(
        "{}: could not read the config; check the file's YAML", path));
  }
  return false;
}

const std::string& GeneratorDatabaseUrl(const Config& config) {
  return config.generator.database_url.empty() ? config.database.url
                                               : config.generator.database_url;
}

std::string RedactUrl(std::string_view url) {
  std::string out(url);
  size_t scheme_end = out.find("://");
  bool is_url = scheme_end != std::string::npos && scheme_end > 0 &&
                std::all_of(out.begin(), out.begin() + scheme_end, [](char c) {
                  return std::isalnum(static_cast<unsigned char>(c)) ||
                         c == '+' || c == '-' || c == '.';
                });
  if (is_url) {
    size_t start = scheme_end + 3;
    // The user info ends at the last '@' before the path. A password with an
    // unescaped '/', '?' or '#' moves that boundary, so fall back to the
    // last '@' anywhere: hiding too much beats leaking a password.
    size_t authority_end = out.find_first_of("/?#", start);
    if (authority_end == std::string::npos) authority_end = out.size();
    size_t at = out.rfind('@', authority_end == 0 ? 0 : authority_end - 1);
    if (at == std::string::npos || at < start || at >= authority_end) {
      at = out.rfind('@');
    }
    if (at != std::string::npos && at >= start) {
      size_t colon = out.find(':', start);
      if (colon < at) out.replace(colon + 1, at - colon - 1, "***");
    }
  } else if (out.find('@') != std::string::npos &&
             out.find('=') == std::string::npos) {
    // Not a well-formed URL, but maybe a mistyped one ("postgres:/u:pw@h",
    // "u:pw@h"): hide everything from the first ':' to the last '@'.
    size_t at = out.rfind('@');
    size_t colon = out.find(':');
    if (colon < at) out.replace(colon + 1, at - colon - 1, "***");
  }
  // URLs inside a longer text (a multi-line YAML scalar quoted back in an
  // error): hide the password of each "scheme://user:password@", which
  // cannot contain a raw space, up to the next one.
  for (size_t pos = out.find("://", is_url ? scheme_end + 3 : 0);
       pos != std::string::npos; pos = out.find("://", pos + 3)) {
    size_t start = pos + 3;
    size_t end = out.find_first_of(" \t\r\n", start);
    if (end == std::string::npos) end = out.size();
    size_t at = end > start ? out.rfind('@', end - 1) : std::string::npos;
    if (at == std::string::npos || at < start) continue;
    size_t colon = out.find(':', start);
    if (colon < at) out.replace(colon + 1, at - colon - 1, "***");
  }
  RedactPasswordParameters(&out, is_url);
  if (is_url) RedactEncodedQueryPasswords(&out);
  return out;
}

// --- Warnings --------------------------------------------------------------

namespace {

// Who besides the owner can read `path`: "others", "its group", or "" for
// nobody. A class can read the file if the file grants it read and every
// directory above grants it search (x): a 0644 file in a 0700 directory is
// safe. Errors (a file that vanished) count as nobody: the load just worked.
std::string ReadableBeyondOwner(const std::string& path) {
  char* resolved = realpath(path.c_str(), nullptr);
  if (!resolved) return "";
  std::string full(resolved);
  free(resolved);
  struct stat st;
  if (stat(full.c_str(), &st) != 0) return "";
  bool others = st.st_mode & S_IROTH;
  bool group = st.st_mode & S_IRGRP;
  for (size_t slash = full.rfind('/'); slash != std::string::npos && slash > 0;
       slash = full.rfind('/', slash - 1)) {
    struct stat dir;
    if (stat(full.substr(0, slash).c_str(), &dir) != 0) return "";
    others = others && (dir.st_mode & S_IXOTH);
    group = group && (dir.st_mode & S_IXGRP);
  }
  if (others) return "others";
  if (group) return "its group";
  return "";
}

// 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z), and the names that resolve
// only to those: localhost, *.localhost (RFC 6761), Debian's ip6-localhost
// and ip6-loopback.
bool IsLoopbackHost(std::string host) {
  for (char& c : host) c = std::tolower(static_cast<unsigned char>(c));
  if (!host.empty() && host.back() == '.') host.pop_back();
  if (host == "localhost" || host.ends_with(".localhost") ||
      host == "ip6-localhost" || host == "ip6-loopback") {
    return true;
  }
  unsigned char v4[4];
  if (inet_pton(AF_INET, host.c_str(), v4) == 1) return v4[0] == 127;
  struct in6_addr v6;
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    return IN6_IS_ADDR_LOOPBACK(&v6) ||
           (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127);
  }
  return false;
}

// The host of a validated source.address: "[v6]:port" or "host:port".
std::string AddressHost(std::string_view address) {
  if (address.starts_with('[')) {
    size_t close = address.find(']');
    return std::string(
        address.substr(1, close == address.npos ? address.npos : close - 1));
  }
  return std::string(address.substr(0, address.rfind(':')));
}

}  // namespace

bool IsLoopbackAddress(std::string_view address) {
  return IsLoopbackHost(AddressHost(address));
}

std::vector<std::string> ConfigWarnings(const Config& config,
                                        const Environment& env) {
  std::vector<std::string> warnings;
  // A URL read from a file or the environment is not the config file's.
  auto in_config_file = [&](std::string_view variable, const std::string& url,
                            const std::string& url_file) {
    auto from_env = env.find(std::string(variable));
    return (from_env == env.end() || from_env->second.empty()) &&
           url_file.empty() && RedactUrl(url) != url;
  };
  std::vector<std::string_view> keys;
  if (in_config_file(kDatabaseUrlVariable, config.database.url,
                     config.database.url_file)) {
    keys.push_back("database.url");
  }
  if (in_config_file(kGeneratorDatabaseUrlVariable,
                     config.generator.database_url,
                     config.generator.database_url_file)) {
    keys.push_back("generator.database_url");
  }
  std::string readers = keys.empty() || config.path.empty()
                            ? ""
                            : ReadableBeyondOwner(config.path);
  for (std::string_view key : keys) {
    if (readers.empty()) break;
    warnings.push_back(fmt::format(
        "{}: {} holds a password and the file is readable by {}; make it "
        "readable by its owner only (chmod 600 {}), or keep the password out "
        "of it: {}_file naming a file only this user can read (a systemd "
        "credential, a Docker or Kubernetes secret), ~/.pgpass or PGPASSFILE "
        "(not ${} or PGPASSWORD: the environment is easier to read)",
        config.path, key, readers, config.path, key, kDatabaseUrlVariable));
  }
  if (!config.source.address.empty() &&
      !IsLoopbackAddress(config.source.address)) {
    warnings.push_back(fmt::format(
        "{}: source.address {} is not a loopback address; sing-box's stats "
        "API has no TLS and no authentication, so whoever can reach it can "
        "read (and reset) every user's counters. Listen on 127.0.0.1 or "
        "[::1], or make sure only the collector can reach that address (a "
        "shared pod or container network namespace, a firewall)",
        config.path.empty() ? "config" : config.path,
        Quote(config.source.address)));
  }
  return warnings;
}

}  // namespace boxmeter
