// Utf8: checking that bytes are well-formed UTF-8, for the two places that
// must refuse anything else: the config loader (yaml-cpp accepts invalid
// UTF-8 silently) and the store (PostgreSQL rejects it, failing a commit).
#pragma once

#include <cstddef>
#include <string_view>

namespace boxmeter {

// The length (1 to 4) of the well-formed UTF-8 sequence that starts at
// `text[i]`, or 0 if there is none: a stray continuation byte, a truncated
// sequence, an overlong form, a surrogate or a code point past U+10FFFF.
// Precondition: i < text.size().
size_t Utf8SequenceLength(std::string_view text, size_t i);

// Whether PostgreSQL can store `text` in a UTF-8 database (and Prometheus
// take it as a label value): well-formed UTF-8 without NUL.
bool IsUtf8WithoutNul(std::string_view text);

}  // namespace boxmeter
