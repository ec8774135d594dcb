// Inputs found by the fuzz targets (tests/fuzz), kept as regression tests so
// that each stays fixed in the ordinary test run. One test per finding,
// named after what was wrong; the fix is in the file the test names.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "config.h"
#include "support/process.h"

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

// config_fuzz: a file whose first line opens a YAML quoted scalar that runs
// to the end swallows the database.url line below it; the top-level "string"
// quoted back in the error held the URL's password, because RedactUrl only
// looked for a URL at the start of the text. Fixed in collector/config.cc
// (RedactUrl hides the password of every URL inside a text).
TEST(FuzzRegressionTest, UrlInsideAQuotedScalarIsRedactedInErrors) {
  testing::TempDir dir;
  std::string path = dir.path() + "/boxmeter.yaml";
  {
    std::ofstream file(path);
    file << "'://[o=S:} &ta\ndatabase:\n  url: "
            "postgresql://boxmeter:Zq7-secret@localhost/boxmeter\n";
  }
  Config config;
  std::vector<std::string> errors;
  ASSERT_FALSE(LoadConfig(path, {}, &config, &errors));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].find("Zq7-secret"), std::string::npos) << errors[0];
  EXPECT_NE(errors[0].find("postgresql://boxmeter:***@localhost"),
            std::string::npos)
      << errors[0];
  // Several, each with its password hidden.
  std::string text =
      RedactUrl("a=b postgres://u:pw1@h/db and mysql://a:pw2@b x");
  EXPECT_EQ(text, "a=b postgres://u:***@h/db and mysql://a:***@b x");
}

// config_fuzz: a file that starts with "," made yaml-cpp 0.7's LoadAll loop
// forever, allocating until the process died (yaml-cpp issue 1040), so
// --check-config or a SIGHUP reload with such a file hung the collector.
// Fixed in collector/config.cc (CheckDocumentsEnd walks the documents first).
TEST(FuzzRegressionTest, StrayCommaIsASyntaxErrorNotAHang) {
  testing::TempDir dir;
  std::string path = dir.path() + "/boxmeter.yaml";
  for (const char* text :
       {",", " ,", ",a", ",\ndatabase:\n  url: postgresql://u@h/db\n",
        "source: {address: \"127.0.0.1:1\"}\n---\n,\n"}) {
    {
      std::ofstream file(path, std::ios::trunc);
      file << text;
    }
    // On a hang the loader cannot be stopped: fail and end the process.
    auto promise = std::make_shared<std::promise<std::vector<std::string>>>();
    std::future<std::vector<std::string>> future = promise->get_future();
    std::thread([promise, path] {
      Config config;
      std::vector<std::string> errors;
      LoadConfig(path, {}, &config, &errors);
      promise->set_value(errors);
    }).detach();
    if (future.wait_for(std::chrono::seconds(20)) !=
        std::future_status::ready) {
      ADD_FAILURE() << "LoadConfig did not return for " << text;
      std::abort();
    }
    std::vector<std::string> errors = future.get();
    ASSERT_EQ(errors.size(), 1u) << text;
    EXPECT_NE(errors[0].find("YAML syntax error"), std::string::npos)
        << errors[0];
  }
  // Empty documents that do make progress are still just empty or several.
  {
    std::ofstream file(path, std::ios::trunc);
    file << "---\n---\n";
  }
  Config config;
  std::vector<std::string> errors;
  EXPECT_FALSE(LoadConfig(path, {}, &config, &errors));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("is empty"), std::string::npos) << errors[0];
}

// duration_fuzz: a quoted key=value password holding "\rsslpassword\r=..."
// had that inner "keyword" redacted first, which ate the closing quote; the
// outer password then ran to the end of the text and took the next keyword
// with it. RedactPasswordParameters (collector/config.cc) now scans once
// from left to right and resumes after each redacted value.
TEST(FuzzRegressionTest, AKeywordInsideAQuotedPasswordIsPartOfIt) {
  EXPECT_EQ(RedactUrl("host=db password='a\rsslpassword\r=\r0x' dbname=x"),
            "host=db password=*** dbname=x");
  EXPECT_EQ(RedactUrl("host=db password='a password=b' dbname=x"),
            "host=db password=*** dbname=x");
  EXPECT_EQ(RedactUrl("sslpassword=a password=b user=c"),
            "sslpassword=*** password=*** user=c");
  EXPECT_EQ(RedactUrl("postgresql://h/db?sslpassword=a&password=b&x=1"),
            "postgresql://h/db?sslpassword=***&password=***&x=1");
}

}  // namespace
}  // namespace boxmeter
