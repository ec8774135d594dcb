// ConfigGenerator: turns what operators keep in PostgreSQL (inbounds, users
// and the links between them) plus a base template into the complete
// sing-box config, so that the users sing-box accepts and the users it counts
// are always the same set.
//
// The output is the template with:
// - each inbound row appended to "inbounds" (after the template's own), with
//   its type, tag, listen, listen_port and users, and the row's options
//   (tls, transport, method, ...) merged in;
// - each user in the exact shape its inbound's type takes (docs/design.md's
//   table): vless {name, uuid, flow?}, vmess {name, uuid, alterId?}, tuic
//   {name, uuid, password}, hysteria {name, auth_str}, socks/http/mixed/naive
//   {username, password}, trojan/shadowsocks/hysteria2/anytls {name,
//   password}; shadowtls is refused (its traffic is counted under its
//   detour's users);
// - experimental.v2ray_api = {listen, stats: {enabled, inbounds, outbounds,
//   users}} naming every generated inbound and every emitted user, so
//   sing-box counts exactly those; the template's other experimental keys
//   are kept.
//
// Deterministic: the same input in any order gives the same bytes. Rows are
// sorted (inbounds by tag, users by name); the template's keys keep their
// order; generated objects have a fixed key order; the text is indented by 2
// and ends with a newline.
//
// No user-bearing inbound is ever written without users: sing-box would
// then let anyone through unauthenticated (socks, http, mixed), refuse to
// start (naive) or fall back to the inbound's own password (shadowsocks).
// An inbound none of whose linked users is eligible is left out of
// "inbounds" and of the v2ray_api lists, with a line in `left_out`; it
// comes back when one of its users is eligible again.
//
// Rows sing-box v1.13 would refuse (sing_box_rules.h: TLS without a
// certificate, QUIC types without TLS, a listen that is not an IP address,
// shadowsocks methods and keys, vless flows, relay and managed shadowsocks,
// shadowtls), two users of one inbound with the same credential (one would
// be counted under the other's name), and option keys sing-box reads as one
// the generator writes (case-insensitively) are errors.
//
// Nothing is emitted when anything is wrong: every problem is reported at
// once, each naming the row (inbound tag, user name) or template key and
// what to do about it; SQL in hints quotes what it echoes.
//
// Pure: no files, database or clock inside. The caller reads the rows
// (PgInventory) and the template, and writes the result.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace boxmeter {

// One row of `inbounds` for this node (only enabled ones are passed in).
struct InboundRow {
  std::string tag;
  std::string type;  // one of SupportedInboundTypes()
  std::string listen = "::";
  std::optional<int> listen_port = std::nullopt;  // none: no listen_port key
  std::string options_json = "{}";  // a JSON object; merged into the inbound
};

// One row of `users`: the credentials an inbound type may need.
struct UserRow {
  std::string name;  // the stats user name (and socks/http username)
  std::optional<std::string> uuid = std::nullopt;
  std::optional<std::string> password = std::nullopt;
  std::optional<std::string> flow = std::nullopt;  // vless; empty: none
  std::optional<int> alter_id = std::nullopt;      // vmess
};

// The user `user_name` is accepted by the inbound `inbound_tag`.
struct InboundUserLink {
  std::string inbound_tag;
  std::string user_name;
};

struct GeneratorInput {
  std::string template_json;  // the base config's text
  std::string template_name;  // for messages, e.g. its path
  std::vector<InboundRow> inbounds;
  std::vector<UserRow> users;
  std::vector<InboundUserLink> links;
  std::string stats_listen;                  // source.address
  std::vector<std::string> stats_outbounds;  // generator.stats_outbounds
};

struct GeneratedConfig {
  std::string text;  // the complete config; empty when errors is not
  std::vector<std::string> errors;
  // One line per inbound left out because none of its users is eligible,
  // naming it and why (see GenerateSingBoxConfig); set only when ok().
  std::vector<std::string> left_out;
  size_t inbounds = 0;  // generated inbounds (template ones not counted)
  size_t users = 0;     // distinct users emitted
  bool ok() const { return errors.empty(); }
};

// The inbound types whose users boxmeter-gen knows how to write, sorted.
const std::vector<std::string>& SupportedInboundTypes();

GeneratedConfig GenerateSingBoxConfig(const GeneratorInput& input);

}  // namespace boxmeter
