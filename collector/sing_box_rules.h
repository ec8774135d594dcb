// SingBoxRules: what sing-box v1.13 (tag v1.13.2, commit c0d45aeb) and its
// libraries accept in the parts of an inbound boxmeter-gen writes, so that a
// row sing-box would refuse is a data error here instead of a node that does
// not start at the next reload. Each rule names the file it mirrors; the
// tests in tests/config_generator_test.cc name the same files.
//
// Pure functions over text and parsed JSON; the generator turns the problems
// they return into messages naming the inbound and the row.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace boxmeter {

using OrderedJson = nlohmann::ordered_json;

// The key sing-box's JSON decoder matches `key` by when no field is spelled
// exactly so (sing common/json/internal/contextjson/decode.go falls back to
// fields.byFoldedName, folded by fold.go's foldName): ASCII letters
// upper-cased, and the two non-ASCII runes that fold to ASCII letters,
// U+017F (long s) and U+212A (Kelvin sign), as S and K. Two keys with the
// same fold set the same sing-box field.
std::string FoldKey(std::string_view key);

// The member of `object` that sing-box would decode as field `key` (an
// exact match first, else the one with the same fold), or null when there
// is none. Sets *ambiguous (when given) to the spellings if more than one
// member folds to `key`, since sing-box would then take whichever comes
// last.
const OrderedJson* FindField(const OrderedJson& object, std::string_view key,
                             std::vector<std::string>* ambiguous = nullptr);

// Whether `text` is what Go's netip.ParseAddr accepts, as sing's
// badoption.Addr requires for `listen` (sing common/json/badoption/netip.go):
// dotted-decimal IPv4 without leading zeros, or IPv6 with an optional zone
// ("fe80::1%eth0"). Host names, brackets, ports and "" are not.
bool IsIpAddress(std::string_view text);

// The number of bytes `text` decodes to as padded standard base64 (Go's
// base64.StdEncoding), or nothing when it is not such base64.
std::optional<size_t> Base64DecodedSize(std::string_view text);

// A shadowsocks method as sing-box's multi-user inbound
// (protocol/shadowsocks/inbound_multi.go) takes it.
struct ShadowsocksMethod {
  bool known = false;       // sing-box knows the method at all
  bool multi_user = false;  // it can carry users
  // SIP022 (2022-blake3-*): the inbound's server password and every user's
  // password are base64 keys of this many bytes
  // (sing-shadowsocks shadowaead_2022/protocol.go). 0: any password.
  size_t key_bytes = 0;
};
ShadowsocksMethod FindShadowsocksMethod(std::string_view method);

// The shadowsocks methods that can carry users, for messages.
std::string MultiUserShadowsocksMethods();

// The vless flows sing-box's vless service knows (sing-vmess
// vless/protocol.go FlowVision; anything else fails each connection with
// "unknown flow" in vless/service.go). "" is no flow.
bool IsKnownVlessFlow(std::string_view flow);

// What an inbound type requires of its "tls" object.
enum class TlsNeed {
  kOptional,           // checked only when enabled
  kRequiredNoReality,  // hysteria, hysteria2, tuic: QUIC needs a standard TLS
                       // config (C.ErrTLSRequired; reality has no STDConfig)
  kRequired,           // naive over UDP/QUIC
};

// The problems sing-box's TLS server (common/tls/server.go,
// common/tls/std_server.go, common/tls/reality_server.go) would refuse
// `tls` (null when the options have none) for, each a sentence fragment
// ending in what to set; empty when it would load.
std::vector<std::string> TlsProblems(const OrderedJson* tls, TlsNeed need);

}  // namespace boxmeter
