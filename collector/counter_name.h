// CounterName: the parts of a stats counter name such as
// "user>>>alice>>>traffic>>>uplink".
//
// The name is parsed from both ends: the kind is everything before the first
// ">>>", the direction is the fixed suffix ">>>traffic>>>uplink|downlink",
// and whatever lies between is the tag or user name, which may itself
// contain ">>>".
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace boxmeter {

enum class CounterKind : uint8_t { kInbound, kOutbound, kUser };
enum class Direction : uint8_t { kUplink, kDownlink };

// "inbound" | "outbound" | "user": the spelling used in counter names and in
// the database.
std::string_view CounterKindName(CounterKind kind);
std::optional<CounterKind> ParseCounterKind(std::string_view text);

// What a counter measures, without its direction: one database row.
struct CounterKey {
  CounterKind kind = CounterKind::kUser;
  std::string name;

  bool operator==(const CounterKey& other) const = default;
  auto operator<=>(const CounterKey& other) const = default;
};

struct CounterKeyHash {
  size_t operator()(const CounterKey& key) const {
    return std::hash<std::string_view>()(key.name) * 3 +
           static_cast<size_t>(key.kind);
  }
};

struct CounterName {
  CounterKey key;
  Direction direction = Direction::kUplink;
};

// Returns nullopt for a name that is not a traffic counter of a known kind
// with a non-empty tag or user name.
std::optional<CounterName> ParseCounterName(std::string_view full);

// The inverse of ParseCounterName, for fakes, tests and the generator.
std::string FormatCounterName(CounterKind kind, std::string_view name,
                              Direction direction);

}  // namespace boxmeter
