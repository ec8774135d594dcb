#include "safe_text.h"

#include <fmt/core.h>

#include <algorithm>
#include <cstdint>

#include "utf8.h"

namespace boxmeter {
namespace {

// The code point of the well-formed sequence of `length` bytes at `p`.
char32_t Decode(const unsigned char* p, size_t length) {
  switch (length) {
    case 2:
      return (char32_t{p[0] & 0x1fu} << 6) | (p[1] & 0x3fu);
    case 3:
      return (char32_t{p[0] & 0x0fu} << 12) | (char32_t{p[1] & 0x3fu} << 6) |
             (p[2] & 0x3fu);
    case 4:
      return (char32_t{p[0] & 0x07u} << 18) | (char32_t{p[1] & 0x3fu} << 12) |
             (char32_t{p[2] & 0x3fu} << 6) | (p[3] & 0x3fu);
    default:
      return p[0];
  }
}

// C1 controls (a terminal may take U+009B as CSI) and the characters that
// reorder the text shown around them.
bool Invisible(char32_t c) {
  return (c >= 0x80 && c <= 0x9f) || c == 0x61c || c == 0x200e || c == 0x200f ||
         (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069);
}

std::string Escape(std::string_view text, size_t max_bytes, bool quoted) {
  std::string out;
  out.reserve(std::min(text.size(), max_bytes) + 2);
  if (quoted) out += '"';
  size_t i = 0;
  while (i < text.size()) {
    if (i >= max_bytes) {
      out += quoted ? "...\"" : fmt::format("... ({} bytes)", text.size());
      return out;
    }
    auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      ++i;
      if (c == '\\' || (quoted && c == '"')) {
        out += '\\';
        out += static_cast<char>(c);
      } else if (c == '\n') {
        out += "\\n";
      } else if (c == '\r') {
        out += "\\r";
      } else if (c == '\t') {
        out += "\\t";
      } else if (c < 0x20 || c == 0x7f) {
        out += fmt::format("\\x{:02x}", c);
      } else {
        out += static_cast<char>(c);
      }
      continue;
    }
    size_t length = Utf8SequenceLength(text, i);
    if (length == 0) {
      out += fmt::format("\\x{:02x}", c);
      ++i;
      continue;
    }
    char32_t code =
        Decode(reinterpret_cast<const unsigned char*>(text.data() + i), length);
    if (Invisible(code)) {
      out += fmt::format("\\u{:04x}", static_cast<uint32_t>(code));
    } else {
      out.append(text.substr(i, length));
    }
    i += length;
  }
  if (quoted) out += '"';
  return out;
}

}  // namespace

std::string SafeText(std::string_view text, size_t max_bytes) {
  return Escape(text, max_bytes, false);
}

std::string QuotedText(std::string_view text, size_t max_bytes) {
  return Escape(text, max_bytes, true);
}

}  // namespace boxmeter
