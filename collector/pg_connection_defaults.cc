#include "pg_connection_defaults.h"

#include <cstdlib>
#include <vector>

namespace boxmeter {
namespace {

bool IsUri(std::string_view url) {
  return url.starts_with("postgresql://") || url.starts_with("postgres://");
}

// "a=1 b=2" as URI query parameters: "a=1&b=2".
std::string AsQuery(std::string_view pairs) {
  std::string query(pairs);
  for (char& c : query) {
    if (c == ' ') c = '&';
  }
  return query;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = static_cast<char>(c | 0x20);
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

std::string PercentDecoded(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && HexValue(text[i + 1]) >= 0 &&
        HexValue(text[i + 2]) >= 0) {
      out +=
          static_cast<char>(HexValue(text[i + 1]) * 16 + HexValue(text[i + 2]));
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

std::string WithConnectionDefaults(std::string_view url,
                                   bool connect_timeout_from_env) {
  std::vector<std::string_view> groups;
  if (!connect_timeout_from_env &&
      url.find("connect_timeout") == std::string_view::npos) {
    groups.push_back(kConnectTimeoutDefault);
  }
  if (url.find("keepalives") == std::string_view::npos &&
      url.find("tcp_user_timeout") == std::string_view::npos) {
    groups.push_back(kKeepaliveDefaults);
  }
  std::string result(url);
  for (std::string_view group : groups) {
    if (IsUri(result)) {
      if (result.find('?') == std::string::npos) {
        result += '?';
      } else if (!result.ends_with('?') && !result.ends_with('&')) {
        result += '&';
      }
      result += AsQuery(group);
    } else {
      if (!result.empty()) result += ' ';
      result += group;
    }
  }
  return result;
}

std::string WithConnectionDefaults(std::string_view url) {
  return WithConnectionDefaults(url,
                                std::getenv("PGCONNECT_TIMEOUT") != nullptr);
}

}  // namespace boxmeter
