// Inputs found by the fuzz targets (tests/fuzz), kept as regression tests so
// that each stays fixed in the ordinary test run. One test per finding,
// named after what was wrong; the fix is in the file the test names.
#include <gtest/gtest.h>

#include <string>

#include "config.h"

namespace boxmeter {
namespace {

// duration_fuzz: RedactUrl stopped a bare key=value password at the first
// space even when a backslash escaped it, as libpq allows, and left the rest
// of the password in logs. Fixed in collector/config.cc (ValueLength).
TEST(FuzzRegressionTest, EscapedSpaceInABareKeyValuePasswordIsHidden) {
  EXPECT_EQ(RedactUrl("host=db password=a\\ b dbname=x"),
            "host=db password=*** dbname=x");
  EXPECT_EQ(RedactUrl("host=db password=ab\\\\ dbname=x"),
            "host=db password=*** dbname=x");
  EXPECT_EQ(RedactUrl("password=trailing\\"), "password=***");
  // The crashing input itself (a quoted value with an escaped quote).
  EXPECT_EQ(RedactUrl("host=db password='a b\\' c' dbname=x"),
            "host=db password=*** dbname=x");
}

}  // namespace
}  // namespace boxmeter
