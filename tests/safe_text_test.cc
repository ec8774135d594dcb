// SafeText and QuotedText: foreign text (counter names, a peer's error
// messages, config values) cannot rewrite a terminal or flood a log.
#include "safe_text.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

namespace boxmeter {
namespace {

using ::testing::HasSubstr;

// True when every byte is printable ASCII or part of a multibyte character.
bool Inert(const std::string& text) {
  for (unsigned char c : text) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

TEST(SafeTextTest, ControlCharactersAreWrittenOut) {
  std::string hostile =
      "user>>>a\rFAKE LINE\x1b[2J\x1b]0;title\x07\x1b[31mred\b\x7f\n";
  std::string safe = SafeText(hostile, kMaxShownName);
  EXPECT_TRUE(Inert(safe)) << safe;
  EXPECT_EQ(safe,
            "user>>>a\\rFAKE LINE\\x1b[2J\\x1b]0;title\\x07\\x1b[31mred"
            "\\x08\\x7f\\n");
}

TEST(SafeTextTest, BackslashesAreDoubledSoEscapesAreUnambiguous) {
  EXPECT_EQ(SafeText("a\\x1b", 100), "a\\\\x1b");
  EXPECT_EQ(QuotedText("say \"hi\"\\", 100), "\"say \\\"hi\\\"\\\\\"");
}

TEST(SafeTextTest, C1ControlsBidiOverridesAndBadUtf8AreEscaped) {
  // U+009B (CSI on some terminals), U+202E (right-to-left override),
  // U+2066, a lone continuation byte and a truncated sequence.
  std::string safe = SafeText(
      "a\xc2\x9b"
      "b\xe2\x80\xae"
      "c\xe2\x81\xa6"
      "d\x80"
      "e\xe2\x82",
      100);
  EXPECT_EQ(safe, "a\\u009bb\\u202ec\\u2066d\\x80e\\xe2\\x82");
  // Ordinary non-ASCII text is left as it is.
  EXPECT_EQ(SafeText("café 用户 😀", 100), "café 用户 😀");
}

TEST(SafeTextTest, AHugeNameIsCutAndItsSizeSaid) {
  std::string name(2'000'000, 'x');
  name[5] = '\r';
  std::string safe = SafeText(name, kMaxShownName);
  EXPECT_LT(safe.size(), kMaxShownName + 40);
  EXPECT_THAT(safe, HasSubstr("... (2000000 bytes)"));
  EXPECT_TRUE(Inert(safe));
  std::string quoted = QuotedText(name, 100);
  EXPECT_EQ(quoted.size(), 1 + 5 + 2 + 94 + 4);  // "xxxxx\r" + 94 x + ..."
  EXPECT_TRUE(quoted.ends_with("...\""));
}

TEST(SafeTextTest, CutsOnlyBetweenCharacters) {
  // "é" is two bytes; a cut after one byte would leave half of it.
  EXPECT_EQ(SafeText("aé", 2), "aé");
  EXPECT_EQ(SafeText("aéb", 2), "aé... (4 bytes)");
  EXPECT_EQ(QuotedText("abc", 3), "\"abc\"");
  EXPECT_EQ(QuotedText("abcd", 3), "\"abc...\"");
}

}  // namespace
}  // namespace boxmeter
