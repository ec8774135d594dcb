// Fuzzes counter-name parsing, the first thing every byte from the stats API
// goes through. Properties, beyond "no crash, no UB":
//   - a name that parses is exactly FormatCounterName of its parts, so no
//     byte of the tag or user name is lost or invented;
//   - any byte string, used as a tag or user name, survives
//     FormatCounterName -> ParseCounterName for every kind and direction
//     (names may contain ">>>", quotes, NUL, anything).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "counter_name.h"
#include "fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace boxmeter;
  std::string_view input(reinterpret_cast<const char*>(data), size);

  if (std::optional<CounterName> parsed = ParseCounterName(input)) {
    FUZZ_CHECK(!parsed->key.name.empty());
    FUZZ_CHECK(FormatCounterName(parsed->key.kind, parsed->key.name,
                                 parsed->direction) == input);
  }

  if (input.empty()) return 0;  // an empty name is rejected by contract
  for (CounterKind kind :
       {CounterKind::kInbound, CounterKind::kOutbound, CounterKind::kUser}) {
    FUZZ_CHECK(ParseCounterKind(CounterKindName(kind)) == kind);
    for (Direction direction : {Direction::kUplink, Direction::kDownlink}) {
      std::optional<CounterName> back =
          ParseCounterName(FormatCounterName(kind, input, direction));
      FUZZ_CHECK(back.has_value());
      FUZZ_CHECK(back->key.kind == kind);
      FUZZ_CHECK(back->key.name == input);
      FUZZ_CHECK(back->direction == direction);
    }
  }
  return 0;
}
