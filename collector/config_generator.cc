#include "config_generator.h"

#include <fmt/core.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string_view>

#include "sing_box_rules.h"

namespace boxmeter {
namespace {

// ordered_json keeps keys in insertion order: the template's keys stay where
// the operator put them, and generated objects read "type, tag, ..." first.
using Json = nlohmann::ordered_json;

// What a type's user object is made of (docs/design.md, "sing-box user
// fields").
enum class UserShape {
  kNamePassword,      // trojan, shadowsocks, hysteria2, anytls
  kNameUuidFlow,      // vless
  kNameUuidAlterId,   // vmess
  kNameUuidPassword,  // tuic
  kNameAuthStr,       // hysteria
  kUsernamePassword,  // socks, http, mixed, naive
};

const std::map<std::string, UserShape, std::less<>>& Shapes() {
  static const auto* shapes = new std::map<std::string, UserShape, std::less<>>{
      {"anytls", UserShape::kNamePassword},
      {"http", UserShape::kUsernamePassword},
      {"hysteria", UserShape::kNameAuthStr},
      {"hysteria2", UserShape::kNamePassword},
      {"mixed", UserShape::kUsernamePassword},
      {"naive", UserShape::kUsernamePassword},
      {"shadowsocks", UserShape::kNamePassword},
      {"socks", UserShape::kUsernamePassword},
      {"trojan", UserShape::kNamePassword},
      {"tuic", UserShape::kNameUuidPassword},
      {"vless", UserShape::kNameUuidFlow},
      {"vmess", UserShape::kNameUuidAlterId},
  };
  return *shapes;
}

// The credential sing-box finds a user by on an inbound of this shape: two
// users with the same one make trojan refuse to start ("user already
// exists", transport/trojan/service.go) and the others keep only the last
// (protocol/vless, protocol/vmess, protocol/tuic: a map by uuid;
// protocol/hysteria, protocol/hysteria2, protocol/anytls and
// shadowsocks' multi-user services: a map by password), so one user's
// traffic would be counted under another's name. Empty: users are found by
// name, which is unique already (sing common/auth/auth.go).
std::string_view CredentialColumn(UserShape shape) {
  switch (shape) {
    case UserShape::kNameUuidFlow:
    case UserShape::kNameUuidAlterId:
    case UserShape::kNameUuidPassword:
      return "uuid";
    case UserShape::kNamePassword:
    case UserShape::kNameAuthStr:
      return "password";
    case UserShape::kUsernamePassword:
      return "";
  }
  return "";
}

// What sing-box would do with the inbound if it were written with no users,
// for the line that says why it is left out.
std::string_view WithoutUsers(std::string_view type) {
  if (type == "socks" || type == "http" || type == "mixed") {
    return "sing-box would accept anyone on it without authentication "
           "(sing common/auth/auth.go: no users, no authenticator)";
  }
  if (type == "naive") {
    return "sing-box would refuse to start (\"missing users\", "
           "protocol/naive/inbound.go)";
  }
  if (type == "shadowsocks") {
    return "sing-box would fall back to single-user mode on the inbound's "
           "password (protocol/shadowsocks/inbound.go)";
  }
  return "no user could connect, and nothing would be counted";
}

// Keys of an inbound that come from the row's columns or from inbound_users;
// options may not set them, or the row would say two different things.
struct ReservedKey {
  std::string_view key;
  std::string_view instead;
};
constexpr ReservedKey kReservedKeys[] = {
    {"type", "set the inbounds.type column instead"},
    {"tag", "set the inbounds.tag column instead"},
    {"listen", "set the inbounds.listen column instead"},
    {"listen_port", "set the inbounds.listen_port column instead"},
    {"users", "link users to the inbound in inbound_users instead"},
};

// 8-4-4-4-12 hex digits, as PostgreSQL's uuid type prints it.
bool IsUuid(std::string_view text) {
  if (text.size() != 36) return false;
  for (size_t i = 0; i < text.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? text[i] != '-'
             : !std::isxdigit(static_cast<unsigned char>(text[i]))) {
      return false;
    }
  }
  return true;
}

std::string Lower(std::string text) {
  for (char& c : text) c = std::tolower(static_cast<unsigned char>(c));
  return text;
}

// `text` as a PostgreSQL string literal that can be pasted into psql as it
// is: quotes doubled, and control characters (which would break the line)
// written as escapes in an E'' literal.
std::string SqlLiteral(std::string_view text) {
  bool control = std::any_of(text.begin(), text.end(), [](char c) {
    return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
  });
  std::string out = control ? "E'" : "'";
  for (char c : text) {
    unsigned char byte = static_cast<unsigned char>(c);
    if (c == '\'') {
      out += "''";
    } else if (control && c == '\\') {
      out += "\\\\";
    } else if (byte < 0x20 || byte == 0x7f) {
      out += fmt::format("\\x{:02x}", byte);
    } else {
      out += c;
    }
  }
  return out + "'";
}

// Deeper than any sing-box config needs. nlohmann's parser is iterative, but
// copying and writing a value recurse once per level (a template 100,000
// levels deep overflowed the stack) and the indented output grows with the
// square of the depth (30,000 levels: 1.8 GB), so deeper input is refused.
constexpr int kMaxJsonDepth = 100;

// Json::parse that throws std::invalid_argument past kMaxJsonDepth.
Json ParseLimited(const std::string& text) {
  return Json::parse(text, [](int depth, Json::parse_event_t, Json&) {
    if (depth > kMaxJsonDepth) {
      throw std::invalid_argument(
          fmt::format("nested deeper than {} levels", kMaxJsonDepth));
    }
    return true;
  });
}

// nlohmann's messages start with "[json.exception.parse_error.101] ".
std::string JsonError(const std::exception& e) {
  std::string_view what = e.what();
  if (what.starts_with("[json.exception.")) {
    size_t end = what.find("] ");
    if (end != std::string_view::npos) what.remove_prefix(end + 2);
  }
  return std::string(what);
}

std::string_view TypeName(const Json& value) {
  switch (value.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::object:
      return "an object";
    case Json::value_t::array:
      return "an array";
    case Json::value_t::string:
      return "a string";
    case Json::value_t::boolean:
      return "a boolean";
    case Json::value_t::binary:
      return "binary data";
    case Json::value_t::discarded:
      return "nothing";
    default:
      return "a number";
  }
}

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) {
    if (!out.empty()) out += ", ";
    out += item;
  }
  return out;
}

class Generator {
 public:
  explicit Generator(const GeneratorInput& input) : input_(input) {}

  GeneratedConfig Run() {
    GeneratedConfig result;
    Json config = ReadTemplate();
    std::vector<const InboundRow*> inbounds = SortedInbounds();
    std::map<std::string, const UserRow*, std::less<>> users = UsersByName();
    std::map<std::string, std::vector<const UserRow*>, std::less<>> links =
        LinksByInbound(users);
    if (input_.stats_listen.empty()) {
      Error(
          "source.address is empty; set it to sing-box's "
          "experimental.v2ray_api.listen address (e.g. 127.0.0.1:8080)");
    }

    Json generated = Json::array();
    std::vector<std::string> tags;
    std::set<std::string> emitted_users;
    for (const InboundRow* row : inbounds) {
      std::optional<Json> inbound = MakeInbound(*row, links[row->tag]);
      if (!inbound) continue;
      for (const UserRow* user : links[row->tag]) {
        emitted_users.insert(user->name);
      }
      tags.push_back(row->tag);
      generated.push_back(std::move(*inbound));
    }
    if (!errors_.empty()) {
      result.errors = std::move(errors_);
      return result;
    }

    if (!config.contains("inbounds")) config["inbounds"] = Json::array();
    for (Json& inbound : generated) {
      config["inbounds"].push_back(std::move(inbound));
    }
    Json stats = {
        {"enabled", true},
        {"inbounds", tags},
        {"outbounds", input_.stats_outbounds},
        {"users",
         std::vector<std::string>(emitted_users.begin(), emitted_users.end())},
    };
    config["experimental"]["v2ray_api"] = {{"listen", input_.stats_listen},
                                           {"stats", std::move(stats)}};
    try {
      // Strings from PostgreSQL and from the parsed template are valid
      // UTF-8; replacing instead of throwing keeps this total anyway.
      result.text =
          config.dump(2, ' ', false, Json::error_handler_t::replace) + "\n";
    } catch (const std::exception& e) {
      result.errors.push_back("cannot write the config as JSON: " +
                              JsonError(e));
      return result;
    }
    result.inbounds = tags.size();
    result.users = emitted_users.size();
    result.left_out = std::move(left_out_);
    return result;
  }

 private:
  void Error(std::string message) { errors_.push_back(std::move(message)); }

  // The template as a JSON object, checked for what the generator adds to;
  // an empty object after an error (so the rows are still all checked).
  Json ReadTemplate() {
    if (!input_.template_name.empty()) {
      template_name_ = "template " + input_.template_name;
    }
    const std::string& name = template_name_;
    Json config;
    try {
      config = ParseLimited(input_.template_json);
    } catch (const std::exception& e) {
      Error(fmt::format(
          "{} is not valid JSON: {}; it must hold a sing-box config as a "
          "JSON object",
          name, JsonError(e)));
      return Json::object();
    }
    if (!config.is_object()) {
      Error(fmt::format(
          "{}: the top level is {}; expected a JSON object, a sing-box "
          "config such as {{\"log\": {{}}, \"outbounds\": [...]}}",
          name, TypeName(config)));
      return Json::object();
    }
    if (config.contains("inbounds")) {
      const Json& inbounds = config["inbounds"];
      if (!inbounds.is_array()) {
        Error(fmt::format(
            "{}: \"inbounds\" is {}; expected an array of inbound objects "
            "(or leave it out)",
            name, TypeName(inbounds)));
      } else {
        for (size_t i = 0; i < inbounds.size(); ++i) {
          const Json& inbound = inbounds[i];
          if (inbound.is_object() && inbound.contains("tag") &&
              inbound["tag"].is_string()) {
            template_tags_[inbound["tag"].get<std::string>()] = i;
          }
        }
      }
    }
    if (config.contains("experimental")) {
      const Json& experimental = config["experimental"];
      if (!experimental.is_object()) {
        Error(
            fmt::format("{}: \"experimental\" is {}; expected an object (or "
                        "leave it out)",
                        name, TypeName(experimental)));
      } else if (experimental.contains("v2ray_api")) {
        Error(fmt::format(
            "{}: experimental.v2ray_api is set; remove it, boxmeter-gen "
            "writes that block itself from source.address and "
            "generator.stats_outbounds, naming every inbound and user it "
            "generates",
            name));
      }
    }
    if (!errors_.empty()) return Json::object();
    return config;
  }

  // The inbound rows sorted by tag, without those whose tag is empty,
  // repeated, or already in the template (each reported).
  std::vector<const InboundRow*> SortedInbounds() {
    std::map<std::string_view, std::vector<const InboundRow*>> by_tag;
    for (const InboundRow& row : input_.inbounds) {
      by_tag[row.tag].push_back(&row);
    }
    std::vector<const InboundRow*> rows;
    for (const auto& [tag, group] : by_tag) {
      if (tag.empty()) {
        Error(
            "an inbound row has an empty tag; set inbounds.tag, it names the "
            "inbound in sing-box and its traffic counters");
      } else if (group.size() > 1) {
        Error(fmt::format(
            "inbound tag '{}' appears {} times among this node's inbounds; "
            "tags must be unique: rename or disable all but one",
            tag, group.size()));
      } else if (auto it = template_tags_.find(tag);
                 it != template_tags_.end()) {
        Error(fmt::format(
            "inbound '{}' is defined both in {} (inbounds[{}]) and in the "
            "database; remove it from one of them, or rename one",
            tag, template_name_, it->second));
      } else {
        rows.push_back(group.front());
      }
    }
    return rows;
  }

  std::map<std::string, const UserRow*, std::less<>> UsersByName() {
    std::map<std::string, const UserRow*, std::less<>> users;
    std::set<std::string> reported;
    for (const UserRow& user : input_.users) {
      if (user.name.empty()) {
        Error("a user row has an empty name; set users.name");
        continue;
      }
      if (!users.emplace(user.name, &user).second &&
          reported.insert(user.name).second) {
        Error(fmt::format(
            "user '{}' appears more than once among the user rows; user "
            "names must be unique",
            user.name));
      }
    }
    return users;
  }

  std::map<std::string, std::vector<const UserRow*>, std::less<>>
  LinksByInbound(
      const std::map<std::string, const UserRow*, std::less<>>& users) {
    std::set<std::string, std::less<>> tags;
    for (const InboundRow& row : input_.inbounds) tags.insert(row.tag);
    std::map<std::string, std::vector<const UserRow*>, std::less<>> links;
    std::set<std::pair<std::string, std::string>> seen;
    for (const InboundUserLink& link : input_.links) {
      if (!seen.emplace(link.inbound_tag, link.user_name).second) continue;
      auto user = users.find(link.user_name);
      if (tags.count(link.inbound_tag) == 0 || user == users.end()) {
        Error(fmt::format(
            "inbound '{}' is linked to user '{}', but {} is not among the "
            "rows read; this is a bug in reading the database",
            link.inbound_tag, link.user_name,
            tags.count(link.inbound_tag) == 0 ? "that inbound" : "that user"));
        continue;
      }
      links[link.inbound_tag].push_back(user->second);
    }
    for (auto& [tag, list] : links) {
      std::sort(
          list.begin(), list.end(),
          [](const UserRow* a, const UserRow* b) { return a->name < b->name; });
    }
    return links;
  }

  // The inbound, or nothing when it has errors (reported) or no users
  // (left out, with a notice).
  std::optional<Json> MakeInbound(const InboundRow& row,
                                  const std::vector<const UserRow*>& users) {
    size_t errors_before = errors_.size();
    if (row.type == "shadowtls") {
      Error(fmt::format(
          "inbound '{}': boxmeter-gen does not write shadowtls inbounds: "
          "sing-box hands every shadowtls connection to its detour inbound, "
          "which counts it under the detour's own users "
          "(protocol/shadowtls/inbound.go, route/route.go), and versions "
          "below 3 ignore users altogether, so shadowtls users can be "
          "neither authenticated nor metered here; disable this row "
          "(UPDATE inbounds SET enabled = false WHERE tag = {}) and put the "
          "shadowtls inbound in the template, with its detour to a generated "
          "inbound whose users boxmeter meters",
          row.tag, SqlLiteral(row.tag)));
      return std::nullopt;
    }
    auto shape = Shapes().find(row.type);
    if (shape == Shapes().end()) {
      std::vector<std::string> known = SupportedInboundTypes();
      Error(fmt::format(
          "inbound '{}': type '{}' is not one boxmeter-gen can write users "
          "for; set inbounds.type to one of: {}",
          row.tag, row.type, Join(known)));
      return std::nullopt;
    }
    if (!IsIpAddress(row.listen)) {
      Error(fmt::format(
          "inbound '{}': listen \"{}\" is not an IP address, and sing-box "
          "parses it as one (netip.ParseAddr, sing "
          "common/json/badoption/netip.go): no host names, brackets or "
          "ports; set inbounds.listen to e.g. '::', '0.0.0.0' or "
          "'127.0.0.1' and the port in inbounds.listen_port",
          row.tag, row.listen));
    }
    Json inbound = Json::object();
    inbound["type"] = row.type;
    inbound["tag"] = row.tag;
    inbound["listen"] = row.listen;
    if (row.listen_port) inbound["listen_port"] = *row.listen_port;

    Json options = Json::object();
    if (std::optional<Json> parsed = ReadOptions(row)) {
      options = std::move(*parsed);
      for (auto& [key, value] : options.items()) {
        if (!inbound.contains(key)) inbound[key] = value;
      }
      CheckTypeRules(row, options, users.empty());
    }

    Json list = Json::array();
    std::map<std::string, const UserRow*> by_credential;
    std::string_view column = CredentialColumn(shape->second);
    for (const UserRow* user : users) {
      std::optional<Json> object = MakeUser(row, shape->second, *user);
      if (!object) continue;
      CheckUserRules(row, options, *user, *object);
      if (!column.empty()) {
        // MakeUser succeeded, so the credential is there.
        std::string credential =
            column == "uuid" ? Lower(*user->uuid) : *user->password;
        auto [other, fresh] = by_credential.emplace(credential, user);
        if (!fresh) DuplicateCredential(row, column, *other->second, *user);
      }
      list.push_back(std::move(*object));
    }
    if (errors_.size() != errors_before) return std::nullopt;
    if (list.empty()) {
      left_out_.push_back(fmt::format(
          "inbound '{}' (type {}) left out: none of its users is eligible "
          "now (linked, enabled, not expired, under quota), and without "
          "users {}; it comes back when one of them is",
          row.tag, row.type, WithoutUsers(row.type)));
      return std::nullopt;
    }
    inbound["users"] = std::move(list);
    return inbound;
  }

  // The row's options as a JSON object, or nothing after reporting why not
  // (not JSON, not an object, a key boxmeter-gen writes itself, two keys
  // sing-box would read as one).
  std::optional<Json> ReadOptions(const InboundRow& row) {
    Json options;
    try {
      options = ParseLimited(row.options_json);
    } catch (const std::exception& e) {
      Error(
          fmt::format("inbound '{}': options are not valid JSON ({}); "
                      "fix inbounds.options",
                      row.tag, JsonError(e)));
      return std::nullopt;
    }
    if (!options.is_object()) {
      Error(fmt::format(
          "inbound '{}': options are {}; expected a JSON object of the "
          "inbound's other fields (tls, transport, method, ...), or {{}}",
          row.tag, TypeName(options)));
      return std::nullopt;
    }
    size_t errors_before = errors_.size();
    // sing-box matches field names case-insensitively (FoldKey), so
    // "Listen" would set listen just as "listen" does.
    for (const ReservedKey& reserved : kReservedKeys) {
      for (const auto& [key, value] : options.items()) {
        if (FoldKey(key) != FoldKey(reserved.key)) continue;
        Error(fmt::format(
            "inbound '{}': options set \"{}\", which sing-box reads as "
            "\"{}\" (it matches field names case-insensitively) and "
            "boxmeter-gen writes itself; remove it from inbounds.options "
            "and {}",
            row.tag, key, reserved.key, reserved.instead));
      }
    }
    std::map<std::string, std::string> folded;  // fold -> first spelling
    for (const auto& [key, value] : options.items()) {
      auto [first, fresh] = folded.emplace(FoldKey(key), key);
      if (!fresh) {
        Error(fmt::format(
            "inbound '{}': options set both \"{}\" and \"{}\", which "
            "sing-box reads as the same field (it matches field names "
            "case-insensitively); keep one, spelled in lower case",
            row.tag, first->second, key));
      }
    }
    if (errors_.size() != errors_before) return std::nullopt;
    return options;
  }

  void OptionError(const InboundRow& row, std::string_view problem) {
    Error(fmt::format("inbound '{}' (type {}): {} in inbounds.options", row.tag,
                      row.type, problem));
  }

  // What sing-box v1.13 requires of the inbound's own options (the rules
  // of sing_box_rules.h), each problem reported.
  void CheckTypeRules(const InboundRow& row, const Json& options,
                      bool no_users) {
    TlsNeed tls = TlsNeed::kOptional;
    if (row.type == "hysteria" || row.type == "hysteria2" ||
        row.type == "tuic") {
      tls = TlsNeed::kRequiredNoReality;  // protocol/<type>/inbound.go
    } else if (row.type == "naive" && !NaiveIsTcpOnly(options)) {
      // protocol/naive/inbound.go: "TLS is required for QUIC server"; the
      // default network is tcp and udp (option/types.go NetworkList).
      tls = TlsNeed::kRequired;
    }
    if (row.type != "socks" && row.type != "shadowsocks") {
      for (const std::string& problem :
           TlsProblems(FindField(options, "tls"), tls)) {
        OptionError(row, problem);
      }
    }
    if (row.type == "hysteria2") {
      // protocol/hysteria2/inbound.go: obfs needs a password and the type
      // salamander.
      if (const Json* obfs = FindField(options, "obfs");
          obfs != nullptr && !obfs->is_null()) {
        const Json* password = FindField(*obfs, "password");
        const Json* type = FindField(*obfs, "type");
        if (password == nullptr || !password->is_string() ||
            password->get<std::string>().empty()) {
          OptionError(row,
                      "obfs has no password (sing-box: \"missing obfs "
                      "password\"); set obfs.password");
        }
        if (type == nullptr || *type != "salamander") {
          OptionError(row,
                      "obfs.type is not \"salamander\" (sing-box: \"unknown "
                      "obfs type\"); set it to \"salamander\"");
        }
      }
    }
    if (row.type == "shadowsocks") CheckShadowsocks(row, options, no_users);
  }

  static bool NaiveIsTcpOnly(const Json& options) {
    const Json* network = FindField(options, "network");
    if (network == nullptr) return false;
    if (network->is_string()) return *network == "tcp";
    return network->is_array() && network->size() == 1 &&
           (*network)[0] == "tcp";
  }

  // protocol/shadowsocks/inbound.go and inbound_multi.go: users only in
  // multi-user mode, which excludes destinations (relay) and managed; a
  // method that can carry users; for SIP022 methods the server key.
  void CheckShadowsocks(const InboundRow& row, const Json& options,
                        bool no_users) {
    const Json* destinations = FindField(options, "destinations");
    if (destinations != nullptr && destinations->is_array() &&
        !destinations->empty()) {
      OptionError(row,
                  "\"destinations\" (relay mode) is set, and sing-box refuses "
                  "users with it (\"users and destinations options must not "
                  "be combined\"); remove destinations, boxmeter meters "
                  "users, not relays");
    }
    if (const Json* managed = FindField(options, "managed");
        managed != nullptr && managed->is_boolean() && managed->get<bool>()) {
      OptionError(row,
                  "\"managed\" is true, and sing-box refuses users on a "
                  "managed server (\"users and destinations options are not "
                  "supported in managed servers\"); remove managed");
    }
    const Json* method = FindField(options, "method");
    std::string name = method != nullptr && method->is_string()
                           ? method->get<std::string>()
                           : "";
    ShadowsocksMethod info = FindShadowsocksMethod(name);
    if (!info.multi_user) {
      OptionError(
          row, fmt::format(
                   "method \"{}\" {} (sing-box: \"unsupported method\"); set "
                   "method to one of: {}",
                   name,
                   name.empty() ? "is missing"
                   : info.known ? "cannot carry users"
                                : "is not a shadowsocks method sing-box knows",
                   MultiUserShadowsocksMethods()));
      return;
    }
    if (info.key_bytes == 0 || no_users) return;
    const Json* password = FindField(options, "password");
    std::string key = password != nullptr && password->is_string()
                          ? password->get<std::string>()
                          : "";
    if (Base64DecodedSize(key) != info.key_bytes) {
      OptionError(
          row,
          fmt::format(
              "the server password {} (sing-box: \"missing psk\" or \"bad "
              "key\"); method {} needs \"password\" set to {} random bytes "
              "in base64 (openssl rand -base64 {})",
              key.empty() ? "is missing" : "is not a base64 key of that size",
              name, info.key_bytes, info.key_bytes));
    }
  }

  // What sing-box v1.13 requires of one user's written object.
  void CheckUserRules(const InboundRow& row, const Json& options,
                      const UserRow& user, const Json& object) {
    if (row.type == "vless" && user.flow && !IsKnownVlessFlow(*user.flow)) {
      Error(fmt::format(
          "inbound '{}' (type vless): user '{}' has flow \"{}\", which "
          "sing-box does not know (every connection would fail with "
          "\"unknown flow\", sing-vmess vless/service.go); set it to "
          "'xtls-rprx-vision' or NULL (UPDATE users SET flow = NULL WHERE "
          "name = {})",
          row.tag, user.name, *user.flow, SqlLiteral(user.name)));
    }
    if (row.type != "shadowsocks") return;
    const Json* method = FindField(options, "method");
    if (method == nullptr || !method->is_string()) return;
    ShadowsocksMethod info = FindShadowsocksMethod(method->get<std::string>());
    if (info.key_bytes == 0) return;
    std::string password = object["password"];
    if (Base64DecodedSize(password) != info.key_bytes) {
      Error(fmt::format(
          "inbound '{}' (type shadowsocks): user '{}' has a password that is "
          "not a base64 key of {} bytes, which method {} needs (sing-box: "
          "\"bad key\", sing-shadowsocks shadowaead_2022/service_multi.go); "
          "set one (UPDATE users SET password = encode(gen_random_bytes({}), "
          "'base64') WHERE name = {}) or unlink the user from this inbound",
          row.tag, user.name, info.key_bytes, method->get<std::string>(),
          info.key_bytes, SqlLiteral(user.name)));
    }
  }

  void DuplicateCredential(const InboundRow& row, std::string_view column,
                           const UserRow& first, const UserRow& second) {
    std::string fix = column == "uuid" ? std::string("gen_random_uuid()")
                                       : std::string("'a long random secret'");
    Error(fmt::format(
        "inbound '{}' (type {}): users '{}' and '{}' have the same {}, so "
        "sing-box would {}; give one of them its own (UPDATE users SET {} = "
        "{} WHERE name = {}) or unlink one of them from this inbound",
        row.tag, row.type, first.name, second.name, column,
        row.type == "trojan" ? "refuse to start (\"user already exists\")"
                             : "count both under one name (it finds users by " +
                                   std::string(column) + ")",
        column, fix, SqlLiteral(second.name)));
  }

  // The credential `value` of `user`, or an error saying how to set it.
  std::optional<std::string> Need(const InboundRow& row, const UserRow& user,
                                  const std::optional<std::string>& value,
                                  std::string_view column) {
    if (value && !value->empty()) return *value;
    std::string example =
        column == "uuid" ? "gen_random_uuid()" : "'a long random secret'";
    Error(fmt::format(
        "inbound '{}' (type {}): user '{}' has {} {}, which {} users need; "
        "set it (UPDATE users SET {} = {} WHERE name = {}) or unlink the "
        "user from this inbound",
        row.tag, row.type, user.name, value ? "an empty" : "no", column,
        row.type, column, example, SqlLiteral(user.name)));
    return std::nullopt;
  }

  std::optional<std::string> NeedUuid(const InboundRow& row,
                                      const UserRow& user) {
    std::optional<std::string> uuid = Need(row, user, user.uuid, "uuid");
    if (!uuid) return std::nullopt;
    if (!IsUuid(*uuid)) {
      Error(fmt::format(
          "inbound '{}' (type {}): user '{}' has uuid \"{}\", which is not "
          "a UUID (8-4-4-4-12 hex digits, like "
          "0f8e2d6c-5b1a-4c3e-9d7f-2a6b8c0e4f13); set a valid one",
          row.tag, row.type, user.name, *uuid));
      return std::nullopt;
    }
    return Lower(*uuid);
  }

  std::optional<Json> MakeUser(const InboundRow& row, UserShape shape,
                               const UserRow& user) {
    Json object = Json::object();
    switch (shape) {
      case UserShape::kNamePassword:
      case UserShape::kNameAuthStr: {
        auto password = Need(row, user, user.password, "password");
        if (!password) return std::nullopt;
        object["name"] = user.name;
        object[shape == UserShape::kNameAuthStr ? "auth_str" : "password"] =
            *password;
        return object;
      }
      case UserShape::kUsernamePassword: {
        auto password = Need(row, user, user.password, "password");
        if (!password) return std::nullopt;
        object["username"] = user.name;
        object["password"] = *password;
        return object;
      }
      case UserShape::kNameUuidFlow: {
        auto uuid = NeedUuid(row, user);
        if (!uuid) return std::nullopt;
        object["name"] = user.name;
        object["uuid"] = *uuid;
        if (user.flow && !user.flow->empty()) object["flow"] = *user.flow;
        return object;
      }
      case UserShape::kNameUuidAlterId: {
        auto uuid = NeedUuid(row, user);
        if (!uuid) return std::nullopt;
        object["name"] = user.name;
        object["uuid"] = *uuid;
        if (user.alter_id) object["alterId"] = *user.alter_id;
        return object;
      }
      case UserShape::kNameUuidPassword: {
        auto uuid = NeedUuid(row, user);
        auto password = Need(row, user, user.password, "password");
        if (!uuid || !password) return std::nullopt;
        object["name"] = user.name;
        object["uuid"] = *uuid;
        object["password"] = *password;
        return object;
      }
    }
    return std::nullopt;
  }

  const GeneratorInput& input_;
  std::vector<std::string> errors_;
  std::vector<std::string> left_out_;
  std::map<std::string, size_t, std::less<>> template_tags_;  // -> index
  std::string template_name_ = "the template";
};

}  // namespace

const std::vector<std::string>& SupportedInboundTypes() {
  static const auto* types = [] {
    auto* list = new std::vector<std::string>;
    for (const auto& [type, shape] : Shapes()) list->push_back(type);
    return list;
  }();
  return *types;
}

GeneratedConfig GenerateSingBoxConfig(const GeneratorInput& input) {
  try {
    return Generator(input).Run();
  } catch (const std::exception& e) {
    // Nothing above should throw (parse errors are caught where they
    // happen); this keeps the core's contract of returning errors as values.
    GeneratedConfig result;
    result.errors.push_back(std::string("generating the config failed: ") +
                            e.what());
    return result;
  }
}

}  // namespace boxmeter
