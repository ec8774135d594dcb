#include "counter_name.h"

#include <gtest/gtest.h>

namespace boxmeter {
namespace {

TEST(CounterNameTest, ParsesEachKindAndDirection) {
  auto user = ParseCounterName("user>>>alice>>>traffic>>>uplink");
  ASSERT_TRUE(user);
  EXPECT_EQ(user->key.kind, CounterKind::kUser);
  EXPECT_EQ(user->key.name, "alice");
  EXPECT_EQ(user->direction, Direction::kUplink);

  auto in = ParseCounterName("inbound>>>vless-in>>>traffic>>>downlink");
  ASSERT_TRUE(in);
  EXPECT_EQ(in->key.kind, CounterKind::kInbound);
  EXPECT_EQ(in->key.name, "vless-in");
  EXPECT_EQ(in->direction, Direction::kDownlink);

  auto out = ParseCounterName("outbound>>>direct>>>traffic>>>uplink");
  ASSERT_TRUE(out);
  EXPECT_EQ(out->key.kind, CounterKind::kOutbound);
  EXPECT_EQ(out->key.name, "direct");
}

TEST(CounterNameTest, NameMayContainSeparator) {
  auto parsed =
      ParseCounterName("user>>>a>>>b>>>traffic>>>c>>>traffic>>>downlink");
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->key.name, "a>>>b>>>traffic>>>c");
  EXPECT_EQ(parsed->direction, Direction::kDownlink);
}

TEST(CounterNameTest, NameMayBeTheSuffixWord) {
  auto parsed = ParseCounterName("user>>>traffic>>>traffic>>>uplink");
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->key.name, "traffic");
}

TEST(CounterNameTest, RejectsUnknownKinds) {
  EXPECT_FALSE(ParseCounterName("group>>>x>>>traffic>>>uplink"));
  EXPECT_FALSE(ParseCounterName("User>>>x>>>traffic>>>uplink"));
  EXPECT_FALSE(ParseCounterName(">>>x>>>traffic>>>uplink"));
}

TEST(CounterNameTest, RejectsMalformedNames) {
  EXPECT_FALSE(ParseCounterName(""));
  EXPECT_FALSE(ParseCounterName("user>>>alice"));
  EXPECT_FALSE(ParseCounterName("user>>>alice>>>traffic>>>sideways"));
  EXPECT_FALSE(ParseCounterName("user>>>alice>>>traffic>>>uplink "));
  EXPECT_FALSE(ParseCounterName("user>>>>>>traffic>>>uplink"));  // no name
  EXPECT_FALSE(ParseCounterName("user>>traffic>>>uplink"));
  EXPECT_FALSE(ParseCounterName(">>>traffic>>>uplink"));
}

TEST(CounterNameTest, FormatIsTheInverseOfParse) {
  for (CounterKind kind :
       {CounterKind::kInbound, CounterKind::kOutbound, CounterKind::kUser}) {
    for (Direction direction : {Direction::kUplink, Direction::kDownlink}) {
      std::string full = FormatCounterName(kind, "x>>>y \"'\\", direction);
      auto parsed = ParseCounterName(full);
      ASSERT_TRUE(parsed) << full;
      EXPECT_EQ(parsed->key.kind, kind);
      EXPECT_EQ(parsed->key.name, "x>>>y \"'\\");
      EXPECT_EQ(parsed->direction, direction);
    }
  }
}

}  // namespace
}  // namespace boxmeter
