#include "counter_name.h"

namespace boxmeter {
namespace {

constexpr std::string_view kSeparator = ">>>";
constexpr std::string_view kUplinkSuffix = ">>>traffic>>>uplink";
constexpr std::string_view kDownlinkSuffix = ">>>traffic>>>downlink";

bool EndsWith(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() &&
         text.substr(text.size() - suffix.size()) == suffix;
}

}  // namespace

std::string_view CounterKindName(CounterKind kind) {
  switch (kind) {
    case CounterKind::kInbound:
      return "inbound";
    case CounterKind::kOutbound:
      return "outbound";
    case CounterKind::kUser:
      return "user";
  }
  return "?";
}

std::optional<CounterKind> ParseCounterKind(std::string_view text) {
  if (text == "inbound") return CounterKind::kInbound;
  if (text == "outbound") return CounterKind::kOutbound;
  if (text == "user") return CounterKind::kUser;
  return std::nullopt;
}

std::optional<CounterName> ParseCounterName(std::string_view full) {
  CounterName result;
  std::string_view rest;
  if (EndsWith(full, kUplinkSuffix)) {
    result.direction = Direction::kUplink;
    rest = full.substr(0, full.size() - kUplinkSuffix.size());
  } else if (EndsWith(full, kDownlinkSuffix)) {
    result.direction = Direction::kDownlink;
    rest = full.substr(0, full.size() - kDownlinkSuffix.size());
  } else {
    return std::nullopt;
  }
  size_t separator = rest.find(kSeparator);
  if (separator == std::string_view::npos) return std::nullopt;
  std::optional<CounterKind> kind = ParseCounterKind(rest.substr(0, separator));
  if (!kind) return std::nullopt;
  std::string_view name = rest.substr(separator + kSeparator.size());
  if (name.empty()) return std::nullopt;
  result.key.kind = *kind;
  result.key.name = std::string(name);
  return result;
}

std::string FormatCounterName(CounterKind kind, std::string_view name,
                              Direction direction) {
  std::string full(CounterKindName(kind));
  full += kSeparator;
  full += name;
  full += direction == Direction::kUplink ? kUplinkSuffix : kDownlinkSuffix;
  return full;
}

}  // namespace boxmeter
