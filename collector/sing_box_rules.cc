#include "sing_box_rules.h"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cctype>

namespace boxmeter {
namespace {

bool IsTrue(const OrderedJson* value) {
  return value != nullptr && value->is_boolean() && value->get<bool>();
}

// A non-empty string, or a non-empty array (sing's badoption.Listable takes
// either) of strings.
bool HasText(const OrderedJson* value) {
  if (value == nullptr) return false;
  if (value->is_string()) return !value->get<std::string>().empty();
  return value->is_array() && !value->empty();
}

// What base64.RawURLEncoding decodes to exactly 32 bytes: 43 characters of
// the URL alphabet, no padding.
bool IsRawUrlBase64Key(std::string_view text) {
  if (text.size() != 43) return false;
  return std::all_of(text.begin(), text.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
  });
}

// What hex.Decode turns into at most 8 bytes.
bool IsShortId(std::string_view text) {
  if (text.size() > 16 || text.size() % 2 != 0) return false;
  return std::all_of(text.begin(), text.end(), [](char c) {
    return std::isxdigit(static_cast<unsigned char>(c)) != 0;
  });
}

}  // namespace

std::string FoldKey(std::string_view key) {
  std::string out;
  out.reserve(key.size());
  for (size_t i = 0; i < key.size(); ++i) {
    if (key.substr(i, 2) == "\xC5\xBF") {  // U+017F LATIN SMALL LETTER LONG S
      out += 'S';
      ++i;
    } else if (key.substr(i, 3) == "\xE2\x84\xAA") {  // U+212A KELVIN SIGN
      out += 'K';
      i += 2;
    } else {
      out +=
          static_cast<char>(std::toupper(static_cast<unsigned char>(key[i])));
    }
  }
  return out;
}

const OrderedJson* FindField(const OrderedJson& object, std::string_view key,
                             std::vector<std::string>* ambiguous) {
  if (!object.is_object()) return nullptr;
  const std::string folded = FoldKey(key);
  const OrderedJson* exact = nullptr;
  const OrderedJson* fold = nullptr;
  std::vector<std::string> spellings;
  for (const auto& [name, value] : object.items()) {
    if (name == key) {
      exact = &value;
    } else if (FoldKey(name) != folded) {
      continue;
    } else if (fold == nullptr) {
      fold = &value;
    }
    spellings.push_back(name);
  }
  if (ambiguous != nullptr && spellings.size() > 1) *ambiguous = spellings;
  return exact != nullptr ? exact : fold;
}

bool IsIpAddress(std::string_view text) {
  unsigned char buffer[16];
  std::string address(text);
  if (address.find(':') == std::string::npos) {
    return inet_pton(AF_INET, address.c_str(), buffer) == 1;
  }
  // netip.ParseAddr takes a zone after '%' on IPv6 addresses only.
  if (size_t percent = address.find('%'); percent != std::string::npos) {
    if (percent + 1 == address.size()) return false;
    address.resize(percent);
  }
  return inet_pton(AF_INET6, address.c_str(), buffer) == 1;
}

std::optional<size_t> Base64DecodedSize(std::string_view text) {
  if (text.empty() || text.size() % 4 != 0) return std::nullopt;
  size_t padding = 0;
  if (text.back() == '=') ++padding;
  if (text.size() >= 2 && text[text.size() - 2] == '=') ++padding;
  for (size_t i = 0; i < text.size() - padding; ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (!std::isalnum(c) && c != '+' && c != '/') return std::nullopt;
  }
  return text.size() / 4 * 3 - padding;
}

ShadowsocksMethod FindShadowsocksMethod(std::string_view method) {
  // sing-shadowsocks shadowaead/protocol.go List: multi-user with any
  // password; shadowaead_2022/service_multi.go NewMultiService: only the two
  // AES methods can carry users (chacha20 is single-user only).
  static constexpr std::array<std::string_view, 5> kAead = {
      "aes-128-gcm", "aes-192-gcm", "aes-256-gcm", "chacha20-ietf-poly1305",
      "xchacha20-ietf-poly1305"};
  for (std::string_view aead : kAead) {
    if (method == aead) return {.known = true, .multi_user = true};
  }
  if (method == "2022-blake3-aes-128-gcm") {
    return {.known = true, .multi_user = true, .key_bytes = 16};
  }
  if (method == "2022-blake3-aes-256-gcm") {
    return {.known = true, .multi_user = true, .key_bytes = 32};
  }
  if (method == "2022-blake3-chacha20-poly1305" || method == "none") {
    return {.known = true, .multi_user = false};
  }
  return {};
}

std::string MultiUserShadowsocksMethods() {
  return "2022-blake3-aes-128-gcm, 2022-blake3-aes-256-gcm, aes-128-gcm, "
         "aes-192-gcm, aes-256-gcm, chacha20-ietf-poly1305, "
         "xchacha20-ietf-poly1305";
}

bool IsKnownVlessFlow(std::string_view flow) {
  return flow.empty() || flow == "xtls-rprx-vision";
}

std::vector<std::string> TlsProblems(const OrderedJson* tls, TlsNeed need) {
  std::vector<std::string> problems;
  const bool required = need != TlsNeed::kOptional;
  if (tls != nullptr && !tls->is_null() && !tls->is_object()) {
    problems.push_back(
        "\"tls\" is not an object; set it to {\"enabled\": true, "
        "\"certificate_path\": ..., \"key_path\": ...}");
    return problems;
  }
  const OrderedJson empty = OrderedJson::object();
  const OrderedJson& object =
      (tls != nullptr && tls->is_object()) ? *tls : empty;
  if (!IsTrue(FindField(object, "enabled"))) {
    if (required) {
      problems.push_back(
          "TLS is required (sing-box: \"TLS required\"); set "
          "tls.enabled to true with certificate_path and key_path (or "
          "certificate and key, or acme)");
    }
    return problems;
  }
  const OrderedJson* reality = FindField(object, "reality");
  if (reality != nullptr && IsTrue(FindField(*reality, "enabled"))) {
    if (need == TlsNeed::kRequiredNoReality) {
      problems.push_back(
          "tls.reality cannot serve QUIC (sing-box: \"unsupported usage for "
          "reality\"); use certificate_path and key_path (or acme) instead");
      return problems;
    }
    const OrderedJson* key = FindField(*reality, "private_key");
    if (key == nullptr || !key->is_string() ||
        !IsRawUrlBase64Key(key->get<std::string>())) {
      problems.push_back(
          "tls.reality.private_key is missing or not 32 bytes in unpadded "
          "base64url (sing-box: \"invalid private key\"); set it to the "
          "PrivateKey that sing-box generate reality-keypair prints");
    }
    if (const OrderedJson* ids = FindField(*reality, "short_id");
        ids != nullptr) {
      std::vector<OrderedJson> list = ids->is_array()
                                          ? ids->get<std::vector<OrderedJson>>()
                                          : std::vector<OrderedJson>{*ids};
      for (const OrderedJson& id : list) {
        if (!id.is_string() || !IsShortId(id.get<std::string>())) {
          problems.push_back(
              "tls.reality.short_id " + id.dump() +
              " is not up to 16 hex digits in pairs (sing-box: \"invalid "
              "short_id\"); use e.g. the output of: openssl rand -hex 8");
        }
      }
    }
    for (std::string_view field :
         {"certificate", "certificate_path", "key", "key_path", "acme"}) {
      if (FindField(object, field) != nullptr) {
        problems.push_back("tls." + std::string(field) +
                           " is unavailable with reality; remove it");
      }
    }
    return problems;
  }
  const OrderedJson* acme = FindField(object, "acme");
  if (acme != nullptr && HasText(FindField(*acme, "domain"))) return problems;
  const bool certificate = HasText(FindField(object, "certificate")) ||
                           HasText(FindField(object, "certificate_path"));
  const bool key = HasText(FindField(object, "key")) ||
                   HasText(FindField(object, "key_path"));
  if (!certificate && !key && IsTrue(FindField(object, "insecure"))) {
    return problems;  // sing-box makes a self-signed certificate per name
  }
  if (!certificate || !key) {
    std::string_view missing = !certificate && !key ? "a certificate and key"
                               : !certificate       ? "a certificate"
                                                    : "a key";
    problems.push_back(
        std::string("tls is enabled without ") + std::string(missing) +
        " (sing-box: \"missing " + (!certificate ? "certificate" : "key") +
        "\"); set tls.certificate_path and tls.key_path (or certificate and "
        "key, or acme with a domain, or insecure: true for a self-signed "
        "certificate)");
  }
  return problems;
}

}  // namespace boxmeter
