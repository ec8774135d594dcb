// SafeText: text from outside the program (a stats server's counter names
// and error messages, PostgreSQL's messages, config values) made inert for a
// log line or an error message. Such text can hold a carriage return that
// overwrites the line on a terminal, an escape sequence that rewrites the
// screen or the window title, a bell, bidirectional overrides that reorder
// what is shown, or megabytes that flood the log. Every place that puts
// foreign text into a message goes through here.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace boxmeter {

// How much of a counter name (or similar short peer text) a message shows.
inline constexpr size_t kMaxShownName = 200;
// How much of a peer's error message a message shows.
inline constexpr size_t kMaxShownMessage = 1000;

// `text` with every backslash doubled; \n, \r and \t written as such; other
// control characters (C0, DEL, the C1 range U+0080..U+009F), bidirectional
// formatting characters (U+061C, U+200E/F, U+202A..U+202E, U+2066..U+2069)
// and bytes that are not well-formed UTF-8 written as \xNN or \uNNNN; cut
// at a character boundary after `max_bytes` bytes of `text`, where "..."
// and the whole length follow. The result holds only printable characters.
std::string SafeText(std::string_view text, size_t max_bytes);

// The same in double quotes, with " also escaped, and a plain "..." when
// cut: a value quoted inside a message.
std::string QuotedText(std::string_view text, size_t max_bytes);

}  // namespace boxmeter
